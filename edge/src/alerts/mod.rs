//! `/ws/alerts/{user_id}?token=…`: seed 002's persistent per-user alert
//! connection, and its admin routes ([`rest`]).
//!
//! - **Authentication**: a JWT whose `sub` is `{user_id}` (or an admin's);
//!   anything else is closed with 1008 and the reason.
//! - **One connection per user, cluster-wide**: the socket is a registry
//!   session of kind `alerts` with a limit of one per user; a newer
//!   connection, on any edge, ends the older one, which gets
//!   `connection_replaced` and close 1000.
//! - **Heartbeat**: the server sends `ping` every interval (30 s); a client
//!   `ping` gets `pong`. Anything the client sends proves it alive (a `ping`
//!   or `pong`, JSON or protocol-level, an `ack`); with nothing for the
//!   timeout (60 s) the socket is closed (1001) and removed from the
//!   registry, which also sweeps it if this edge dies.
//! - **Alerts**: the user's mailbox is read from the bus, backlog first, so
//!   alerts raised while the user was away, or delivered but never
//!   acknowledged, arrive on connecting; each is `anomaly_detected`. `ack`
//!   removes it (via the detection service); an unknown id is an `error`.
//! - **Floods**: more than the configured messages per second closes the
//!   socket with 1008 (protocol-level pings do not count).

pub mod rest;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRef, Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_bus::{Letter, Mailbox, MailboxReader};
use switchboard_proto::trace::received;
use switchboard_proto::v1::detection_service_client::DetectionServiceClient;
use switchboard_proto::v1::session_control::Kind as ControlKind;
use switchboard_proto::v1::session_service_client::SessionServiceClient;
use switchboard_proto::v1::{
    AckAlertRequest, Alert, LimitPolicy, OpenSessionRequest, RecordActivityRequest, SessionControl,
};
use tracing::Instrument;

use crate::caller::{Credentials, Identities};
use crate::connection::websocket::accept;
use crate::connection::{Close, Conn, Driver, Flow, Handler, Inbound, Options, Transport};
use crate::error::ClientError;
use crate::meter::Endpoint;
use crate::settings::{HeartbeatSettings, TimedChannel};
use crate::times::unix_seconds_text as timestamp;

/// The registry's kind for alert connections.
pub const KIND: &str = "alerts";

/// Heartbeats are reported to the registry at most this often (and at
/// least four times per heartbeat timeout).
const MAX_HEARTBEAT_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// What the alerts endpoint and its routes need.
#[derive(Clone, Debug)]
pub struct AlertsState {
    pub driver: Driver,
    pub identities: Identities,
    pub sessions: SessionServiceClient<TimedChannel>,
    /// Raises and acknowledges alerts.
    pub detection: DetectionServiceClient<TimedChannel>,
    /// Where users' alerts wait; read for the sockets held here.
    pub mailbox: Mailbox,
    pub heartbeat: HeartbeatSettings,
    /// Messages per second one connection may send.
    pub rate_limit: u32,
}

impl FromRef<AlertsState> for Identities {
    fn from_ref(state: &AlertsState) -> Self {
        state.identities.clone()
    }
}

/// `/ws/alerts/{user_id}` and seed 002's monitoring routes.
pub fn router(state: AlertsState) -> Router {
    Router::new()
        .route("/ws/alerts/{user_id}", get(upgrade))
        .route("/ws/connections", get(rest::list_connections))
        .route("/ws/connections/{user_id}", get(rest::user_connection))
        .route("/api/alerts", post(rest::raise_alert))
        .route("/api/alerts/{user_id}", get(rest::pending_alerts))
        .with_state(state)
}

