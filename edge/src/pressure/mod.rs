//! Pressure-frame streaming (seed 001), over Socket.IO and plain WebSocket.
//!
//! Clients join a workout's room, send frames to it, and leave. Each frame
//! is analysed on the detection stream this connection holds for that
//! workout (statistics, and the abnormal-peak monitor), stored and counted
//! by the session service, and only then published to the room as
//! `frame_processed`, which every member on every edge receives. So an
//! acknowledged frame is never lost, and counts are per workout across the
//! cluster.
//!
//! A frame may carry the client's `message_id`: sent again (after a
//! reconnect, to any edge) within the session service's de-duplication
//! window, it is stored and counted once, the room is not told again, and
//! the sender's `frame_processed` repeats the original's `sequence`, stats
//! and timestamp.
//!
//! - [`PressureConnection`]: what one client connection does, whatever its
//!   transport.
//! - [`websocket`]: `/ws/pressure`, JSON with an `action` field.
//! - [`socketio`]: Socket.IO v4 on `/socket.io/`, the seed's own events.
//! - [`rooms`]: rooms across instances, over NATS.
//! - [`rest`]: `/api/workouts/{id}`, its frames, and `POST` for HTTP clients.
//! - [`resume`]: positions in a workout's log, and catching up from one
//!   after a reconnect.

pub mod rest;
pub mod resume;
pub mod rooms;
pub mod socketio;
pub mod websocket;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::get;
use serde::Serialize;
use serde_json::Value;
use socketioxide::extract::SocketRef;
use switchboard_bus::Bus;
use switchboard_proto::unix_now;
use switchboard_proto::v1::detection_service_client::DetectionServiceClient;
use switchboard_proto::v1::session_service_client::SessionServiceClient;
use switchboard_proto::v1::{
    FrameReply, FrameRequest, FrameStats, MatrixRow, PressureFrame, RecordFrameRequest,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::caller::{Caller, Identities};
use crate::connection::{Close, Conn, Driver, Flow, Handler, Inbound, Transport};
use crate::error::ClientError;
use crate::settings::TimedChannel;
use rooms::{Member, Membership, RoomEvent, Rooms, socketio_room};

/// What pressure streaming needs, over every transport.
#[derive(Clone, Debug)]
pub struct PressureState {
    pub driver: Driver,
    pub identities: Identities,
    pub rooms: Arc<Rooms>,
    pub detection: DetectionServiceClient<TimedChannel>,
    /// Stores and counts frames.
    pub sessions: SessionServiceClient<TimedChannel>,
    /// Where `frame_processed` is announced.
    pub bus: Bus,
    /// Longest wait for one detection reply.
    pub reply_deadline: Duration,
}

impl FromRef<PressureState> for Identities {
    fn from_ref(state: &PressureState) -> Self {
        state.identities.clone()
    }
}

/// `/ws/pressure` and the workout routes (Socket.IO is a layer: see
/// [`socketio::register`]).
pub fn router(state: PressureState) -> Router {
    Router::new()
        .route("/ws/pressure", get(websocket::upgrade))
        .route("/api/workouts/{workout_id}", get(rest::workout))
        .route(
            "/api/workouts/{workout_id}/frames",
            get(rest::frames).post(rest::post_frame),
        )
        .with_state(state)
}

/// Rooms one connection may be in at once.
pub const MAX_JOINED_WORKOUTS: usize = 16;
/// Longest workout id.
pub const MAX_WORKOUT_ID_BYTES: usize = 128;
/// Largest `nodes` value, serialised.
pub const MAX_NODES_BYTES: usize = 16 * 1024;
/// Most rows and columns of a matrix (the detection service checks it too).
pub const MAX_MATRIX_SIDE: usize = 64;
/// Longest frame `message_id` (the session service checks it too).
pub const MAX_MESSAGE_ID_BYTES: usize = 128;

/// A number of a pressure message as every transport writes it: a whole
/// number without a fraction (`10`, not `10.0`), any other with one. So
/// Socket.IO, `/ws/pressure` and REST show the same text, and it is what a
/// JavaScript client (which has no integers) prints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number(pub f64);

impl Serialize for Number {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// Beyond 2^53 not every integer is an f64.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        let Number(value) = *self;
        if value.fract() == 0.0 && value.abs() < EXACT {
            serializer.serialize_i64(value as i64)
        } else {
            serializer.serialize_f64(value)
        }
    }
}

