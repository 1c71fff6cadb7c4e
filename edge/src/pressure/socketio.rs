//! Socket.IO v4 on `/socket.io/` (websocket and polling transports), so the
//! seed's own front end and its `socket.io-client` work unchanged: events
//! `join_session`, `pressure_frame`, `leave_session` in;
//! `session_joined`, `frame_processed`, `session_ended`, `error` out.
//!
//! socketioxide runs each event handler as its own task; every socket's
//! events are funnelled, in order, into one task that owns the socket's
//! [`PressureConnection`], through a bounded inbox (a client that floods it
//! gets an `error` per dropped event, never unbounded memory).

use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use std::sync::Arc;

use tokio::sync::{Notify, mpsc};

use super::rooms::{Member, socketio_room};
use super::{Outbound, PressureConnection, PressureUser};
use crate::EdgeState;

/// Events queued per socket before new ones are refused.
pub const INBOX: usize = 32;

const EVENTS: [&str; 3] = ["join_session", "pressure_frame", "leave_session"];

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
pub fn register(io: &SocketIo, state: EdgeState) {
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

fn emit(socket: &SocketRef, message: &Outbound) {
    if let Err(error) = socket.emit(message.event_name(), message) {
        tracing::debug!(%error, "socket.io emit failed");
    }
}

fn on_connect(
    socket: SocketRef,
    state: EdgeState,
    auth: Option<Value>,
) -> Result<(), crate::auth::AuthError> {
    let user = PressureUser::from_token(&state, token_of(&socket, auth.as_ref()).as_deref())
        .inspect_err(|reason| tracing::info!(%reason, "socket.io connection refused"))?;
    let (inbox, commands) = mpsc::channel(INBOX);
    // The socket's handlers hold the inbox and the connection task holds
    // the socket, so neither ends the other: the disconnect handler does.
    let disconnected = Arc::new(Notify::new());
    let gone = Arc::clone(&disconnected);
    socket.on_disconnect(move || async move { gone.notify_one() });
    tokio::spawn(serve(socket.clone(), state, user, commands, disconnected));
    for event in EVENTS {
        let inbox = inbox.clone();
        socket.on(event, move |socket: SocketRef, Data(data): Data<Value>| {
            let inbox = inbox.clone();
            async move {
                if inbox.try_send(Command { event, data }).is_err() {
                    let busy = json!({ "message": "too many messages in flight; slow down", "code": "busy" });
                    let _ = socket.emit("error", &busy);
                }
            }
        });
    }
    Ok(())
}

/// The socket's connection task: its events, one at a time, in order. It
/// ends when the socket disconnects, and drops the socket's last reference
/// with it (and so the handlers, and the inbox they hold).
async fn serve(
    socket: SocketRef,
    state: EdgeState,
    user: PressureUser,
    mut commands: mpsc::Receiver<Command>,
    disconnected: Arc<Notify>,
) {
    let _connected = state.meter().connect(crate::meter::Endpoint::Pressure);
    let meter = std::sync::Arc::clone(state.meter());
    let mut connection = PressureConnection::new(state, user);
    loop {
        let Command { event, data } = tokio::select! {
            biased;
            () = disconnected.notified() => break,
            command = commands.recv() => match command {
                Some(command) => command,
                None => break,
            },
        };
        if !socket.connected() {
            break;
        }
        meter.received();
        let outcome = match event {
            "join_session" => connection
                .join(&data, |workout_id| {
                    socket.join(socketio_room(workout_id));
                    Member::SocketIo
                })
                .await
                .map(Some),
            "pressure_frame" => connection.frame(&data).await.map(|()| None),
            _ => connection.leave(&data).map(|ended| {
                if let Outbound::SessionEnded { workout_id } = &ended {
                    socket.leave(socketio_room(workout_id));
                }
                Some(ended)
            }),
        };
        match outcome {
            Ok(Some(reply)) => emit(&socket, &reply),
            Ok(None) => {}
            Err(error) => emit(&socket, &Outbound::error(&error)),
        }
    }
}
