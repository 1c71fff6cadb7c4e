//! `/api/ws/statistics?token=JWT`: seed 004's authenticated statistics
//! stream.
//!
//! - **Welcome**: `connection_status` with the connection id and the user.
//! - **Broadcasts**: `statistics_update` (one per interval for the whole
//!   cluster, from the statistics service), `camera_event`, `alert`, and
//!   whatever `BroadcastService.BroadcastStream` sends, filtered by the
//!   client's `subscribe` / `unsubscribe` (everything by default); messages
//!   sent to the user or to this connection always arrive.
//! - **Positions and resume**: every broadcast and personal message
//!   carries `offset` and `epoch`; a client that reconnects passes the last
//!   one (`?epoch=E&offset=N`, or a `resume` message) and gets, from the
//!   kept history, the broadcasts its filter admits and the messages sent to
//!   its user or to any connection of its user's, never another user's
//!   ([`super::resume`]).
//! - **Limits**: at most 5 connections per user across the cluster (the
//!   registry refuses the sixth: close 1008), the edge's message size
//!   limit (1009), a per-connection message rate (1008).
//! - **Fallback**: `GET /api/statistics` returns what `statistics_update`
//!   carries; `GET /api/ws/statistics/connections` the connection counts.
//! - **Targeted and broadcast sends** over REST (admin), as gRPC does.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_bus::Channel;
use switchboard_bus::history::Kept;
use switchboard_bus::hub::{StreamAudience, StreamMessage, stream_message_from_value};
use switchboard_proto::v1::{
    GetStatisticsRequest, LimitPolicy, ListSessionsRequest, OpenSessionRequest,
    RecordActivityRequest, SessionControl,
};

use super::resume::Position;
use super::{Delivery, Filter, HubPlace, HubsState, Member, error_message};
use crate::auth::Identity;
use crate::caller::{Admin, Credentials, User};
use crate::connection::websocket::accept;
use crate::connection::{Close, Conn, Flow, Handler, Inbound, Options, Transport};
use crate::error::ClientError;
use crate::meter::Endpoint;
use crate::times::rfc3339_millis;

/// The registry's kind for statistics-stream connections.
pub const KIND: &str = "statistics";

/// How often a connection tells the registry it is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(60);

pub async fn upgrade(
    State(state): State<HubsState>,
    credentials: Credentials,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let driver = state.driver.clone();
    let resume_from = Position::from_query(&query);
    accept(
        upgrade,
        &driver,
        Endpoint::Statistics,
        credentials.user(),
        move |identity| {
            let options = Options {
                rate_limit: Some(state.stream_limits.rate_limit),
                registration: Some(OpenSessionRequest {
                    user_id: identity.user_id.clone(),
                    kind: KIND.to_owned(),
                    max_per_user: state.stream_limits.max_connections,
                    on_limit: LimitPolicy::Refuse as i32,
                    inactivity_timeout_seconds: 3.0 * KEEP_ALIVE.as_secs_f64(),
                    ..Default::default()
                }),
                ..Options::new(Endpoint::Statistics)
            };
            let place = HubPlace::new(state.bus.history(Channel::Stream), resume_from);
            let handler = StatisticsConnection {
                state,
                identity,
                connection_id: String::new(),
                place,
            };
            (options, handler)
        },
    )
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Ping,
    Subscribe {
        event_types: Vec<String>,
    },
    Unsubscribe {
        event_types: Vec<String>,
    },
    #[serde(skip)]
    Resume(Position),
}

fn parse(text: &str) -> Result<ClientMessage, ClientError> {
    let value: Value =
        serde_json::from_str(text).map_err(|error| ClientError::InvalidJson(error.to_string()))?;
    match value.get("type").and_then(Value::as_str) {
        Some("ping" | "subscribe" | "unsubscribe") => serde_json::from_value(value)
            .map_err(|error| ClientError::InvalidMessage(error.to_string())),
        Some("resume") => Ok(ClientMessage::Resume(Position::from_message(&value)?)),
        Some(other) => Err(ClientError::UnknownAction {
            field: "type",
            action: other.to_owned(),
            expected: "ping, subscribe, unsubscribe, resume",
        }),
        None => Err(ClientError::InvalidMessage(
            "expected {\"type\": \"ping\" | \"subscribe\" | \"unsubscribe\" | \"resume\", ...}"
                .into(),
        )),
    }
}

