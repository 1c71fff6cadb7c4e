//! `/ws/alerts/{user_id}?token=…`: seed 002's persistent per-user alert
//! connection.
//!
//! - **Authentication**: a JWT whose `sub` is `{user_id}` (or an admin's);
//!   anything else is closed with 1008 and the reason.
//! - **One connection per user, cluster-wide**: the socket is registered in
//!   the session registry as a session of kind `alerts` with a limit of one
//!   per user; a newer connection, on any edge, ends the older one, which
//!   gets `connection_replaced` and close 1000.
//! - **Heartbeat**: the server sends `ping` every interval (30 s); a client
//!   `ping` gets `pong`. A `ping` or `pong` from the client is a heartbeat;
//!   with none for the timeout (60 s) the socket is closed (1001) and
//!   removed from the registry, which also sweeps it if this edge dies.
//! - **Alerts**: the user's mailbox is read from the bus, backlog first, so
//!   alerts raised while the user was away, or delivered but never
//!   acknowledged, arrive on connecting; each is `anomaly_detected`. `ack`
//!   removes it (via the detection service); an unknown id is an `error`.
//! - **Floods**: more than the configured messages per second closes the
//!   socket with 1008.

pub mod rest;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_bus::MailboxReader;
use switchboard_proto::trace::received;
use switchboard_proto::v1::session_control::Kind as ControlKind;
use switchboard_proto::v1::{
    AckAlertRequest, Alert, CloseSessionRequest, LimitPolicy, OpenSessionRequest,
    RecordActivityRequest, SessionControl,
};
use tracing::Instrument;

use crate::EdgeState;
use crate::auth::AuthError;
use crate::error::ClientError;
use crate::socket::{Next, RESTART_REASON, close, close_code, is_too_big, send_json, timestamp};

/// The registry's kind for alert connections.
pub const KIND: &str = "alerts";

/// Heartbeats are reported to the registry at most this often (and at
/// least four times per heartbeat timeout).
const MAX_HEARTBEAT_REPORT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
}

pub async fn upgrade(
    State(state): State<EdgeState>,
    Path(user_id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let token = crate::auth::token_from(query.token.as_deref(), &headers);
    state
        .configure(upgrade)
        .on_upgrade(move |socket| run(socket, state, user_id, token))
}

/// Server → client messages of this endpoint.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Outbound<'a> {
    /// Addition: sent once the connection is registered.
    Connected {
        user_id: &'a str,
        connection_id: &'a str,
        heartbeat_interval: f64,
        heartbeat_timeout: f64,
        pending_alerts: u64,
        timestamp: String,
    },
    Ping {
        timestamp: String,
    },
    Pong {
        timestamp: String,
    },
    AnomalyDetected {
        alert_id: &'a str,
        user_id: &'a str,
        stream_id: &'a str,
        anomaly_type: &'a str,
        severity: &'a str,
        detection_result: Value,
        source: &'a str,
        raised_at: f64,
        timestamp: String,
    },
    /// Addition: an `ack` was applied.
    AckConfirmed {
        alert_id: &'a str,
        timestamp: String,
    },
    /// Addition: a newer connection of this user took over.
    ConnectionReplaced {
        message: &'a str,
        timestamp: String,
    },
    Error {
        code: &'static str,
        message: String,
        timestamp: String,
    },
}

/// Client → server messages.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Inbound {
    Ping,
    Pong,
    Ack { alert_id: String },
}

fn parse(text: &str) -> Result<Inbound, ClientError> {
    let value: Value =
        serde_json::from_str(text).map_err(|error| ClientError::InvalidJson(error.to_string()))?;
    let kind = value.get("type").and_then(Value::as_str).ok_or_else(|| {
        ClientError::InvalidMessage(
            "expected {\"type\": \"ping\" | \"pong\" | \"ack\", ...}".into(),
        )
    })?;
    if !matches!(kind, "ping" | "pong" | "ack") {
        return Err(ClientError::UnknownAction {
            field: "type",
            action: kind.to_owned(),
            expected: "ping, pong, ack",
        });
    }
    serde_json::from_value(value).map_err(|error| ClientError::InvalidMessage(error.to_string()))
}

