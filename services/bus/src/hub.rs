//! The hubs' wire formats: the one place that builds and checks the
//! messages `/ws/ui` (seed 003) and `/api/ws/statistics` (seed 004) clients
//! get through NATS, says which subject each travels on, and reads back
//! what a receiver needs of one.
//!
//! - UI messages ([`ui_message`]): `{"type": "event", "event_type", "data"}`,
//!   `{"type": "overlay", "overlay_type", "data"}` and
//!   `{"type": "telemetry", "data"}`, `data` an object, for every `/ws/ui`
//!   client ([`Bus::publish_ui`]). Whoever publishes one builds it here: the
//!   bus's own system events ([`Bus::announce`]), the statistics service's
//!   `BroadcastService` (other backends' way in), the edge's REST broadcasts.
//! - Statistics-stream messages ([`stream_message`]): any JSON object with a
//!   string `type`, for every client, one user's connections or one
//!   connection ([`StreamAudience`], [`Bus::publish_stream`]); the cluster's
//!   `statistics_update` is one.
//!
//! Data is at most [`MAX_MESSAGE_BYTES`] of JSON and type names 1 to
//! [`MAX_TYPE_NAME_BYTES`] bytes. A message is serialized once, here, and
//! only a built message can be published on a hub subject: each edge hands
//! the same bytes to every client it holds.

use std::io;

use bytes::Bytes;
use serde_json::{Map, Value};
use switchboard_proto::error::{ErrorCode, ServiceError};

use crate::{Bus, BusError, Channel, key_untoken, subjects};

/// Largest `data` of a UI message, and largest statistics-stream message,
/// as JSON: it must fit a client's 64 KiB frame limit with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 60 * 1024;

/// Longest type name (`event_type`, `overlay_type`, a stream message's
/// `type`) and message target (user or connection id).
pub const MAX_TYPE_NAME_BYTES: usize = 64;

/// How the refusals name a UI message's data and a stream message: by the
/// `BroadcastService` fields, the words clients have always been answered
/// with, whichever way the message came.
const DATA_FIELD: &str = "data_json";
const MESSAGE_FIELD: &str = "message_json";

