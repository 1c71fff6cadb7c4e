//! Broadcast hubs: the UI hub (seed 003, `/ws/ui`) and the statistics
//! stream (seed 004, `/api/ws/statistics`).
//!
//! A message for a hub arrives once per edge, from NATS, and is handed to
//! each local client's bounded queue as shared bytes (serialised once by
//! its publisher). A client whose queue is full is dropped from the hub at
//! once (its queue freed) and its socket closed: it cannot slow anyone
//! else, and the edge's memory for it stays bounded. Such a client has lost
//! the messages it did not read; it reconnects, and the statistics stream's
//! clients can read the current figures from `GET /api/statistics`.
//!
//! Every message arrives from the hub's history ([`switchboard_bus::history`])
//! with its offset, and is handed out with its position stamped on it, so a
//! client that reconnects can [`resume`].
//!
//! - [`Hub`]: the fan-out, with per-client type filters and targets.
//! - [`resume`]: positions, and replaying what a reconnecting client missed.
//! - [`ui`]: `/ws/ui` and `POST /api/events/broadcast[/action|/overlay|/telemetry]`.
//! - [`statistics`]: `/api/ws/statistics`, its REST fallbacks, targeted sends.

pub mod resume;
pub mod statistics;
pub mod ui;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use bytes::Bytes;
use switchboard_bus::History;
use switchboard_bus::history::{Follower, Kept};
use switchboard_bus::hub::{self, HubMessageError, StreamAudience};
use switchboard_bus::{Bus, Channel};
use switchboard_proto::trace::received;
use switchboard_proto::v1::session_service_client::SessionServiceClient;
use switchboard_proto::v1::statistics_service_client::StatisticsServiceClient;
use tokio::sync::mpsc;

use crate::caller::Identities;
use crate::connection::{Close, Conn, Driver, Flow, Transport};
use crate::error::ClientError;
use crate::settings::TimedChannel;

/// Messages queued per client; one more and the client is dropped.
pub const CLIENT_QUEUE: usize = 256;

/// Limits of seed 004's statistics stream.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Connections one user may hold across the cluster.
    pub max_connections: u32,
    /// Messages per second one connection may send.
    pub rate_limit: u32,
}

/// What the hubs and their routes need.
#[derive(Clone, Debug)]
pub struct HubsState {
    pub driver: Driver,
    pub identities: Identities,
    /// `/ws/ui` clients here.
    pub ui_hub: Arc<Hub>,
    /// `/api/ws/statistics` clients here.
    pub stream_hub: Arc<Hub>,
    pub stream_limits: StreamLimits,
    /// Statistics-stream connections are registry sessions.
    pub sessions: SessionServiceClient<TimedChannel>,
    /// `GET /api/statistics`.
    pub statistics: StatisticsServiceClient<TimedChannel>,
    /// Where broadcasts are published: no service adds anything to them.
    pub bus: Bus,
}

impl FromRef<HubsState> for Identities {
    fn from_ref(state: &HubsState) -> Self {
        state.identities.clone()
    }
}

/// `/ws/ui`, `/api/ws/statistics` and their REST routes.
pub fn router(state: HubsState) -> Router {
    Router::new()
        .route("/ws/ui", get(ui::upgrade))
        .route("/api/events/broadcast", post(ui::broadcast_event))
        .route("/api/events/broadcast/action", post(ui::broadcast_action))
        .route("/api/events/broadcast/overlay", post(ui::broadcast_overlay))
        .route(
            "/api/events/broadcast/telemetry",
            post(ui::broadcast_telemetry),
        )
        .route("/api/ws/statistics", get(statistics::upgrade))
        .route("/api/statistics", get(statistics::current))
        .route(
            "/api/ws/statistics/connections",
            get(statistics::connections),
        )
        .route("/api/ws/statistics/broadcast", post(statistics::broadcast))
        .route(
            "/api/ws/statistics/users/{user_id}/messages",
            post(statistics::to_user),
        )
        .route(
            "/api/ws/statistics/connections/{connection_id}/messages",
            post(statistics::to_connection),
        )
        .with_state(state)
}

impl From<HubMessageError> for ClientError {
    fn from(error: HubMessageError) -> Self {
        ClientError::InvalidMessage(error.to_string())
    }
}

/// The bus refused a broadcast: it was not sent.
fn unpublished(error: switchboard_bus::BusError) -> ClientError {
    tracing::warn!(%error, "broadcast not published");
    ClientError::Unavailable {
        service: "message bus",
        detail: error.to_string(),
    }
}

/// While NATS is unreachable a broadcast is refused (503), not accepted
/// and lost: core NATS keeps no message for later.
fn connected(state: &HubsState) -> Result<(), ClientError> {
    if state.bus.is_connected() {
        Ok(())
    } else {
        Err(ClientError::Unavailable {
            service: "message bus",
            detail: "not connected; retry".to_owned(),
        })
    }
}