/// Whether a kept message is one `user_id`'s connection, filtering
/// broadcasts by `filter`, may be given on a resume: broadcasts it
/// subscribes to, and what was sent to the user or to one of the user's
/// connections; never another user's.
fn replayable(kept: &Kept, user_id: &str, filter: &Filter) -> bool {
    match StreamAudience::of_subject(&kept.subject) {
        Some(StreamAudience::All) => {
            let kind = switchboard_bus::hub::message_type(&kept.payload).unwrap_or_default();
            filter.admits(&kind)
        }
        Some(audience) => audience.user_id() == Some(user_id),
        None => false,
    }
}

/// One `/api/ws/statistics` connection.
struct StatisticsConnection {
    state: HubsState,
    identity: Identity,
    /// Its registry session's id.
    connection_id: String,
    /// A client may read the broadcasts its filter admits and what was
    /// sent to its user or to it ([`replayable`]).
    place: HubPlace,
}

impl StatisticsConnection {
    async fn resume<T: Transport>(&mut self, from: &Position, conn: &mut Conn<'_, T>) -> Flow {
        let filter = self.place.member().map(Member::filter).unwrap_or_default();
        let user_id = &self.identity.user_id;
        let admits = |kept: &Kept| replayable(kept, user_id, &filter);
        self.place.resume(from, admits, conn).await
    }
}

impl Handler for StatisticsConnection {
    /// A hub message; `None` once the client was dropped for being slow.
    type Event = Option<Delivery>;

    fn error_message(&self, error: &ClientError) -> String {
        error_message(error).to_string()
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(KEEP_ALIVE)
    }

    async fn open<T: Transport>(&mut self, conn: &mut Conn<'_, T>) -> Flow {
        self.connection_id = conn.registration().session().session_id.clone();
        // Every message after this offset reaches the client live.
        let offset = self.place.join(
            &self.state.stream_hub,
            &self.identity.user_id,
            &self.connection_id,
        );
        let hello = json!({
            "type": "connection_status",
            "status": "connected",
            "connection_id": self.connection_id,
            "user": {"id": self.identity.subject, "username": self.identity.username},
            "message": "WebSocket connection established successfully",
            "timestamp": rfc3339_millis(),
            "epoch": self.place.epoch(),
            "offset": offset,
        });
        let user_id = &self.identity.user_id;
        // A new connection's filter admits every type.
        let admits = |kept: &Kept| replayable(kept, user_id, &Filter::default());
        self.place.welcome(&hello, admits, conn).await
    }

    async fn on_message<T: Transport>(
        &mut self,
        message: Inbound<'_>,
        conn: &mut Conn<'_, T>,
    ) -> Result<Flow, ClientError> {
        let Inbound::Text(text) = message else {
            return Ok(Flow::Continue);
        };
        let Some(member) = self.place.member() else {
            return Ok(Flow::Continue);
        };
        let reply = match parse(text)? {
            ClientMessage::Resume(from) => return Ok(self.resume(&from, conn).await),
            ClientMessage::Ping => json!({"type": "pong", "timestamp": rfc3339_millis()}),
            ClientMessage::Subscribe { event_types } => {
                let now = member.update_filter(|filter| filter.subscribe(&event_types));
                json!({"type": "subscription_updated", "event_types": now})
            }
            ClientMessage::Unsubscribe { event_types } => {
                let now = member.update_filter(|filter| filter.unsubscribe(&event_types));
                json!({"type": "subscription_updated", "event_types": now})
            }
        };
        Ok(conn.send(&reply).await.into())
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

    async fn on_tick<T: Transport>(&mut self, _conn: &mut Conn<'_, T>) -> Flow {
        let alive = RecordActivityRequest {
            session_id: self.connection_id.clone(),
            ..Default::default()
        };
        if let Err(status) = self.state.sessions.clone().record_activity(alive).await {
            tracing::debug!(code = ?status.code(), "statistics keep-alive failed");
        }
        Flow::Continue
    }

    async fn on_control<T: Transport>(
        &mut self,
        _control: SessionControl,
        _conn: &mut Conn<'_, T>,
    ) -> Close {
        Close::Done("connection ended by the server".into())
    }

    async fn finish(&mut self) -> crate::connection::Unreported {
        // Leave the hub before the registry forgets the connection.
        self.place.leave();
        crate::connection::Unreported::default()
    }
}

/// `GET /api/statistics`: the polling fallback, same token as the stream;
/// the body is what `statistics_update.data` carries.
pub async fn current(State(state): State<HubsState>, _user: User) -> Result<Response, ClientError> {
    let snapshot = state
        .statistics
        .clone()
        .get_statistics(GetStatisticsRequest {})
        .await
        .map_err(|status| ClientError::from_status("statistics", status))?
        .into_inner();
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        snapshot.data_json,
    )
        .into_response())
}

