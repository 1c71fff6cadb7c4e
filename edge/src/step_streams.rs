//! How a realtime session reaches its step detectors.
//!
//! Three paths, one contract (the detection service's `StepRequest` and
//! `StepReply`):
//!
//! - **In this process** (`switchboard all`): the detection server's own
//!   session detectors, handed each request as it is
//!   ([`in_process::StepSessions`]): no network, no codec, the same
//!   replies, errors and spans as its `StreamSteps`.
//! - **Per session** (`StreamSteps`): one bidirectional stream per session
//!   (`--detection-streams 0`).
//! - **Multiplexed** (`StreamStepBatches`): across processes a stream per
//!   session pays a gRPC frame, a wake-up and a socket write per message in
//!   each process. The edge instead keeps a few *lanes* per detection
//!   replica: each lane is one stream over its own connection, carrying any
//!   number of sessions. Requests waiting when the connection is ready to
//!   write go out as one batch (the first never waits for a batch to fill
//!   or for a timer, only for two passes of the scheduler: the sessions
//!   whose sockets the same poll, or the next, found readable queue theirs
//!   first, so they share the write), and the replica answers in batches
//!   the same way.
//!
//! A session stays on one lane while that lane's stream lives, so its
//! detectors' state stays on one replica. It picks its lane by rendezvous
//! hashing over the lanes that are up, so sessions spread evenly and a
//! lost lane moves only its own sessions. When a lane's stream breaks (the
//! replica was killed, its connection reset), every call waiting on it is
//! sent again on the session's next lane (never on one that lost it
//! already), within the same deadline:
//! the client sees its reply, and the detector starts afresh there (a few
//! seconds of window), exactly as when a per-session stream is re-opened.
//! A lane that is down reconnects by itself, with a bounded backoff.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use switchboard_proto::in_process::{StepSession, StepSessions, Stepped};
use switchboard_proto::metrics::{self, Side};
use switchboard_proto::v1::detection_service_client::DetectionServiceClient;
use switchboard_proto::v1::{StepBatch, StepReply, StepRequest};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::error::ClientError;
use crate::settings::TimedChannel;
use crate::stream_call::StreamCall;

/// Requests queued on one lane ahead of its connection.
const LANE_QUEUE: usize = 1024;

/// Most requests in one batch (a request holds at most
/// [`crate::realtime::MAX_BATCH_SAMPLES`] samples, so a batch stays well
/// under gRPC's 4 MiB message limit).
const MAX_REQUESTS_PER_BATCH: usize = 64;

/// Passes of the scheduler a batch waits for before it goes out, so that
/// the requests of sessions woken meanwhile go with it. Two rather than
/// one: batches grow, detection is woken less often, and the per-role
/// deployment's CPU per message fell by about 5 % while its messages/s
/// rose (README, BENCHMARKS); a pass more for as long as requests kept
/// coming cost a sixth of the messages/s for no CPU.
const GATHER_PASSES: usize = 2;

/// Longest wait for a lane's stream to open.
const OPEN_DEADLINE: Duration = Duration::from_secs(2);

/// How often a lane fails the calls whose deadline passed. A call's
/// deadline is kept by its lane rather than by a timer of its own: arming
/// and clearing a timer per message cost the edge about 1 % of its CPU.
/// A call learns that its deadline passed within this much.
const EXPIRY_SWEEP: Duration = Duration::from_millis(50);

/// Bounds of the wait between two attempts to open a lane.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

fn unavailable(detail: &str) -> ClientError {
    crate::stream_call::unavailable("detection", detail)
}

/// The edge's way to the step detectors.
#[derive(Debug, Clone)]
pub enum StepDetection {
    /// The detection server of this process, called with typed messages.
    InProcess(LocalDetection),
    /// One `StreamSteps` stream per session.
    PerSession(DetectionServiceClient<TimedChannel>),
    /// Sessions share a few `StreamStepBatches` lanes.
    Multiplexed(StepStreams),
}