fn error_message(error: &ClientError) -> Outbound<'static> {
    Outbound::Error {
        code: error.report(),
        message: error.to_string(),
        timestamp: timestamp(),
    }
}

async fn refuse(mut socket: WebSocket, reason: &AuthError) {
    tracing::info!(%reason, "alerts connection refused");
    close(&mut socket, close_code::POLICY, &reason.to_string()).await;
}

/// One alerts connection.
struct AlertsConnection {
    state: EdgeState,
    socket: WebSocket,
    user_id: String,
    connection_id: String,
    /// Whether the registry still holds this connection.
    registered: bool,
    last_heartbeat: Instant,
    last_reported: Instant,
    heartbeat_unreported: bool,
    limiter: DefaultDirectRateLimiter,
}

async fn run(socket: WebSocket, state: EdgeState, user_id: String, token: Option<String>) {
    let identity = match token.as_deref() {
        None => Err(AuthError::Missing),
        Some(token) => state.authenticate(token),
    };
    let identity =
        match identity.and_then(|identity| identity.require_user(&user_id).map(|()| identity)) {
            Ok(identity) => identity,
            Err(reason) => return refuse(socket, &reason).await,
        };
    let settings = state.settings();
    let interval = settings.heartbeat_interval();
    let timeout = settings.heartbeat_timeout();
    let opened = state
        .backends()
        .session
        .clone()
        .open_session(OpenSessionRequest {
            user_id: user_id.clone(),
            kind: KIND.to_owned(),
            edge_id: state.edge_id().to_owned(),
            max_per_user: 1,
            on_limit: LimitPolicy::ReplaceOldest as i32,
            // The edge enforces the heartbeat timeout; the registry only
            // sweeps what a dead edge left behind, so it waits twice as long.
            inactivity_timeout_seconds: 2.0 * timeout.as_secs_f64(),
        })
        .await;
    let mut socket = socket;
    let registration = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let error = ClientError::from_status("session", status);
            let _ = send_json(&mut socket, &error_message(&error)).await;
            close(
                &mut socket,
                close_code::TRY_AGAIN_LATER,
                "session service unavailable",
            )
            .await;
            return;
        }
    };
    tracing::info!(user = %identity.user_id, connection_id = %registration.session_id, "alerts connection opened");
    let (_held, control) = state.sockets().hold(&registration.session_id);
    let _connected = state.meter().connect(crate::meter::Endpoint::Alerts);
    let rate = NonZeroU32::new(settings.alerts_rate_limit.max(1)).expect("at least 1");
    let burst =
        NonZeroU32::new(settings.alerts_rate_limit.max(1).saturating_mul(2)).expect("at least 1");
    let mut connection = AlertsConnection {
        socket,
        user_id,
        connection_id: registration.session_id,
        registered: true,
        last_heartbeat: Instant::now(),
        last_reported: Instant::now(),
        heartbeat_unreported: false,
        limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
        state,
    };
    match connection
        .state
        .alerts_mailbox()
        .read(&connection.user_id)
        .await
    {
        Ok(reader) => connection.serve(reader, control, interval, timeout).await,
        Err(error) => {
            tracing::warn!(%error, "cannot read the alerts mailbox");
            let error = ClientError::Unavailable {
                service: "alerts",
                detail: error.to_string(),
            };
            let _ = send_json(&mut connection.socket, &error_message(&error)).await;
            close(
                &mut connection.socket,
                close_code::TRY_AGAIN_LATER,
                "alerts unavailable",
            )
            .await;
        }
    }
    connection.finish().await;
}