/// `GET /api/ws/statistics/connections` (admin): seed 004's
/// `get_statistics()` of the connection manager, cluster-wide.
pub async fn connections(
    State(state): State<HubsState>,
    _admin: Admin,
) -> Result<Json<Value>, ClientError> {
    let sessions = state
        .sessions
        .clone()
        .list_sessions(ListSessionsRequest {
            kind: KIND.to_owned(),
            user_id: String::new(),
        })
        .await
        .map_err(|status| ClientError::from_status("session", status))?
        .into_inner()
        .sessions;
    let mut by_user = std::collections::BTreeMap::<String, u64>::new();
    for session in &sessions {
        *by_user.entry(session.user_id.clone()).or_default() += 1;
    }
    Ok(Json(json!({
        "total_connections": sessions.len(),
        "total_users": by_user.len(),
        "connections_by_user": by_user,
    })))
}

fn message(body: Result<Json<Value>, JsonRejection>) -> Result<StreamMessage, ClientError> {
    let Json(message) =
        body.map_err(|rejection| ClientError::InvalidMessage(rejection.body_text()))?;
    Ok(stream_message_from_value(message)?)
}

fn sent() -> (StatusCode, Json<Value>) {
    (StatusCode::ACCEPTED, Json(json!({"status": "sent"})))
}

/// `POST /api/ws/statistics/broadcast` (admin): a message (with its
/// `type`, e.g. `camera_event` or `alert`) to every subscribed client.
pub async fn broadcast(
    State(state): State<HubsState>,
    _admin: Admin,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    let message = message(body)?;
    super::publish_stream(&state, &StreamAudience::All, message).await?;
    Ok(sent())
}

/// `POST /api/ws/statistics/users/{user_id}/messages` (admin): seed 004's
/// `broadcast_to_user`, on every edge.
pub async fn to_user(
    State(state): State<HubsState>,
    _admin: Admin,
    Path(user_id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    let audience = StreamAudience::user(&user_id)?;
    let message = message(body)?;
    super::publish_stream(&state, &audience, message).await?;
    Ok(sent())
}

/// `POST /api/ws/statistics/connections/{connection_id}/messages` (admin):
/// seed 004's `send_personal_message`, on whichever edge holds it.
pub async fn to_connection(
    State(state): State<HubsState>,
    _admin: Admin,
    Path(connection_id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    let audience = StreamAudience::connection(&connection_id)?;
    let message = message(body)?;
    // Whose connection it is, so the message is kept for that user's
    // resumes; one the registry does not know still gets it live.
    let request = switchboard_proto::v1::GetSessionRequest {
        session_id: connection_id.clone(),
    };
    let audience = match state.sessions.clone().get_session(request).await {
        Ok(session) => audience.of_user(&session.into_inner().user_id),
        Err(_) => audience,
    };
    super::publish_stream(&state, &audience, message).await?;
    Ok(sent())
}
