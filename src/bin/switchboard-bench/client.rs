//! WebSocket clients as the bench uses them: loopback only, small buffers
//! (ten thousand of them must fit beside the server), Nagle off, and a
//! deadline on every wait.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest a TCP connect plus WebSocket upgrade may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the bench waits for any one message it expects.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a close handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The buffers of a client (and of the baseline server, which uses the same
/// sizes as the edge): a 4 KiB read buffer instead of tungstenite's eager
/// 128 KiB, and every message written at once.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// Refuses anything but a loopback address: the bench never loads another
/// machine.
pub fn check_loopback(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("invalid URL {url}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("{url}: the bench only targets loopback addresses (127.0.0.0/8, ::1, localhost)");
    }
    Ok(())
}

/// Connects and completes the upgrade within [`CONNECT_TIMEOUT`].
pub async fn connect(url: &str) -> anyhow::Result<Socket> {
    let (socket, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, Some(config()), true),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out connecting to {url}"))?
    .with_context(|| format!("cannot connect to {url}"))?;
    Ok(socket)
}

/// How a wait for a text message ended without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The server closed the socket (with this close code, 1005 for none).
    Closed(u16),
    /// The connection failed.
    Failed,
    /// Nothing arrived in time.
    TimedOut,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Closed(code) => write!(formatter, "closed_{code}"),
            Ended::Failed => formatter.write_str("connection_failed"),
            Ended::TimedOut => formatter.write_str("timed_out"),
        }
    }
}

/// The next text message, skipping control frames.
pub async fn next_text(socket: &mut Socket, limit: Duration) -> Result<Utf8Bytes, Ended> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .map_err(|_| Ended::TimedOut)?;
        if let Some(text) = text_of(message)? {
            return Ok(text);
        }
    }
}

/// What one read from a socket means: `Ok(Some(text))` for a text
/// message, `Ok(None)` for a frame to skip, `Err` when the socket ended.
pub fn text_of(
    message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Option<Utf8Bytes>, Ended> {
    match message {
        Some(Ok(Message::Text(text))) => Ok(Some(text)),
        Some(Ok(Message::Close(frame))) => Err(Ended::Closed(
            frame.map_or(1005, |frame| u16::from(frame.code)),
        )),
        Some(Ok(_)) => Ok(None),
        Some(Err(_)) | None => Err(Ended::Failed),
    }
}

/// Sends a text message within [`REPLY_TIMEOUT`].
pub async fn send_text(socket: &mut Socket, text: String) -> Result<(), Ended> {
    match tokio::time::timeout(REPLY_TIMEOUT, socket.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ended::Failed),
        Err(_) => Err(Ended::TimedOut),
    }
}

/// Closes politely, waiting a bounded time for the server's answer.
pub async fn close(mut socket: Socket) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if socket.close(None).await.is_ok() {
            while let Some(Ok(_)) = socket.next().await {}
        }
    })
    .await;
}

/// An HS256 token for `user`, valid for an hour; an admin's when `admin`.
pub fn token(secret: &str, user: &str, admin: bool) -> anyhow::Result<String> {
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    let claims = if admin {
        json!({"sub": user, "exp": exp, "roles": ["admin"]})
    } else {
        json!({"sub": user, "exp": exp})
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("cannot sign a token")
}
