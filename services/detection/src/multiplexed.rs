//! `StreamStepBatches`: many sessions' step detection on one stream.
//!
//! Across processes, a stream per session costs the edge and this service
//! a gRPC frame, a wake-up and a write per message each way. An edge
//! instead keeps a few streams per replica and sends whatever requests are
//! waiting as one batch; this side answers with whatever replies are ready
//! as one batch. Each request names its session: the session's detectors
//! live in this stream's map until a request says `end`, the session has
//! sent nothing for [`IDLE_SESSION`], or the stream ends. Replicas still
//! share nothing: the edge keeps a session on one stream, and when that
//! stream breaks the session starts afresh on another (a few seconds of
//! window), exactly as a per-session stream would.
//!
//! Detection is synchronous and runs as the batch arrives. A request whose
//! samples show a fall must store its alert before its reply: that reply
//! waits in a set of its own while the stream goes on, so one session's
//! alert never holds up the others. A session sends one request at a time,
//! so its replies stay in order.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use switchboard_proto::error::status;
use switchboard_proto::trace::continued;
use switchboard_proto::v1::{StepBatch, StepReply, StepReplyBatch};
use tokio::time::Instant;
use tonic::{Status, Streaming};
use tracing::Instrument;

use crate::alerts::Alerts;
use crate::{Replies, StepState, raise_all};

/// Most sessions one stream holds; a request for one more is refused
/// (`RESOURCE_EXHAUSTED`) until others end.
pub const MAX_SESSIONS_PER_STREAM: usize = 50_000;

/// A session that sent nothing for this long is forgotten (its edge should
/// have said `end`; a later request starts it afresh).
pub const IDLE_SESSION: Duration = Duration::from_secs(600);

/// How often idle sessions are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

struct Session {
    state: StepState,
    last_seen: Instant,
}

/// One `StreamStepBatches` stream's sessions and pending replies.
struct Multiplexed {
    requests: Streaming<StepBatch>,
    requests_ended: bool,
    sessions: HashMap<String, Session>,
    /// Replies waiting for their alerts to be stored.
    raising: FuturesUnordered<BoxFuture<'static, StepReply>>,
    alerts: Alerts,
    sweep: tokio::time::Interval,
}

/// The reply stream of one `StreamStepBatches` call.
pub(crate) fn replies(requests: Streaming<StepBatch>, alerts: Alerts) -> Replies<StepReplyBatch> {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let multiplexed = Multiplexed {
        requests,
        requests_ended: false,
        sessions: HashMap::new(),
        raising: FuturesUnordered::new(),
        alerts,
        sweep,
    };
    Box::pin(futures::stream::unfold(
        multiplexed,
        |mut this| async move {
            let next = this.next_batch().await?;
            Some((next, this))
        },
    ))
}

fn failed(call_id: u64, status: &Status) -> StepReply {
    StepReply {
        call_id,
        error_code: status.code() as i32,
        error_message: status.message().to_owned(),
        ..Default::default()
    }
}

impl Multiplexed {
    /// The next batch of replies; `None` once the edge closed its side and
    /// every reply is out.
    async fn next_batch(&mut self) -> Option<Result<StepReplyBatch, Status>> {
        loop {
            if self.requests_ended && self.raising.is_empty() {
                return None;
            }
            tokio::select! {
                batch = self.requests.next(), if !self.requests_ended => match batch {
                    Some(Ok(batch)) => {
                        let replies = self.handle(batch);
                        if !replies.is_empty() {
                            return Some(Ok(StepReplyBatch { replies }));
                        }
                    }
                    Some(Err(status)) => {
                        self.requests_ended = true;
                        return Some(Err(status));
                    }
                    None => self.requests_ended = true,
                },
                Some(reply) = self.raising.next(), if !self.raising.is_empty() => {
                    let mut replies = vec![reply];
                    while let Some(Some(reply)) = self.raising.next().now_or_never() {
                        replies.push(reply);
                    }
                    return Some(Ok(StepReplyBatch { replies }));
                }
                _ = self.sweep.tick() => self.forget_idle(),
            }
        }
    }

    /// Runs a batch's requests in order: the replies ready now (the others
    /// wait for their alerts).
    fn handle(&mut self, batch: StepBatch) -> Vec<StepReply> {
        let now = Instant::now();
        let mut replies = Vec::with_capacity(batch.requests.len());
        for request in batch.requests {
            let span = continued(
                &request.trace_context,
                || tracing::info_span!("detection.steps", session_id = %request.session_id, trace_id = tracing::field::Empty),
            );
            let Some(session) = self.session(&request.session_id, now) else {
                replies.push(failed(
                    request.call_id,
                    &Status::resource_exhausted(format!(
                        "this stream holds {MAX_SESSIONS_PER_STREAM} sessions already"
                    )),
                ));
                continue;
            };
            let (reply, to_raise) = span.in_scope(|| session.state.detect(&request));
            if request.end {
                self.sessions.remove(&request.session_id);
            }
            if to_raise.is_empty() {
                replies.push(reply);
                continue;
            }
            let alerts = self.alerts.clone();
            let call_id = request.call_id;
            self.raising.push(
                async move {
                    raise_all(&alerts, to_raise, reply)
                        .await
                        .unwrap_or_else(|error| failed(call_id, &status(error)))
                }
                .instrument(span)
                .boxed(),
            );
        }
        replies
    }

    /// The session's detectors, made on its first request; `None` when the
    /// stream is full.
    fn session(&mut self, session_id: &str, now: Instant) -> Option<&mut Session> {
        if !self.sessions.contains_key(session_id) {
            if self.sessions.len() >= MAX_SESSIONS_PER_STREAM {
                return None;
            }
            self.sessions.insert(
                session_id.to_owned(),
                Session {
                    state: StepState::new(),
                    last_seen: now,
                },
            );
        }
        let session = self.sessions.get_mut(session_id)?;
        session.last_seen = now;
        Some(session)
    }

    fn forget_idle(&mut self) {
        let now = Instant::now();
        let before = self.sessions.len();
        self.sessions
            .retain(|_, session| now.duration_since(session.last_seen) < IDLE_SESSION);
        let forgotten = before - self.sessions.len();
        if forgotten > 0 {
            tracing::info!(
                forgotten,
                "forgot idle sessions' detectors on a multiplexed stream"
            );
        }
    }
}
