//! `/ws/pressure`: seed 001's actions for clients that do not speak
//! Socket.IO. Each message is a JSON object whose `action` (or `type`, or
//! `event`) names the seed's event, with the event's fields beside it:
//! `{"action": "join_session", "workout_id": "w1"}`. Replies carry the
//! seed's server event name in `type`.

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;
use tokio::sync::mpsc;

use super::rooms::{MEMBER_QUEUE, Member, RoomEvent};
use super::{Outbound, PressureConnection, PressureUser};
use crate::EdgeState;
use crate::alerts::TokenQuery;
use crate::error::ClientError;
use crate::socket::{RESTART_REASON, close, close_code, is_too_big, send_json};

pub async fn upgrade(
    State(state): State<EdgeState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let token = crate::auth::token_from(query.token.as_deref(), &headers);
    let user = PressureUser::from_token(&state, token.as_deref());
    state
        .configure(upgrade)
        .on_upgrade(move |mut socket| async move {
            match user {
                Ok(user) => run(socket, state, user).await,
                Err(reason) => close(&mut socket, close_code::POLICY, &reason.to_string()).await,
            }
        })
}

/// What one text message asks for, answered (or `None` for a frame, whose
/// answer reaches every room member as `frame_processed`).
async fn handle(
    connection: &mut PressureConnection,
    text: &str,
    events: &mpsc::Sender<RoomEvent>,
) -> Result<Option<Outbound>, ClientError> {
    let data: Value =
        serde_json::from_str(text).map_err(|error| ClientError::InvalidJson(error.to_string()))?;
    let action = ["action", "type", "event"]
        .iter()
        .find_map(|key| data.get(*key))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ClientError::InvalidMessage(
                "expected {\"action\": \"join_session\" | \"pressure_frame\" | \"leave_session\", ...}".into(),
            )
        })?;
    match action {
        "join_session" => connection
            .join(&data, |_| Member::WebSocket(events.clone()))
            .await
            .map(Some),
        "pressure_frame" => connection.frame(&data).await.map(|()| None),
        "leave_session" => connection.leave(&data).map(Some),
        other => Err(ClientError::UnknownAction {
            field: "action",
            action: other.to_owned(),
            expected: "join_session, pressure_frame, leave_session",
        }),
    }
}

async fn run(mut socket: WebSocket, state: EdgeState, user: PressureUser) {
    let _connected = state.meter().connect(crate::meter::Endpoint::Pressure);
    let (events_sender, mut events) = mpsc::channel(MEMBER_QUEUE);
    let mut connection = PressureConnection::new(state.clone(), user);
    let mut draining = state.draining();
    loop {
        tokio::select! {
            () = draining.started() => {
                return close(&mut socket, close_code::SERVICE_RESTART, RESTART_REASON).await;
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    state.meter().received();
                    let reply = match handle(&mut connection, text.as_str(), &events_sender).await {
                        Ok(Some(reply)) => reply,
                        Ok(None) => continue,
                        Err(error) => Outbound::error(&error),
                    };
                    if send_json(&mut socket, &reply).await.is_err() {
                        return;
                    }
                    state.meter().sent();
                }
                Some(Ok(Message::Binary(_))) => {
                    let error = Outbound::error(&ClientError::BinaryMessage);
                    if send_json(&mut socket, &error).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None => return,
                Some(Ok(_)) => {}
                Some(Err(error)) if is_too_big(&error) => {
                    let reason = format!("message too big: the limit is {} bytes", state.settings().max_message_bytes);
                    close(&mut socket, close_code::TOO_BIG, &reason).await;
                    return;
                }
                Some(Err(_)) => return,
            },
            Some(event) = events.recv() => {
                let Ok(text) = Utf8Bytes::try_from(event) else { continue };
                if socket.send(Message::Text(text)).await.is_err() {
                    return;
                }
                state.meter().sent();
            }
        }
    }
}
