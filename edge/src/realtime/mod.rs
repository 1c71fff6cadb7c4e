//! `/ws/realtime`: seed 000's step-detection sessions.
//!
//! One session per socket. The connection is a registry session (the
//! [driver](crate::connection) opens it before anything is sent, and closes
//! it at the end); the edge sends `session_started`; each sensor message
//! goes to the session's detection stream and comes back as one
//! `step_detection`; `stop`, `reset` and `stats` are registry and
//! statistics calls. The socket closes on `stop`, on a `SessionControl`
//! from the registry (terminated elsewhere, or timed out), or when the
//! client leaves.
//!
//! The edge counts what a socket did since its last report and sends the
//! deltas to the registry and the statistics service at most every
//! [`MAX_REPORT_INTERVAL`] (and before any answer that shows totals), so the
//! services see one call per session per interval, not one per message. A
//! report runs as a task of its own, at most one at a time, so a slow write
//! never holds up the client's messages. Those few unreported counts are
//! all a socket holds besides its detection stream.
//!
//! A sensor message may carry an id (`seq` or `message_id`): the socket
//! keeps its last 256 such replies ([`replies`]), and a message sent again
//! with an id still kept is answered with the same reply, without reaching
//! the detector or the counts again.

mod inbound;
mod outbound;
mod replies;

use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRef, Query, State};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use switchboard_bus::Bus;
use switchboard_proto::unix_now;
use switchboard_proto::v1::session_control::Kind as ControlKind;
use switchboard_proto::v1::session_service_client::SessionServiceClient;
use switchboard_proto::v1::statistics_service_client::StatisticsServiceClient;
use switchboard_proto::v1::{
    CloseSessionRequest, GetServerStatsRequest, GetSessionRequest, OpenSessionRequest,
    RecordActivityRequest, RecordUsageRequest, ResetSessionRequest, Session, SessionControl,
    StepReply, StepRequest, Usage,
};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::caller::{Caller, Credentials, Identities};
use crate::connection::websocket::accept;
use crate::connection::{
    Close, Conn, Driver, Flow, Handler, Inbound as Received, Options, Transport, Unreported,
};
use crate::error::ClientError;
use crate::meter::Endpoint;
use crate::settings::TimedChannel;
use crate::step_streams::{SessionDetectors, StepDetection};
use crate::times::unix_seconds_text as timestamp;
use inbound::{Action, Inbound, ResendId};
pub use inbound::{MAX_ACCELERATION, MAX_BATCH_SAMPLES};
use outbound::{Outbound, Prediction};

/// Longest time between two usage reports of a busy session; shorter when
/// the registry's inactivity timeout is short (a quarter of it).
pub const MAX_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Longest accepted `user_id` label.
const MAX_USER_ID_BYTES: usize = 128;

/// What `/ws/realtime` needs.
#[derive(Clone, Debug)]
pub struct RealtimeState {
    pub driver: Driver,
    pub identities: Identities,
    pub sessions: SessionServiceClient<TimedChannel>,
    /// How sessions reach their step detectors.
    pub steps: StepDetection,
    pub statistics: StatisticsServiceClient<TimedChannel>,
    /// Where `step_detected` is announced.
    pub bus: Bus,
    /// Longest wait for one detection reply.
    pub reply_deadline: Duration,
}

impl FromRef<RealtimeState> for Identities {
    fn from_ref(state: &RealtimeState) -> Self {
        state.identities.clone()
    }
}

