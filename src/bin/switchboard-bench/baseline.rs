//! The baseline: what this machine does with the bare protocol.
//!
//! A minimal tokio-tungstenite server with no services, no NATS, no
//! registry and no validation beyond parsing the JSON, speaking just enough
//! of the edge's dialect for the same clients to drive it:
//!
//! - `/ws/realtime`: `session_started` on connect, then one small
//!   `step_detection` JSON reply per message (the message is parsed and its
//!   samples counted, nothing else).
//! - `/ws/ui` and `/ws/alerts/{user}`: a welcome, then whatever is
//!   published, through a `tokio::sync::broadcast` channel of 256 messages
//!   (the edge's per-client queue): a client that falls further behind is
//!   closed with 1008, as the edge does.
//! - `/publish/ui` and `/publish/alerts/{user}`: each text message is
//!   relayed verbatim to those subscribers and acknowledged.
//!
//! It uses the edge's buffer sizes (4 KiB read buffer, unbuffered writes)
//! and turns Nagle's algorithm off. The bench runs it as a child process
//! (`switchboard-bench baseline-server`, hidden) so that its resident
//! memory is its own and it has its own threads, as the edge does; the
//! child exits when its standard input closes, so it never outlives the
//! bench.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// What the child prints, followed by its address, once it listens.
const READY: &str = "baseline-server listening on ";

/// How long the child may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages a hub client may have unread (the edge's `CLIENT_QUEUE`).
const QUEUE: usize = 256;

/// Longest one write to a hub client may take (the edge's `SEND_TIMEOUT`).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The baseline server running as a child of the bench; killed on drop.
pub struct BaselineProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl BaselineProcess {
    /// Starts `switchboard-bench baseline-server` and waits for its address.
    pub fn start() -> anyhow::Result<Self> {
        let executable =
            std::env::current_exe().context("cannot find the switchboard-bench binary")?;
        let mut child = Command::new(executable)
            .arg("baseline-server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the baseline server")?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (found, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix(READY) {
                    let _ = found.send(addr.trim().to_owned());
                }
            }
        });
        let mut process = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        process.addr = address
            .recv_timeout(START_TIMEOUT)
            .context("the baseline server did not start")?
            .parse()
            .context("the baseline server printed a bad address")?;
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BaselineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side: listen on a loopback port the OS picks, print it, and
/// serve until standard input closes.
pub async fn run_child() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{READY}{}", listener.local_addr()?);
    let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = closed.send(());
    });
    tokio::select! {
        () = serve(listener) => {},
        _ = stdin_closed => {},
    }
    Ok(())
}

/// Where published messages go.
struct Hubs {
    ui: broadcast::Sender<Utf8Bytes>,
    alerts: Mutex<HashMap<String, broadcast::Sender<Utf8Bytes>>>,
}

impl Hubs {
    fn alerts(&self, user: &str) -> broadcast::Sender<Utf8Bytes> {
        self.alerts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(user.to_owned())
            .or_insert_with(|| broadcast::channel(QUEUE).0)
            .clone()
    }
}

/// Accepts connections on `listener` forever.
pub async fn serve(listener: TcpListener) {
    let hubs = Arc::new(Hubs {
        ui: broadcast::channel(QUEUE).0,
        alerts: Mutex::default(),
    });
    let mut next_id: u64 = 0;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                next_id += 1;
                let hubs = Arc::clone(&hubs);
                let id = next_id;
                tokio::spawn(async move {
                    let _ = connection(stream, hubs, id).await;
                });
            }
            // Out of descriptors, most likely: let some close.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

type ServerSocket = WebSocketStream<TcpStream>;
type Result = std::result::Result<(), tokio_tungstenite::tungstenite::Error>;

#[allow(
    clippy::result_large_err,
    reason = "the handshake callback's type is tungstenite's"
)]
async fn connection(stream: TcpStream, hubs: Arc<Hubs>, id: u64) -> Result {
    stream.set_nodelay(true)?;
    let mut path = String::new();
    let remember_path = |request: &Request, response: Response| {
        path = request.uri().path().to_owned();
        Ok::<Response, ErrorResponse>(response)
    };
    let socket = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        remember_path,
        Some(super::client::config()),
    )
    .await?;
    if path == "/ws/realtime" {
        realtime(socket, id).await
    } else if path == "/ws/ui" {
        let welcome = format!(
            r#"{{"type":"connection","data":{{"status":"connected","connection_id":"baseline-{id}"}}}}"#
        );
        subscriber(socket, hubs.ui.subscribe(), welcome).await
    } else if let Some(user) = path.strip_prefix("/ws/alerts/") {
        let welcome = format!(r#"{{"type":"connected","user_id":"{user}","pending_alerts":0}}"#);
        subscriber(socket, hubs.alerts(user).subscribe(), welcome).await
    } else if path == "/publish/ui" {
        publisher(socket, hubs.ui.clone()).await
    } else if let Some(user) = path.strip_prefix("/publish/alerts/") {
        publisher(socket, hubs.alerts(user)).await
    } else {
        close(socket, CloseCode::Policy, "unknown path").await
    }
}

async fn close(mut socket: ServerSocket, code: CloseCode, reason: &'static str) -> Result {
    socket
        .close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
        .await
}

/// Samples in a realtime message: a batch's length, or one.
fn samples_in(message: &Value) -> usize {
    match message {
        Value::Array(samples) => samples.len(),
        Value::Object(object) => object
            .get("samples")
            .and_then(Value::as_array)
            .map_or(1, Vec::len),
        _ => 1,
    }
}

async fn realtime(mut socket: ServerSocket, id: u64) -> Result {
    let started = format!(
        r#"{{"type":"session_started","session_id":"baseline-{id}","message":"Step detection session initialized successfully"}}"#
    );
    socket.send(Message::text(started)).await?;
    let mut predictions: u64 = 0;
    while let Some(message) = socket.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        let reply = match serde_json::from_str::<Value>(text.as_str()) {
            Ok(value) => {
                predictions += 1;
                let samples = samples_in(&value);
                format!(
                    r#"{{"type":"step_detection","session_id":"baseline-{id}","step_detected":false,"prediction":{{"samples":{samples}}},"total_predictions":{predictions}}}"#
                )
            }
            Err(_) => format!(
                r#"{{"type":"error","status":"error","code":"invalid_json","session_id":"baseline-{id}"}}"#
            ),
        };
        socket.send(Message::text(reply)).await?;
    }
    Ok(())
}

async fn subscriber(
    mut socket: ServerSocket,
    mut messages: broadcast::Receiver<Utf8Bytes>,
    welcome: String,
) -> Result {
    socket.send(Message::text(welcome)).await?;
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(text) => {
                    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text))).await {
                        Ok(Ok(())) => {}
                        _ => return Ok(()),
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return close(socket, CloseCode::Policy, "too slow").await;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Text(text))) if text.contains("\"ping\"") => {
                    socket.send(Message::text(r#"{"type":"pong"}"#)).await?;
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn publisher(mut socket: ServerSocket, hub: broadcast::Sender<Utf8Bytes>) -> Result {
    while let Some(message) = socket.next().await {
        if let Message::Text(text) = message? {
            // No subscriber is not an error: the message just reaches no one.
            let _ = hub.send(text);
            socket
                .send(Message::text(r#"{"status":"broadcast"}"#))
                .await?;
        }
    }
    Ok(())
}
