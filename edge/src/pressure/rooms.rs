//! Workout rooms across edge instances.
//!
//! A room's events travel on NATS subject
//! `switchboard.workout.<workout>.events`. An edge subscribes to a room's
//! subject while it holds at least one member of that room, and hands each
//! event to its local members: plain WebSocket members through their
//! bounded queues (a member that does not keep up loses events, never slows
//! the others), Socket.IO members through socketioxide's local room. The
//! event is serialised once by its publisher and shared as is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
#[cfg(test)]
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use switchboard_bus::{Bus, BusError};
use switchboard_proto::trace::received;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Events queued for one WebSocket member before it starts losing them.
pub const MEMBER_QUEUE: usize = 64;

/// Longest wait for NATS to confirm a room's new subscription.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn subject(workout_id: &str) -> String {
    format!(
        "switchboard.workout.{}.events",
        switchboard_bus::key_token(workout_id)
    )
}

/// The Socket.IO room name of a workout.
pub fn socketio_room(workout_id: &str) -> String {
    format!("workout:{workout_id}")
}

/// An event as it travels: the JSON text's bytes, shared (no copy per
/// member).
pub type RoomEvent = Bytes;

/// Who joins a room.
#[derive(Debug)]
pub enum Member {
    /// A plain WebSocket (or a Socket.IO socket that resumed): events
    /// arrive on its queue; when the queue is full the member is dropped
    /// from every room it is in and [`MemberQueue::dropped`] tells its
    /// connection.
    WebSocket(MemberQueue),
    /// A Socket.IO socket (its id): it already joined the socketioxide
    /// room, and its own [`socketio_private_room`].
    SocketIo(String),
}

/// A plain WebSocket member's bounded queue of room events, and the signal
/// that it was dropped for not reading.
#[derive(Debug, Clone)]
pub struct MemberQueue {
    pub events: mpsc::Sender<RoomEvent>,
    pub dropped: Arc<tokio::sync::Notify>,
}

impl MemberQueue {
    /// A queue of [`MEMBER_QUEUE`] events, and its receiving end.
    pub fn new() -> (Self, mpsc::Receiver<RoomEvent>) {
        let (events, receiver) = mpsc::channel(MEMBER_QUEUE);
        let queue = Self {
            events,
            dropped: Arc::default(),
        };
        (queue, receiver)
    }
}

/// The Socket.IO room only `socket_id` is in: a room event can leave out
/// its sender, who was answered directly.
pub fn socketio_private_room(socket_id: &str) -> String {
    format!("socket:{socket_id}")
}

/// What an origin says of a member: a Socket.IO socket, or this edge's
/// WebSocket member `n`.
const SOCKETIO_ORIGIN: &str = "socketio:";

#[derive(Default)]
struct Room {
    next_member: u64,
    websocket_members: HashMap<u64, MemberQueue>,
    socketio_members: usize,
    relay: Option<JoinHandle<()>>,
}

impl Room {
    fn is_empty(&self) -> bool {
        self.websocket_members.is_empty() && self.socketio_members == 0
    }
}

/// The rooms this edge holds members of.
pub struct Rooms {
    bus: Bus,
    io: SocketIo,
    /// Names this edge's WebSocket members in origins (ids are per edge).
    origin_prefix: String,
    rooms: Mutex<HashMap<String, Room>>,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Rooms")
            .field("rooms", &self.lock().len())
            .finish()
    }
}

/// Membership in one room; leaving is dropping it.
///
/// Its [`origin`](Membership::origin) tags what the member publishes, so
/// the room's fan-out leaves the member out: the sender's answer to its own
/// frame is a reply it gets directly, never a broadcast it could lose.
#[derive(Debug)]
pub struct Membership {
    rooms: Arc<Rooms>,
    workout_id: String,
    /// This edge's WebSocket member id; `None` for a Socket.IO socket.
    member: Option<u64>,
    /// What its publications carry: see [`Rooms::publish`].
    origin: String,
}

impl Membership {
    /// The tag of what this member publishes.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut rooms = self.rooms.lock();
        let Some(room) = rooms.get_mut(&self.workout_id) else {
            return;
        };
        match self.member {
            Some(id) => {
                room.websocket_members.remove(&id);
            }
            None => room.socketio_members = room.socketio_members.saturating_sub(1),
        }
        if room.is_empty() {
            if let Some(relay) = room.relay.take() {
                relay.abort();
            }
            rooms.remove(&self.workout_id);
        }
    }
}