/// Publishes a UI hub message to every edge's `/ws/ui` clients.
async fn publish_ui(state: &HubsState, message: hub::UiMessage) -> Result<(), ClientError> {
    connected(state)?;
    state.bus.publish_ui(message).await.map_err(unpublished)
}

/// Publishes a statistics-stream message to `audience`, on every edge.
async fn publish_stream(
    state: &HubsState,
    audience: &StreamAudience,
    message: hub::StreamMessage,
) -> Result<(), ClientError> {
    connected(state)?;
    state
        .bus
        .publish_stream(audience, message)
        .await
        .map_err(unpublished)
}

/// Which messages of a broadcast a client wants (personal messages always
/// arrive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every type but these (the default: every type).
    AllBut(HashSet<String>),
    /// Only these types.
    Only(HashSet<String>),
}

impl Default for Filter {
    fn default() -> Self {
        Filter::AllBut(HashSet::new())
    }
}

impl Filter {
    pub fn admits(&self, kind: &str) -> bool {
        match self {
            Filter::AllBut(excluded) => !excluded.contains(kind),
            Filter::Only(included) => included.contains(kind),
        }
    }

    /// `subscribe`: the first one narrows "everything" to the list; later
    /// ones add to it.
    pub fn subscribe(&mut self, types: &[String]) {
        match self {
            Filter::AllBut(excluded) if excluded.is_empty() => {
                *self = Filter::Only(types.iter().cloned().collect());
            }
            Filter::AllBut(excluded) => {
                for kind in types {
                    excluded.remove(kind);
                }
            }
            Filter::Only(included) => included.extend(types.iter().cloned()),
        }
    }

    pub fn unsubscribe(&mut self, types: &[String]) {
        match self {
            Filter::AllBut(excluded) => excluded.extend(types.iter().cloned()),
            Filter::Only(included) => {
                for kind in types {
                    included.remove(kind);
                }
            }
        }
    }

    /// The subscribed types, for telling the client (`["*"]` for all).
    pub fn describe(&self) -> Vec<String> {
        let mut types: Vec<String> = match self {
            Filter::AllBut(excluded) if excluded.is_empty() => vec!["*".to_owned()],
            Filter::AllBut(excluded) => excluded.iter().map(|kind| format!("-{kind}")).collect(),
            Filter::Only(included) => included.iter().cloned().collect(),
        };
        types.sort();
        types
    }
}

/// Whom a message is for.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    All,
    User(&'a str),
    Connection(&'a str),
}

/// A hub message for one client: its offset in the hub's history, and its
/// bytes with the position stamped on them.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub offset: u64,
    pub payload: Bytes,
}

struct Client {
    user_id: String,
    connection_id: String,
    /// Unix seconds.
    connected_at: f64,
    queue: mpsc::Sender<Delivery>,
    filter: Filter,
}

/// One hub's local clients.
#[derive(Default)]
pub struct Hub {
    next_id: AtomicU64,
    clients: Mutex<HashMap<u64, Client>>,
    /// Clients dropped for not keeping up, since start.
    dropped: AtomicU64,
    /// The newest offset handed out (or where following started).
    last_offset: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Hub")
            .field("clients", &self.lock().len())
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

/// A client's place in a hub; leaving is dropping it.
#[derive(Debug)]
pub struct Member {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.hub.lock().remove(&self.id);
    }
}

impl Member {
    /// The client's filter now.
    pub fn filter(&self) -> Filter {
        self.hub
            .lock()
            .get(&self.id)
            .map(|client| client.filter.clone())
            .unwrap_or_default()
    }

