//! The session service: the cluster's registry of live sessions.
//!
//! Every session (one per `/ws/realtime` socket) is a record in the
//! `sessions` key-value bucket, keyed by its id. With NATS the bucket is
//! JetStream KV, so any replica answers for any session and a restarted
//! replica loses nothing; every change is a compare-and-swap on the record's
//! revision, so replicas never overwrite each other.
//!
//! The inactivity timeout belongs here, not to the edge: a sweeper in every
//! replica deletes records whose last activity is older than the timeout
//! (the compare-and-swap makes exactly one replica win) and tells the edge
//! holding the socket, over NATS, to send `timeout_response` and close. A
//! session whose edge died is swept the same way.
//!
//! - [`SessionSettings`]: the timeout and how often to sweep.
//! - [`serve`]: the gRPC server, with health and reflection; the one place
//!   the registry's errors become gRPC statuses.
//! - [`Registry`]: the operations themselves, usable without gRPC; they
//!   fail with a [`RegistryError`].
//! - [`workouts`]: seed 001's workout rooms: every frame stored, then counted.

pub mod workouts;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use switchboard_bus::{Bus, BusError, Change, Contended, KeyValue, subjects};
use switchboard_proto::error::{ErrorCode, ServiceError, reply, status};
use switchboard_proto::in_process::Listeners;
use switchboard_proto::v1::session_control::Kind as ControlKind;
use switchboard_proto::v1::session_service_server::{SessionService, SessionServiceServer};
use switchboard_proto::v1::{
    CloseSessionRequest, CloseSessionsRequest, CloseSessionsResponse, CountSessionsRequest,
    CountSessionsResponse, GetSessionRequest, GetWorkoutRequest, LimitPolicy, ListFramesRequest,
    ListFramesResponse, ListSessionsRequest, ListSessionsResponse, OpenSessionRequest,
    RecordActivityRequest, RecordFrameRequest, RecordFrameResponse, ResetSessionRequest, Session,
    SessionControl, TerminateSessionRequest, UserSessions, Workout,
};
use switchboard_proto::{server, unix_now};
use tonic::{Request, Response, Status};

/// The bucket holding one record per live session.
const BUCKET: &str = "sessions";

/// The bucket holding, per user and kind, the user's live sessions
/// ([`UserSessions`]), for per-user limits.
const USER_INDEX_BUCKET: &str = "session_users";

/// Sessions one `CloseSessions` call may close.
pub const MAX_CLOSES_PER_CALL: usize = 1000;
/// Closes of one call in flight at once against the store.
const CLOSES_IN_FLIGHT: usize = 64;

/// Compare-and-swap attempts before a write gives up with ABORTED. Writers
/// to one session are its edge and the sweepers, so a few suffice.
const CAS_ATTEMPTS: usize = 16;

/// Seconds without activity after which a session closes, unless
/// configured otherwise.
pub const DEFAULT_INACTIVITY_TIMEOUT_SECS: f64 = 300.0;

/// The session registry's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionSettings {
    /// Seconds without activity after which a session is closed
    /// (`timeout_response`), cluster-wide.
    #[arg(
        long = "inactivity-timeout-secs",
        env = "SWITCHBOARD_INACTIVITY_TIMEOUT_SECS",
        default_value_t = DEFAULT_INACTIVITY_TIMEOUT_SECS
    )]
    pub inactivity_timeout_secs: f64,

    /// How often each replica looks for timed-out sessions, in
    /// milliseconds; by default a tenth of the timeout, between 50 ms and 5 s.
    #[arg(long = "sweep-interval-ms", env = "SWITCHBOARD_SWEEP_INTERVAL_MS")]
    pub sweep_interval_ms: Option<u64>,

    /// Seconds a pressure frame's `message_id` is remembered: a frame sent
    /// again with the same id within it is stored and counted once, and
    /// answered with the original's result.
    #[arg(
        long = "dedup-window-secs",
        env = "SWITCHBOARD_DEDUP_WINDOW_SECS",
        default_value_t = DEFAULT_DEDUP_WINDOW_SECS,
        value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..),
    )]
    pub dedup_window_secs: u64,
}