impl Rooms {
    pub fn new(bus: Bus, io: SocketIo) -> Self {
        Self {
            bus,
            io,
            origin_prefix: format!("websocket:{}:", uuid::Uuid::new_v4().simple()),
            rooms: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `member` to `workout_id`'s room, subscribing to the room's
    /// events when it is the first member here.
    pub async fn join(
        self: &Arc<Self>,
        workout_id: &str,
        member: Member,
    ) -> Result<Membership, BusError> {
        let needs_relay = !self.lock().contains_key(workout_id);
        // Subscribe outside the lock; if another join got there first, its
        // relay serves both and this subscription is dropped.
        let subscription = if needs_relay {
            let subscription = self.bus.subscribe(subject(workout_id)).await?;
            // Events published from now on reach this edge: a resume reads
            // the log after this, so it misses none in between. Bounded:
            // while NATS is away, the room is joined all the same.
            match tokio::time::timeout(SETTLE_WAIT, self.bus.settle()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "room subscription not confirmed"),
                Err(_) => tracing::warn!("room subscription not confirmed in time"),
            }
            Some(subscription)
        } else {
            None
        };
        let mut rooms = self.lock();
        let room = rooms.entry(workout_id.to_owned()).or_default();
        if room.relay.is_none()
            && let Some(subscription) = subscription
        {
            room.relay = Some(tokio::spawn(relay(
                Arc::downgrade(self),
                workout_id.to_owned(),
                subscription,
            )));
        }
        let (member, origin) = match member {
            Member::WebSocket(queue) => {
                room.next_member += 1;
                let id = room.next_member;
                room.websocket_members.insert(id, queue);
                (Some(id), format!("{}{id}", self.origin_prefix))
            }
            Member::SocketIo(socket_id) => {
                room.socketio_members += 1;
                (None, format!("{SOCKETIO_ORIGIN}{socket_id}"))
            }
        };
        Ok(Membership {
            rooms: Arc::clone(self),
            workout_id: workout_id.to_owned(),
            member,
            origin,
        })
    }

    /// Publishes `event` (JSON) to every member of the room, on every edge,
    /// but the member whose [`Membership::origin`] is `origin` (it was
    /// answered directly).
    pub async fn publish(
        &self,
        workout_id: &str,
        event: String,
        origin: Option<&str>,
    ) -> Result<(), BusError> {
        let subject = subject(workout_id);
        let event = Bytes::from(event);
        match origin {
            Some(origin) => self.bus.publish_from(subject, event, origin).await,
            None => self.bus.publish(subject, event).await,
        }
    }

    /// Local WebSocket members' queues but the one `origin` names, cloned
    /// so no lock outlives this call.
    fn websocket_members(&self, workout_id: &str, origin: Option<&str>) -> Vec<(u64, MemberQueue)> {
        let sender = origin
            .and_then(|origin| origin.strip_prefix(self.origin_prefix.as_str()))
            .and_then(|id| id.parse::<u64>().ok());
        self.lock()
            .get(workout_id)
            .map(|room| {
                room.websocket_members
                    .iter()
                    .filter(|(id, _)| Some(**id) != sender)
                    .map(|(id, queue)| (*id, queue.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Hands every event of one room's subscription to the local members.
async fn relay(
    rooms: std::sync::Weak<Rooms>,
    workout_id: String,
    mut subscription: switchboard_bus::Subscription,
) {
    let socketio_room = socketio_room(&workout_id);
    while let Some(message) = subscription.next().await {
        let Some(rooms) = rooms.upgrade() else { return };
        let span = received(
            &message.trace,
            || tracing::info_span!("room.deliver", workout_id = %workout_id, trace_id = tracing::field::Empty),
        );
        deliver(
            &rooms,
            &workout_id,
            &socketio_room,
            message.payload,
            message.origin.as_deref(),
        )
        .instrument(span)
        .await;
    }
}

/// Hands one room event to the local WebSocket members (never waiting for
/// a slow one) and to the Socket.IO room, but its sender.
async fn deliver(
    rooms: &Rooms,
    workout_id: &str,
    socketio_room: &str,
    payload: Bytes,
    origin: Option<&str>,
) {
    let Ok(text) = std::str::from_utf8(&payload) else {
        tracing::warn!("room event is not UTF-8");
        return;
    };
    for (id, member) in rooms.websocket_members(workout_id, origin) {
        if member.events.try_send(payload.clone()).is_err() {
            // As the hubs do: a member that does not read is dropped, not
            // left to lose events unknowingly; its connection closes (1008).
            switchboard_proto::metrics::metrics().outbound_drop("room_member");
            tracing::info!(workout_id = ?workout_id, "slow room member dropped");
            if let Some(room) = rooms.lock().get_mut(workout_id) {
                room.websocket_members.remove(&id);
            }
            member.dropped.notify_one();
        }
    }
    match RawValue::from_string(text.to_owned()) {
        Ok(raw) => {
            let name = event_name(text);
            let room = rooms.io.to(socketio_room.to_owned());
            let room = match origin.and_then(|origin| origin.strip_prefix(SOCKETIO_ORIGIN)) {
                Some(socket_id) => room.except(socketio_private_room(socket_id)),
                None => room,
            };
            if let Err(error) = room.emit(name, &raw).await {
                tracing::debug!(%error, "socket.io room emit failed");
            }
        }
        Err(error) => tracing::warn!(%error, "room event is not JSON"),
    }
}

/// The `type` of a room event, which is its Socket.IO event name.
fn event_name(text: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Typed {
        r#type: String,
    }
    serde_json::from_str::<Typed>(text)
        .map(|typed| typed.r#type)
        .unwrap_or_else(|_| "message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn rooms() -> Arc<Rooms> {
        let bus = Bus::connect(&switchboard_bus::BusSettings::default())
            .await
            .unwrap();
        let (_layer, io) = SocketIo::new_layer();
        io.ns("/", async |_: socketioxide::extract::SocketRef| {});
        Arc::new(Rooms::new(bus, io))
    }

    fn member() -> (MemberQueue, mpsc::Receiver<RoomEvent>) {
        let (events, receiver) = mpsc::channel(MEMBER_QUEUE);
        let queue = MemberQueue {
            events,
            dropped: Arc::default(),
        };
        (queue, receiver)
    }

    #[tokio::test]
    async fn a_member_that_does_not_read_is_dropped_and_told() {
        let rooms = rooms().await;
        let (slow, mut slow_events) = member();
        let (live, mut live_events) = member();
        let _slow = rooms
            .join("w1", Member::WebSocket(slow.clone()))
            .await
            .unwrap();
        let _live = rooms.join("w1", Member::WebSocket(live)).await.unwrap();
        for n in 0..=MEMBER_QUEUE {
            rooms
                .publish("w1", format!("{{\"n\":{n}}}"), None)
                .await
                .unwrap();
            // The live member reads each as it comes.
            let event = tokio::time::timeout(Duration::from_secs(5), live_events.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(event, Bytes::from(format!("{{\"n\":{n}}}")));
        }
        tokio::time::timeout(Duration::from_secs(5), slow.dropped.notified())
            .await
            .expect("the slow member is told it was dropped");
        assert_eq!(
            slow_events.len(),
            MEMBER_QUEUE,
            "it keeps what it had queued"
        );
        rooms.publish("w1", "{}".into(), None).await.unwrap();
        assert!(
            live_events.recv().await.is_some(),
            "the room goes on for the others"
        );
        assert!(slow_events.try_recv().is_ok());
    }

    #[tokio::test]
    async fn the_sender_is_left_out_of_its_own_event() {
        let rooms = rooms().await;
        let (sender, mut sender_events) = member();
        let (other, mut other_events) = member();
        let sending = rooms.join("w1", Member::WebSocket(sender)).await.unwrap();
        let _other = rooms.join("w1", Member::WebSocket(other)).await.unwrap();
        rooms
            .publish("w1", "{\"mine\":true}".into(), Some(sending.origin()))
            .await
            .unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(5), other_events.recv()).await;
        assert!(heard.unwrap().is_some(), "the others hear it");
        rooms
            .publish("w1", "{\"theirs\":true}".into(), None)
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), sender_events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            first,
            Bytes::from_static(b"{\"theirs\":true}"),
            "not its own"
        );
    }
}
