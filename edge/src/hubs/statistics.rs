//! `/api/ws/statistics?token=JWT`: seed 004's authenticated statistics
//! stream.
//!
//! - **Welcome**: `connection_status` with the connection id and the user.
//! - **Broadcasts**: `statistics_update` (one per interval for the whole
//!   cluster, from the statistics service), `camera_event`, `alert`, and
//!   whatever `BroadcastService.BroadcastStream` sends, filtered by the
//!   client's `subscribe` / `unsubscribe` (everything by default); messages
//!   sent to the user or to this connection always arrive.
//! - **Limits**: at most 5 connections per user across the cluster (the
//!   registry refuses the sixth: close 1008), the edge's message size
//!   limit (1009), a per-connection message rate (1008).
//! - **Fallback**: `GET /api/statistics` returns what `statistics_update`
//!   carries; `GET /api/ws/statistics/connections` the connection counts.
//! - **Targeted and broadcast sends** over REST (admin), as gRPC does.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::{Quota, RateLimiter};
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_proto::v1::{
    CloseSessionRequest, GetStatisticsRequest, LimitPolicy, ListSessionsRequest,
    OpenSessionRequest, RecordActivityRequest, StreamMessage, TargetedMessage,
};

use super::{error_message, send_shared};
use crate::EdgeState;
use crate::alerts::TokenQuery;
use crate::auth::{Admin, AuthError};
use crate::error::ClientError;
use crate::meter::Endpoint;
use crate::socket::{RESTART_REASON, close, close_code, is_too_big, send_json};

/// The registry's kind for statistics-stream connections.
pub const KIND: &str = "statistics";

/// How often a connection tells the registry it is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(60);

pub async fn upgrade(
    State(state): State<EdgeState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let token = crate::auth::token_from(query.token.as_deref(), &headers);
    state
        .configure(upgrade)
        .on_upgrade(move |socket| run(socket, state, token))
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Inbound {
    Ping,
    Subscribe { event_types: Vec<String> },
    Unsubscribe { event_types: Vec<String> },
}

fn parse(text: &str) -> Result<Inbound, ClientError> {
    let value: Value =
        serde_json::from_str(text).map_err(|error| ClientError::InvalidJson(error.to_string()))?;
    match value.get("type").and_then(Value::as_str) {
        Some("ping" | "subscribe" | "unsubscribe") => serde_json::from_value(value)
            .map_err(|error| ClientError::InvalidMessage(error.to_string())),
        Some(other) => Err(ClientError::UnknownAction {
            field: "type",
            action: other.to_owned(),
            expected: "ping, subscribe, unsubscribe",
        }),
        None => Err(ClientError::InvalidMessage(
            "expected {\"type\": \"ping\" | \"subscribe\" | \"unsubscribe\", ...}".into(),
        )),
    }
}

async fn run(mut socket: WebSocket, state: EdgeState, token: Option<String>) {
    let identity = match token
        .as_deref()
        .ok_or(AuthError::Missing)
        .and_then(|token| state.authenticate(token))
    {
        Ok(identity) => identity,
        Err(reason) => {
            tracing::info!(%reason, "statistics connection refused");
            return close(&mut socket, close_code::POLICY, &reason.to_string()).await;
        }
    };
    let limit = state.settings().statistics_max_connections;
    let opened = state
        .backends()
        .session
        .clone()
        .open_session(OpenSessionRequest {
            user_id: identity.user_id.clone(),
            kind: KIND.to_owned(),
            edge_id: state.edge_id().to_owned(),
            max_per_user: limit,
            on_limit: LimitPolicy::Refuse as i32,
            inactivity_timeout_seconds: 3.0 * KEEP_ALIVE.as_secs_f64(),
        })
        .await;
    let connection_id = match opened {
        Ok(session) => session.into_inner().session_id,
        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
            let reason = format!("connection limit reached: at most {limit} connections per user");
            tracing::info!(user = %identity.user_id, "statistics connection over the per-user limit");
            return close(&mut socket, close_code::POLICY, &reason).await;
        }
        Err(status) => {
            let error = ClientError::from_status("session", status);
            let _ = send_json(&mut socket, &error_message(&error)).await;
            return close(
                &mut socket,
                close_code::TRY_AGAIN_LATER,
                "session service unavailable",
            )
            .await;
        }
    };
    let _connected = state.meter().connect(Endpoint::Statistics);
    let (_held, mut control) = state.sockets().hold(&connection_id);
    let (member, mut messages) = state.stream_hub().join(&identity.user_id, &connection_id);
    let welcome = json!({
        "type": "connection_status",
        "status": "connected",
        "connection_id": connection_id,
        "user": {"id": identity.subject, "username": identity.username},
        "message": "WebSocket connection established successfully",
        "timestamp": switchboard_bus::rfc3339_now(),
    });
    let rate = state.settings().statistics_rate_limit.max(1);
    let limiter = RateLimiter::direct(
        Quota::per_second(NonZeroU32::new(rate).expect("at least 1"))
            .allow_burst(NonZeroU32::new(rate.saturating_mul(2)).expect("at least 1")),
    );
    let mut keep_alive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    let mut registered = true;
    let mut draining = state.draining();
    let welcomed = send_json(&mut socket, &welcome).await;
    drop(welcome);
    if welcomed.is_ok() {
        loop {
            let reply = tokio::select! {
                () = draining.started() => {
                    close(&mut socket, close_code::SERVICE_RESTART, RESTART_REASON).await;
                    break;
                }
                message = messages.recv() => match message {
                    Some(payload) => {
                        if !send_shared(&mut socket, payload).await {
                            break;
                        }
                        state.meter().sent();
                        continue;
                    }
                    None => {
                        let reason = format!("too slow: more than {} messages unread", super::CLIENT_QUEUE);
                        close(&mut socket, close_code::POLICY, &reason).await;
                        break;
                    }
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        state.meter().received();
                        if limiter.check().is_err() {
                            let reason = format!("rate limit exceeded: at most {rate} messages per second");
                            close(&mut socket, close_code::POLICY, &reason).await;
                            break;
                        }
                        match parse(text.as_str()) {
                            Ok(Inbound::Ping) => json!({"type": "pong", "timestamp": switchboard_bus::rfc3339_now()}),
                            Ok(Inbound::Subscribe { event_types }) => {
                                let now = member.update_filter(|filter| filter.subscribe(&event_types));
                                json!({"type": "subscription_updated", "event_types": now})
                            }
                            Ok(Inbound::Unsubscribe { event_types }) => {
                                let now = member.update_filter(|filter| filter.unsubscribe(&event_types));
                                json!({"type": "subscription_updated", "event_types": now})
                            }
                            Err(error) => error_message(&error),
                        }
                    }
                    Some(Ok(Message::Binary(_))) => error_message(&ClientError::BinaryMessage),
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => continue,
                    Some(Err(error)) if is_too_big(&error) => {
                        let reason = format!("message too big: the limit is {} bytes", state.settings().max_message_bytes);
                        close(&mut socket, close_code::TOO_BIG, &reason).await;
                        break;
                    }
                    Some(Err(_)) => break,
                },
                Ok(_) = &mut control => {
                    registered = false;
                    close(&mut socket, close_code::NORMAL, "connection ended by the server").await;
                    break;
                }
                _ = keep_alive.tick() => {
                    let alive = RecordActivityRequest { session_id: connection_id.clone(), ..Default::default() };
                    if let Err(status) = state.backends().session.clone().record_activity(alive).await {
                        tracing::debug!(code = ?status.code(), "statistics keep-alive failed");
                    }
                    continue;
                }
            };
            if send_json(&mut socket, &reply).await.is_err() {
                break;
            }
            state.meter().sent();
        }
    }
    drop(member);
    if registered {
        let closed = CloseSessionRequest {
            session_id: connection_id,
            ..Default::default()
        };
        if let Err(status) = state.backends().session.clone().close_session(closed).await {
            tracing::debug!(code = ?status.code(), "statistics connection not unregistered; the sweep will");
        }
    }
}