/// Statistics of a frame, as clients see them.
#[derive(Debug, Serialize)]
pub struct StatsView {
    rows: u32,
    columns: u32,
    total_pressure: Number,
    mean_pressure: Number,
    peak_pressure: Number,
    peak_row: u32,
    peak_column: u32,
    contact_cells: u32,
    contact_area_ratio: Number,
    center_of_pressure: Option<Point>,
    left_right_balance: Option<Number>,
    front_back_balance: Option<Number>,
}

#[derive(Debug, Serialize)]
pub struct Point {
    row: Number,
    column: Number,
}

impl From<&FrameStats> for StatsView {
    fn from(stats: &FrameStats) -> Self {
        Self {
            rows: stats.rows,
            columns: stats.columns,
            total_pressure: Number(stats.total_pressure),
            mean_pressure: Number(stats.mean_pressure),
            peak_pressure: Number(stats.peak_pressure),
            peak_row: stats.peak_row,
            peak_column: stats.peak_column,
            contact_cells: stats.contact_cells,
            contact_area_ratio: Number(stats.contact_area_ratio),
            center_of_pressure: stats
                .center_row
                .zip(stats.center_column)
                .map(|(row, column)| Point {
                    row: Number(row),
                    column: Number(column),
                }),
            left_right_balance: stats.left_right_balance.map(Number),
            front_back_balance: stats.front_back_balance.map(Number),
        }
    }
}

/// What the server sends; `type` is the Socket.IO event name.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outbound {
    SessionJoined {
        workout_id: String,
        status: &'static str,
        /// The workout's log's epoch: see [`resume`]. Absent (as
        /// `offset`) when the session service could not tell: the join
        /// still stands.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// The workout's latest frame number (0: none yet).
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    FrameProcessed {
        workout_id: String,
        stats: StatsView,
        frame_count: u64,
        /// The frame's own timestamp, as the client sent it.
        timestamp: Number,
        /// The frame's number in its workout: 1, 2, 3, …
        sequence: u64,
        /// The client's id for the frame, when it sent one.
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
        /// Its position for [`resume`]: `sequence` in the log of `epoch`.
        offset: u64,
        epoch: String,
    },
    SessionEnded {
        workout_id: String,
    },
    /// After a resume's replayed frames: see [`resume`].
    Resumed {
        workout_id: String,
        recovered: bool,
        missed: u64,
        epoch: String,
        offset: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Error {
        message: String,
        code: &'static str,
    },
}

impl Outbound {
    pub fn event_name(&self) -> &'static str {
        match self {
            Outbound::SessionJoined { .. } => "session_joined",
            Outbound::FrameProcessed { .. } => "frame_processed",
            Outbound::SessionEnded { .. } => "session_ended",
            Outbound::Resumed { .. } => "resumed",
            Outbound::Error { .. } => "error",
        }
    }

    pub fn error(error: &ClientError) -> Self {
        Outbound::Error {
            message: error.to_string(),
            code: error.code(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("outbound messages always serialize")
    }
}

fn invalid(message: impl Into<String>) -> ClientError {
    ClientError::InvalidMessage(message.into())
}

/// The `workout_id` of a client message.
fn workout_id(data: &Value) -> Result<String, ClientError> {
    match data.get("workout_id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_WORKOUT_ID_BYTES => {
            Ok(id.clone())
        }
        Some(Value::String(_)) => Err(invalid(format!(
            "workout_id must be 1 to {MAX_WORKOUT_ID_BYTES} bytes"
        ))),
        // Numbers are common workout ids; accept them as their text.
        Some(Value::Number(number)) => Ok(number.to_string()),
        Some(_) => Err(invalid("workout_id must be a string")),
        None => Err(invalid("missing workout_id")),
    }
}

/// The optional `message_id` of a frame: a string of 1 to
/// [`MAX_MESSAGE_ID_BYTES`] bytes.
fn message_id(data: &Value) -> Result<Option<String>, ClientError> {
    match data.get("message_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_MESSAGE_ID_BYTES => {
            Ok(Some(id.clone()))
        }
        Some(_) => Err(invalid(format!(
            "message_id must be a string of 1 to {MAX_MESSAGE_ID_BYTES} bytes"
        ))),
    }
}