/// Why a hub message was refused.
#[derive(Debug, thiserror::Error)]
pub enum HubMessageError {
    #[error("{field} is larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge { field: &'static str },
    #[error("{field} is not JSON: {source}")]
    NotJson {
        field: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{field} must be a JSON object")]
    NotAnObject { field: &'static str },
    /// A type name or target that is empty or too long.
    #[error("{field} must be 1 to {MAX_TYPE_NAME_BYTES} bytes")]
    BadName { field: &'static str },
    #[error("type must be event, overlay or telemetry, got {0:?}")]
    UnknownUiType(String),
    #[error("{MESSAGE_FIELD} needs a string \"type\"")]
    MissingType,
}

impl ServiceError for HubMessageError {
    fn error_code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }
}

/// A checked UI message, serialized: what [`Bus::publish_ui`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiMessage(Bytes);

/// A checked statistics-stream message, serialized: what
/// [`Bus::publish_stream`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMessage(Bytes);

impl UiMessage {
    /// The message's JSON.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl StreamMessage {
    /// The message's JSON.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

/// What a UI message is (seed 003's `type`), with the type name it
/// carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiMessageKind<'a> {
    /// An action or system event, e.g. `sit`, `session_opened`.
    Event { event_type: &'a str },
    /// Something to draw over the video, e.g. `detection`.
    Overlay { overlay_type: &'a str },
    /// Figures such as frame rates.
    Telemetry,
}

impl<'a> UiMessageKind<'a> {
    /// The kind `BroadcastService.BroadcastUi` asks for: its `type`, and
    /// the type name that goes with it.
    pub fn from_fields(
        kind: &str,
        event_type: &'a str,
        overlay_type: &'a str,
    ) -> Result<Self, HubMessageError> {
        match kind {
            "event" => Ok(UiMessageKind::Event { event_type }),
            "overlay" => Ok(UiMessageKind::Overlay { overlay_type }),
            "telemetry" => Ok(UiMessageKind::Telemetry),
            other => Err(HubMessageError::UnknownUiType(other.to_owned())),
        }
    }
}

/// A UI message of `kind` carrying `data`, checked and serialized.
pub fn ui_message(
    kind: UiMessageKind<'_>,
    data: Map<String, Value>,
) -> Result<UiMessage, HubMessageError> {
    if serialized_len(&data) > MAX_MESSAGE_BYTES {
        return Err(HubMessageError::TooLarge { field: DATA_FIELD });
    }
    let mut message = Map::new();
    let kind = match kind {
        UiMessageKind::Event { event_type } => {
            message.insert("event_type".into(), name("event_type", event_type)?);
            "event"
        }
        UiMessageKind::Overlay { overlay_type } => {
            message.insert("overlay_type".into(), name("overlay_type", overlay_type)?);
            "overlay"
        }
        UiMessageKind::Telemetry => "telemetry",
    };
    message.insert("type".into(), Value::String(kind.to_owned()));
    message.insert("data".into(), Value::Object(data));
    Ok(UiMessage(serialize(message)))
}

/// A UI message's `data` given as JSON text (`BroadcastService`'s
/// `data_json`; empty text is an empty object).
pub fn ui_data(data_json: &str) -> Result<Map<String, Value>, HubMessageError> {
    json_object(DATA_FIELD, data_json)
}

/// A statistics-stream message given as JSON text, checked and serialized.
pub fn stream_message(message_json: &str) -> Result<StreamMessage, HubMessageError> {
    typed_stream_message(json_object(MESSAGE_FIELD, message_json)?)
}

/// A statistics-stream message given as a JSON value, checked and
/// serialized.
pub fn stream_message_from_value(message: Value) -> Result<StreamMessage, HubMessageError> {
    if serialized_len(&message) > MAX_MESSAGE_BYTES {
        return Err(HubMessageError::TooLarge {
            field: MESSAGE_FIELD,
        });
    }
    match message {
        Value::Object(object) => typed_stream_message(object),
        _ => Err(HubMessageError::NotAnObject {
            field: MESSAGE_FIELD,
        }),
    }
}

fn typed_stream_message(message: Map<String, Value>) -> Result<StreamMessage, HubMessageError> {
    match message.get("type") {
        Some(Value::String(kind)) => {
            name("type", kind)?;
        }
        _ => return Err(HubMessageError::MissingType),
    }
    Ok(StreamMessage(serialize(message)))
}

/// Who a statistics-stream message is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAudience {
    /// Every client, as each one's subscriptions filter.
    All,
    /// Every connection of one user, on any edge.
    User(String),
    /// One connection, on whichever edge holds it; with its user when the
    /// publisher knew it, so a resume of that user's can be given it.
    Connection {
        connection_id: String,
        user_id: Option<String>,
    },
}

impl StreamAudience {
    /// One user's connections; the id is 1 to [`MAX_TYPE_NAME_BYTES`]
    /// bytes.
    pub fn user(user_id: &str) -> Result<Self, HubMessageError> {
        name("target", user_id)?;
        Ok(StreamAudience::User(user_id.to_owned()))
    }

    /// One connection; the id is 1 to [`MAX_TYPE_NAME_BYTES`] bytes.
    pub fn connection(connection_id: &str) -> Result<Self, HubMessageError> {
        name("target", connection_id)?;
        Ok(StreamAudience::Connection {
            connection_id: connection_id.to_owned(),
            user_id: None,
        })
    }

    /// The same audience, known to be `user_id`'s (for a connection).
    pub fn of_user(self, user_id: &str) -> Self {
        match self {
            StreamAudience::Connection { connection_id, .. } => StreamAudience::Connection {
                connection_id,
                user_id: Some(user_id.to_owned()),
            },
            other => other,
        }
    }

    /// Whose message it is: the user a resume may give it to (none for a
    /// broadcast, or a connection whose user was not known).
    pub fn user_id(&self) -> Option<&str> {
        match self {
            StreamAudience::All => None,
            StreamAudience::User(user_id) => Some(user_id),
            StreamAudience::Connection { user_id, .. } => user_id.as_deref(),
        }
    }

    /// The subject messages for this audience travel on.
    pub fn subject(&self) -> String {
        match self {
            StreamAudience::All => subjects::STREAM_ALL.to_owned(),
            StreamAudience::User(user_id) => subjects::stream_user(user_id),
            StreamAudience::Connection {
                connection_id,
                user_id: Some(user_id),
            } => subjects::stream_user_connection(user_id, connection_id),
            StreamAudience::Connection {
                connection_id,
                user_id: None,
            } => subjects::stream_connection(connection_id),
        }
    }

    /// The audience of a message received on `subject` (one of
    /// [`subjects::STREAM_ANY`]); `None` for a subject no publisher uses.
    pub fn of_subject(subject: &str) -> Option<Self> {
        if subject == subjects::STREAM_ALL {
            return Some(StreamAudience::All);
        }
        let targeted = |prefix: &str| {
            subject
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('.'))
        };
        if let Some(rest) = targeted(subjects::STREAM_USER_PREFIX) {
            return match rest.split_once('.') {
                None => key_untoken(rest).map(StreamAudience::User),
                Some((user, connection)) => Some(StreamAudience::Connection {
                    connection_id: key_untoken(connection)?,
                    user_id: Some(key_untoken(user)?),
                }),
            };
        }
        let connection_id = key_untoken(targeted(subjects::STREAM_CONNECTION_PREFIX)?)?;
        Some(StreamAudience::Connection {
            connection_id,
            user_id: None,
        })
    }
}

/// The `type` of a hub message as received.
pub fn message_type(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Typed {
        r#type: String,
    }
    serde_json::from_slice::<Typed>(payload)
        .ok()
        .map(|typed| typed.r#type)
}

impl Bus {
    /// Publishes `message` to every `/ws/ui` client, on every edge: it is
    /// kept in the hub's history (which edges follow) when this returns.
    pub async fn publish_ui(&self, message: UiMessage) -> Result<(), BusError> {
        self.publish_kept(
            Channel::Ui,
            subjects::UI_MESSAGES.to_owned(),
            message.0,
            true,
        )
        .await
        .map(drop)
    }

    /// Publishes `message` to `audience`'s statistics-stream connections,
    /// on every edge: it is kept in the stream's history when this returns.
    pub async fn publish_stream(
        &self,
        audience: &StreamAudience,
        message: StreamMessage,
    ) -> Result<(), BusError> {
        self.publish_kept(Channel::Stream, audience.subject(), message.0, true)
            .await
            .map(drop)
    }

    /// Announces a system event to every `/ws/ui` client (seed 003's
    /// `event` message, `data` with a `timestamp` added) and to the
    /// statistics counters. `data` is made only when the event is shown
    /// (see [`system_events`]). Best effort: an event that cannot be built
    /// or published is logged, never an error for the caller.
    pub async fn announce(&self, event_type: &str, data: impl FnOnce() -> Value) {
        system_events::count(self, event_type);
        if !system_events::shown(self, event_type) {
            return;
        }
        let Value::Object(mut data) = data() else {
            tracing::warn!(event_type, "event not announced: its data is not an object");
            return;
        };
        data.insert("timestamp".into(), Value::String(crate::rfc3339_now()));
        let message = match ui_message(UiMessageKind::Event { event_type }, data) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, event_type, "event not announced");
                return;
            }
        };
        // Not waited for: an event is best effort, and its publisher (a
        // session opening) should not wait for JetStream.
        let shown = self
            .publish_kept(
                Channel::Ui,
                subjects::UI_MESSAGES.to_owned(),
                message.0,
                false,
            )
            .await;
        if let Err(error) = shown {
            tracing::debug!(%error, event_type, "event not announced");
        }
    }
}