/// `GET /api/statistics`: the polling fallback, same token as the stream;
/// the body is what `statistics_update.data` carries.
pub async fn current(
    State(state): State<EdgeState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ClientError> {
    let token = crate::auth::token_from(query.token.as_deref(), &headers)
        .ok_or(ClientError::Unauthorized(AuthError::Missing))?;
    state
        .authenticate(&token)
        .map_err(ClientError::Unauthorized)?;
    let snapshot = state
        .backends()
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
    State(state): State<EdgeState>,
    _admin: Admin,
) -> Result<Json<Value>, ClientError> {
    let sessions = state
        .backends()
        .session
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

fn message_json(body: Result<Json<Value>, JsonRejection>) -> Result<String, ClientError> {
    let Json(message) =
        body.map_err(|rejection| ClientError::InvalidMessage(rejection.body_text()))?;
    Ok(message.to_string())
}

fn sent() -> (StatusCode, Json<Value>) {
    (StatusCode::ACCEPTED, Json(json!({"status": "sent"})))
}

/// `POST /api/ws/statistics/broadcast` (admin): a message (with its
/// `type`, e.g. `camera_event` or `alert`) to every subscribed client.
pub async fn broadcast(
    State(state): State<EdgeState>,
    _admin: Admin,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    let request = StreamMessage {
        message_json: message_json(body)?,
    };
    state
        .backends()
        .broadcast
        .clone()
        .broadcast_stream(request)
        .await
        .map_err(|status| ClientError::from_status("statistics", status))?;
    Ok(sent())
}

/// `POST /api/ws/statistics/users/{user_id}/messages` (admin): seed 004's
/// `broadcast_to_user`, on every edge.
pub async fn to_user(
    State(state): State<EdgeState>,
    _admin: Admin,
    Path(user_id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    let request = TargetedMessage {
        target: user_id,
        message_json: message_json(body)?,
    };
    state
        .backends()
        .broadcast
        .clone()
        .send_to_user(request)
        .await
        .map_err(|status| ClientError::from_status("statistics", status))?;
    Ok(sent())
}

/// `POST /api/ws/statistics/connections/{connection_id}/messages` (admin):
/// seed 004's `send_personal_message`, on whichever edge holds it.
pub async fn to_connection(
    State(state): State<EdgeState>,
    _admin: Admin,
    Path(connection_id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ClientError> {
    let request = TargetedMessage {
        target: connection_id,
        message_json: message_json(body)?,
    };
    state
        .backends()
        .broadcast
        .clone()
        .send_to_connection(request)
        .await
        .map_err(|status| ClientError::from_status("statistics", status))?;
    Ok(sent())
}
