//! What every WebSocket endpoint of the edge shares: close codes, sending
//! JSON, closing with a reason, recognising an oversize message, and the
//! timestamp format of the seeds.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde::Serialize;
use switchboard_proto::unix_now;

/// Close codes (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// The server is restarting: reconnect (to another instance).
    pub const SERVICE_RESTART: u16 = 1012;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// What a connection loop does after handling one event.
pub enum Next {
    Continue,
    /// Close with this code and reason.
    Close(u16, String),
}

/// The close reason for a message over the size limit (close 1009).
pub fn too_big(limit: usize) -> Next {
    Next::Close(
        close_code::TOO_BIG,
        format!("message too big: the limit is {limit} bytes"),
    )
}

/// Why every socket closes when its edge drains.
pub const RESTART_REASON: &str = "server restarting: reconnect";

/// Completes once the edge starts draining (never, if it never does).
#[derive(Clone, Debug)]
pub struct Draining(pub(crate) tokio::sync::watch::Receiver<bool>);

impl Draining {
    pub async fn started(&mut self) {
        if self.0.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The seeds write timestamps as strings of Unix seconds, e.g.
/// `"1234567890.123"`.
pub fn timestamp() -> String {
    format!("{:.3}", unix_now())
}

/// Sends one JSON message.
pub async fn send_json(
    socket: &mut WebSocket,
    message: &impl Serialize,
) -> Result<(), axum::Error> {
    let text = serde_json::to_string(message).expect("outbound messages always serialize");
    socket.send(Message::text(text)).await
}

/// How long a closing socket waits for the client's close reply.
const CLOSE_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Closes with `code` and `reason`, then waits (bounded) for the client's
/// close reply while discarding what it still sends. Dropping the socket
/// right away with unread data would make the kernel reset the connection,
/// and a client can lose the close frame, code and reason, to that reset.
pub async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let drain = async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, drain).await;
}

/// True when a read failed because the message exceeded the size limit.
pub fn is_too_big(error: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(tungstenite::Error::Capacity(_)) = cause.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}