/// The sessions of the detection server in this process.
#[derive(Clone)]
pub struct LocalDetection(pub Arc<dyn StepSessions>);

impl std::fmt::Debug for LocalDetection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("LocalDetection")
    }
}

/// A session's detectors in this process.
struct LocalSession(Box<dyn StepSession>);

impl std::fmt::Debug for LocalSession {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("LocalSession")
    }
}

/// The `StreamSteps` method, as the gRPC metrics name it.
const STREAM_STEPS: &str = "/switchboard.v1.DetectionService/StreamSteps";

impl StepDetection {
    /// A new session's link to its detectors (nothing opened yet).
    pub fn session(&self) -> SessionDetectors {
        let link = match self {
            StepDetection::InProcess(sessions) => Link::InProcess {
                sessions: sessions.clone(),
                session: None,
            },
            StepDetection::PerSession(client) => Link::PerSession(Box::new(OwnStream {
                client: client.clone(),
                stream: None,
            })),
            StepDetection::Multiplexed(streams) => Link::Multiplexed {
                streams: streams.clone(),
                placement: None,
            },
        };
        SessionDetectors { link, used: false }
    }
}

/// One session's link to its detectors.
#[derive(Debug)]
pub struct SessionDetectors {
    link: Link,
    /// Whether any request went out (whether there are detectors to flush).
    used: bool,
}

/// A session's path to its detectors, with what it holds on that path.
#[derive(Debug)]
enum Link {
    /// In this process: the session's detectors, once opened.
    InProcess {
        sessions: LocalDetection,
        session: Option<LocalSession>,
    },
    /// The session's own stream, once opened (boxed: the largest, and the
    /// rarest, of the three).
    PerSession(Box<OwnStream>),
    /// The lane (index, stream generation) holding the session's
    /// detectors, once placed.
    Multiplexed {
        streams: StepStreams,
        placement: Option<(usize, u64)>,
    },
}

/// A session's own `StreamSteps` stream, once opened, and how to open it.
#[derive(Debug)]
struct OwnStream {
    client: DetectionServiceClient<TimedChannel>,
    stream: Option<StreamCall<StepRequest, StepReply>>,
}

impl SessionDetectors {
    /// Whether the session has sent its detectors anything.
    pub fn is_used(&self) -> bool {
        self.used
    }

    /// Sends `request` to the session's detectors and waits, within
    /// `deadline`, for the reply.
    pub async fn call(
        &mut self,
        request: StepRequest,
        deadline: Duration,
    ) -> Result<StepReply, ClientError> {
        self.used = true;
        match &mut self.link {
            Link::InProcess { sessions, session } => {
                call_in_process(sessions, session, request, deadline).await
            }
            Link::PerSession(own) => {
                let OwnStream { client, stream } = own.as_mut();
                crate::stream_call::call(
                    stream,
                    "detection",
                    deadline,
                    // The client is cloned only when a stream opens.
                    |outgoing| {
                        let mut client = client.clone();
                        async move { client.stream_steps(outgoing).await }
                    },
                    request,
                )
                .await
            }
            Link::Multiplexed { streams, placement } => {
                streams.call(placement, request, deadline).await
            }
        }
    }
}

/// `request` to the session's detectors in this process (opened in `slot`
/// when it is empty), within `deadline`; after an error the slot is
/// emptied, as a stream ends with its error, so the next call starts
/// afresh.
async fn call_in_process(
    sessions: &LocalDetection,
    slot: &mut Option<LocalSession>,
    request: StepRequest,
    deadline: Duration,
) -> Result<StepReply, ClientError> {
    let session = slot.get_or_insert_with(|| {
        let opening = Instant::now();
        let session = LocalSession(sessions.0.open());
        // Counted as the stream it stands for, on both sides.
        for side in [Side::Client, Side::Server] {
            metrics::record_call(side, STREAM_STEPS, opening.elapsed());
        }
        session
    });
    // Most replies are ready at once (the detectors are synchronous): the
    // deadline's timer is armed only for one that waits (storing a fall's
    // alert).
    let replied = match session.0.step(request) {
        Stepped::Ready(replied) => Ok(replied),
        Stepped::Storing(step) => tokio::time::timeout(deadline, step).await,
    };
    let outcome = match replied {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(status)) => Err(ClientError::from_status("detection", status)),
        Err(_) => Err(unavailable("no reply within the deadline")),
    };
    if outcome.is_err() {
        *slot = None;
    }
    outcome
}