/// A matrix as JSON (rows of numbers) to rows for the detection service.
/// Shape and value rules beyond types are the detection service's.
fn matrix(data: &Value) -> Result<Vec<MatrixRow>, ClientError> {
    let rows = match data.get("matrix") {
        Some(Value::Array(rows)) => rows,
        Some(_) => return Err(invalid("matrix must be an array of rows")),
        None => return Err(invalid("missing matrix")),
    };
    if rows.len() > MAX_MATRIX_SIDE {
        return Err(invalid(format!(
            "matrix has {} rows; at most {MAX_MATRIX_SIDE}",
            rows.len()
        )));
    }
    rows.iter()
        .enumerate()
        .map(|(row_index, row)| {
            let cells = row.as_array().ok_or_else(|| {
                invalid(format!("matrix[{row_index}] must be an array of numbers"))
            })?;
            if cells.len() > MAX_MATRIX_SIDE {
                return Err(invalid(format!(
                    "matrix[{row_index}] has {} values; at most {MAX_MATRIX_SIDE}",
                    cells.len()
                )));
            }
            let values = cells
                .iter()
                .enumerate()
                .map(|(column, cell)| {
                    cell.as_f64().ok_or_else(|| {
                        invalid(format!("matrix[{row_index}][{column}] must be a number"))
                    })
                })
                .collect::<Result<Vec<f64>, _>>()?;
            Ok(MatrixRow { values })
        })
        .collect()
}

/// A frame as a client sends it, checked for types and sizes.
#[derive(Debug)]
pub struct FrameInput {
    pub workout_id: String,
    pub matrix: Vec<MatrixRow>,
    pub nodes_json: String,
    /// The client's timestamp as it sent it (the edge's clock in Unix
    /// milliseconds, as `Date.now()`, when absent).
    pub timestamp: f64,
    /// The client's id for this frame, to send it again safely.
    pub message_id: Option<String>,
}

impl FrameInput {
    pub fn parse(data: &Value) -> Result<Self, ClientError> {
        let message_id = message_id(data)?;
        let nodes_json = match data.get("nodes") {
            None | Some(Value::Null) => String::new(),
            Some(nodes) => {
                let text = nodes.to_string();
                if text.len() > MAX_NODES_BYTES {
                    return Err(invalid(format!(
                        "nodes is larger than {MAX_NODES_BYTES} bytes"
                    )));
                }
                text
            }
        };
        let timestamp = match data.get("timestamp") {
            // The seed's clients stamp frames with `Date.now()`: milliseconds.
            None | Some(Value::Null) => (unix_now() * 1000.0).round(),
            Some(Value::Number(number)) if number.as_f64().is_some_and(f64::is_finite) => {
                number.as_f64().unwrap_or_default()
            }
            Some(_) => return Err(invalid("timestamp must be a number")),
        };
        Ok(Self {
            workout_id: workout_id(data)?,
            matrix: matrix(data)?,
            nodes_json,
            timestamp,
            message_id,
        })
    }

    /// The frame to store, once analysed.
    pub fn into_frame(self, stats: FrameStats, user_id: String) -> PressureFrame {
        PressureFrame {
            workout_id: self.workout_id,
            timestamp: self.timestamp,
            matrix: self.matrix,
            nodes_json: self.nodes_json,
            stats: Some(stats),
            received_at: unix_now(),
            user_id,
            sequence: 0,
            message_id: self.message_id.unwrap_or_default(),
        }
    }
}

/// One joined workout.
#[derive(Debug)]
struct Joined {
    membership: Membership,
    detection: Option<crate::stream_call::StreamCall<FrameRequest, FrameReply>>,
    /// After a resume, the last frame replayed: room events up to it are
    /// dropped (0: none are).
    replayed_to: u64,
}

/// How room events reach a connection.
#[derive(Debug)]
pub enum Delivery {
    /// A plain WebSocket: events arrive on its bounded queue.
    Queue(rooms::MemberQueue),
    /// A Socket.IO socket: socketioxide's room for the workout delivers.
    SocketIo(SocketRef),
}

/// One client connection's pressure streaming, whatever its transport.
#[derive(Debug)]
pub struct PressureConnection {
    state: PressureState,
    caller: Caller,
    delivery: Delivery,
    /// This connection's own queue of room events: every room's for a
    /// plain WebSocket, resumed rooms' for a Socket.IO socket (their
    /// events must wait behind the replayed ones).
    queue: rooms::MemberQueue,
    events: mpsc::Receiver<RoomEvent>,
    joined: HashMap<String, Joined>,
    /// The position the connection was opened with (handshake `auth`,
    /// URL query), for its first `join_session`.
    first_position: resume::PendingPosition,
}

