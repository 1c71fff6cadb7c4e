//! `/ws/realtime`: seed 000's step-detection sessions.
//!
//! One session per socket. On connect the edge opens the session in the
//! registry and sends `session_started`; each sensor message goes to the
//! session's detection stream and comes back as one `step_detection`;
//! `stop`, `reset` and `stats` are registry and statistics calls. The socket
//! closes on `stop`, on a `SessionControl` from the registry (terminated
//! elsewhere, or timed out), or when the client leaves.
//!
//! The edge counts what a socket did since its last report and sends the
//! deltas to the registry and the statistics service at most every
//! [`MAX_REPORT_INTERVAL`] (and before any answer that shows totals), so the
//! services see one call per session per interval, not one per message.
//! Those few unreported counts are all a socket holds besides its detection
//! stream.

mod inbound;
mod outbound;

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use switchboard_proto::unix_now;
use switchboard_proto::v1::session_control::Kind as ControlKind;
use switchboard_proto::v1::{
    CloseSessionRequest, GetServerStatsRequest, GetSessionRequest, OpenSessionRequest,
    RecordActivityRequest, RecordUsageRequest, ResetSessionRequest, Session, SessionControl,
    StepReply, StepRequest, Usage,
};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::EdgeState;
use crate::error::ClientError;
use crate::socket::{Next, RESTART_REASON, close, close_code, is_too_big, send_json, timestamp};
use crate::stream_call::StreamCall;
use inbound::{Action, Inbound};
pub use inbound::{MAX_ACCELERATION, MAX_BATCH_SAMPLES};
use outbound::{Outbound, Prediction};

/// Longest time between two usage reports of a busy session; shorter when
/// the registry's inactivity timeout is short (a quarter of it).
pub const MAX_REPORT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
pub struct RealtimeQuery {
    /// A label for per-user statistics when there is no token; not
    /// authenticated.
    user_id: Option<String>,
    /// Optional JWT: the session then belongs to its `sub`, and anomalies
    /// in its stream (a fall) become alerts for that user.
    token: Option<String>,
}

/// Whom a realtime session belongs to.
struct Owner {
    user_id: String,
    /// Proven by a token: only then may the stream raise alerts for them.
    authenticated: bool,
}

/// Longest accepted `user_id` label.
const MAX_USER_ID_BYTES: usize = 128;

pub async fn upgrade(
    State(state): State<EdgeState>,
    Query(query): Query<RealtimeQuery>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let token = crate::auth::token_from(query.token.as_deref(), &headers);
    let owner = match token {
        Some(token) => state.authenticate(&token).map(|identity| Owner {
            user_id: identity.user_id,
            authenticated: true,
        }),
        None => Ok(Owner {
            user_id: query
                .user_id
                .filter(|user| !user.is_empty() && user.len() <= MAX_USER_ID_BYTES)
                .unwrap_or_else(|| "anonymous".to_owned()),
            authenticated: false,
        }),
    };
    state
        .configure(upgrade)
        .on_upgrade(move |mut socket| async move {
            match owner {
                Ok(owner) => run(socket, state, owner).await,
                Err(reason) => {
                    tracing::info!(%reason, "realtime connection refused");
                    close(&mut socket, close_code::POLICY, &reason.to_string()).await;
                }
            }
        })
}