    pub fn update_filter(&self, change: impl FnOnce(&mut Filter)) -> Vec<String> {
        let mut clients = self.hub.lock();
        match clients.get_mut(&self.id) {
            Some(client) => {
                change(&mut client.filter);
                client.filter.describe()
            }
            None => Vec::new(),
        }
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Client>> {
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a client; its messages arrive on the returned queue, which ends
    /// if the client is dropped for being too slow.
    pub fn join(
        self: &Arc<Self>,
        user_id: &str,
        connection_id: &str,
    ) -> (Member, mpsc::Receiver<Delivery>) {
        let (queue, receiver) = mpsc::channel(CLIENT_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Client {
                user_id: user_id.to_owned(),
                connection_id: connection_id.to_owned(),
                connected_at: switchboard_proto::unix_now(),
                queue,
                filter: Filter::default(),
            },
        );
        (
            Member {
                hub: Arc::clone(self),
                id,
            },
            receiver,
        )
    }

    /// Up to `limit` of its clients, oldest first: (connection id, Unix
    /// seconds connected). Only those are copied, so listing a few of many
    /// clients holds the hub's lock for a scan of their numbers.
    pub fn clients(&self, limit: usize) -> Vec<(String, f64)> {
        let clients = self.lock();
        let mut oldest: Vec<u64> = clients.keys().copied().collect();
        if oldest.len() > limit {
            oldest.select_nth_unstable(limit);
            oldest.truncate(limit);
        }
        oldest.sort_unstable();
        oldest
            .iter()
            .filter_map(|id| clients.get(id))
            .map(|client| (client.connection_id.clone(), client.connected_at))
            .collect()
    }

    /// The newest offset this hub handed out: a client joining now gets
    /// every message after it.
    pub fn last_offset(&self) -> u64 {
        self.last_offset.load(Ordering::Acquire)
    }

    /// Where following the history started: messages up to `offset` are
    /// not this hub's to hand out.
    pub fn start_at(&self, offset: u64) {
        self.last_offset.fetch_max(offset, Ordering::AcqRel);
    }

    /// Hands message `offset` (of type `kind`, position stamped on
    /// `payload`) to every client it is for, unless it was handed out
    /// already; drops the clients that cannot take it.
    pub fn deliver(&self, offset: u64, payload: &Bytes, kind: &str, target: Target<'_>) {
        let mut clients = self.lock();
        if self.last_offset.fetch_max(offset, Ordering::AcqRel) >= offset {
            return;
        }
        let mut too_slow = Vec::new();
        for (id, client) in clients.iter() {
            let wanted = match target {
                Target::All => client.filter.admits(kind),
                Target::User(user_id) => client.user_id == user_id,
                Target::Connection(connection_id) => client.connection_id == connection_id,
            };
            let delivery = || Delivery {
                offset,
                payload: payload.clone(),
            };
            if wanted && client.queue.try_send(delivery()).is_err() {
                too_slow.push(*id);
            }
        }
        for id in too_slow {
            // Dropping the queue's sender ends the client's receiver: its
            // socket task closes the connection.
            if let Some(client) = clients.remove(&id) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                switchboard_proto::metrics::metrics().outbound_drop("hub_client");
                tracing::info!(connection_id = %client.connection_id, "slow client dropped from hub");
            }
        }
    }
}

/// Relays a hub's history to its local clients as it grows: `/ws/ui`
/// messages to all, statistics-stream messages to all (by their filters),
/// to one user, or to one connection.
pub async fn relay(mut follower: Follower, hub: Arc<Hub>, channel: Channel, epoch: String) {
    hub.start_at(follower.last());
    while let Some(kept) = follower.next().await {
        let span = received(
            &kept.trace,
            || tracing::info_span!("nats.receive", subject = %kept.subject, trace_id = tracing::field::Empty),
        );
        let _entered = span.enter();
        let payload = resume::stamped(&kept.payload, kept.offset, &epoch);
        if channel == Channel::Ui {
            hub.deliver(kept.offset, &payload, "", Target::All);
            continue;
        }
        let kind = hub::message_type(&kept.payload).unwrap_or_default();
        let target = StreamAudience::of_subject(&kept.subject);
        match &target {
            Some(StreamAudience::All) => hub.deliver(kept.offset, &payload, &kind, Target::All),
            Some(StreamAudience::User(user_id)) => {
                hub.deliver(kept.offset, &payload, &kind, Target::User(user_id));
            }
            Some(StreamAudience::Connection { connection_id, .. }) => {
                hub.deliver(
                    kept.offset,
                    &payload,
                    &kind,
                    Target::Connection(connection_id),
                );
            }
            None => tracing::debug!(subject = %kept.subject, "not a statistics-stream subject"),
        }
    }
}

/// What a hub connection holds of its hub: its place and queue once it
/// joined, what it was handed, and the position its URL asked to resume
/// from. `/ws/ui` and `/api/ws/statistics` differ in their hub, their
/// welcome and what a client may replay; the rest is this.
pub(crate) struct HubPlace {
    history: History,
    membership: Option<(Member, mpsc::Receiver<Delivery>)>,
    seen: resume::Seen,
    resume_from: Option<Result<resume::Position, ClientError>>,
}

impl HubPlace {
    /// A connection to the hub whose history is `history`, not joined yet.
    pub fn new(
        history: History,
        resume_from: Option<Result<resume::Position, ClientError>>,
    ) -> Self {
        Self {
            history,
            membership: None,
            seen: resume::Seen::default(),
            resume_from,
        }
    }

    /// Joins `hub`, so that live messages queue up from now on; the
    /// offset after which they reach the client (the welcome's `offset`).
    pub fn join(&mut self, hub: &Arc<Hub>, user_id: &str, connection_id: &str) -> u64 {
        self.membership = Some(hub.join(user_id, connection_id));
        self.seen.last = hub.last_offset();
        self.seen.last
    }