/// A detection replica's address and the lanes the edge keeps to it.
#[derive(Debug, Clone)]
pub struct LaneTarget {
    /// Names the lanes in logs and spreads sessions (rendezvous key).
    pub name: String,
    pub client: DetectionServiceClient<TimedChannel>,
}

/// The multiplexed lanes of an edge, shared by all its sessions. Cloning
/// is cheap; the lanes' tasks end when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct StepStreams {
    lanes: Arc<[Arc<Lane>]>,
    /// Changes whenever a lane opens or breaks.
    changes: watch::Receiver<u64>,
}

#[derive(Debug)]
struct Lane {
    name: String,
    /// The lane's position in rendezvous hashing.
    key: u64,
    /// Locked before `waiting` when both are.
    open: Mutex<Option<OpenLane>>,
    /// Calls waiting for their replies, by call id.
    waiting: Mutex<HashMap<u64, Waiting>>,
    next_call: AtomicU64,
}

#[derive(Debug)]
struct Waiting {
    reply: oneshot::Sender<Outcome>,
    deadline: Instant,
}

#[derive(Debug)]
struct OpenLane {
    generation: u64,
    requests: mpsc::Sender<StepRequest>,
}

/// What a waiting call gets.
#[derive(Debug)]
enum Outcome {
    Reply(StepReply),
    /// The lane's stream broke before the reply: the request may not have
    /// been handled, and the detectors there are gone.
    Lost,
    /// The call's deadline passed.
    Expired,
}

fn hash_of(value: impl Hash) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Lane {
    /// The generation of the lane's stream, while it is open.
    fn generation(&self) -> Option<u64> {
        lock(&self.open).as_ref().map(|open| open.generation)
    }

    /// Fails every waiting call: the stream they went out on is gone.
    fn lose_waiting(&self) {
        let waiting = std::mem::take(&mut *lock(&self.waiting));
        for (_, call) in waiting {
            let _ = call.reply.send(Outcome::Lost);
        }
    }

    /// Fails the waiting calls whose deadline is past.
    fn expire_waiting(&self, now: Instant) {
        let expired: Vec<Waiting> = lock(&self.waiting)
            .extract_if(|_, call| call.deadline <= now)
            .map(|(_, call)| call)
            .collect();
        for call in expired {
            let _ = call.reply.send(Outcome::Expired);
        }
    }

    fn deliver(&self, reply: StepReply) {
        if let Some(call) = lock(&self.waiting).remove(&reply.call_id) {
            let _ = call.reply.send(Outcome::Reply(reply));
        }
    }
}

impl StepStreams {
    /// One lane per target (a target named twice has two lanes), each
    /// opening (and re-opening) its stream in a task of its own.
    pub fn start(targets: Vec<LaneTarget>) -> Self {
        let (changed, changes) = watch::channel(0);
        let changed = Arc::new(changed);
        let mut lanes = Vec::new();
        let mut named: HashMap<String, usize> = HashMap::new();
        for target in targets {
            {
                let index = named.entry(target.name.clone()).or_default();
                let name = format!("{}#{index}", target.name);
                *index += 1;
                let lane = Arc::new(Lane {
                    key: hash_of(&name),
                    name,
                    open: Mutex::new(None),
                    waiting: Mutex::new(HashMap::new()),
                    next_call: AtomicU64::new(1),
                });
                tokio::spawn(run_lane(
                    lane.clone(),
                    target.client.clone(),
                    changed.clone(),
                ));
                lanes.push(lane);
            }
        }
        Self {
            lanes: lanes.into(),
            changes,
        }
    }