async fn upgrade(
    State(state): State<AlertsState>,
    Path(user_id): Path<String>,
    credentials: Credentials,
    upgrade: WebSocketUpgrade,
) -> Response {
    let driver = state.driver.clone();
    let identity = credentials.user_named(&user_id);
    accept(upgrade, &driver, Endpoint::Alerts, identity, move |_| {
        let timeout = state.heartbeat.timeout();
        let options = Options {
            rate_limit: Some(state.rate_limit),
            liveness: Some(timeout),
            registration: Some(OpenSessionRequest {
                user_id: user_id.clone(),
                kind: KIND.to_owned(),
                max_per_user: 1,
                on_limit: LimitPolicy::ReplaceOldest as i32,
                // The edge enforces the heartbeat timeout; the registry only
                // sweeps what a dead edge left behind, so it waits twice as
                // long.
                inactivity_timeout_seconds: 2.0 * timeout.as_secs_f64(),
                ..Default::default()
            }),
            ..Options::new(Endpoint::Alerts)
        };
        let handler = AlertsConnection {
            state,
            user_id,
            connection_id: String::new(),
            alerts: None,
            awaiting_ack: HashSet::new(),
            last_reported: Instant::now(),
            heartbeat_unreported: false,
        };
        (options, handler)
    })
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
enum ClientMessage {
    Ping,
    Pong,
    Ack { alert_id: String },
}

fn parse(text: &str) -> Result<ClientMessage, ClientError> {
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

/// One alerts connection.
struct AlertsConnection {
    state: AlertsState,
    user_id: String,
    /// Its registry session's id.
    connection_id: String,
    /// The user's mailbox, once open.
    alerts: Option<MailboxReader>,
    /// Alerts sent to the client and not acked on it yet (at most
    /// [`MAX_AWAITING_ACK`]): their acks are not held to the rate limit, so
    /// a client acking a backlog as it arrives is not taken for a flood.
    awaiting_ack: HashSet<String>,
    last_reported: Instant,
    heartbeat_unreported: bool,
}

/// Most alerts one connection remembers as awaiting their ack; acks of
/// alerts past it count toward the rate limit like any message.
pub const MAX_AWAITING_ACK: usize = 10_000;

impl Handler for AlertsConnection {
    /// The next alert in the user's mailbox (or why the mailbox failed).
    type Event = Result<Option<Letter>, switchboard_bus::BusError>;

    fn error_message(&self, error: &ClientError) -> String {
        let message = Outbound::Error {
            code: error.code(),
            message: error.to_string(),
            timestamp: timestamp(),
        };
        serde_json::to_string(&message).expect("outbound messages always serialize")
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(self.state.heartbeat.interval())
    }

    fn received(&mut self) {
        self.heartbeat_unreported = true;
    }

    fn counts_toward_rate(&self, message: &Inbound<'_>) -> bool {
        // The message is parsed again to be handled: only read it here
        // while some alert awaits its ack.
        let Inbound::Text(text) = message else {
            return true;
        };
        if self.awaiting_ack.is_empty() {
            return true;
        }
        !matches!(parse(text), Ok(ClientMessage::Ack { alert_id }) if self.awaiting_ack.contains(&alert_id))
    }

    async fn open<T: Transport>(&mut self, conn: &mut Conn<'_, T>) -> Flow {
        self.connection_id = conn.registration().session().session_id.clone();
        tracing::info!(user = ?self.user_id, connection_id = %self.connection_id, "alerts connection opened");
        let reader = match self.state.mailbox.read(&self.user_id).await {
            Ok(reader) => reader,
            Err(error) => {
                tracing::warn!(%error, "cannot read the alerts mailbox");
                let error = ClientError::Unavailable {
                    service: "alerts",
                    detail: error.to_string(),
                };
                let _ = conn.send_json(self.error_message(&error)).await;
                return Flow::Close(Close::Unavailable("alerts"));
            }
        };
        let welcome = Outbound::Connected {
            user_id: &self.user_id,
            connection_id: &self.connection_id,
            heartbeat_interval: self.state.heartbeat.interval().as_secs_f64(),
            heartbeat_timeout: self.state.heartbeat.timeout().as_secs_f64(),
            pending_alerts: reader.backlog(),
            timestamp: timestamp(),
        };
        self.alerts = Some(reader);
        conn.send(&welcome).await.into()
    }

    async fn on_message<T: Transport>(
        &mut self,
        message: Inbound<'_>,
        conn: &mut Conn<'_, T>,
    ) -> Result<Flow, ClientError> {
        let Inbound::Text(text) = message else {
            return Ok(Flow::Continue);
        };
        Ok(match parse(text)? {
            ClientMessage::Ping => {
                if let Flow::Close(close) = self.heartbeat(conn).await {
                    return Ok(Flow::Close(close));
                }
                let pong = Outbound::Pong {
                    timestamp: timestamp(),
                };
                conn.send(&pong).await.into()
            }
            ClientMessage::Pong => self.heartbeat(conn).await,
            ClientMessage::Ack { alert_id } => self.ack(&alert_id, conn).await?,
        })
    }

    async fn on_heartbeat<T: Transport>(&mut self, conn: &mut Conn<'_, T>) -> Flow {
        self.heartbeat_unreported = true;
        self.heartbeat(conn).await
    }

    async fn next_event(&mut self) -> Self::Event {
        match &mut self.alerts {
            Some(alerts) => alerts.next().await,
            None => std::future::pending().await,
        }
    }

    async fn on_event<T: Transport>(
        &mut self,
        letter: Self::Event,
        conn: &mut Conn<'_, T>,
    ) -> Flow {
        match letter {
            Ok(Some(letter)) => {
                let span = received(
                    &letter.trace,
                    || tracing::info_span!("alert.deliver", alert_id = %letter.id, trace_id = tracing::field::Empty),
                );
                self.deliver(&letter.payload, conn).instrument(span).await
            }
            Ok(None) => Flow::Close(Close::Unavailable("alerts")),
            Err(error) => {
                tracing::warn!(%error, "alerts mailbox failed");
                Flow::Close(Close::Unavailable("alerts"))
            }
        }
    }

    async fn on_tick<T: Transport>(&mut self, conn: &mut Conn<'_, T>) -> Flow {
        // The ping first: the report may wait on the registry (for seconds
        // while NATS recovers), and the client's time to answer runs from
        // the ping.
        let ping = Outbound::Ping {
            timestamp: timestamp(),
        };
        match conn.send(&ping).await.into() {
            Flow::Continue => self.report_heartbeat(conn).await,
            ended => ended,
        }
    }

    async fn on_control<T: Transport>(
        &mut self,
        control: SessionControl,
        conn: &mut Conn<'_, T>,
    ) -> Close {
        match control.kind() {
            ControlKind::Replaced => {
                let replaced = Outbound::ConnectionReplaced {
                    message: "Replaced by a newer connection of the same user",
                    timestamp: timestamp(),
                };
                let _ = conn.send(&replaced).await;
                Close::Done("replaced by a newer connection".into())
            }
            ControlKind::TimedOut => Close::NoHeartbeat(self.state.heartbeat.timeout()),
            ControlKind::Terminated | ControlKind::Unspecified => {
                Close::Done(format!("terminated: {}", control.reason))
            }
        }
    }

    async fn finish(&mut self) -> crate::connection::Unreported {
        tracing::info!(connection_id = %self.connection_id, "alerts connection closed");
        crate::connection::Unreported::default()
    }
}

impl AlertsConnection {
    /// A heartbeat: told to the registry at most once a second.
    async fn heartbeat<T: Transport>(&mut self, conn: &mut Conn<'_, T>) -> Flow {
        let report_every = MAX_HEARTBEAT_REPORT_INTERVAL.min(self.state.heartbeat.timeout() / 4);
        if self.last_reported.elapsed() >= report_every {
            return self.report_heartbeat(conn).await;
        }
        Flow::Continue
    }

    async fn report_heartbeat<T: Transport>(&mut self, conn: &mut Conn<'_, T>) -> Flow {
        if !conn.registration().is_live() || !self.heartbeat_unreported {
            return Flow::Continue;
        }
        self.last_reported = Instant::now();
        let reported = self
            .state
            .sessions
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
                Flow::Continue
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                conn.registration().forget();
                Flow::Close(Close::Done("connection no longer registered".into()))
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "heartbeat report failed");
                Flow::Continue
            }
        }
    }

    async fn deliver<T: Transport>(&mut self, payload: &[u8], conn: &mut Conn<'_, T>) -> Flow {
        let alert = match Alert::decode(payload) {
            Ok(alert) => alert,
            Err(error) => {
                tracing::error!(%error, "undecodable alert in the mailbox");
                return Flow::Continue;
            }
        };
        let detection_result = serde_json::from_str(&alert.detection_result_json)
            .unwrap_or(Value::Object(Default::default()));
        if self.awaiting_ack.len() < MAX_AWAITING_ACK {
            self.awaiting_ack.insert(alert.alert_id.clone());
        }
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
        conn.send(&message).await.into()
    }

    async fn ack<T: Transport>(
        &mut self,
        alert_id: &str,
        conn: &mut Conn<'_, T>,
    ) -> Result<Flow, ClientError> {
        // One exempt ack per delivery, whatever the outcome.
        self.awaiting_ack.remove(alert_id);
        self.state
            .detection
            .clone()
            .ack_alert(AckAlertRequest {
                user_id: self.user_id.clone(),
                alert_id: alert_id.to_owned(),
            })
            .await
            .map_err(|status| ClientError::from_status("detection", status))?;
        let message = Outbound::AckConfirmed {
            alert_id,
            timestamp: timestamp(),
        };
        Ok(conn.send(&message).await.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_or_say_why_not() {
        assert!(matches!(
            parse(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping)
        ));
        assert!(matches!(
            parse(r#"{"type":"pong"}"#),
            Ok(ClientMessage::Pong)
        ));
        assert!(
            matches!(parse(r#"{"type":"ack","alert_id":"a1"}"#), Ok(ClientMessage::Ack { alert_id }) if alert_id == "a1")
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