    /// The history's epoch (the welcome's `epoch`).
    pub fn epoch(&self) -> &str {
        self.history.epoch()
    }

    /// Its place in the hub, once joined.
    pub fn member(&self) -> Option<&Member> {
        self.membership.as_ref().map(|(member, _)| member)
    }

    /// Leaves the hub: no more messages queue up for the client.
    pub fn leave(&mut self) {
        self.membership = None;
    }

    /// Sends `hello`, then replays from the position the URL asked for, if
    /// it asked ([`resume::welcome`]).
    pub async fn welcome<T: Transport>(
        &mut self,
        hello: &serde_json::Value,
        admits: impl Fn(&Kept) -> bool,
        conn: &mut Conn<'_, T>,
    ) -> Flow {
        let requested = self.resume_from.take();
        resume::welcome(
            hello,
            requested,
            &self.history,
            &mut self.seen,
            admits,
            conn,
        )
        .await
    }

    /// Replays what the client may read after `from` ([`resume::resume`]).
    pub async fn resume<T: Transport>(
        &mut self,
        from: &resume::Position,
        admits: impl Fn(&Kept) -> bool,
        conn: &mut Conn<'_, T>,
    ) -> Flow {
        resume::resume(&self.history, from, &mut self.seen, admits, conn).await
    }

    /// The next hub message; pending until joined; `None` once the client
    /// was dropped for being slow.
    pub async fn next(&mut self) -> Option<Delivery> {
        match &mut self.membership {
            Some((_, messages)) => messages.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Sends a hub message to the client unless it was replayed already,
    /// or closes a client that was dropped for not reading (1008).
    pub async fn forward<T: Transport>(
        &mut self,
        message: Option<Delivery>,
        conn: &mut Conn<'_, T>,
    ) -> Flow {
        match message {
            Some(delivery) if self.seen.take_live(delivery.offset) => {
                conn.send_shared(delivery.payload).await.into()
            }
            Some(_) => Flow::Continue,
            None => Flow::Close(Close::TooSlow {
                queued: CLIENT_QUEUE,
            }),
        }
    }
}

/// A hub's `error` message: the code, the message, the time (RFC 3339, as
/// every hub message has it).
pub fn error_message(error: &ClientError) -> serde_json::Value {
    serde_json::json!({
        "type": "error",
        "code": error.code(),
        "message": error.to_string(),
        "timestamp": switchboard_bus::rfc3339_now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(list: &[&str]) -> Vec<String> {
        list.iter().map(|kind| kind.to_string()).collect()
    }

    #[test]
    fn filters_start_open_and_narrow_on_the_first_subscribe() {
        let mut filter = Filter::default();
        assert!(filter.admits("statistics_update"));
        filter.subscribe(&types(&["camera_event"]));
        assert!(filter.admits("camera_event") && !filter.admits("alert"));
        filter.subscribe(&types(&["alert"]));
        filter.unsubscribe(&types(&["camera_event"]));
        assert_eq!(filter.describe(), types(&["alert"]));

        let mut open = Filter::default();
        open.unsubscribe(&types(&["statistics_update"]));
        assert!(!open.admits("statistics_update") && open.admits("alert"));
    }

    #[tokio::test]
    async fn a_full_queue_drops_only_that_client() {
        let hub = Arc::new(Hub::default());
        let (_slow_member, mut slow) = hub.join("u1", "c1");
        let (_live_member, mut live) = hub.join("u2", "c2");
        let message = Bytes::from_static(b"{\"type\":\"x\"}");
        let mut offset = 0;
        for _ in 0..=CLIENT_QUEUE {
            offset += 1;
            hub.deliver(offset, &message, "x", Target::All);
            live.recv().await.unwrap();
        }
        // The slow client got its queue's worth, then its queue ended.
        for _ in 0..CLIENT_QUEUE {
            slow.recv().await.unwrap();
        }
        assert!(slow.recv().await.is_none());
        hub.deliver(offset + 1, &message, "x", Target::All);
        assert_eq!(live.recv().await.unwrap().offset, offset + 1);
        hub.deliver(offset + 1, &message, "x", Target::All);
        assert!(live.try_recv().is_err(), "an offset is handed out once");
    }

    #[tokio::test]
    async fn targeted_messages_reach_their_user_or_connection_only() {
        let hub = Arc::new(Hub::default());
        let (_a, mut ada) = hub.join("ada", "c1");
        let (_b, mut bob) = hub.join("bob", "c2");
        let message = Bytes::from_static(b"{}");
        hub.deliver(1, &message, "note", Target::User("ada"));
        hub.deliver(2, &message, "note", Target::Connection("c2"));
        assert!(ada.try_recv().is_ok() && ada.try_recv().is_err());
        assert!(bob.try_recv().is_ok() && bob.try_recv().is_err());
    }
}