/// `text` as a JSON object, refused when larger than
/// [`MAX_MESSAGE_BYTES`]; empty text is an empty object.
fn json_object(field: &'static str, text: &str) -> Result<Map<String, Value>, HubMessageError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(HubMessageError::TooLarge { field });
    }
    let text = if text.trim().is_empty() { "{}" } else { text };
    match serde_json::from_str(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(HubMessageError::NotAnObject { field }),
        Err(source) => Err(HubMessageError::NotJson { field, source }),
    }
}

/// `value` as a type name or target: 1 to [`MAX_TYPE_NAME_BYTES`] bytes.
fn name(field: &'static str, value: &str) -> Result<Value, HubMessageError> {
    if value.is_empty() || value.len() > MAX_TYPE_NAME_BYTES {
        return Err(HubMessageError::BadName { field });
    }
    Ok(Value::String(value.to_owned()))
}

fn serialize(message: Map<String, Value>) -> Bytes {
    Bytes::from(Value::Object(message).to_string())
}

/// The length of `value` as compact JSON, counted without building it.
fn serialized_len(value: &impl serde::Serialize) -> usize {
    struct Counter(usize);
    impl io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing JSON values to a counter cannot fail: a failure would be
    // refused as too large.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parsed(bytes: &Bytes) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(object) => object,
            _ => unreachable!("an object literal"),
        }
    }

    fn ui(
        kind: &str,
        event_type: &str,
        overlay_type: &str,
        data_json: &str,
    ) -> Result<UiMessage, HubMessageError> {
        let data = ui_data(data_json)?;
        ui_message(
            UiMessageKind::from_fields(kind, event_type, overlay_type)?,
            data,
        )
    }

    #[test]
    fn ui_messages_take_the_seed_shapes() {
        let event = ui("event", "sit", "", r#"{"confidence":0.95}"#).unwrap();
        assert_eq!(
            parsed(event.as_bytes()),
            json!({"type": "event", "event_type": "sit", "data": {"confidence": 0.95}})
        );
        let overlay = ui("overlay", "", "detection", r#"{"boxes":[]}"#).unwrap();
        assert_eq!(
            parsed(overlay.as_bytes()),
            json!({"type": "overlay", "overlay_type": "detection", "data": {"boxes": []}})
        );
        let telemetry = ui("telemetry", "", "", r#"{"fps":30}"#).unwrap();
        assert_eq!(
            parsed(telemetry.as_bytes()),
            json!({"type": "telemetry", "data": {"fps": 30}})
        );
        let empty = ui("telemetry", "", "", " ").unwrap();
        assert_eq!(
            parsed(empty.as_bytes()),
            json!({"type": "telemetry", "data": {}})
        );
    }

    #[test]
    fn bad_ui_messages_are_refused_with_a_reason() {
        let huge = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_MESSAGE_BYTES));
        let cases = [
            (
                ui("event", "", "", "{}"),
                "event_type must be 1 to 64 bytes",
            ),
            (
                ui("event", &"e".repeat(65), "", "{}"),
                "event_type must be 1 to 64 bytes",
            ),
            (
                ui("overlay", "", "", "{}"),
                "overlay_type must be 1 to 64 bytes",
            ),
            (
                ui("shout", "", "", "{}"),
                "type must be event, overlay or telemetry, got \"shout\"",
            ),
            (
                ui("telemetry", "", "", "[1]"),
                "data_json must be a JSON object",
            ),
            (ui("telemetry", "", "", "{"), "data_json is not JSON"),
            (
                ui("telemetry", "", "", &huge),
                "data_json is larger than 61440 bytes",
            ),
            (
                ui_message(
                    UiMessageKind::Telemetry,
                    object(json!({"x": "a".repeat(MAX_MESSAGE_BYTES)})),
                ),
                "data_json is larger than 61440 bytes",
            ),
        ];
        for (built, expected) in cases {
            let error = built.unwrap_err();
            assert!(error.to_string().starts_with(expected), "{error}");
            assert_eq!(error.error_code(), ErrorCode::InvalidArgument);
        }
    }

    #[test]
    fn stream_messages_are_objects_with_a_string_type() {
        let message = stream_message(r#"{"type":"camera_event","camera":1}"#).unwrap();
        assert_eq!(
            parsed(message.as_bytes()),
            json!({"type": "camera_event", "camera": 1})
        );
        let same = stream_message_from_value(json!({"type": "camera_event", "camera": 1}));
        assert_eq!(same.unwrap(), message);
        let refusals = [
            (
                stream_message(r#"{"data":1}"#),
                "message_json needs a string \"type\"",
            ),
            (
                stream_message(r#"{"type":1}"#),
                "message_json needs a string \"type\"",
            ),
            (stream_message(""), "message_json needs a string \"type\""),
            (stream_message("[1]"), "message_json must be a JSON object"),
            (
                stream_message(r#"{"type":""}"#),
                "type must be 1 to 64 bytes",
            ),
            (
                stream_message_from_value(json!([1])),
                "message_json must be a JSON object",
            ),
            (
                stream_message_from_value(json!({"type": "t", "x": "a".repeat(MAX_MESSAGE_BYTES)})),
                "message_json is larger than 61440 bytes",
            ),
        ];
        for (built, expected) in refusals {
            assert_eq!(built.unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn audiences_round_trip_through_their_subjects() {
        for audience in [
            StreamAudience::All,
            StreamAudience::user("ada.lovelace@example.com").unwrap(),
            StreamAudience::connection("c-1 *>").unwrap(),
            StreamAudience::connection("c-2")
                .unwrap()
                .of_user("ada.lovelace@example.com"),
        ] {
            assert_eq!(
                StreamAudience::of_subject(&audience.subject()),
                Some(audience)
            );
        }
        assert_eq!(StreamAudience::of_subject("switchboard.stream.other"), None);
        assert_eq!(
            StreamAudience::user("").unwrap_err().to_string(),
            "target must be 1 to 64 bytes"
        );
    }

    #[tokio::test]
    async fn announced_events_reach_the_ui_subject_with_a_timestamp() {
        let bus = Bus::Local(crate::LocalBus::default());
        let mut ui = bus
            .subscribe(subjects::UI_MESSAGES.to_owned())
            .await
            .unwrap();
        bus.announce("session_opened", || json!({"session_id": "s1"}))
            .await;
        let received = tokio::time::timeout(std::time::Duration::from_secs(5), ui.next())
            .await
            .expect("the event within 5 s")
            .unwrap();
        let message = parsed(&received.payload);
        assert_eq!(message["type"], "event");
        assert_eq!(message["event_type"], "session_opened");
        assert_eq!(message["data"]["session_id"], "s1");
        assert!(message["data"]["timestamp"].is_string());
        assert_eq!(message_type(&received.payload).as_deref(), Some("event"));
    }

    #[tokio::test]
    async fn events_are_published_as_sums_once_per_interval() {
        // Virtual time: the interval passes as soon as the test waits.
        tokio::time::pause();
        let bus = Bus::Local(crate::LocalBus::default());
        let mut sums = bus
            .subscribe(subjects::SYSTEM_EVENTS.to_owned())
            .await
            .unwrap();
        for _ in 0..3 {
            bus.announce("step_detected", || json!({})).await;
        }
        bus.announce("session_opened", || json!({})).await;
        let started = tokio::time::Instant::now();
        let received = tokio::time::timeout(std::time::Duration::from_secs(5), sums.next())
            .await
            .expect("the sums within 5 s")
            .unwrap();
        // Within the interval (the timer rounds up to its next millisecond).
        let waited = started.elapsed();
        assert!(
            waited <= system_events::COUNTS_INTERVAL + std::time::Duration::from_millis(2),
            "{waited:?}"
        );
        let counts = system_events::counted(&received.payload).expect("an event_counts message");
        assert_eq!(
            counts,
            std::collections::BTreeMap::from([
                ("session_opened".to_owned(), 1),
                ("step_detected".to_owned(), 3),
            ])
        );
        assert!(
            tokio::time::timeout(system_events::COUNTS_INTERVAL * 4, sums.next())
                .await
                .is_err(),
            "one message for the four events"
        );
        // The next event starts the next interval.
        bus.announce("step_detected", || json!({})).await;
        let received = tokio::time::timeout(std::time::Duration::from_secs(5), sums.next())
            .await
            .expect("the next sums within 5 s")
            .unwrap();
        assert_eq!(
            system_events::counted(&received.payload),
            Some(std::collections::BTreeMap::from([(
                "step_detected".to_owned(),
                1
            )]))
        );
    }

    #[test]
    fn a_single_event_counts_once_and_other_messages_not_at_all() {
        let event = br#"{"type":"event","event_type":"session_opened","data":{}}"#;
        assert_eq!(
            system_events::counted(event),
            Some(std::collections::BTreeMap::from([(
                "session_opened".to_owned(),
                1
            )]))
        );
        assert_eq!(system_events::counted(br#"{"type":"overlay"}"#), None);
        assert_eq!(system_events::counted(b"not json"), None);
    }
}

/// How many system events a process shows `/ws/ui` clients: at most
/// [`SHOWN_PER_SECOND`](system_events::SHOWN_PER_SECOND) a second (bursts
/// of twice that), the rest summed up once a second in one
/// `system_events_suppressed` event. So a burst of joins costs each viewer a
/// bounded number of messages, not one per join, and can never fill a
/// reading client's queue (256) and get it dropped.
///
/// Every event is counted where it happens, and each bus publishes its sums
/// on [`subjects::SYSTEM_EVENTS`] at most every [`COUNTS_INTERVAL`], as one
/// `{"type": "event_counts", "counts": {event_type: count}}`, where the
/// statistics replicas add them up ([`counted`]). One message per process
/// and interval, not one per event: a busy realtime session finds several
/// steps a second, and a NATS message per step cost `nats-server` about
/// 0.15 cores at 50 busy sessions (1.8 µs per realtime message).
pub mod system_events {
    use std::collections::BTreeMap;
    use std::num::NonZeroU32;
    use std::sync::{LazyLock, Mutex, OnceLock, PoisonError};
    use std::time::Duration;

    use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
    use serde_json::{Map, Value, json};

    use super::{UiMessageKind, ui_message};
    use crate::{Bus, subjects};

    /// Longest time an event waits to be published in its bus's sums.
    pub const COUNTS_INTERVAL: Duration = Duration::from_millis(500);

    /// Events a bus counted and has not published yet.
    #[derive(Debug, Default)]
    pub struct Tally(Mutex<BTreeMap<String, u64>>);

    impl Tally {
        fn take(&self) -> BTreeMap<String, u64> {
            std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
        }
    }

    /// Counts one `event_type` event. The first event after a publish
    /// starts the wait for the next: no task runs while nothing happens.
    pub(super) fn count(bus: &Bus, event_type: &str) {
        let first = {
            let mut counts = bus
                .event_counts()
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let first = counts.is_empty();
            add_one(&mut counts, event_type);
            first
        };
        if first {
            let bus = bus.clone();
            tokio::spawn(async move {
                tokio::time::sleep(COUNTS_INTERVAL).await;
                publish_counts(&bus).await;
            });
        }
    }

    /// One more `event_type` in `counts`; its name is copied only the first
    /// time (events come at the rate of steps).
    fn add_one(counts: &mut BTreeMap<String, u64>, event_type: &str) {
        match counts.get_mut(event_type) {
            Some(count) => *count += 1,
            None => {
                counts.insert(event_type.to_owned(), 1);
            }
        }
    }

    /// Publishes the bus's counts now (a process that ends does so last).
    pub async fn publish_counts(bus: &Bus) {
        let counts = bus.event_counts().take();
        if counts.is_empty() {
            return;
        }
        let payload = json!({"type": "event_counts", "counts": counts}).to_string();
        if let Err(error) = bus
            .publish(subjects::SYSTEM_EVENTS.to_owned(), payload.into())
            .await
        {
            tracing::debug!(%error, "event counts not published");
        }
    }

    /// The events a message on [`subjects::SYSTEM_EVENTS`] counts: an
    /// `event_counts` message's sums, or one for a single `event` (as
    /// edges before the sums published them); `None` for anything else.
    pub fn counted(payload: &[u8]) -> Option<BTreeMap<String, u64>> {
        #[derive(serde::Deserialize)]
        struct Counted {
            r#type: String,
            #[serde(default)]
            event_type: String,
            #[serde(default)]
            counts: BTreeMap<String, u64>,
        }
        let counted = serde_json::from_slice::<Counted>(payload).ok()?;
        match counted.r#type.as_str() {
            "event_counts" => Some(counted.counts),
            "event" => Some(BTreeMap::from([(counted.event_type, 1)])),
            _ => None,
        }
    }

    /// System events shown per second, per process.
    pub const SHOWN_PER_SECOND: u32 = 20;
    /// How often the suppressed ones are summed up.
    pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

    static SHOWN: LazyLock<DefaultDirectRateLimiter> = LazyLock::new(|| {
        let rate = NonZeroU32::new(SHOWN_PER_SECOND).expect("not zero");
        let burst = NonZeroU32::new(SHOWN_PER_SECOND * 2).expect("not zero");
        RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
    });
    static SUPPRESSED: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    static SUMMARIES: OnceLock<()> = OnceLock::new();

    /// Whether an `event_type` event may be shown now; if not, it is
    /// counted for the next summary.
    pub(super) fn shown(bus: &Bus, event_type: &str) -> bool {
        if SHOWN.check().is_ok() {
            return true;
        }
        add_one(
            &mut SUPPRESSED.lock().unwrap_or_else(PoisonError::into_inner),
            event_type,
        );
        SUMMARIES.get_or_init(|| {
            tokio::spawn(summarize_forever(bus.clone()));
        });
        false
    }

    /// Publishes, once a second, what was not shown since the last time.
    async fn summarize_forever(bus: Bus) {
        let mut ticks = tokio::time::interval(SUMMARY_INTERVAL);
        loop {
            ticks.tick().await;
            let suppressed = std::mem::take(
                &mut *SUPPRESSED
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            );
            if suppressed.is_empty() {
                continue;
            }
            let mut data = Map::new();
            data.insert("suppressed".into(), json!(suppressed));
            data.insert("timestamp".into(), Value::String(crate::rfc3339_now()));
            let kind = UiMessageKind::Event {
                event_type: "system_events_suppressed",
            };
            match ui_message(kind, data) {
                Ok(message) => {
                    if let Err(error) = bus.publish_ui(message).await {
                        tracing::debug!(%error, "suppressed events not summed up");
                    }
                }
                Err(error) => tracing::warn!(%error, "suppressed events not summed up"),
            }
        }
    }
}