impl AlertsConnection {
    async fn serve(
        &mut self,
        mut alerts: MailboxReader,
        mut control: tokio::sync::oneshot::Receiver<SessionControl>,
        interval: Duration,
        timeout: Duration,
    ) {
        let welcome = Outbound::Connected {
            user_id: &self.user_id,
            connection_id: &self.connection_id,
            heartbeat_interval: interval.as_secs_f64(),
            heartbeat_timeout: timeout.as_secs_f64(),
            pending_alerts: alerts.backlog(),
            timestamp: timestamp(),
        };
        if send_json(&mut self.socket, &welcome).await.is_err() {
            return;
        }
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = self.state.draining();
        loop {
            let next = tokio::select! {
                () = draining.started() => Next::Close(close_code::SERVICE_RESTART, RESTART_REASON.to_owned()),
                message = self.socket.recv() => match message {
                    Some(Ok(message)) => self.on_message(message).await,
                    Some(Err(error)) if is_too_big(&error) => crate::socket::too_big(self.state.settings().max_message_bytes),
                    Some(Err(_)) | None => return,
                },
                letter = alerts.next() => match letter {
                    Ok(Some(letter)) => {
                        let span = received(&letter.trace, || {
                            tracing::info_span!("alert.deliver", alert_id = %letter.id, trace_id = tracing::field::Empty)
                        });
                        self.deliver(&letter.payload).instrument(span).await
                    }
                    Ok(None) => Next::Close(close_code::TRY_AGAIN_LATER, "alerts unavailable".into()),
                    Err(error) => {
                        tracing::warn!(%error, "alerts mailbox failed");
                        Next::Close(close_code::TRY_AGAIN_LATER, "alerts unavailable".into())
                    }
                },
                Ok(control) = &mut control => self.on_control(control).await,
                _ = ticks.tick() => self.on_tick(timeout).await,
            };
            if let Next::Close(code, reason) = next {
                close(&mut self.socket, code, &reason).await;
                return;
            }
        }
    }

    async fn send(&mut self, message: &Outbound<'_>) -> Next {
        self.state.meter().sent();
        match send_json(&mut self.socket, message).await {
            Ok(()) => Next::Continue,
            Err(_) => Next::Close(close_code::GOING_AWAY, String::new()),
        }
    }

    async fn on_message(&mut self, message: Message) -> Next {
        self.state.meter().received();
        if self.limiter.check().is_err() {
            tracing::info!(user = %self.user_id, "alerts connection over its rate limit");
            return Next::Close(
                close_code::POLICY,
                format!(
                    "rate limit exceeded: at most {} messages per second",
                    self.state.settings().alerts_rate_limit
                ),
            );
        }
        let text = match message {
            Message::Text(text) => text,
            Message::Ping(_) | Message::Pong(_) => return self.heartbeat().await,
            Message::Binary(_) => {
                return self.send(&error_message(&ClientError::BinaryMessage)).await;
            }
            Message::Close(_) => return Next::Close(close_code::NORMAL, String::new()),
        };
        match parse(text.as_str()) {
            Ok(Inbound::Ping) => {
                if let Next::Close(code, reason) = self.heartbeat().await {
                    return Next::Close(code, reason);
                }
                self.send(&Outbound::Pong {
                    timestamp: timestamp(),
                })
                .await
            }
            Ok(Inbound::Pong) => self.heartbeat().await,
            Ok(Inbound::Ack { alert_id }) => self.ack(&alert_id).await,
            Err(error) => self.send(&error_message(&error)).await,
        }
    }

    /// Notes a heartbeat; tells the registry at most once a second.
    async fn heartbeat(&mut self) -> Next {
        self.last_heartbeat = Instant::now();
        self.heartbeat_unreported = true;
        let report_every =
            MAX_HEARTBEAT_REPORT_INTERVAL.min(self.state.settings().heartbeat_timeout() / 4);
        if self.last_reported.elapsed() >= report_every {
            return self.report_heartbeat().await;
        }
        Next::Continue
    }