impl Handler for PressureConnection {
    /// A room event for a plain WebSocket member.
    type Event = Option<RoomEvent>;

    fn error_message(&self, error: &ClientError) -> String {
        Outbound::error(error).to_json()
    }

    async fn open<T: Transport>(&mut self, _conn: &mut Conn<'_, T>) -> Flow {
        Flow::Continue
    }

    async fn on_message<T: Transport>(
        &mut self,
        message: Inbound<'_>,
        conn: &mut Conn<'_, T>,
    ) -> Result<Flow, ClientError> {
        let (action, data) = match message {
            Inbound::Event { name, data } => (name.to_owned(), data),
            Inbound::Text(text) => {
                let data: Value = serde_json::from_str(text)
                    .map_err(|error| ClientError::InvalidJson(error.to_string()))?;
                let action = ["action", "type", "event"]
                    .iter()
                    .find_map(|key| data.get(*key))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        invalid("expected {\"action\": \"join_session\" | \"pressure_frame\" | \"leave_session\", ...}")
                    })?
                    .to_owned();
                (action, data)
            }
        };
        let reply = match action.as_str() {
            "join_session" => return self.join_session(&data, conn).await,
            "resume" => return self.resume(&data, conn).await,
            "pressure_frame" => {
                // The sender's `frame_processed` is a reply, sent here; the
                // room's other members get the same as a broadcast.
                let reply = self.frame(&data).await?;
                return Ok(conn.send_json(reply).await.into());
            }
            "leave_session" => self.leave(&data)?,
            other => {
                return Err(ClientError::UnknownAction {
                    field: "action",
                    action: other.to_owned(),
                    expected: "join_session, pressure_frame, leave_session, resume",
                });
            }
        };
        Ok(conn.send_json(reply.to_json()).await.into())
    }

    async fn next_event(&mut self) -> Option<RoomEvent> {
        tokio::select! {
            biased;
            event = self.events.recv() => event,
            () = self.queue.dropped.notified() => None,
        }
    }

    async fn on_event<T: Transport>(
        &mut self,
        event: Option<RoomEvent>,
        conn: &mut Conn<'_, T>,
    ) -> Flow {
        match event {
            Some(event) if self.replayed(&event) => Flow::Continue,
            Some(event) => conn.send_shared(event).await.into(),
            // Dropped from its rooms for not reading.
            None => Flow::Close(Close::TooSlow {
                queued: rooms::MEMBER_QUEUE,
            }),
        }
    }
}

impl PressureConnection {
    /// A Socket.IO socket's connection, opened at `position` when its
    /// handshake gave one.
    pub fn socketio(
        state: PressureState,
        caller: Caller,
        socket: SocketRef,
        position: resume::PendingPosition,
    ) -> Self {
        socket.join(rooms::socketio_private_room(&socket.id.to_string()));
        let (queue, events) = rooms::MemberQueue::new();
        Self {
            state,
            caller,
            delivery: Delivery::SocketIo(socket),
            queue,
            events,
            joined: HashMap::new(),
            first_position: position,
        }
    }

    /// A connection whose room events arrive on its own bounded queue,
    /// opened at `position` when its URL gave one.
    pub fn with_queue(
        state: PressureState,
        caller: Caller,
        position: resume::PendingPosition,
    ) -> Self {
        let (queue, events) = rooms::MemberQueue::new();
        Self {
            state,
            caller,
            delivery: Delivery::Queue(queue.clone()),
            queue,
            events,
            joined: HashMap::new(),
            first_position: position,
        }
    }

    /// Enters the workout's room (nothing when already in it). A member
    /// `queued` takes the room's events through the connection's queue
    /// whatever its transport.
    async fn enter(&mut self, workout_id: &str, queued: bool) -> Result<(), ClientError> {
        let workout_id = workout_id.to_owned();
        if !self.joined.contains_key(&workout_id) {
            if self.joined.len() >= MAX_JOINED_WORKOUTS {
                return Err(invalid(format!(
                    "a connection joins at most {MAX_JOINED_WORKOUTS} workouts"
                )));
            }
            let member = match &self.delivery {
                Delivery::SocketIo(socket) if !queued => {
                    socket.join(socketio_room(&workout_id));
                    Member::SocketIo(socket.id.to_string())
                }
                _ => Member::WebSocket(self.queue.clone()),
            };
            let membership = self
                .state
                .rooms
                .join(&workout_id, member)
                .await
                .map_err(|error| ClientError::Unavailable {
                    service: "rooms",
                    detail: error.to_string(),
                })?;
            self.joined.insert(
                workout_id.clone(),
                Joined {
                    membership,
                    detection: None,
                    replayed_to: 0,
                },
            );
            tracing::info!(workout_id = ?workout_id, "joined workout");
        }
        Ok(())
    }

