//! Socket.IO v4 on `/socket.io/` (websocket and polling transports), so the
//! seed's own front end and its `socket.io-client` work unchanged: events
//! `join_session`, `pressure_frame`, `leave_session` (and `resume`) in;
//! `session_joined`, `frame_processed`, `session_ended`, `error` (and
//! `resumed`) out.
//!
//! A Socket.IO socket is one more [`Transport`] of the connection driver:
//! the same [`PressureConnection`] handler runs it as it runs a
//! `/ws/pressure` socket. socketioxide runs each event handler as its own
//! task; the socket's events are funnelled, in order, into the driver's
//! task through a bounded inbox (a client that floods it gets an `error`
//! per dropped event, never unbounded memory). The driver's task ends when
//! the socket disconnects, and drops the socket's last reference with it
//! (and so its handlers, and the inbox they hold).
//!
//! Socket.IO has no close codes: where a WebSocket would close with one,
//! the socket is disconnected (the client sees `io server disconnect`).
//!
//! The handshake's `auth` may carry a position, `{"epoch", "offset"}`,
//! from which the socket's first `join_session` resumes (see
//! [`super::resume`]).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use tokio::sync::{Notify, mpsc};

use super::resume::PendingPosition;
use super::{PressureConnection, PressureState};
use crate::caller::Credentials;
use crate::connection::{Close, Gone, Options, Received, Transport, drive};
use crate::meter::Endpoint;

/// Events queued per socket before new ones are refused.
pub const INBOX: usize = 32;

/// Longest a message waits for room in the socket's buffer (socketioxide's
/// emit does not wait: a replay of many frames fills it faster than a
/// polling client takes them) before the socket counts as gone.
const SEND_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

const EVENTS: [&str; 4] = ["join_session", "pressure_frame", "leave_session", "resume"];

/// One event from a socket, for its connection task.
struct Command {
    event: &'static str,
    data: Value,
}

/// Registers the default namespace. Everything is done in a connect
/// middleware, which socketioxide runs before it acknowledges the
/// connection: a handler registered after that (in the connect handler,
/// which runs as a task of its own) can miss the client's first event, and
/// a refused token is the client's `connect_error`, as Socket.IO clients
/// expect of authentication.
pub fn register(io: &SocketIo, state: PressureState) {
    let connect = move |socket: SocketRef, TryData(auth): TryData<Value>| {
        let state = state.clone();
        async move { on_connect(socket, state, auth.ok()) }
    };
    io.ns("/", (async |_: SocketRef| {}).with(connect));
}

/// The token of a connection: the handshake's `auth` (`io(url, {auth:
/// {token}})`), else the `token` query parameter.
fn token_of(socket: &SocketRef, auth: Option<&Value>) -> Option<String> {
    if let Some(token) = auth
        .and_then(|auth| auth.get("token"))
        .and_then(Value::as_str)
        .filter(|token| !token.is_empty())
    {
        return Some(token.to_owned());
    }
    let query = socket.req_parts().uri.query()?;
    query.split('&').find_map(|pair| {
        pair.strip_prefix("token=")
            .filter(|token| !token.is_empty())
            .map(str::to_owned)
    })
}

fn on_connect(
    socket: SocketRef,
    state: PressureState,
    auth: Option<Value>,
) -> Result<(), crate::auth::AuthError> {
    let credentials = Credentials::new(token_of(&socket, auth.as_ref()), state.identities.clone());
    let caller = credentials
        .anyone()
        .inspect_err(|reason| tracing::info!(%reason, "socket.io connection refused"))?;
    let (inbox, commands) = mpsc::channel(INBOX);
    // The socket's handlers hold the inbox and the connection task holds
    // the socket, so neither ends the other: the disconnect handler does.
    let disconnected = Arc::new(Notify::new());
    let gone = Arc::clone(&disconnected);
    socket.on_disconnect(move || async move { gone.notify_one() });
    for event in EVENTS {
        let inbox = inbox.clone();
        socket.on(event, move |socket: SocketRef, Data(data): Data<Value>| {
            let inbox = inbox.clone();
            async move {
                if inbox.try_send(Command { event, data }).is_err() {
                    let busy = super::Outbound::Error {
                        message: "too many messages in flight; slow down".into(),
                        code: "busy",
                    };
                    let _ = socket.emit("error", &busy);
                }
            }
        });
    }
    let transport = SocketIoTransport {
        socket: socket.clone(),
        commands,
        disconnected,
    };
    let position = PendingPosition::from_auth(auth.as_ref());
    let driver = state.driver.clone();
    let handler = PressureConnection::socketio(state, caller, socket, position);
    tokio::spawn(async move {
        drive(
            &driver,
            Options::new(Endpoint::Pressure),
            transport,
            handler,
        )
        .await;
    });
    Ok(())
}

/// A Socket.IO socket as the driver's transport.
struct SocketIoTransport {
    socket: SocketRef,
    commands: mpsc::Receiver<Command>,
    disconnected: Arc<Notify>,
}

/// The `type` of an outgoing message: its Socket.IO event name.
fn event_name(json: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Typed {
        r#type: String,
    }
    serde_json::from_str::<Typed>(json)
        .map(|typed| typed.r#type)
        .unwrap_or_else(|_| "message".to_owned())
}

impl Transport for SocketIoTransport {
    async fn recv(&mut self) -> Received {
        tokio::select! {
            biased;
            () = self.disconnected.notified() => Received::Gone,
            command = self.commands.recv() => match command {
                Some(Command { event, data }) if self.socket.connected() => {
                    Received::Event { name: event, data }
                }
                _ => Received::Gone,
            },
        }
    }

    async fn send(&mut self, json: String) -> Result<(), Gone> {
        use socketioxide::{SendError, SocketError};
        let name = event_name(&json);
        let raw = RawValue::from_string(json).map_err(|_| Gone)?;
        let deadline = tokio::time::Instant::now() + SEND_WAIT;
        loop {
            match self.socket.emit(name.as_str(), &raw) {
                Ok(()) => return Ok(()),
                // The client has not taken what is buffered yet: wait a
                // little for it, bounded.
                Err(SendError::Socket(SocketError::InternalChannelFull))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(error) => {
                    tracing::debug!(%error, "socket.io emit failed");
                    return Err(Gone);
                }
            }
        }
    }

    async fn send_shared(&mut self, payload: Bytes) -> Result<(), Gone> {
        let json = String::from_utf8(payload.to_vec()).map_err(|_| Gone)?;
        self.send(json).await
    }

    async fn close(&mut self, close: &Close) {
        tracing::debug!(reason = %close, "socket.io socket disconnected");
        let _ = self.socket.clone().disconnect();
    }
}