/// `/ws/realtime`.
pub fn router(state: RealtimeState) -> Router {
    Router::new()
        .route("/ws/realtime", get(upgrade))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct RealtimeQuery {
    /// A label for per-user statistics when there is no token; not
    /// authenticated.
    user_id: Option<String>,
}

async fn upgrade(
    State(state): State<RealtimeState>,
    Query(query): Query<RealtimeQuery>,
    credentials: Credentials,
    upgrade: WebSocketUpgrade,
) -> Response {
    // With a token the session belongs to its `sub`, and anomalies in its
    // stream (a fall) become alerts for that user; without one, `user_id`
    // is only a label.
    let driver = state.driver.clone();
    accept(
        upgrade,
        &driver,
        Endpoint::Realtime,
        credentials.anyone(),
        move |caller| {
            let user_id = match &caller {
                Caller::User(identity) => identity.user_id.clone(),
                Caller::Anonymous => query
                    .user_id
                    .filter(|user| !user.is_empty() && user.len() <= MAX_USER_ID_BYTES)
                    .unwrap_or_else(|| "anonymous".to_owned()),
            };
            let options = Options {
                registration: Some(OpenSessionRequest {
                    user_id,
                    kind: "realtime".to_owned(),
                    ..Default::default()
                }),
                ..Options::new(Endpoint::Realtime)
            };
            (options, Realtime::new(state, caller.is_authenticated()))
        },
    )
}

impl Unreported {
    fn is_empty(&self) -> bool {
        self.requests == 0 && self.steps == 0 && self.predictions == 0
    }

    fn add(&mut self, other: Unreported) {
        self.requests += other.requests;
        self.steps += other.steps;
        self.predictions += other.predictions;
    }
}

/// What one report sent, and how each call went.
#[derive(Debug)]
pub struct Reported {
    for_registry: Unreported,
    registry: Result<(), tonic::Status>,
    for_statistics: Unreported,
    statistics: Result<(), tonic::Status>,
}

/// One `/ws/realtime` connection.
struct Realtime {
    state: RealtimeState,
    /// The registry's record of this session, as opened.
    session: Session,
    /// Whether a token proved the user: only then do anomalies in the
    /// stream raise alerts for them.
    authenticated: bool,
    total_steps: u64,
    total_predictions: u64,
    /// Not yet added to the registry's record.
    for_registry: Unreported,
    /// Not yet added to the statistics counters.
    for_statistics: Unreported,
    detectors: SessionDetectors,
    /// The report task in flight, if any.
    reporting: Option<JoinHandle<Reported>>,
    /// Replies to recent identified sensor messages, for resends.
    replies: replies::RecentReplies,
}

impl Handler for Realtime {
    /// A report task finished (`None`: it failed, its counts are lost and
    /// logged).
    type Event = Option<Reported>;

    fn error_message(&self, error: &ClientError) -> String {
        let message = Outbound::Error {
            status: "error",
            code: error.code(),
            message: error.to_string(),
            session_id: Some(&self.session.session_id),
            timestamp: timestamp(),
        };
        serde_json::to_string(&message).expect("outbound messages always serialize")
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(
            MAX_REPORT_INTERVAL
                .min(Duration::from_secs_f64(
                    self.session.inactivity_timeout_seconds.max(0.0) / 4.0,
                ))
                .max(Duration::from_millis(10)),
        )
    }

    fn received(&mut self) {
        self.for_registry.requests += 1;
        self.for_statistics.requests += 1;
    }

    async fn open<T: Transport>(&mut self, conn: &mut Conn<'_, T>) -> Flow {
        self.session = conn.registration().session().clone();
        self.record_session_opened();
        let started = Outbound::SessionStarted {
            session_id: &self.session.session_id,
            message: "Step detection session initialized successfully",
            timestamp: timestamp(),
        };
        conn.send(&started).await.into()
    }

    async fn on_message<T: Transport>(
        &mut self,
        message: Received<'_>,
        conn: &mut Conn<'_, T>,
    ) -> Result<Flow, ClientError> {
        let Received::Text(text) = message else {
            return Ok(Flow::Continue);
        };
        match inbound::parse(text, unix_now())? {
            Inbound::Samples(_, Some(id)) if self.replies.get(&id).is_some() => {
                let reply = self.replies.get(&id).cloned().unwrap_or_default();
                tracing::debug!(?id, "sensor message sent again: answered from the cache");
                Ok(conn.send_json(reply).await.into())
            }
            Inbound::Samples(samples, id) => {
                // A sensor message is a trace of its own (when traces are
                // exported): this span, the detection service's, and any
                // alert it raises, to the edge that delivers it.
                let span = switchboard_proto::trace::message_span(|| {
                    tracing::info_span!(
                        "ws.message",
                        endpoint = "/ws/realtime",
                        trace_id = tracing::field::Empty
                    )
                });
                self.on_samples(samples, id, conn).instrument(span).await
            }
            // Rare actions are boxed: their futures would otherwise sit in
            // every connection's task, a few kilobytes each.
            Inbound::Action(Action::Stop) => Box::pin(self.on_stop(conn)).await,
            Inbound::Action(Action::Reset) => Box::pin(self.on_reset(conn)).await,
            Inbound::Action(Action::Stats) => Box::pin(self.on_stats(conn)).await,
        }
    }

    async fn next_event(&mut self) -> Option<Reported> {
        match &mut self.reporting {
            Some(task) => {
                let finished = task.await;
                self.reporting = None;
                finished
                    .inspect_err(|error| tracing::warn!(%error, "report task failed"))
                    .ok()
            }
            None => std::future::pending().await,
        }
    }

    async fn on_event<T: Transport>(
        &mut self,
        reported: Option<Reported>,
        conn: &mut Conn<'_, T>,
    ) -> Flow {
        match reported {
            Some(reported) => self.on_reported(reported, conn).await,
            None => Flow::Continue,
        }
    }

    async fn on_tick<T: Transport>(&mut self, conn: &mut Conn<'_, T>) -> Flow {
        if self.reporting.is_none() {
            let live = conn.registration().is_live();
            self.reporting = Some(tokio::spawn(self.start_report(live)));
        }
        Flow::Continue
    }

    async fn on_control<T: Transport>(
        &mut self,
        control: SessionControl,
        conn: &mut Conn<'_, T>,
    ) -> Close {
        let message = match control.kind() {
            ControlKind::TimedOut => Outbound::TimeoutResponse {
                status: "timeout",
                session_id: &self.session.session_id,
                message: format!(
                    "Connection closed due to {} of inactivity",
                    describe_seconds(self.session.inactivity_timeout_seconds)
                ),
                timestamp: timestamp(),
            },
            ControlKind::Terminated | ControlKind::Replaced | ControlKind::Unspecified => {
                Outbound::SessionTerminated {
                    status: "terminated",
                    session_id: &self.session.session_id,
                    message: format!("Session terminated: {}", control.reason),
                    timestamp: timestamp(),
                }
            }
        };
        let _ = conn.send(&message).await;
        // The registry already removed the session; only statistics remain.
        self.for_registry = Unreported::default();
        match control.kind() {
            ControlKind::TimedOut => Close::Done("inactivity timeout".into()),
            _ => Close::Done("session terminated".into()),
        }
    }

    /// Leaves the statistics as the socket found them, every count
    /// reported; the driver closes the registry session with the rest.
    async fn finish(&mut self) -> Unreported {
        // Counts a report in flight carries are not lost with the socket.
        if let Some(task) = self.reporting.take()
            && let Ok(reported) = task.await
        {
            self.take_back(reported);
        }
        self.flush_detector(true).await;
        let reported = self.start_report(false).await;
        self.take_back(reported);
        std::mem::take(&mut self.for_registry)
    }
}

impl Realtime {
    fn new(state: RealtimeState, authenticated: bool) -> Self {
        Self {
            detectors: state.steps.session(),
            state,
            session: Session::default(),
            authenticated,
            total_steps: 0,
            total_predictions: 0,
            for_registry: Unreported::default(),
            for_statistics: Unreported::default(),
            reporting: None,
            replies: replies::RecentReplies::default(),
        }
    }

    /// Sends one request to the session's detectors and waits, bounded,
    /// for its reply.
    async fn detect(&mut self, request: StepRequest) -> Result<StepReply, ClientError> {
        self.detectors
            .call(request, self.state.reply_deadline)
            .await
    }

    async fn on_samples<T: Transport>(
        &mut self,
        samples: Vec<switchboard_proto::v1::AccelSample>,
        id: Option<ResendId>,
        conn: &mut Conn<'_, T>,
    ) -> Result<Flow, ClientError> {
        let sample_count = samples.len();
        let reply = self
            .detect(StepRequest {
                samples,
                session_id: self.session.session_id.clone(),
                user_id: if self.authenticated {
                    self.session.user_id.clone()
                } else {
                    String::new()
                },
                trace_context: switchboard_proto::trace::current_context(),
                ..Default::default()
            })
            .await?;
        let steps = u64::from(reply.steps);
        self.total_steps += steps;
        self.total_predictions += 1;
        for unreported in [&mut self.for_registry, &mut self.for_statistics] {
            unreported.steps += steps;
            unreported.predictions += 1;
        }
        if steps > 0 {
            let event = || {
                serde_json::json!({
                    "session_id": self.session.session_id,
                    "user_id": self.session.user_id,
                    "steps": steps,
                    "total_steps": self.total_steps,
                })
            };
            self.state.bus.announce("step_detected", event).await;
        }
        let observation = reply.observation.unwrap_or_default();
        let message = Outbound::StepDetection {
            session_id: &self.session.session_id,
            step_detected: steps > 0,
            prediction: Prediction {
                magnitude: observation.magnitude,
                score: observation.score,
                threshold: observation.threshold,
                confidence: observation.confidence,
                steps: reply.steps,
                samples: sample_count,
            },
            total_steps: self.total_steps,
            total_predictions: self.total_predictions,
            buffer_size: reply.buffer_size,
            timestamp: timestamp(),
            seq: match &id {
                Some(ResendId::Seq(seq)) => Some(*seq),
                _ => None,
            },
            message_id: match &id {
                Some(ResendId::MessageId(message_id)) => Some(message_id),
                _ => None,
            },
        };
        let message = crate::connection::to_json(&message);
        if let Some(id) = id {
            self.replies.insert(id, message.clone());
        }
        Ok(conn.send_json(message).await.into())
    }

    /// Confirms a step still pending in the detector, so `stop` counts the
    /// last step before it; with `end`, the detectors are released too.
    async fn flush_detector(&mut self, end: bool) {
        if !self.detectors.is_used() {
            return;
        }
        let flush = StepRequest {
            flush: true,
            end,
            session_id: self.session.session_id.clone(),
            ..Default::default()
        };
        if let Ok(reply) = self.detect(flush).await {
            let steps = u64::from(reply.steps);
            self.total_steps += steps;
            self.for_registry.steps += steps;
            self.for_statistics.steps += steps;
        }
    }

    async fn on_stop<T: Transport>(&mut self, conn: &mut Conn<'_, T>) -> Result<Flow, ClientError> {
        self.flush_detector(false).await;
        let for_registry = std::mem::take(&mut self.for_registry);
        let closed = self
            .state
            .sessions
            .clone()
            .close_session(CloseSessionRequest {
                session_id: self.session.session_id.clone(),
                requests: for_registry.requests,
                steps: for_registry.steps,
                predictions: for_registry.predictions,
            })
            .await;
        let ended = match closed {
            Ok(response) => response.into_inner(),
            Err(status) => {
                self.for_registry = for_registry;
                return Err(ClientError::from_status("session", status));
            }
        };
        conn.registration().forget();
        let message = Outbound::StopResponse {
            status: "success",
            session_id: &ended.session_id,
            message: "Step detection stopped. WebSocket connection will be closed.",
            session_stats: outbound::SessionStats {
                duration: unix_now() - ended.started_at,
                total_requests: ended.total_requests,
                total_steps: ended.total_steps,
                total_predictions: ended.total_predictions,
            },
            timestamp: timestamp(),
        };
        let _ = conn.send(&message).await;
        Ok(Flow::Close(Close::Done("stopped".into())))
    }

    async fn on_reset<T: Transport>(
        &mut self,
        conn: &mut Conn<'_, T>,
    ) -> Result<Flow, ClientError> {
        // A session without a live stream gets a fresh detector anyway.
        if self.detectors.is_used() {
            let reset = StepRequest {
                reset: true,
                session_id: self.session.session_id.clone(),
                ..Default::default()
            };
            let _ = self.detect(reset).await;
        }
        let session = self
            .state
            .sessions
            .clone()
            .reset_session(ResetSessionRequest {
                session_id: self.session.session_id.clone(),
            })
            .await
            .map_err(|status| ClientError::from_status("session", status))?
            .into_inner();
        // Steps counted before the reset are history for the registry; the
        // statistics keep them (server totals only grow).
        self.for_registry.steps = 0;
        self.for_registry.predictions = 0;
        self.total_steps = session.total_steps;
        self.total_predictions = session.total_predictions;
        let message = Outbound::ResetResponse {
            status: "success",
            session_id: &self.session.session_id,
            message: "Step counter has been reset for this session",
            total_steps: self.total_steps,
            timestamp: timestamp(),
        };
        Ok(conn.send(&message).await.into())
    }

    async fn on_stats<T: Transport>(
        &mut self,
        conn: &mut Conn<'_, T>,
    ) -> Result<Flow, ClientError> {
        // Report first, so the session sees its own counts exactly.
        let live = conn.registration().is_live();
        let reported = self.start_report(live).await;
        if let Flow::Close(close) = self.on_reported(reported, conn).await {
            return Ok(Flow::Close(close));
        }
        let mut sessions = self.state.sessions.clone();
        let mut statistics = self.state.statistics.clone();
        let (session, server) = tokio::join!(
            sessions.get_session(GetSessionRequest {
                session_id: self.session.session_id.clone(),
            }),
            statistics.get_server_stats(GetServerStatsRequest {}),
        );
        let session = session
            .map_err(|status| ClientError::from_status("session", status))?
            .into_inner();
        let server = server
            .map_err(|status| ClientError::from_status("statistics", status))?
            .into_inner();
        let usage = server.usage.unwrap_or_default();
        let message = Outbound::StatsResponse {
            status: "success",
            session_id: &self.session.session_id,
            user_stats: outbound::UserStats {
                session_duration: unix_now() - session.started_at,
                total_requests: session.total_requests + self.for_registry.requests,
                last_activity: session.last_activity,
                total_steps: session.total_steps + self.for_registry.steps,
                total_predictions: session.total_predictions + self.for_registry.predictions,
            },
            server_stats: outbound::ServerStats {
                active_sessions: server.active_sessions,
                total_server_requests: usage.requests,
                total_steps: usage.steps,
                total_predictions: usage.predictions,
                total_sessions: usage.sessions_opened,
                users: server.users,
            },
            timestamp: timestamp(),
        };
        Ok(conn.send(&message).await.into())
    }

    fn record_session_opened(&self) {
        let mut statistics = self.state.statistics.clone();
        let request = RecordUsageRequest {
            user_id: self.session.user_id.clone(),
            usage: Some(Usage {
                sessions_opened: 1,
                ..Default::default()
            }),
        };
        tokio::spawn(async move {
            if let Err(status) = statistics.record_usage(request).await {
                tracing::warn!(code = ?status.code(), message = status.message(), "could not count the session");
            }
        });
    }

    /// Takes what this socket did since the last report and returns the
    /// calls that send it (a future of its own, to run as a task). The
    /// registry's share only while it holds the session.
    fn start_report(
        &mut self,
        registered: bool,
    ) -> impl Future<Output = Reported> + Send + 'static {
        let for_registry = if registered {
            std::mem::take(&mut self.for_registry)
        } else {
            Unreported::default()
        };
        let for_statistics = std::mem::take(&mut self.for_statistics);
        let mut sessions = self.state.sessions.clone();
        let mut statistics = self.state.statistics.clone();
        let session_id = self.session.session_id.clone();
        let user_id = self.session.user_id.clone();
        async move {
            let registry_call = async {
                if for_registry.is_empty() {
                    return Ok(());
                }
                sessions
                    .record_activity(RecordActivityRequest {
                        session_id,
                        requests: for_registry.requests,
                        steps: for_registry.steps,
                        predictions: for_registry.predictions,
                    })
                    .await
                    .map(|_| ())
            };
            let statistics_call = async {
                if for_statistics.is_empty() {
                    return Ok(());
                }
                statistics
                    .record_usage(RecordUsageRequest {
                        user_id,
                        usage: Some(Usage {
                            requests: for_statistics.requests,
                            steps: for_statistics.steps,
                            predictions: for_statistics.predictions,
                            sessions_opened: 0,
                        }),
                    })
                    .await
                    .map(|_| ())
            };
            let (registry, statistics) = tokio::join!(registry_call, statistics_call);
            Reported {
                for_registry,
                registry,
                for_statistics,
                statistics,
            }
        }
    }

    /// Counts that could not be delivered wait for the next report.
    fn take_back(&mut self, reported: Reported) {
        if let Err(status) = &reported.statistics {
            tracing::warn!(session_id = %self.session.session_id, code = ?status.code(), message = status.message(), "usage report failed");
            self.for_statistics.add(reported.for_statistics);
        }
        if let Err(status) = &reported.registry
            && status.code() != tonic::Code::NotFound
        {
            tracing::warn!(session_id = %self.session.session_id, code = ?status.code(), message = status.message(), "activity report failed");
            self.for_registry.add(reported.for_registry);
        }
    }

    /// After a report: a registry that no longer knows the session (its
    /// control message was lost) ends the socket.
    async fn on_reported<T: Transport>(
        &mut self,
        reported: Reported,
        conn: &mut Conn<'_, T>,
    ) -> Flow {
        let unknown =
            matches!(&reported.registry, Err(status) if status.code() == tonic::Code::NotFound);
        self.take_back(reported);
        if !unknown {
            return Flow::Continue;
        }
        conn.registration().forget();
        let message = Outbound::SessionTerminated {
            status: "terminated",
            session_id: &self.session.session_id,
            message: "Session no longer registered (timed out or terminated)".to_owned(),
            timestamp: timestamp(),
        };
        let _ = conn.send(&message).await;
        Flow::Close(Close::Done("session ended".into()))
    }
}

/// "5 minutes", "2 seconds": how seed 000 words its timeout.
fn describe_seconds(seconds: f64) -> String {
    let plural = |n: f64, unit: &str| {
        if n == 1.0 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    if seconds >= 60.0 && seconds % 60.0 == 0.0 {
        plural(seconds / 60.0, "minute")
    } else {
        plural(seconds, "second")
    }
}

#[cfg(test)]
mod tests {
    use super::describe_seconds;

    #[test]
    fn timeouts_read_like_the_seed() {
        assert_eq!(describe_seconds(300.0), "5 minutes");
        assert_eq!(describe_seconds(60.0), "1 minute");
        assert_eq!(describe_seconds(1.5), "1.5 seconds");
    }
}