    /// The lane for a session placed at `placement`: the same while its
    /// stream lives, else the open lane that ranks first for the session.
    fn place(
        &self,
        placement: &mut Option<(usize, u64)>,
        session_id: &str,
        excluded: &[usize],
    ) -> Option<usize> {
        if let Some((index, generation)) = *placement
            && !excluded.contains(&index)
            && self.lanes[index].generation() == Some(generation)
        {
            return Some(index);
        }
        let session = hash_of(session_id);
        let (index, generation) = self
            .lanes
            .iter()
            .enumerate()
            .filter(|(index, _)| !excluded.contains(index))
            .filter_map(|(index, lane)| Some((index, lane.key, lane.generation()?)))
            .max_by_key(|(_, key, _)| hash_of((session, key)))
            .map(|(index, _, generation)| (index, generation))?;
        if placement.is_some() {
            tracing::debug!(
                session_id,
                lane = %self.lanes[index].name,
                "session moved to another detection lane: its detectors start afresh"
            );
        }
        *placement = Some((index, generation));
        Some(index)
    }

    /// Sends `request` on the session's lane and waits for the reply; a
    /// reply lost with its lane is asked for again on the session's next
    /// lane (never one that lost it already: the other lanes to a killed
    /// replica may not have noticed yet). All within `deadline`.
    async fn call(
        &self,
        placement: &mut Option<(usize, u64)>,
        request: StepRequest,
        deadline: Duration,
    ) -> Result<StepReply, ClientError> {
        let deadline = Instant::now() + deadline;
        let mut lost_on = Vec::new();
        // Cloned only when no lane is open (to wait for one to open).
        let mut changes = None;
        loop {
            let index = loop {
                if let Some(index) = self.place(placement, &request.session_id, &lost_on) {
                    break index;
                }
                let changes = changes.get_or_insert_with(|| self.changes.clone());
                match tokio::time::timeout_at(deadline, changes.changed()).await {
                    Ok(Ok(())) => continue,
                    _ if lost_on.is_empty() => {
                        return Err(unavailable("no detection replica reachable"));
                    }
                    _ => return Err(unavailable("detection stream lost")),
                }
            };
            // Sent again as it was: the lane that lost it took the
            // session's detectors with it, so nothing is counted twice.
            match self.call_on(index, request.clone(), deadline).await {
                Outcome::Reply(reply) => return reply_of(reply),
                Outcome::Lost => {
                    // Past its deadline a call fails here rather than be
                    // sent again: a replica would run it for a client
                    // that is told it failed.
                    if Instant::now() >= deadline {
                        return Err(unavailable("no reply within the deadline"));
                    }
                    tracing::debug!(lane = %self.lanes[index].name, "detection lane lost a call: sending it again");
                    lost_on.push(index);
                }
                Outcome::Expired => return Err(unavailable("no reply within the deadline")),
            }
        }
    }

    /// Sends `request` on lane `index` and waits for what becomes of it.
    /// The call is registered and queued under the lane's lock, so a
    /// stream that breaks meanwhile loses it with the others; its deadline
    /// is kept by the lane (no timer per call).
    async fn call_on(&self, index: usize, mut request: StepRequest, deadline: Instant) -> Outcome {
        let lane = &self.lanes[index];
        let (reply, mut replied) = oneshot::channel();
        let full = {
            let open = lock(&lane.open);
            let Some(open) = open.as_ref() else {
                return Outcome::Lost;
            };
            let call_id = lane.next_call.fetch_add(1, Ordering::Relaxed);
            request.call_id = call_id;
            lock(&lane.waiting).insert(call_id, Waiting { reply, deadline });
            match open.requests.try_send(request) {
                Ok(()) => None,
                Err(TrySendError::Full(request)) => Some((open.requests.clone(), request)),
                Err(TrySendError::Closed(_)) => {
                    lock(&lane.waiting).remove(&call_id);
                    return Outcome::Lost;
                }
            }
        };
        // The lane's queue is full: wait for room (the lane's sweep ends
        // the call at its deadline, as it does while it awaits its reply).
        if let Some((requests, request)) = full {
            tokio::select! {
                sent = requests.send(request) => if sent.is_err() {
                    return Outcome::Lost;
                },
                outcome = &mut replied => return outcome.unwrap_or(Outcome::Lost),
            }
        }
        replied.await.unwrap_or(Outcome::Lost)
    }
}

