//! `/ws/ui`: seed 003's UI broadcast hub. Every client receives every
//! `event`, `overlay` and `telemetry` message published on any edge (or by
//! another backend through `BroadcastService`), the system's own events
//! (`session_opened`, `step_detected`, `frame_processed`, `alert_raised`,
//! …) as `event` messages, and a `connection` message when it connects.
//!
//! `POST /api/events/broadcast[/action|/overlay|/telemetry]` take the
//! seed's bodies; when a JWT key is configured they need an admin token
//! (without one, as in the seed, they are open).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use switchboard_proto::v1::UiMessage;

use super::send_shared;
use crate::EdgeState;
use crate::alerts::TokenQuery;
use crate::error::ClientError;
use crate::meter::Endpoint;
use crate::socket::{RESTART_REASON, close, close_code, is_too_big, send_json};

pub async fn upgrade(State(state): State<EdgeState>, upgrade: WebSocketUpgrade) -> Response {
    state
        .configure(upgrade)
        .on_upgrade(move |socket| run(socket, state))
}

async fn run(mut socket: WebSocket, state: EdgeState) {
    let _connected = state.meter().connect(Endpoint::Ui);
    let connection_id = uuid::Uuid::new_v4().to_string();
    let (_member, mut messages) = state.ui_hub().join("", &connection_id);
    let welcome = json!({
        "type": "connection",
        "data": {
            "status": "connected",
            "connection_id": connection_id,
            "timestamp": switchboard_bus::rfc3339_now(),
        },
    });
    let welcomed = send_json(&mut socket, &welcome).await;
    // Not kept for the connection's life: a kilobyte per socket otherwise.
    drop(welcome);
    if welcomed.is_err() {
        return;
    }
    state.meter().sent();
    let mut draining = state.draining();
    loop {
        tokio::select! {
            () = draining.started() => {
                return close(&mut socket, close_code::SERVICE_RESTART, RESTART_REASON).await;
            }
            message = messages.recv() => match message {
                Some(payload) => {
                    if !send_shared(&mut socket, payload).await {
                        return;
                    }
                    state.meter().sent();
                }
                None => {
                    let reason = format!("too slow: more than {} messages unread", super::CLIENT_QUEUE);
                    close(&mut socket, close_code::POLICY, &reason).await;
                    return;
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    state.meter().received();
                    if send_json(&mut socket, &reply_to(text.as_str())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    state.meter().received();
                    if send_json(&mut socket, &super::error_message(&ClientError::BinaryMessage)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None => return,
                Some(Ok(_)) => {}
                Some(Err(error)) if is_too_big(&error) => {
                    close(&mut socket, close_code::TOO_BIG, "message too big").await;
                    return;
                }
                Some(Err(_)) => return,
            },
        }
    }
}

/// The answer to a client's text message: `pong` to a `ping`, else an
/// `error` (the hub only broadcasts).
fn reply_to(text: &str) -> Value {
    let error = match serde_json::from_str::<Value>(text) {
        Err(error) => ClientError::InvalidJson(error.to_string()),
        Ok(message) => match message.get("type").and_then(Value::as_str) {
            Some("ping") => {
                return json!({"type": "pong", "timestamp": switchboard_bus::rfc3339_now()});
            }
            Some(other) => ClientError::UnknownAction {
                field: "type",
                action: other.to_owned(),
                expected: "ping",
            },
            None => ClientError::InvalidMessage(
                "expected {\"type\": \"ping\"}; the UI hub broadcasts to you".into(),
            ),
        },
    };
    super::error_message(&error)
}

/// The broadcast routes need an admin token when authentication is
/// configured.
fn authorize(
    state: &EdgeState,
    query: &TokenQuery,
    headers: &HeaderMap,
) -> Result<(), ClientError> {
    if !state.auth_configured() {
        return Ok(());
    }
    let token = crate::auth::token_from(query.token.as_deref(), headers)
        .ok_or(ClientError::Unauthorized(crate::auth::AuthError::Missing))?;
    let identity = state
        .authenticate(&token)
        .map_err(ClientError::Unauthorized)?;
    identity.require_admin().map_err(ClientError::Forbidden)
}

fn object(value: Option<Value>, name: &str) -> Result<Map<String, Value>, ClientError> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(object)) => Ok(object),
        Some(_) => Err(ClientError::InvalidMessage(format!(
            "{name} must be a JSON object"
        ))),
    }
}