    /// `leave_session`: leave the room (no error when not in it).
    pub fn leave(&mut self, data: &Value) -> Result<Outbound, ClientError> {
        let workout_id = workout_id(data)?;
        if self.exit(&workout_id) {
            tracing::info!(workout_id = ?workout_id, "left workout");
        }
        Ok(Outbound::SessionEnded { workout_id })
    }

    /// Leaves the workout's room; whether it was in it.
    fn exit(&mut self, workout_id: &str) -> bool {
        let left = self.joined.remove(workout_id).is_some();
        if left && let Delivery::SocketIo(socket) = &self.delivery {
            socket.leave(socketio_room(workout_id));
        }
        left
    }

    /// `pressure_frame`: analyse, store, count, then tell the room; one
    /// trace (when traces are exported) from this edge through detection
    /// and the session service to every edge that delivers it.
    pub async fn frame(&mut self, data: &Value) -> Result<String, ClientError> {
        let span = switchboard_proto::trace::message_span(|| {
            tracing::info_span!(
                "ws.message",
                endpoint = "pressure",
                trace_id = tracing::field::Empty
            )
        });
        self.analyse_and_record(data).instrument(span).await
    }

    async fn analyse_and_record(&mut self, data: &Value) -> Result<String, ClientError> {
        let workout_id = workout_id(data)?;
        if !self.joined.contains_key(&workout_id) {
            return Err(invalid(format!(
                "not joined to workout {workout_id}: send join_session first"
            )));
        }
        let input = FrameInput::parse(data)?;
        let request = FrameRequest {
            workout_id: workout_id.clone(),
            user_id: if self.caller.is_authenticated() {
                self.caller.user_id().to_owned()
            } else {
                String::new()
            },
            matrix: input.matrix.clone(),
            trace_context: switchboard_proto::trace::current_context(),
        };
        let reply = self.detect(&workout_id, request).await?;
        if !reply.error.is_empty() {
            return Err(invalid(reply.error));
        }
        let frame = input.into_frame(
            reply.stats.unwrap_or_default(),
            self.caller.user_id().to_owned(),
        );
        let origin = self
            .joined
            .get(&workout_id)
            .map(|joined| joined.membership.origin().to_owned());
        let recorded = record(&self.state, frame).await?;
        Ok(publish(&self.state, recorded, origin.as_deref()).await)
    }

    /// Sends a frame on the workout's detection stream (opening it when
    /// needed) and waits, bounded, for its reply.
    async fn detect(
        &mut self,
        workout_id: &str,
        request: FrameRequest,
    ) -> Result<FrameReply, ClientError> {
        let mut detection = self.state.detection.clone();
        let joined = self
            .joined
            .get_mut(workout_id)
            .expect("checked by the caller");
        crate::stream_call::call(
            &mut joined.detection,
            "detection",
            self.state.reply_deadline,
            move |outgoing| async move { detection.stream_frames(outgoing).await },
            request,
        )
        .await
    }
}

/// A frame once stored (or found stored before, for a duplicate).
#[derive(Debug)]
pub struct Recorded {
    pub workout_id: String,
    /// The stored frame's stats: the original's for a duplicate.
    pub stats: FrameStats,
    pub frame_count: u64,
    pub sequence: u64,
    /// The stored frame's own timestamp, as its client sent it.
    pub timestamp: f64,
    /// The client's id for the frame, when it sent one.
    pub message_id: Option<String>,
    /// The frame was stored before under its `message_id`: nothing new was
    /// stored or counted, and its room was told then.
    pub duplicate: bool,
    /// The epoch of the log it is stored in.
    pub epoch: String,
}