fn reply_of(reply: StepReply) -> Result<StepReply, ClientError> {
    if reply.error_code == 0 {
        return Ok(reply);
    }
    Err(ClientError::from_status(
        "detection",
        tonic::Status::new(tonic::Code::from_i32(reply.error_code), reply.error_message),
    ))
}

/// Opens the lane's stream, delivers its replies, and opens it again when
/// it breaks, until the edge lets go of its lanes.
async fn run_lane(
    lane: Arc<Lane>,
    mut client: DetectionServiceClient<TimedChannel>,
    changed: Arc<watch::Sender<u64>>,
) {
    let mut backoff = RECONNECT_MIN;
    let mut generation = 0;
    let mut reported_down = false;
    let bump = |changed: &watch::Sender<u64>| changed.send_modify(|count| *count += 1);
    loop {
        let (requests, queued) = mpsc::channel::<StepRequest>(LANE_QUEUE);
        let batches = futures::stream::unfold(queued, |mut queued| async move {
            let mut requests = Vec::with_capacity(8);
            if queued
                .recv_many(&mut requests, MAX_REQUESTS_PER_BATCH)
                .await
                == 0
            {
                return None;
            }
            // The sessions woken with this one queue their requests before
            // the batch goes out: those the same poll of the sockets woke,
            // and those the next poll wakes. Scheduler passes, never a
            // timer: on an idle edge each pass is a poll that finds nothing.
            for _ in 0..GATHER_PASSES {
                tokio::task::yield_now().await;
            }
            while requests.len() < MAX_REQUESTS_PER_BATCH
                && let Ok(request) = queued.try_recv()
            {
                requests.push(request);
            }
            Some((StepBatch { requests }, queued))
        });
        let opened = tokio::select! {
            () = changed.closed() => return,
            opened = tokio::time::timeout(OPEN_DEADLINE, client.stream_step_batches(batches)) => opened,
        };
        let mut replies = match opened {
            Ok(Ok(response)) => response.into_inner(),
            failed => {
                if !reported_down {
                    let error = match failed {
                        Ok(Err(status)) => status.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    tracing::warn!(lane = %lane.name, %error, "detection lane down; retrying");
                    reported_down = true;
                }
                tokio::select! {
                    () = changed.closed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        generation += 1;
        *lock(&lane.open) = Some(OpenLane {
            generation,
            requests,
        });
        bump(&changed);
        if reported_down {
            tracing::info!(lane = %lane.name, "detection lane up again");
        }
        reported_down = false;
        backoff = RECONNECT_MIN;
        let mut sweep = tokio::time::interval(EXPIRY_SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            let next = tokio::select! {
                () = changed.closed() => return,
                next = replies.message() => next,
                now = sweep.tick() => {
                    lane.expire_waiting(now);
                    continue;
                }
            };
            match next {
                Ok(Some(batch)) => batch
                    .replies
                    .into_iter()
                    .for_each(|reply| lane.deliver(reply)),
                Ok(None) => break "the replica ended the stream".to_owned(),
                Err(status) => break status.to_string(),
            }
        };
        *lock(&lane.open) = None;
        lane.lose_waiting();
        bump(&changed);
        tracing::warn!(lane = %lane.name, error = %ended, "detection lane lost; its sessions move to another lane");
    }
}