/// Seconds a frame's `message_id` is remembered, unless configured
/// otherwise.
pub const DEFAULT_DEDUP_WINDOW_SECS: u64 = 600;

impl Default for SessionSettings {
    /// What an empty command line gives.
    fn default() -> Self {
        Self {
            inactivity_timeout_secs: DEFAULT_INACTIVITY_TIMEOUT_SECS,
            sweep_interval_ms: None,
            dedup_window_secs: DEFAULT_DEDUP_WINDOW_SECS,
        }
    }
}

impl SessionSettings {
    fn dedup_window(&self) -> Duration {
        Duration::from_secs(self.dedup_window_secs.max(1))
    }

    fn sweep_interval(&self) -> Duration {
        match self.sweep_interval_ms {
            Some(ms) => Duration::from_millis(ms.max(1)),
            None => Duration::from_secs_f64(self.inactivity_timeout_secs / 10.0)
                .clamp(Duration::from_millis(50), Duration::from_secs(5)),
        }
    }
}

/// Why the session service could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("inactivity timeout must be a positive number of seconds, got {0}")]
    InvalidTimeout(f64),
    #[error("session state unavailable: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
}

/// Why a registry operation failed. Its `Display` is the message a client
/// reads; [`ServiceError`] says which status code it gets.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("edge_id is required")]
    MissingEdgeId,
    #[error("session {session_id} not found")]
    SessionNotFound { session_id: String },
    /// The user's sessions of this kind are at the limit the open asked
    /// for, and it asked to be refused rather than replace the oldest.
    #[error("user {user_id} already has {live} {kind} connection(s), the limit")]
    LimitReached {
        user_id: String,
        kind: String,
        live: usize,
    },
    #[error("session {session_id} changed concurrently too often")]
    SessionContended { session_id: String },
    #[error("sessions of user {user_id} changed concurrently too often")]
    UserSessionsContended { user_id: String },
    #[error("at most {MAX_CLOSES_PER_CALL} sessions are closed in one call, not {asked}")]
    TooManyCloses { asked: usize },
    #[error("corrupt session record: {0}")]
    CorruptSession(#[source] prost::DecodeError),
    #[error("corrupt user index: {0}")]
    CorruptUserIndex(#[source] prost::DecodeError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl ServiceError for RegistryError {
    fn error_code(&self) -> ErrorCode {
        match self {
            RegistryError::MissingEdgeId | RegistryError::TooManyCloses { .. } => {
                ErrorCode::InvalidArgument
            }
            RegistryError::SessionNotFound { .. } => ErrorCode::NotFound,
            RegistryError::LimitReached { .. } => ErrorCode::LimitReached,
            RegistryError::SessionContended { .. }
            | RegistryError::UserSessionsContended { .. } => ErrorCode::Contended,
            RegistryError::CorruptSession(_) | RegistryError::CorruptUserIndex(_) => {
                ErrorCode::Internal
            }
            RegistryError::Bus(error) => error.error_code(),
        }
    }
}

/// Serves the session registry on `listeners` until `shutdown` completes.
pub async fn serve(
    settings: SessionSettings,
    bus: Bus,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SessionError> {
    let registry = Registry::open(&settings, bus).await?;
    let sweeper = tokio::spawn(registry.clone().sweep_forever(settings.sweep_interval()));
    let routes = tonic::service::Routes::new(SessionServiceServer::new(registry));
    let served = server::serve(
        &[<SessionServiceServer<Registry> as tonic::server::NamedService>::NAME],
        routes,
        listeners,
        shutdown,
    )
    .await;
    sweeper.abort();
    Ok(served?)
}

/// The registry's operations over the `sessions` bucket.
#[derive(Clone, Debug)]
pub struct Registry {
    workouts: workouts::Workouts,
    sessions: KeyValue,
    user_index: KeyValue,
    bus: Bus,
    inactivity_timeout: f64,
}

/// Usage deltas carried by RecordActivity and CloseSession.
struct Usage {
    requests: u64,
    steps: u64,
    predictions: u64,
}

impl Usage {
    fn none() -> Self {
        Self {
            requests: 0,
            steps: 0,
            predictions: 0,
        }
    }

    fn apply(&self, session: &mut Session) {
        session.total_requests += self.requests;
        session.total_steps += self.steps;
        session.total_predictions += self.predictions;
    }
}

fn decode(value: &Bytes) -> Result<Session, RegistryError> {
    Session::decode(value.as_ref()).map_err(RegistryError::CorruptSession)
}

fn encode(session: &Session) -> Bytes {
    Bytes::from(session.encode_to_vec())
}

impl Registry {
    /// Opens the registry's bucket on `bus`.
    pub async fn open(settings: &SessionSettings, bus: Bus) -> Result<Self, SessionError> {
        let timeout = settings.inactivity_timeout_secs;
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(SessionError::InvalidTimeout(timeout));
        }
        Ok(Self {
            workouts: workouts::Workouts::open(&bus, settings.dedup_window()).await?,
            sessions: bus.key_value(BUCKET).await?,
            user_index: bus.key_value(USER_INDEX_BUCKET).await?,
            bus,
            inactivity_timeout: timeout,
        })
    }

    pub async fn open_session(
        &self,
        request: OpenSessionRequest,
    ) -> Result<Session, RegistryError> {
        if request.edge_id.is_empty() {
            return Err(RegistryError::MissingEdgeId);
        }
        let now = unix_now();
        let timeout = request.inactivity_timeout_seconds;
        let on_limit = request.on_limit();
        let session = Session {
            session_id: uuid::Uuid::new_v4().to_string(),
            user_id: request.user_id,
            kind: request.kind,
            edge_id: request.edge_id,
            started_at: now,
            last_activity: now,
            inactivity_timeout_seconds: if timeout.is_finite() && timeout > 0.0 {
                timeout
            } else {
                self.inactivity_timeout
            },
            ..Default::default()
        };
        // The record comes first: a racing open for the same user checks
        // each session in the user's index against its record, and must
        // not take one being opened for one already closed.
        self.sessions
            .create(&session.session_id, encode(&session))
            .await?;
        let replaced = match request.max_per_user {
            0 => Vec::new(),
            limit => match self.claim_user_slot(&session, limit, on_limit).await {
                Ok(replaced) => replaced,
                Err(refused) => {
                    // Not admitted; should this delete fail, the sweeper
                    // removes the record after its inactivity timeout.
                    if let Err(error) = self.remove(&session.session_id, &Usage::none()).await {
                        tracing::warn!(session_id = %session.session_id, %error, "refused session left for the sweeper");
                    }
                    return Err(refused);
                }
            },
        };
        tracing::info!(session_id = %session.session_id, kind = %session.kind, "session opened");
        self.announce("session_opened", &session).await;
        for session_id in replaced {
            let no_usage = Usage::none();
            // Already gone (closed meanwhile) is fine: the slot is free.
            if let Ok(old) = self.remove(&session_id, &no_usage).await {
                tracing::info!(session_id, "session replaced by a newer one");
                let reason = "replaced by a newer connection of the same user".to_owned();
                self.tell_edge(&old, ControlKind::Replaced, reason).await;
            }
        }
        Ok(session)
    }

    /// Adds `session` to its user's index, making room under `limit` per
    /// `policy`; returns the sessions to end. Compare-and-swap on the index
    /// serialises concurrent opens for one user across the cluster, so the
    /// limit holds even when connections race on different edges.
    async fn claim_user_slot(
        &self,
        session: &Session,
        limit: u32,
        policy: LimitPolicy,
    ) -> Result<Vec<String>, RegistryError> {
        let key = format!(
            "{}.{}",
            switchboard_bus::key_token(&session.kind),
            switchboard_bus::key_token(&session.user_id)
        );
        self.user_index
            .update(&key, CAS_ATTEMPTS, |entry| async move {
                let listed = match entry {
                    Some(entry) => {
                        UserSessions::decode(entry.value.as_ref())
                            .map_err(RegistryError::CorruptUserIndex)?
                            .session_ids
                    }
                    None => Vec::new(),
                };
                // Sessions closed or swept since they were listed free their slot.
                let mut live = Vec::with_capacity(listed.len() + 1);
                for session_id in listed {
                    if self.sessions.get(&session_id).await?.is_some() {
                        live.push(session_id);
                    }
                }
                let mut replaced = Vec::new();
                while live.len() >= limit as usize {
                    if policy == LimitPolicy::Refuse {
                        return Err(RegistryError::LimitReached {
                            user_id: session.user_id.clone(),
                            kind: session.kind.clone(),
                            live: live.len(),
                        });
                    }
                    replaced.push(live.remove(0));
                }
                live.push(session.session_id.clone());
                let value = Bytes::from(UserSessions { session_ids: live }.encode_to_vec());
                Ok(Change::Put(value, replaced))
            })
            .await?
            .map_err(|Contended| RegistryError::UserSessionsContended {
                user_id: session.user_id.clone(),
            })
    }

    pub async fn get_session(&self, session_id: &str) -> Result<Session, RegistryError> {
        match self.sessions.get(session_id).await? {
            Some(entry) => decode(&entry.value),
            None => Err(RegistryError::SessionNotFound {
                session_id: session_id.to_owned(),
            }),
        }
    }

    pub async fn list_sessions(
        &self,
        kind: &str,
        user_id: &str,
    ) -> Result<Vec<Session>, RegistryError> {
        let mut sessions = Vec::new();
        for (_, entry) in self.sessions.entries().await? {
            let session = decode(&entry.value)?;
            if (kind.is_empty() || session.kind == kind)
                && (user_id.is_empty() || session.user_id == user_id)
            {
                sessions.push(session);
            }
        }
        sessions.sort_by(|a, b| a.started_at.total_cmp(&b.started_at));
        Ok(sessions)
    }

    /// Live sessions by kind.
    pub async fn count_sessions(
        &self,
    ) -> Result<std::collections::HashMap<String, u64>, RegistryError> {
        let mut by_kind = std::collections::HashMap::new();
        for (_, entry) in self.sessions.entries().await? {
            *by_kind.entry(decode(&entry.value)?.kind).or_default() += 1;
        }
        Ok(by_kind)
    }

    /// Changes the stored record of `session_id` by compare-and-swap:
    /// `change` says, from the record as stored, what becomes of it.
    async fn change_session(
        &self,
        session_id: &str,
        change: impl Fn(Session) -> Change<Session>,
    ) -> Result<Session, RegistryError> {
        let change = &change;
        self.sessions
            .update(session_id, CAS_ATTEMPTS, |entry| async move {
                let entry = entry.ok_or_else(|| RegistryError::SessionNotFound {
                    session_id: session_id.to_owned(),
                })?;
                Ok::<_, RegistryError>(change(decode(&entry.value)?))
            })
            .await?
            .map_err(|Contended| RegistryError::SessionContended {
                session_id: session_id.to_owned(),
            })
    }

    /// Applies `change` to the stored record; returns it as stored.
    async fn modify(
        &self,
        session_id: &str,
        change: impl Fn(&mut Session),
    ) -> Result<Session, RegistryError> {
        self.change_session(session_id, |mut session| {
            change(&mut session);
            Change::Put(encode(&session), session)
        })
        .await
    }

    /// Removes the record and returns it as it ended, with `usage` added.
    async fn remove(&self, session_id: &str, usage: &Usage) -> Result<Session, RegistryError> {
        let mut session = self.change_session(session_id, Change::Delete).await?;
        usage.apply(&mut session);
        Ok(session)
    }

    pub async fn record_activity(
        &self,
        request: RecordActivityRequest,
    ) -> Result<Session, RegistryError> {
        let usage = Usage {
            requests: request.requests,
            steps: request.steps,
            predictions: request.predictions,
        };
        let now = unix_now();
        self.modify(&request.session_id, |session| {
            usage.apply(session);
            session.last_activity = now;
        })
        .await
    }

    pub async fn reset_session(&self, session_id: &str) -> Result<Session, RegistryError> {
        let now = unix_now();
        self.modify(session_id, |session| {
            session.total_steps = 0;
            session.total_predictions = 0;
            session.last_activity = now;
        })
        .await
    }

    pub async fn close_session(
        &self,
        request: CloseSessionRequest,
    ) -> Result<Session, RegistryError> {
        let usage = Usage {
            requests: request.requests,
            steps: request.steps,
            predictions: request.predictions,
        };
        let session = self.remove(&request.session_id, &usage).await?;
        tracing::info!(session_id = %session.session_id, "session closed");
        self.announce("session_closed", &session).await;
        Ok(session)
    }

    /// Closes `requests` together, a bounded number at a time, and says of
    /// each how it went.
    pub async fn close_sessions(
        &self,
        requests: Vec<CloseSessionRequest>,
    ) -> CloseSessionsResponse {
        use futures::StreamExt;
        let outcomes: Vec<(String, Result<Session, RegistryError>)> =
            futures::stream::iter(requests)
                .map(|request| async move {
                    let session_id = request.session_id.clone();
                    (session_id, self.close_session(request).await)
                })
                .buffer_unordered(CLOSES_IN_FLIGHT)
                .collect()
                .await;
        let mut response = CloseSessionsResponse::default();
        for (session_id, outcome) in outcomes {
            match outcome {
                Ok(_) => response.closed.push(session_id),
                Err(RegistryError::SessionNotFound { .. }) => response.unknown.push(session_id),
                Err(error) => {
                    tracing::warn!(%error, session_id = %session_id, "session not closed");
                    response.failed.push(session_id);
                }
            }
        }
        response
    }

    pub async fn terminate_session(
        &self,
        session_id: &str,
        reason: String,
    ) -> Result<Session, RegistryError> {
        let session = self.remove(session_id, &Usage::none()).await?;
        tracing::info!(session_id, reason = %reason, "session terminated");
        self.announce("session_terminated", &session).await;
        self.tell_edge(&session, ControlKind::Terminated, reason)
            .await;
        Ok(session)
    }

    /// Tells the UI hub and the statistics a session's life changed.
    async fn announce(&self, event_type: &str, session: &Session) {
        let data = || {
            serde_json::json!({
                "session_id": session.session_id,
                "user_id": session.user_id,
                "kind": session.kind,
            })
        };
        self.bus.announce(event_type, data).await;
    }

    /// Tells the edge holding `session`'s socket to close it. Best effort: if
    /// that edge is gone, so is the socket.
    async fn tell_edge(&self, session: &Session, kind: ControlKind, reason: String) {
        let control = SessionControl {
            session_id: session.session_id.clone(),
            kind: kind as i32,
            reason,
            session: Some(session.clone()),
        };
        let subject = subjects::edge_control(&session.edge_id);
        if let Err(error) = self
            .bus
            .publish(subject, Bytes::from(control.encode_to_vec()))
            .await
        {
            tracing::warn!(session_id = %session.session_id, %error, "could not tell edge to close session");
        }
    }

    /// Ends every session idle for longer than the timeout; returns how many
    /// this replica ended (another replica may end some first).
    pub async fn sweep_once(&self) -> Result<usize, RegistryError> {
        let now = unix_now();
        let mut ended = 0;
        for (session_id, entry) in self.sessions.entries().await? {
            let session = decode(&entry.value)?;
            // The timeout the session was opened with: replicas that are
            // mid-way through a configuration change agree on each session.
            if now - session.last_activity < session.inactivity_timeout_seconds {
                continue;
            }
            match self.sessions.delete(&session_id, entry.revision).await {
                Ok(()) => {
                    ended += 1;
                    tracing::info!(session_id, "session timed out");
                    self.announce("session_timed_out", &session).await;
                    let reason = format!(
                        "no activity for {} seconds",
                        session.inactivity_timeout_seconds
                    );
                    self.tell_edge(&session, ControlKind::TimedOut, reason)
                        .await;
                }
                // Activity arrived, or another replica swept it first.
                Err(BusError::Conflict(_)) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(ended)
    }

    async fn sweep_forever(self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(error) = self.sweep_once().await {
                tracing::warn!(%error, "inactivity sweep failed");
            }
        }
    }
}

/// The gRPC face of the registry and the workouts: each method calls the
/// operation and answers with its outcome ([`reply`]: an error becomes the
/// client's status).
#[tonic::async_trait]
impl SessionService for Registry {
    async fn open_session(
        &self,
        request: Request<OpenSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        reply(Registry::open_session(self, request.into_inner()).await)
    }

    async fn get_session(
        &self,
        request: Request<GetSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        reply(Registry::get_session(self, &request.into_inner().session_id).await)
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let request = request.into_inner();
        let sessions = Registry::list_sessions(self, &request.kind, &request.user_id).await;
        reply(sessions.map(|sessions| ListSessionsResponse { sessions }))
    }

    async fn count_sessions(
        &self,
        _request: Request<CountSessionsRequest>,
    ) -> Result<Response<CountSessionsResponse>, Status> {
        let by_kind = Registry::count_sessions(self).await;
        reply(by_kind.map(|by_kind| CountSessionsResponse {
            active_sessions: by_kind.values().sum(),
            by_kind,
        }))
    }

    async fn record_activity(
        &self,
        request: Request<RecordActivityRequest>,
    ) -> Result<Response<Session>, Status> {
        reply(Registry::record_activity(self, request.into_inner()).await)
    }

    async fn reset_session(
        &self,
        request: Request<ResetSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        reply(Registry::reset_session(self, &request.into_inner().session_id).await)
    }

    async fn close_session(
        &self,
        request: Request<CloseSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        reply(Registry::close_session(self, request.into_inner()).await)
    }

    async fn close_sessions(
        &self,
        request: Request<CloseSessionsRequest>,
    ) -> Result<Response<CloseSessionsResponse>, Status> {
        let requests = request.into_inner().sessions;
        if requests.len() > MAX_CLOSES_PER_CALL {
            return reply(Err(RegistryError::TooManyCloses {
                asked: requests.len(),
            }));
        }
        Ok(Response::new(
            Registry::close_sessions(self, requests).await,
        ))
    }

    async fn terminate_session(
        &self,
        request: Request<TerminateSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        let request = request.into_inner();
        let reason = if request.reason.is_empty() {
            "terminated by request".to_owned()
        } else {
            request.reason
        };
        reply(Registry::terminate_session(self, &request.session_id, reason).await)
    }

    async fn record_frame(
        &self,
        request: Request<RecordFrameRequest>,
    ) -> Result<Response<RecordFrameResponse>, Status> {
        let frame = request
            .into_inner()
            .frame
            .ok_or(workouts::WorkoutError::MissingFrame)
            .map_err(status)?;
        reply(self.workouts.record_frame(frame).await)
    }

    async fn get_workout(
        &self,
        request: Request<GetWorkoutRequest>,
    ) -> Result<Response<Workout>, Status> {
        reply(
            self.workouts
                .workout(&request.into_inner().workout_id)
                .await,
        )
    }

    async fn list_frames(
        &self,
        request: Request<ListFramesRequest>,
    ) -> Result<Response<ListFramesResponse>, Status> {
        let request = request.into_inner();
        reply(
            self.workouts
                .frames(&request.workout_id, request.after_sequence, request.limit)
                .await,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_bus::BusSettings;

    async fn registry() -> (Registry, Bus) {
        let bus = Bus::connect(&BusSettings::default()).await.unwrap();
        let settings = SessionSettings::default();
        (Registry::open(&settings, bus.clone()).await.unwrap(), bus)
    }

    /// The next control message to `edge-a`, waiting at most five seconds.
    async fn next_control(control: &mut switchboard_bus::Subscription) -> SessionControl {
        let message = tokio::time::timeout(Duration::from_secs(5), control.next())
            .await
            .expect("a control message within 5 s")
            .expect("the bus is up");
        SessionControl::decode(message.payload.as_ref()).unwrap()
    }

    fn open_request() -> OpenSessionRequest {
        OpenSessionRequest {
            user_id: "u1".into(),
            kind: "realtime".into(),
            edge_id: "edge-a".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_per_user_limit_replaces_the_oldest_or_refuses() {
        let (registry, bus) = registry().await;
        let mut control = bus
            .subscribe(subjects::edge_control("edge-a"))
            .await
            .unwrap();
        let limited = |policy: LimitPolicy| OpenSessionRequest {
            kind: "alerts".into(),
            max_per_user: 1,
            on_limit: policy as i32,
            ..open_request()
        };
        let first = registry
            .open_session(limited(LimitPolicy::ReplaceOldest))
            .await
            .unwrap();
        let second = registry
            .open_session(limited(LimitPolicy::ReplaceOldest))
            .await
            .unwrap();
        let replaced = next_control(&mut control).await;
        assert_eq!(replaced.kind(), ControlKind::Replaced);
        assert_eq!(replaced.session_id, first.session_id);
        let live = registry.list_sessions("alerts", "u1").await.unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].session_id, second.session_id);

        let refused = registry
            .open_session(limited(LimitPolicy::Refuse))
            .await
            .unwrap_err();
        let refused = status(refused);
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            refused.message(),
            "user u1 already has 1 alerts connection(s), the limit"
        );
        // Another user, or another kind, has its own slots.
        let other_user = OpenSessionRequest {
            user_id: "u2".into(),
            ..limited(LimitPolicy::Refuse)
        };
        registry.open_session(other_user).await.unwrap();
        // A closed session frees its slot.
        registry
            .close_session(CloseSessionRequest {
                session_id: second.session_id,
                ..Default::default()
            })
            .await
            .unwrap();
        registry
            .open_session(limited(LimitPolicy::Refuse))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn activity_accumulates_and_reset_zeroes_steps() {
        let (registry, _) = registry().await;
        let session = registry.open_session(open_request()).await.unwrap();
        let id = session.session_id.clone();
        let activity = |requests, steps| RecordActivityRequest {
            session_id: id.clone(),
            requests,
            steps,
            predictions: requests,
        };
        registry.record_activity(activity(3, 1)).await.unwrap();
        let session = registry.record_activity(activity(2, 2)).await.unwrap();
        assert_eq!((session.total_requests, session.total_steps), (5, 3));
        let session = registry.reset_session(&id).await.unwrap();
        assert_eq!((session.total_requests, session.total_steps), (5, 0));
        assert_eq!(registry.count_sessions().await.unwrap()["realtime"], 1);
        let closed = registry
            .close_session(CloseSessionRequest {
                session_id: id.clone(),
                requests: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(closed.total_requests, 6);
        let gone = status(registry.get_session(&id).await.unwrap_err());
        assert_eq!(gone.code(), tonic::Code::NotFound);
        assert_eq!(gone.message(), format!("session {id} not found"));
        let closed_again = registry
            .close_session(CloseSessionRequest {
                session_id: id.clone(),
                ..Default::default()
            })
            .await;
        assert!(matches!(
            closed_again,
            Err(RegistryError::SessionNotFound { .. })
        ));
    }

    #[tokio::test]
    async fn idle_sessions_are_swept_and_their_edge_told() {
        let (registry, bus) = registry().await;
        let mut control = bus
            .subscribe(subjects::edge_control("edge-a"))
            .await
            .unwrap();
        let session = registry.open_session(open_request()).await.unwrap();
        let active = registry.open_session(open_request()).await.unwrap();
        assert_eq!(registry.sweep_once().await.unwrap(), 0, "nothing idle yet");
        // Its last activity a little more than the timeout ago.
        registry
            .modify(&session.session_id, |session| {
                session.last_activity -= session.inactivity_timeout_seconds + 1.0;
            })
            .await
            .unwrap();
        assert_eq!(registry.sweep_once().await.unwrap(), 1);
        let control = next_control(&mut control).await;
        assert_eq!(control.session_id, session.session_id);
        assert_eq!(control.kind(), ControlKind::TimedOut);
        let live = registry.list_sessions("", "").await.unwrap();
        assert_eq!(live, vec![active]);
    }

    #[tokio::test]
    async fn terminate_tells_the_holding_edge() {
        let (registry, bus) = registry().await;
        let mut control = bus
            .subscribe(subjects::edge_control("edge-a"))
            .await
            .unwrap();
        let session = registry.open_session(open_request()).await.unwrap();
        registry
            .terminate_session(&session.session_id, "admin".into())
            .await
            .unwrap();
        let control = next_control(&mut control).await;
        assert_eq!(control.kind(), ControlKind::Terminated);
        assert_eq!(control.reason, "admin");
    }

    #[test]
    fn the_default_settings_are_what_an_empty_command_line_gives() {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            session: SessionSettings,
        }
        let environment = [
            "SWITCHBOARD_INACTIVITY_TIMEOUT_SECS",
            "SWITCHBOARD_SWEEP_INTERVAL_MS",
            "SWITCHBOARD_DEDUP_WINDOW_SECS",
        ];
        if environment
            .iter()
            .any(|name| std::env::var_os(name).is_some())
        {
            return;
        }
        let parsed = <Command as clap::Parser>::parse_from(["switchboard"]).session;
        let default = SessionSettings::default();
        assert_eq!(
            (
                parsed.inactivity_timeout_secs,
                parsed.sweep_interval_ms,
                parsed.dedup_window_secs
            ),
            (
                default.inactivity_timeout_secs,
                default.sweep_interval_ms,
                default.dedup_window_secs
            )
        );
        assert_eq!(default.dedup_window_secs, 600);
    }

    #[test]
    fn errors_reach_grpc_clients_with_their_codes_and_messages() {
        let cases = [
            (
                RegistryError::MissingEdgeId,
                tonic::Code::InvalidArgument,
                "edge_id is required",
            ),
            (
                RegistryError::SessionNotFound {
                    session_id: "s1".into(),
                },
                tonic::Code::NotFound,
                "session s1 not found",
            ),
            (
                RegistryError::LimitReached {
                    user_id: "u1".into(),
                    kind: "alerts".into(),
                    live: 1,
                },
                tonic::Code::ResourceExhausted,
                "user u1 already has 1 alerts connection(s), the limit",
            ),
            (
                RegistryError::SessionContended {
                    session_id: "s1".into(),
                },
                tonic::Code::Aborted,
                "session s1 changed concurrently too often",
            ),
            (
                RegistryError::UserSessionsContended {
                    user_id: "u1".into(),
                },
                tonic::Code::Aborted,
                "sessions of user u1 changed concurrently too often",
            ),
            (
                RegistryError::Bus(BusError::Conflict("k".into())),
                tonic::Code::Aborted,
                "revision conflict on key k",
            ),
            (
                RegistryError::Bus(BusError::Full("log".into())),
                tonic::Code::ResourceExhausted,
                "store full: log",
            ),
        ];
        for (error, code, message) in cases {
            let status = status(error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
        let corrupt = Session::decode(&b"\xff"[..]).unwrap_err();
        let status = status(RegistryError::CorruptSession(corrupt));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(status.message().starts_with("corrupt session record: "));
    }
}