/// Counts of what a socket did since it last reported them.
#[derive(Debug, Default, Clone, Copy)]
struct Unreported {
    requests: u64,
    steps: u64,
    predictions: u64,
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
struct Reported {
    for_registry: Unreported,
    registry: Result<(), tonic::Status>,
    for_statistics: Unreported,
    statistics: Result<(), tonic::Status>,
}

/// The outcome of the report task in flight; pending while there is none. `None` when the task failed (its counts are lost, and logged).
async fn finished(reporting: &mut Option<JoinHandle<Reported>>) -> Option<Reported> {
    match reporting {
        Some(task) => match task.await {
            Ok(reported) => Some(reported),
            Err(error) => {
                tracing::warn!(%error, "report task failed");
                None
            }
        },
        None => std::future::pending().await,
    }
}

/// One `/ws/realtime` connection.
struct Realtime {
    state: EdgeState,
    socket: WebSocket,
    session: Session,
    /// Whether the registry still holds the session (false once stopped,
    /// terminated or timed out).
    registered: bool,
    /// Whether a token proved the user: only then do anomalies in the
    /// stream raise alerts for them.
    authenticated: bool,
    total_steps: u64,
    total_predictions: u64,
    /// Not yet added to the registry's record.
    for_registry: Unreported,
    /// Not yet added to the statistics counters.
    for_statistics: Unreported,
    detection: Option<StreamCall<StepRequest, StepReply>>,
    /// The report task in flight, if any.
    reporting: Option<JoinHandle<Reported>>,
}

async fn run(mut socket: WebSocket, state: EdgeState, owner: Owner) {
    let Owner {
        user_id,
        authenticated,
    } = owner;
    let opened = state
        .backends()
        .session
        .clone()
        .open_session(OpenSessionRequest {
            user_id: user_id.clone(),
            kind: "realtime".to_owned(),
            edge_id: state.edge_id().to_owned(),
            ..Default::default()
        })
        .await;
    let session = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let error = ClientError::from_status("session", status);
            let _ = send(&mut socket, &error_message(&error, None)).await;
            close(
                &mut socket,
                close_code::TRY_AGAIN_LATER,
                "session service unavailable",
            )
            .await;
            return;
        }
    };
    let (_held, control) = state.sockets().hold(&session.session_id);
    let _connected = state.meter().connect(crate::meter::Endpoint::Realtime);
    let report_interval = MAX_REPORT_INTERVAL
        .min(Duration::from_secs_f64(
            session.inactivity_timeout_seconds / 4.0,
        ))
        .max(Duration::from_millis(10));
    let mut connection = Realtime {
        state,
        socket,
        session,
        registered: true,
        authenticated,
        total_steps: 0,
        total_predictions: 0,
        for_registry: Unreported::default(),
        for_statistics: Unreported::default(),
        detection: None,
        reporting: None,
    };
    connection.record_session_opened();
    let started = Outbound::SessionStarted {
        session_id: &connection.session.session_id,
        message: "Step detection session initialized successfully",
        timestamp: timestamp(),
    };
    if send(&mut connection.socket, &started).await.is_ok() {
        connection.serve(control, report_interval).await;
    }
    Box::pin(connection.finish()).await;
}

fn error_message<'a>(error: &ClientError, session_id: Option<&'a str>) -> Outbound<'a> {
    Outbound::Error {
        status: "error",
        code: error.report(),
        message: error.to_string(),
        session_id,
        timestamp: timestamp(),
    }
}

async fn send(socket: &mut WebSocket, message: &Outbound<'_>) -> Result<(), axum::Error> {
    send_json(socket, message).await
}

/// Sends a reply; a client that can no longer be written to is gone.
async fn send_or_close(socket: &mut WebSocket, message: &Outbound<'_>) -> Next {
    match send(socket, message).await {
        Ok(()) => Next::Continue,
        Err(_) => Next::Close(close_code::GOING_AWAY, String::new()),
    }
}

impl Realtime {
    fn session_id(&self) -> &str {
        &self.session.session_id
    }