    async fn report_heartbeat(&mut self) -> Next {
        if !self.registered || !self.heartbeat_unreported {
            return Next::Continue;
        }
        self.last_reported = Instant::now();
        let reported = self
            .state
            .backends()
            .session
            .clone()
            .record_activity(RecordActivityRequest {
                session_id: self.connection_id.clone(),
                requests: 1,
                ..Default::default()
            })
            .await;
        match reported {
            Ok(_) => {
                self.heartbeat_unreported = false;
                Next::Continue
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                self.registered = false;
                Next::Close(close_code::NORMAL, "connection no longer registered".into())
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "heartbeat report failed");
                Next::Continue
            }
        }
    }

    async fn on_tick(&mut self, timeout: Duration) -> Next {
        if self.last_heartbeat.elapsed() > timeout {
            tracing::info!(user = %self.user_id, "alerts connection missed its heartbeat");
            return Next::Close(
                close_code::GOING_AWAY,
                format!("no heartbeat for {} seconds", timeout.as_secs_f64()),
            );
        }
        if let Next::Close(code, reason) = self.report_heartbeat().await {
            return Next::Close(code, reason);
        }
        self.send(&Outbound::Ping {
            timestamp: timestamp(),
        })
        .await
    }

    async fn deliver(&mut self, payload: &[u8]) -> Next {
        let alert = match Alert::decode(payload) {
            Ok(alert) => alert,
            Err(error) => {
                tracing::error!(%error, "undecodable alert in the mailbox");
                return Next::Continue;
            }
        };
        let detection_result = serde_json::from_str(&alert.detection_result_json)
            .unwrap_or(Value::Object(Default::default()));
        let message = Outbound::AnomalyDetected {
            alert_id: &alert.alert_id,
            user_id: &alert.user_id,
            stream_id: &alert.stream_id,
            anomaly_type: &alert.anomaly_type,
            severity: &alert.severity,
            detection_result,
            source: &alert.source,
            raised_at: alert.raised_at,
            timestamp: timestamp(),
        };
        self.send(&message).await
    }

    async fn ack(&mut self, alert_id: &str) -> Next {
        let acked = self
            .state
            .backends()
            .detection
            .clone()
            .ack_alert(AckAlertRequest {
                user_id: self.user_id.clone(),
                alert_id: alert_id.to_owned(),
            })
            .await;
        match acked {
            Ok(_) => {
                let message = Outbound::AckConfirmed {
                    alert_id,
                    timestamp: timestamp(),
                };
                self.send(&message).await
            }
            Err(status) => {
                let error = ClientError::from_status("detection", status);
                self.send(&error_message(&error)).await
            }
        }
    }

    async fn on_control(&mut self, control: SessionControl) -> Next {
        self.registered = false;
        match control.kind() {
            ControlKind::Replaced => {
                let message = "Replaced by a newer connection of the same user";
                let _ = self
                    .send(&Outbound::ConnectionReplaced {
                        message,
                        timestamp: timestamp(),
                    })
                    .await;
                Next::Close(close_code::NORMAL, "replaced by a newer connection".into())
            }
            ControlKind::TimedOut => Next::Close(close_code::GOING_AWAY, "no heartbeat".into()),
            ControlKind::Terminated | ControlKind::Unspecified => Next::Close(
                close_code::NORMAL,
                format!("terminated: {}", control.reason),
            ),
        }
    }

    /// Removes the connection from the registry, unless the cluster already
    /// did (replaced, swept).
    async fn finish(self) {
        if !self.registered {
            return;
        }
        let closed = self
            .state
            .backends()
            .session
            .clone()
            .close_session(CloseSessionRequest {
                session_id: self.connection_id.clone(),
                ..Default::default()
            })
            .await;
        if let Err(status) = closed
            && status.code() != tonic::Code::NotFound
        {
            tracing::warn!(code = ?status.code(), "could not unregister alerts connection; the sweep will");
        }
        tracing::info!(connection_id = %self.connection_id, "alerts connection closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_or_say_why_not() {
        assert!(matches!(parse(r#"{"type":"ping"}"#), Ok(Inbound::Ping)));
        assert!(matches!(parse(r#"{"type":"pong"}"#), Ok(Inbound::Pong)));
        assert!(
            matches!(parse(r#"{"type":"ack","alert_id":"a1"}"#), Ok(Inbound::Ack { alert_id }) if alert_id == "a1")
        );
        assert!(matches!(parse("ack"), Err(ClientError::InvalidJson(_))));
        let missing = parse(r#"{"type":"ack"}"#).unwrap_err().to_string();
        assert!(missing.contains("alert_id"), "{missing}");
        let unknown = parse(r#"{"type":"dance"}"#).unwrap_err().to_string();
        assert_eq!(
            unknown,
            "unknown type \"dance\"; expected one of: ping, pong, ack"
        );
        assert!(parse(r#"{"hello":1}"#).is_err());
    }
}
