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
    /// A plain WebSocket: events arrive on its queue.
    WebSocket(mpsc::Sender<RoomEvent>),
    /// A Socket.IO socket: it already joined the socketioxide room.
    SocketIo,
}

#[derive(Default)]
struct Room {
    next_member: u64,
    websocket_members: HashMap<u64, mpsc::Sender<RoomEvent>>,
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
#[derive(Debug)]
pub struct Membership {
    rooms: Arc<Rooms>,
    workout_id: String,
    member: Option<u64>,
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
            Some(self.bus.subscribe(subject(workout_id)).await?)
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
        let member = match member {
            Member::WebSocket(sender) => {
                room.next_member += 1;
                let id = room.next_member;
                room.websocket_members.insert(id, sender);
                Some(id)
            }
            Member::SocketIo => {
                room.socketio_members += 1;
                None
            }
        };
        Ok(Membership {
            rooms: Arc::clone(self),
            workout_id: workout_id.to_owned(),
            member,
        })
    }

    /// Publishes `event` (JSON) to every member of the room, on every edge.
    pub async fn publish(&self, workout_id: &str, event: String) -> Result<(), BusError> {
        self.bus
            .publish(subject(workout_id), Bytes::from(event))
            .await
    }

    /// Local WebSocket members' queues, cloned so no lock outlives this call.
    fn websocket_members(&self, workout_id: &str) -> Vec<mpsc::Sender<RoomEvent>> {
        self.lock()
            .get(workout_id)
            .map(|room| room.websocket_members.values().cloned().collect())
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
        deliver(&rooms, &workout_id, &socketio_room, message.payload)
            .instrument(span)
            .await;
    }
}

/// Hands one room event to the local WebSocket members (never waiting for
/// a slow one) and to the Socket.IO room.
async fn deliver(rooms: &Rooms, workout_id: &str, socketio_room: &str, payload: Bytes) {
    let Ok(text) = std::str::from_utf8(&payload) else {
        tracing::warn!("room event is not UTF-8");
        return;
    };
    for member in rooms.websocket_members(workout_id) {
        if member.try_send(payload.clone()).is_err() {
            switchboard_proto::metrics::metrics().outbound_drop("room_member");
            tracing::debug!(workout_id = ?workout_id, "slow room member, event dropped");
        }
    }
    match RawValue::from_string(text.to_owned()) {
        Ok(raw) => {
            let name = event_name(text);
            if let Err(error) = rooms.io.to(socketio_room.to_owned()).emit(name, &raw).await {
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