    /// The connection loop: client messages, control messages, report ticks.
    /// A report runs as a task of its own, at most one at a time, so a slow
    /// registry or statistics write never holds up the client's messages.
    async fn serve(
        &mut self,
        mut control: tokio::sync::oneshot::Receiver<SessionControl>,
        report_interval: Duration,
    ) {
        let mut reports = tokio::time::interval(report_interval);
        reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = self.state.draining();
        loop {
            let next = tokio::select! {
                () = draining.started() => Next::Close(close_code::SERVICE_RESTART, RESTART_REASON.to_owned()),
                message = self.socket.recv() => match message {
                    Some(Ok(message)) => self.on_message(message).await,
                    Some(Err(error)) if is_too_big(&error) => crate::socket::too_big(self.state.settings().max_message_bytes),
                    Some(Err(error)) => {
                        tracing::debug!(session_id = %self.session_id(), %error, "websocket read failed");
                        return;
                    }
                    None => return,
                },
                Ok(control) = &mut control => {
                    self.on_control(control).await;
                    return;
                }
                reported = finished(&mut self.reporting) => {
                    self.reporting = None;
                    match reported {
                        Some(reported) => self.on_reported(reported).await,
                        None => Next::Continue,
                    }
                }
                _ = reports.tick(), if self.reporting.is_none() => {
                    self.reporting = Some(tokio::spawn(self.start_report()));
                    Next::Continue
                }
            };
            if let Next::Close(code, reason) = next {
                close(&mut self.socket, code, &reason).await;
                return;
            }
        }
    }

