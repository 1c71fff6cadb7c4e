//! The WebSocket transport: axum's socket, configured on purpose, with the
//! close handshake done as RFC 6455 asks.
//!
//! - **Buffers**: tungstenite reads [`READ_BUFFER_BYTES`] at a time (its
//!   default allocates 128 KiB per connection up front); writes are not
//!   buffered beyond the frame being sent; at most
//!   [`MAX_WRITE_BUFFER_BYTES`] may wait for a client that does not read.
//! - **A client's Close** is answered with its own code (tungstenite queues
//!   the echo; it is flushed here) before the connection is dropped.
//! - **The server's Close** is sent, then the client's reply awaited
//!   (bounded) while what it still sends is discarded: dropping a socket
//!   with unread data makes the kernel reset the connection, and the client
//!   can lose the close frame, code and reason, to that reset.
//! - **Errors**: a message over the limit is [`Close::TooBig`] (1009),
//!   invalid UTF-8 [`Close::NotUtf8`] (1007), any other protocol violation
//!   [`Close::Protocol`] (1002).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use bytes::Bytes;
use futures::SinkExt;

use axum::response::Response;

use super::{Close, Driver, Gone, Handler, Options, Received, Transport};
use crate::auth::AuthError;
use crate::meter::Endpoint;

/// Bytes tungstenite reads from a socket at a time. Messages larger than
/// this still arrive whole (the buffer grows for them, up to the limit).
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Outbound bytes a socket may have queued while its client does not read;
/// past this the write fails and the connection ends instead of growing.
pub const MAX_WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Longest a single write may take before the client counts as gone.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a closing socket waits for the client's close reply.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Upgrades to a WebSocket with the edge's limits and runs the connection
/// `connect` describes through the driver. A caller whose token was
/// refused is closed 1008 with the reason instead: after the upgrade,
/// because a browser cannot read an HTTP status on a failed one.
pub fn accept<C, H>(
    upgrade: WebSocketUpgrade,
    driver: &Driver,
    endpoint: Endpoint,
    caller: Result<C, AuthError>,
    connect: impl FnOnce(C) -> (Options, H) + Send + 'static,
) -> Response
where
    C: Send + 'static,
    H: Handler,
{
    let limit = driver.max_message_bytes();
    let driver = driver.clone();
    configure(upgrade, limit).on_upgrade(move |socket| async move {
        let mut transport = WebSocketTransport::new(socket, limit);
        match caller {
            Ok(caller) => {
                let (options, handler) = connect(caller);
                super::drive(&driver, options, transport, handler).await;
            }
            Err(reason) => {
                tracing::info!(endpoint = endpoint.name(), %reason, "connection refused");
                transport.close(&Close::Unauthorized(reason)).await;
            }
        }
    })
}

/// Applies the edge's limits and buffer sizes to an upgrade.
pub fn configure(upgrade: WebSocketUpgrade, max_message_bytes: usize) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES.max(max_message_bytes * 2))
        .max_message_size(max_message_bytes)
        .max_frame_size(max_message_bytes)
}

/// One WebSocket connection.
pub struct WebSocketTransport {
    socket: WebSocket,
    max_message_bytes: usize,
}

impl std::fmt::Debug for WebSocketTransport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WebSocketTransport")
            .field("max_message_bytes", &self.max_message_bytes)
            .finish_non_exhaustive()
    }
}

impl WebSocketTransport {
    pub fn new(socket: WebSocket, max_message_bytes: usize) -> Self {
        Self {
            socket,
            max_message_bytes,
        }
    }

    async fn write(&mut self, message: Message) -> Result<(), Gone> {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(message)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    /// What a failed read means for the client.
    fn failure(&self, error: &axum::Error) -> Received {
        use std::error::Error as _;
        let mut source = error.source();
        while let Some(cause) = source {
            if let Some(error) = cause.downcast_ref::<tungstenite::Error>() {
                return match error {
                    tungstenite::Error::Capacity(_) => Received::Failed(Close::TooBig {
                        limit: self.max_message_bytes,
                    }),
                    tungstenite::Error::Utf8(_) => Received::Failed(Close::NotUtf8),
                    tungstenite::Error::Protocol(_) => Received::Failed(Close::Protocol),
                    _ => Received::Gone,
                };
            }
            source = cause.source();
        }
        Received::Gone
    }

    /// After the client's Close: send the echo tungstenite queued, then let
    /// the client close the TCP connection (bounded).
    async fn answer_close(&mut self) {
        let answer = async {
            let _ = self.socket.flush().await;
            while let Some(Ok(_)) = self.socket.recv().await {}
        };
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, answer).await;
    }
}

impl Transport for WebSocketTransport {
    async fn recv(&mut self) -> Received {
        match self.socket.recv().await {
            Some(Ok(Message::Text(text))) => Received::Text(text),
            Some(Ok(Message::Binary(_))) => Received::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Received::Heartbeat,
            Some(Ok(Message::Close(_))) => {
                self.answer_close().await;
                Received::Closed
            }
            Some(Err(error)) => {
                let failure = self.failure(&error);
                if matches!(failure, Received::Gone) {
                    tracing::debug!(%error, "websocket read failed");
                }
                failure
            }
            None => Received::Gone,
        }
    }

    async fn send(&mut self, json: String) -> Result<(), Gone> {
        self.write(Message::Text(json.into())).await
    }

    async fn send_shared(&mut self, payload: Bytes) -> Result<(), Gone> {
        let Ok(text) = Utf8Bytes::try_from(payload) else {
            tracing::warn!("a shared message is not UTF-8; not sent");
            return Ok(());
        };
        self.write(Message::Text(text)).await
    }

    async fn close(&mut self, close: &Close) {
        let frame = CloseFrame {
            code: close.code(),
            reason: close.to_string().into(),
        };
        // A client that does not read cannot take the close frame either:
        // bounded, like every write.
        let sent =
            tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Close(Some(frame))));
        if !matches!(sent.await, Ok(Ok(()))) {
            return;
        }
        let drain = async {
            while let Some(Ok(message)) = self.socket.recv().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, drain).await;
    }
}
