//! `/ws/ui`: seed 003's UI broadcast hub. Every client receives every
//! `event`, `overlay` and `telemetry` message published on any edge (or by
//! another backend through `BroadcastService`), the system's own events
//! (`session_opened`, `step_detected`, `frame_processed`, `alert_raised`,
//! …) as `event` messages, and a `connection` message when it connects.
//!
//! Every message carries its position (`offset`, `epoch`); a client that
//! reconnects resumes with `?epoch=E&offset=N` or a `resume` message and
//! gets what it missed ([`super::resume`]).
//!
//! `POST /api/events/broadcast[/action|/overlay|/telemetry]` take the
//! seed's bodies; when a JWT key is configured they need an admin token
//! (without one, as in the seed, they are open).

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use switchboard_bus::Channel;
use switchboard_bus::hub::{UiMessageKind, ui_message};

use super::resume::Position;
use super::{Delivery, HubPlace, HubsState, error_message};
use crate::caller::AdminWhenConfigured;
use crate::connection::websocket::accept;
use crate::connection::{Conn, Flow, Handler, Inbound, Options, Transport};
use crate::error::ClientError;
use crate::meter::Endpoint;
use crate::times::rfc3339_millis;

pub async fn upgrade(
    State(state): State<HubsState>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let driver = state.driver.clone();
    let resume_from = Position::from_query(&query);
    accept(upgrade, &driver, Endpoint::Ui, Ok(()), move |()| {
        let connection_id = uuid::Uuid::new_v4().to_string();
        let options = Options {
            // An operator may disconnect it (the console), by this id.
            control_id: Some(connection_id.clone()),
            ..Options::new(Endpoint::Ui)
        };
        let place = HubPlace::new(state.bus.history(Channel::Ui), resume_from);
        let handler = UiConnection {
            state,
            connection_id,
            place,
        };
        (options, handler)
    })
}

/// One `/ws/ui` client.
struct UiConnection {
    state: HubsState,
    connection_id: String,
    /// Every `/ws/ui` client may read every hub message.
    place: HubPlace,
}

impl Handler for UiConnection {
    /// A hub message; `None` once the client was dropped for being slow.
    type Event = Option<Delivery>;

    fn error_message(&self, error: &ClientError) -> String {
        error_message(error).to_string()
    }

    async fn open<T: Transport>(&mut self, conn: &mut Conn<'_, T>) -> Flow {
        // Every message after this offset reaches the client live.
        let offset = self.place.join(&self.state.ui_hub, "", &self.connection_id);
        let hello = json!({
            "type": "connection",
            "data": {
                "status": "connected",
                "connection_id": self.connection_id,
                "timestamp": rfc3339_millis(),
            },
            "epoch": self.place.epoch(),
            "offset": offset,
        });
        self.place.welcome(&hello, |_| true, conn).await
    }

    async fn on_message<T: Transport>(
        &mut self,
        message: Inbound<'_>,
        conn: &mut Conn<'_, T>,
    ) -> Result<Flow, ClientError> {
        let Inbound::Text(text) = message else {
            return Ok(Flow::Continue);
        };
        let message: Value = serde_json::from_str(text)
            .map_err(|error| ClientError::InvalidJson(error.to_string()))?;
        match message.get("type").and_then(Value::as_str) {
            Some("ping") => {
                let pong = json!({"type": "pong", "timestamp": rfc3339_millis()});
                Ok(conn.send(&pong).await.into())
            }
            Some("resume") => {
                let from = Position::from_message(&message)?;
                Ok(self.place.resume(&from, |_| true, conn).await)
            }
            Some(other) => Err(ClientError::UnknownAction {
                field: "type",
                action: other.to_owned(),
                expected: "ping, resume",
            }),
            None => Err(ClientError::InvalidMessage(
                "expected {\"type\": \"ping\"} or {\"type\": \"resume\", \"epoch\", \"offset\"}; \
                 the UI hub broadcasts to you"
                    .into(),
            )),
        }
    }

    async fn next_event(&mut self) -> Option<Delivery> {
        self.place.next().await
    }

    async fn on_event<T: Transport>(
        &mut self,
        message: Option<Delivery>,
        conn: &mut Conn<'_, T>,
    ) -> Flow {
        self.place.forward(message, conn).await
    }
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

/// Builds the UI message and publishes it to every edge; `202` with what
/// was sent, `503` if the bus refused it (it was not sent).
async fn broadcast(
    state: &HubsState,
    kind: UiMessageKind<'_>,
    data: Map<String, Value>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    let type_name = match kind {
        UiMessageKind::Event { .. } => "event",
        UiMessageKind::Overlay { .. } => "overlay",
        UiMessageKind::Telemetry => "telemetry",
    };
    super::publish_ui(state, ui_message(kind, data)?).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "broadcast", "type": type_name})),
    ))
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
    State(state): State<HubsState>,
    _admin: AdminWhenConfigured,
    request: Result<Json<EventBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    let request = body(request)?;
    let data = object(request.data, "data")?;
    let kind = UiMessageKind::Event {
        event_type: &request.event_type,
    };
    broadcast(&state, kind, data).await
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
    State(state): State<HubsState>,
    _admin: AdminWhenConfigured,
    request: Result<Json<ActionBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    let request = body(request)?;
    if let Some(confidence) = request.confidence
        && !(0.0..=1.0).contains(&confidence)
    {
        return Err(ClientError::InvalidMessage(
            "confidence must be between 0 and 1".into(),
        ));
    }
    let mut data = Map::new();
    data.insert("timestamp".into(), Value::String(rfc3339_millis()));
    data.insert("confidence".into(), json!(request.confidence));
    data.insert(
        "metadata".into(),
        Value::Object(object(request.metadata, "metadata")?),
    );
    let kind = UiMessageKind::Event {
        event_type: &request.action,
    };
    broadcast(&state, kind, data).await
}

#[derive(Debug, Deserialize)]
pub struct OverlayBody {
    overlay_type: String,
    #[serde(default)]
    data: Option<Value>,
}

/// `POST /api/events/broadcast/overlay`: `{"overlay_type", "data"}`.
pub async fn broadcast_overlay(
    State(state): State<HubsState>,
    _admin: AdminWhenConfigured,
    request: Result<Json<OverlayBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    let request = body(request)?;
    let kind = UiMessageKind::Overlay {
        overlay_type: &request.overlay_type,
    };
    broadcast(&state, kind, object(request.data, "data")?).await
}

#[derive(Debug, Deserialize)]
pub struct TelemetryBody {
    #[serde(default)]
    data: Option<Value>,
}

/// `POST /api/events/broadcast/telemetry`: `{"data"}`.
pub async fn broadcast_telemetry(
    State(state): State<HubsState>,
    _admin: AdminWhenConfigured,
    request: Result<Json<TelemetryBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    let request = body(request)?;
    let data = object(request.data, "data")?;
    broadcast(&state, UiMessageKind::Telemetry, data).await
}