    async fn on_message(&mut self, message: Message) -> Next {
        self.state.meter().received();
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                self.for_registry.requests += 1;
                self.for_statistics.requests += 1;
                return self.reply_error(ClientError::BinaryMessage).await;
            }
            Message::Ping(_) | Message::Pong(_) => return Next::Continue,
            Message::Close(_) => return Next::Close(close_code::NORMAL, String::new()),
        };
        self.for_registry.requests += 1;
        self.for_statistics.requests += 1;
        let result = match inbound::parse(text.as_str(), unix_now()) {
            Ok(Inbound::Samples(samples)) => {
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
                self.on_samples(samples).instrument(span).await
            }
            // Rare actions are boxed: their futures would otherwise sit in
            // every connection's task, a few kilobytes each.
            Ok(Inbound::Action(Action::Stop)) => Box::pin(self.on_stop()).await,
            Ok(Inbound::Action(Action::Reset)) => Box::pin(self.on_reset()).await,
            Ok(Inbound::Action(Action::Stats)) => Box::pin(self.on_stats()).await,
            Err(error) => Err(error),
        };
        // Every text message gets exactly one reply.
        self.state.meter().sent();
        match result {
            Ok(next) => next,
            Err(error) => self.reply_error(error).await,
        }
    }

    async fn reply_error(&mut self, error: ClientError) -> Next {
        let message = error_message(&error, Some(&self.session.session_id));
        send_or_close(&mut self.socket, &message).await
    }

    /// Sends one request on the session's detection stream (opening it when
    /// needed) and waits, bounded, for its reply.
    async fn detect(&mut self, request: StepRequest) -> Result<StepReply, ClientError> {
        let mut detection = self.state.backends().detection.clone();
        crate::stream_call::call(
            &mut self.detection,
            "detection",
            self.state.settings().grpc_timeout(),
            move |outgoing| async move { detection.stream_steps(outgoing).await },
            request,
        )
        .await
    }

    async fn on_samples(
        &mut self,
        samples: Vec<switchboard_proto::v1::AccelSample>,
    ) -> Result<Next, ClientError> {
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
            let event = serde_json::json!({
                "session_id": self.session.session_id,
                "user_id": self.session.user_id,
                "steps": steps,
                "total_steps": self.total_steps,
            });
            self.state.bus().announce("step_detected", event).await;
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
        };
        Ok(send_or_close(&mut self.socket, &message).await)
    }

    /// Confirms a step still pending in the detector, so `stop` counts the
    /// last step before it.
    async fn flush_detector(&mut self) {
        if self.detection.is_none() {
            return;
        }
        let flush = StepRequest {
            flush: true,
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

    async fn on_stop(&mut self) -> Result<Next, ClientError> {
        self.flush_detector().await;
        let ended = self.close_session().await?;
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
        let _ = send(&mut self.socket, &message).await;
        Ok(Next::Close(close_code::NORMAL, "stopped".to_owned()))
    }

    async fn on_reset(&mut self) -> Result<Next, ClientError> {
        // A session without a live stream gets a fresh detector anyway.
        if self.detection.is_some() {
            let reset = StepRequest {
                reset: true,
                session_id: self.session.session_id.clone(),
                ..Default::default()
            };
            let _ = self.detect(reset).await;
        }
        let session = self
            .state
            .backends()
            .session
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
        Ok(send_or_close(&mut self.socket, &message).await)
    }

    async fn on_stats(&mut self) -> Result<Next, ClientError> {
        if let Next::Close(code, reason) = self.report().await {
            return Ok(Next::Close(code, reason));
        }
        let mut sessions = self.state.backends().session.clone();
        let mut statistics = self.state.backends().statistics.clone();
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
        Ok(send_or_close(&mut self.socket, &message).await)
    }

    async fn on_control(&mut self, control: SessionControl) {
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
        let _ = send(&mut self.socket, &message).await;
        let reason = match control.kind() {
            ControlKind::TimedOut => "inactivity timeout",
            _ => "session terminated",
        };
        // The registry already removed the session; only statistics remain.
        self.for_registry = Unreported::default();
        self.registered = false;
        close(&mut self.socket, close_code::NORMAL, reason).await;
    }

    fn record_session_opened(&self) {
        let mut statistics = self.state.backends().statistics.clone();
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

    /// Sends what this socket did since the last report, now.
    async fn report(&mut self) -> Next {
        let reported = self.start_report().await;
        self.on_reported(reported).await
    }

    /// Takes what this socket did since the last report and returns the
    /// calls that send it (a future of its own, to run as a task).
    fn start_report(&mut self) -> impl Future<Output = Reported> + Send + 'static {
        let for_registry = if self.registered {
            std::mem::take(&mut self.for_registry)
        } else {
            Unreported::default()
        };
        let for_statistics = std::mem::take(&mut self.for_statistics);
        let mut sessions = self.state.backends().session.clone();
        let mut statistics = self.state.backends().statistics.clone();
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

    /// Counts that could not be delivered wait for the next report. A
    /// registry that no longer knows the session (its control message was
    /// lost) ends the socket.
    async fn on_reported(&mut self, reported: Reported) -> Next {
        if let Err(status) = reported.statistics {
            tracing::warn!(session_id = %self.session.session_id, code = ?status.code(), message = status.message(), "usage report failed");
            self.for_statistics.add(reported.for_statistics);
        }
        if let Err(status) = reported.registry {
            if status.code() == tonic::Code::NotFound {
                self.registered = false;
                let message = Outbound::SessionTerminated {
                    status: "terminated",
                    session_id: &self.session.session_id,
                    message: "Session no longer registered (timed out or terminated)".to_owned(),
                    timestamp: timestamp(),
                };
                let _ = send(&mut self.socket, &message).await;
                return Next::Close(close_code::NORMAL, "session ended".to_owned());
            }
            tracing::warn!(session_id = %self.session.session_id, code = ?status.code(), message = status.message(), "activity report failed");
            self.for_registry.add(reported.for_registry);
        }
        Next::Continue
    }

    /// Removes the session from the registry with the final counts.
    async fn close_session(&mut self) -> Result<Session, ClientError> {
        let for_registry = std::mem::take(&mut self.for_registry);
        let closed = self
            .state
            .backends()
            .session
            .clone()
            .close_session(CloseSessionRequest {
                session_id: self.session.session_id.clone(),
                requests: for_registry.requests,
                steps: for_registry.steps,
                predictions: for_registry.predictions,
            })
            .await;
        match closed {
            Ok(response) => {
                self.registered = false;
                Ok(response.into_inner())
            }
            Err(status) => {
                self.for_registry = for_registry;
                Err(ClientError::from_status("session", status))
            }
        }
    }

    /// Leaves the registry and statistics as the socket found them: the
    /// session closed, every count reported.
    async fn finish(mut self) {
        // Counts a report in flight carries are not lost with the socket.
        if let Some(task) = self.reporting.take()
            && let Ok(reported) = task.await
        {
            self.on_reported(reported).await;
        }
        if self.registered {
            self.flush_detector().await;
            if let Err(error) = self.close_session().await {
                tracing::warn!(%error, "could not close session; the inactivity sweep will");
            }
        }
        self.report().await;
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