async fn broadcast(
    state: &EdgeState,
    message: UiMessage,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    let echo = json!({
        "status": "broadcast",
        "type": message.r#type,
    });
    state
        .backends()
        .broadcast
        .clone()
        .broadcast_ui(message)
        .await
        .map_err(|status| ClientError::from_status("statistics", status))?;
    Ok((StatusCode::ACCEPTED, Json(echo)))
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ClientError> {
    body.map(|Json(body)| body)
        .map_err(|rejection| ClientError::InvalidMessage(rejection.body_text()))
}

#[derive(Debug, Deserialize)]
pub struct EventBody {
    event_type: String,
    #[serde(default)]
    data: Option<Value>,
}

/// `POST /api/events/broadcast`: `{"event_type", "data"}` → an `event`.
pub async fn broadcast_event(
    State(state): State<EdgeState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    request: Result<Json<EventBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    authorize(&state, &query, &headers)?;
    let request = body(request)?;
    let data = object(request.data, "data")?;
    let message = UiMessage {
        r#type: "event".into(),
        event_type: request.event_type,
        overlay_type: String::new(),
        data_json: Value::Object(data).to_string(),
    };
    broadcast(&state, message).await
}

#[derive(Debug, Deserialize)]
pub struct ActionBody {
    action: String,
    #[serde(default)]
    confidence: Option<f64>,
    #[serde(default)]
    metadata: Option<Value>,
}

/// `POST /api/events/broadcast/action`: `{"action", "confidence",
/// "metadata"}` → an `event` whose `event_type` is the action and whose
/// `data` is `{"timestamp", "confidence", "metadata"}`, as seed 003 shows.
pub async fn broadcast_action(
    State(state): State<EdgeState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    request: Result<Json<ActionBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    authorize(&state, &query, &headers)?;
    let request = body(request)?;
    if let Some(confidence) = request.confidence
        && !(0.0..=1.0).contains(&confidence)
    {
        return Err(ClientError::InvalidMessage(
            "confidence must be between 0 and 1".into(),
        ));
    }
    let data = json!({
        "timestamp": switchboard_bus::rfc3339_now(),
        "confidence": request.confidence,
        "metadata": Value::Object(object(request.metadata, "metadata")?),
    });
    let message = UiMessage {
        r#type: "event".into(),
        event_type: request.action,
        overlay_type: String::new(),
        data_json: data.to_string(),
    };
    broadcast(&state, message).await
}

#[derive(Debug, Deserialize)]
pub struct OverlayBody {
    overlay_type: String,
    #[serde(default)]
    data: Option<Value>,
}

/// `POST /api/events/broadcast/overlay`: `{"overlay_type", "data"}`.
pub async fn broadcast_overlay(
    State(state): State<EdgeState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    request: Result<Json<OverlayBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    authorize(&state, &query, &headers)?;
    let request = body(request)?;
    let message = UiMessage {
        r#type: "overlay".into(),
        event_type: String::new(),
        overlay_type: request.overlay_type,
        data_json: Value::Object(object(request.data, "data")?).to_string(),
    };
    broadcast(&state, message).await
}

#[derive(Debug, Deserialize)]
pub struct TelemetryBody {
    #[serde(default)]
    data: Option<Value>,
}

/// `POST /api/events/broadcast/telemetry`: `{"data"}`.
pub async fn broadcast_telemetry(
    State(state): State<EdgeState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    request: Result<Json<TelemetryBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    authorize(&state, &query, &headers)?;
    let request = body(request)?;
    let message = UiMessage {
        r#type: "telemetry".into(),
        event_type: String::new(),
        overlay_type: String::new(),
        data_json: Value::Object(object(request.data, "data")?).to_string(),
    };
    broadcast(&state, message).await
}