pub async fn record(state: &PressureState, frame: PressureFrame) -> Result<Recorded, ClientError> {
    let workout_id = frame.workout_id.clone();
    let sent_stats = frame.stats.unwrap_or_default();
    let sent_timestamp = frame.timestamp;
    let message_id = (!frame.message_id.is_empty()).then(|| frame.message_id.clone());
    let recorded = state
        .sessions
        .clone()
        .record_frame(RecordFrameRequest { frame: Some(frame) })
        .await
        .map_err(|status| ClientError::from_status("session", status))?
        .into_inner();
    Ok(Recorded {
        workout_id,
        stats: recorded.stats.unwrap_or(sent_stats),
        frame_count: recorded.frame_count,
        sequence: recorded.sequence,
        timestamp: if recorded.stats.is_some() {
            recorded.timestamp
        } else {
            sent_timestamp
        },
        message_id,
        duplicate: recorded.duplicate,
        epoch: recorded.epoch,
    })
}

/// The `frame_processed` of a stored frame.
pub fn frame_processed(recorded: &Recorded) -> Outbound {
    Outbound::FrameProcessed {
        workout_id: recorded.workout_id.clone(),
        stats: StatsView::from(&recorded.stats),
        frame_count: recorded.frame_count,
        timestamp: Number(recorded.timestamp),
        sequence: recorded.sequence,
        message_id: recorded.message_id.clone(),
        offset: recorded.sequence,
        epoch: recorded.epoch.clone(),
    }
}

/// Tells a stored frame's room, every edge of it, but `origin` (its
/// sender, who gets the returned `frame_processed` as a reply): the one
/// path every frame takes, from any transport. The frame is stored and
/// counted whatever happens here: a room that cannot be told is logged,
/// not the sender's error. A duplicate was told when it was first stored:
/// only its sender is answered, again.
pub async fn publish(state: &PressureState, recorded: Recorded, origin: Option<&str>) -> String {
    let event = frame_processed(&recorded).to_json();
    if recorded.duplicate {
        return event;
    }
    let announced = || {
        serde_json::json!({
            "workout_id": recorded.workout_id,
            "frame_count": recorded.frame_count,
            "sequence": recorded.sequence,
        })
    };
    state.bus.announce("frame_processed", announced).await;
    if let Err(error) = state
        .rooms
        .publish(&recorded.workout_id, event.clone(), origin)
        .await
    {
        tracing::warn!(%error, workout_id = ?recorded.workout_id, "room not told of a stored frame");
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_numbers_are_written_without_a_fraction() {
        let written =
            serde_json::to_string(&[Number(10.0), Number(2.5), Number(-3.0), Number(1e300)])
                .unwrap();
        assert_eq!(written, "[10,2.5,-3,1e+300]");
    }

    #[test]
    fn workout_ids_and_matrices_are_checked_for_type() {
        assert_eq!(workout_id(&json!({"workout_id": "w1"})).unwrap(), "w1");
        assert_eq!(workout_id(&json!({"workout_id": 42})).unwrap(), "42");
        assert_eq!(
            workout_id(&json!({})).unwrap_err().to_string(),
            "missing workout_id"
        );
        assert_eq!(
            workout_id(&json!({"workout_id": ["x"]}))
                .unwrap_err()
                .to_string(),
            "workout_id must be a string"
        );
        let rows = matrix(&json!({"matrix": [[1, 2], [3.5, 4]]})).unwrap();
        assert_eq!(rows[1].values, vec![3.5, 4.0]);
        assert_eq!(
            matrix(&json!({"matrix": [[1, "2"]]}))
                .unwrap_err()
                .to_string(),
            "matrix[0][1] must be a number"
        );
        assert_eq!(
            matrix(&json!({"matrix": [1, 2]})).unwrap_err().to_string(),
            "matrix[0] must be an array of numbers"
        );
        assert_eq!(message_id(&json!({})).unwrap(), None);
        assert_eq!(
            message_id(&json!({"message_id": "f-1"}))
                .unwrap()
                .as_deref(),
            Some("f-1")
        );
        for bad in [json!(""), json!(7), json!(["f"]), json!("m".repeat(129))] {
            assert_eq!(
                message_id(&json!({"message_id": bad}))
                    .unwrap_err()
                    .to_string(),
                "message_id must be a string of 1 to 128 bytes"
            );
        }
        assert_eq!(
            matrix(&json!({})).unwrap_err().to_string(),
            "missing matrix"
        );
        let tall = json!({"matrix": vec![vec![0]; 65]});
        assert_eq!(
            matrix(&tall).unwrap_err().to_string(),
            "matrix has 65 rows; at most 64"
        );
    }
}
