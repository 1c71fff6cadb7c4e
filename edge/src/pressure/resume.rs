//! Positions in a workout's log, and resuming from one after a reconnect
//! (issue #14: nothing lost across reconnects).
//!
//! Every `frame_processed` carries its position: `offset`, the frame's
//! number in its workout's log (its `sequence`), and `epoch`, which names
//! the log's history and changes only when that history is lost (see
//! `switchboard_bus::Log::epoch`). `session_joined` carries the workout's
//! current position.
//!
//! A client that reconnects passes the last position it saw (in a
//! Socket.IO handshake's `auth`, in `join_session`, in `/ws/pressure`'s
//! query, or in a `resume` action). It then gets, before anything live,
//! every frame after it, replayed from the stored log, then one `resumed`.
//! The seam has neither gaps nor duplicates: the connection joins the room
//! first (live events wait in its queue, whatever its transport), replays
//! the log up to its last frame L, and drops the live events at or before
//! L. A position the log cannot continue (another epoch, one ahead of the
//! log, more than [`MAX_REPLAY`] frames behind) gets `resumed` with
//! `recovered: false` and a `reason`: the client refetches the frames over
//! REST.

use serde::Deserialize;
use serde_json::Value;
use switchboard_proto::v1::{GetWorkoutRequest, ListFramesRequest, PressureFrame};

use super::{Number, Outbound, PressureConnection, StatsView, invalid, workout_id};
use crate::connection::{Conn, Flow, Transport};
use crate::error::ClientError;

/// Most frames replayed on a resume; a client further behind refetches.
pub const MAX_REPLAY: u64 = 1000;
/// Longest epoch a client may pass (ours are at most 32 characters).
pub const MAX_EPOCH_BYTES: usize = 64;
/// Largest offset a client may pass: the largest integer a JavaScript
/// number holds exactly.
pub const MAX_OFFSET: u64 = (1 << 53) - 1;
/// Frames asked of the session service at once while replaying (its page
/// limit).
const REPLAY_PAGE: u32 = 500;

/// Where a client is in a workout's log: the last frame it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

impl Position {
    /// The `epoch` and `offset` fields of `data`; `None` when it has
    /// neither (or both are `null`).
    pub fn of(data: &Value) -> Result<Option<Self>, ClientError> {
        let present = |key| data.get(key).filter(|value| !value.is_null());
        match (present("epoch"), present("offset")) {
            (None, None) => Ok(None),
            (Some(epoch), Some(offset)) => {
                let epoch = match epoch {
                    Value::String(epoch) => check_epoch(epoch)?,
                    _ => return Err(invalid("epoch must be a string")),
                };
                let offset = match offset {
                    Value::Number(number) => match (number.as_u64(), number.as_i64()) {
                        (Some(offset), _) => check_offset(offset)?,
                        (None, Some(_)) => return Err(invalid("offset must not be negative")),
                        (None, None) => {
                            return Err(invalid(
                                "offset must be a whole number (a frame's offset)",
                            ));
                        }
                    },
                    _ => return Err(invalid("offset must be a number")),
                };
                Ok(Some(Self { epoch, offset }))
            }
            _ => Err(invalid(
                "a position needs both epoch and offset (from the last frame_processed seen)",
            )),
        }
    }

    /// `epoch=E&offset=N` of a URL query; `None` when it has neither.
    pub fn of_query(pairs: &[(String, String)]) -> Result<Option<Self>, ClientError> {
        let value = |key| pairs.iter().find(|(name, _)| name == key).map(|(_, v)| v);
        match (value("epoch"), value("offset")) {
            (None, None) => Ok(None),
            (Some(epoch), Some(offset)) => {
                let epoch = check_epoch(epoch)?;
                let offset = match offset.parse::<u64>() {
                    Ok(offset) => check_offset(offset)?,
                    Err(_) if offset.starts_with('-') => {
                        return Err(invalid("offset must not be negative"));
                    }
                    Err(_) if !offset.is_empty() && offset.bytes().all(|b| b.is_ascii_digit()) => {
                        return Err(invalid(format!("offset must be at most {MAX_OFFSET}")));
                    }
                    Err(_) => return Err(invalid("offset must be a whole number")),
                };
                Ok(Some(Self { epoch, offset }))
            }
            _ => Err(invalid("a position needs both epoch and offset")),
        }
    }
}

fn check_epoch(epoch: &str) -> Result<String, ClientError> {
    if epoch.is_empty() || epoch.len() > MAX_EPOCH_BYTES {
        return Err(invalid(format!(
            "epoch must be 1 to {MAX_EPOCH_BYTES} bytes"
        )));
    }
    Ok(epoch.to_owned())
}

fn check_offset(offset: u64) -> Result<u64, ClientError> {
    if offset > MAX_OFFSET {
        return Err(invalid(format!("offset must be at most {MAX_OFFSET}")));
    }
    Ok(offset)
}

/// The position a connection was opened with, for its first
/// `join_session`. A malformed one is that join's error, so the
/// connection itself is never refused for it.
#[derive(Debug, Default)]
pub enum PendingPosition {
    #[default]
    None,
    At(Position),
    Malformed(String),
}

impl PendingPosition {
    /// From a Socket.IO handshake's `auth` (`{"token", "epoch", "offset"}`).
    pub fn from_auth(auth: Option<&Value>) -> Self {
        Self::from(auth.map_or(Ok(None), Position::of), "auth")
    }

    /// From `/ws/pressure`'s URL query.
    pub fn from_query(pairs: &[(String, String)]) -> Self {
        Self::from(Position::of_query(pairs), "query")
    }

    fn from(position: Result<Option<Position>, ClientError>, source: &str) -> Self {
        match position {
            Ok(None) => Self::None,
            Ok(Some(position)) => Self::At(position),
            Err(error) => Self::Malformed(format!("{source}: {error}")),
        }
    }

    fn into_position(self) -> Result<Option<Position>, ClientError> {
        match self {
            Self::None => Ok(None),
            Self::At(position) => Ok(Some(position)),
            Self::Malformed(message) => Err(invalid(message)),
        }
    }
}

/// How a resume ended: what `resumed` says.
struct Outcome {
    missed: u64,
    /// The last frame the client has now (replayed, or to refetch).
    offset: u64,
    /// Why the frames were not replayed; `None` when they were.
    lost: Option<String>,
}

/// What the replay needs to know of a room event.
#[derive(Deserialize)]
struct Positioned<'a> {
    #[serde(borrow)]
    workout_id: std::borrow::Cow<'a, str>,
    offset: u64,
}

impl PressureConnection {
    /// `join_session`, resuming when it (or, for the connection's first
    /// join, the handshake or URL) gives a position.
    pub(super) async fn join_session<T: Transport>(
        &mut self,
        data: &Value,
        conn: &mut Conn<'_, T>,
    ) -> Result<Flow, ClientError> {
        let workout_id = workout_id(data)?;
        let first = std::mem::take(&mut self.first_position);
        let position = match Position::of(data)? {
            Some(position) => Some(position),
            None => first.into_position()?,
        };
        if let Some(position) = position {
            return self.resume_from(workout_id, position, conn).await;
        }
        self.enter(&workout_id, false).await?;
        let (epoch, offset) = match self.latest(&workout_id).await {
            Ok((epoch, offset)) => (Some(epoch), Some(offset)),
            // Live frames need no position: the join stands without one.
            Err(error) => {
                tracing::warn!(%error, workout_id = ?workout_id, "workout position unknown");
                (None, None)
            }
        };
        let joined = Outbound::SessionJoined {
            workout_id,
            status: "joined",
            epoch,
            offset,
        };
        Ok(conn.send_json(joined.to_json()).await.into())
    }

    /// `resume`: `join_session` from a position, which it must give.
    pub(super) async fn resume<T: Transport>(
        &mut self,
        data: &Value,
        conn: &mut Conn<'_, T>,
    ) -> Result<Flow, ClientError> {
        let workout_id = workout_id(data)?;
        let position = Position::of(data)?.ok_or_else(|| {
            invalid("resume needs epoch and offset (from the last frame_processed seen)")
        })?;
        self.first_position = PendingPosition::None;
        self.resume_from(workout_id, position, conn).await
    }

    async fn resume_from<T: Transport>(
        &mut self,
        workout_id: String,
        position: Position,
        conn: &mut Conn<'_, T>,
    ) -> Result<Flow, ClientError> {
        // Start over in the room, on the connection's queue: live events
        // wait there behind the replay.
        self.exit(&workout_id);
        self.enter(&workout_id, true).await?;
        let caught_up = self.catch_up(&workout_id, &position, conn).await;
        if caught_up.is_err() {
            self.exit(&workout_id);
        }
        caught_up
    }

    async fn catch_up<T: Transport>(
        &mut self,
        workout_id: &str,
        position: &Position,
        conn: &mut Conn<'_, T>,
    ) -> Result<Flow, ClientError> {
        let (epoch, latest) = self.latest(workout_id).await?;
        let joined = Outbound::SessionJoined {
            workout_id: workout_id.to_owned(),
            status: "joined",
            epoch: Some(epoch.clone()),
            offset: Some(latest),
        };
        if conn.send_json(joined.to_json()).await.is_err() {
            return Ok(Flow::Gone);
        }
        let lost = |missed, offset, reason: String| Outcome {
            missed,
            offset,
            lost: Some(reason),
        };
        let outcome = if position.epoch != epoch {
            lost(
                latest,
                latest,
                format!(
                    "stale epoch: the workout's log was reset (its epoch is now {epoch}); refetch its frames"
                ),
            )
        } else if position.offset > latest {
            lost(
                0,
                latest,
                format!(
                    "offset {} is ahead of the workout's log (its last frame is {latest}); refetch its frames",
                    position.offset
                ),
            )
        } else if latest - position.offset > MAX_REPLAY {
            lost(
                latest - position.offset,
                latest,
                format!(
                    "{} frames missed; at most {MAX_REPLAY} are replayed: refetch them",
                    latest - position.offset
                ),
            )
        } else {
            match self.replay(workout_id, position, &epoch, conn).await? {
                Some(outcome) => outcome,
                None => return Ok(Flow::Gone),
            }
        };
        if let Some(joined) = self.joined.get_mut(workout_id) {
            joined.replayed_to = outcome.offset;
        }
        tracing::info!(
            workout_id = ?workout_id,
            from = position.offset,
            missed = outcome.missed,
            recovered = outcome.lost.is_none(),
            "resumed workout"
        );
        let resumed = Outbound::Resumed {
            workout_id: workout_id.to_owned(),
            recovered: outcome.lost.is_none(),
            missed: outcome.missed,
            epoch,
            offset: outcome.offset,
            reason: outcome.lost,
        };
        Ok(conn.send_json(resumed.to_json()).await.into())
    }

    /// Sends every stored frame after `position`, in order, to the end of
    /// the log (at most [`MAX_REPLAY`]); `None` when the client went away.
    async fn replay<T: Transport>(
        &mut self,
        workout_id: &str,
        position: &Position,
        epoch: &str,
        conn: &mut Conn<'_, T>,
    ) -> Result<Option<Outcome>, ClientError> {
        let mut sessions = self.state.sessions.clone();
        let mut after = position.offset;
        loop {
            let page = sessions
                .list_frames(ListFramesRequest {
                    workout_id: workout_id.to_owned(),
                    after_sequence: after,
                    limit: REPLAY_PAGE,
                })
                .await
                .map_err(|status| ClientError::from_status("session", status))?
                .into_inner();
            if page.epoch != epoch {
                return Ok(Some(Outcome {
                    missed: after - position.offset,
                    offset: after,
                    lost: Some(
                        "stale epoch: the workout's log was reset while replaying; refetch its frames"
                            .into(),
                    ),
                }));
            }
            for frame in page.frames {
                if frame.sequence != after + 1 {
                    continue;
                }
                if frame.sequence - position.offset > MAX_REPLAY {
                    return Ok(Some(Outcome {
                        missed: frame.sequence - position.offset,
                        offset: after,
                        lost: Some(format!(
                            "more than {MAX_REPLAY} frames missed; at most {MAX_REPLAY} are replayed: refetch the rest"
                        )),
                    }));
                }
                after = frame.sequence;
                let processed = replayed_frame(frame, epoch);
                if conn.send_json(processed.to_json()).await.is_err() {
                    return Ok(None);
                }
            }
            if page.next_after_sequence == 0 {
                break;
            }
        }
        Ok(Some(Outcome {
            missed: after - position.offset,
            offset: after,
            lost: None,
        }))
    }

    /// The workout's epoch and latest frame number (0 before its first).
    async fn latest(&self, workout_id: &str) -> Result<(String, u64), ClientError> {
        let mut sessions = self.state.sessions.clone();
        match sessions
            .get_workout(GetWorkoutRequest {
                workout_id: workout_id.to_owned(),
            })
            .await
        {
            Ok(workout) => {
                let workout = workout.into_inner();
                Ok((workout.epoch, workout.frame_count))
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                // No frame yet: the log still has an epoch.
                let page = sessions
                    .list_frames(ListFramesRequest {
                        workout_id: workout_id.to_owned(),
                        after_sequence: 0,
                        limit: 1,
                    })
                    .await
                    .map_err(|status| ClientError::from_status("session", status))?
                    .into_inner();
                Ok((page.epoch, 0))
            }
            Err(status) => Err(ClientError::from_status("session", status)),
        }
    }

    /// Whether a room event is one a resume already replayed.
    pub(super) fn replayed(&self, event: &[u8]) -> bool {
        if self.joined.values().all(|joined| joined.replayed_to == 0) {
            return false;
        }
        let Ok(positioned) = serde_json::from_slice::<Positioned<'_>>(event) else {
            return false;
        };
        self.joined
            .get(positioned.workout_id.as_ref())
            .is_some_and(|joined| positioned.offset <= joined.replayed_to)
    }
}

/// A stored frame as the `frame_processed` its room was sent.
fn replayed_frame(frame: PressureFrame, epoch: &str) -> Outbound {
    Outbound::FrameProcessed {
        stats: StatsView::from(&frame.stats.unwrap_or_default()),
        frame_count: frame.sequence,
        timestamp: Number(frame.timestamp),
        sequence: frame.sequence,
        message_id: (!frame.message_id.is_empty()).then_some(frame.message_id),
        offset: frame.sequence,
        epoch: epoch.to_owned(),
        workout_id: frame.workout_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error(data: Value) -> String {
        Position::of(&data).unwrap_err().to_string()
    }

    #[test]
    fn positions_are_checked_for_type_and_range() {
        assert_eq!(Position::of(&json!({"workout_id": "w"})).unwrap(), None);
        assert_eq!(
            Position::of(&json!({"epoch": null, "offset": null})).unwrap(),
            None
        );
        assert_eq!(
            Position::of(&json!({"epoch": "e1", "offset": 7})).unwrap(),
            Some(Position {
                epoch: "e1".into(),
                offset: 7
            })
        );
        assert_eq!(
            error(json!({"epoch": 5, "offset": 1})),
            "epoch must be a string"
        );
        assert_eq!(
            error(json!({"epoch": "x".repeat(65), "offset": 1})),
            "epoch must be 1 to 64 bytes"
        );
        assert_eq!(
            error(json!({"epoch": "e", "offset": -1})),
            "offset must not be negative"
        );
        assert!(error(json!({"epoch": "e", "offset": 1.5})).starts_with("offset must be a whole"));
        assert_eq!(
            error(json!({"epoch": "e", "offset": "3"})),
            "offset must be a number"
        );
        assert_eq!(
            error(json!({"epoch": "e", "offset": 1u64 << 60})),
            "offset must be at most 9007199254740991"
        );
        assert!(error(json!({"offset": 3})).starts_with("a position needs both"));
    }

    #[test]
    fn query_positions_are_checked_too() {
        let pairs = |items: &[(&str, &str)]| {
            items
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(Position::of_query(&pairs(&[("token", "t")])).unwrap(), None);
        assert_eq!(
            Position::of_query(&pairs(&[("epoch", "e"), ("offset", "12")])).unwrap(),
            Some(Position {
                epoch: "e".into(),
                offset: 12
            })
        );
        for (offset, message) in [
            ("-3", "offset must not be negative"),
            ("1.5", "offset must be a whole number"),
            ("abc", "offset must be a whole number"),
            (
                "99999999999999999999999",
                "offset must be at most 9007199254740991",
            ),
        ] {
            let parsed = Position::of_query(&pairs(&[("epoch", "e"), ("offset", offset)]));
            assert_eq!(parsed.unwrap_err().to_string(), message, "{offset}");
        }
    }

    #[test]
    fn room_events_say_their_position() {
        let event = Outbound::FrameProcessed {
            workout_id: "w1".into(),
            stats: StatsView::from(&Default::default()),
            frame_count: 3,
            timestamp: Number(1.0),
            sequence: 3,
            message_id: None,
            offset: 3,
            epoch: "e".into(),
        }
        .to_json();
        let positioned: Positioned<'_> = serde_json::from_str(&event).unwrap();
        assert_eq!(
            (positioned.workout_id.as_ref(), positioned.offset),
            ("w1", 3)
        );
    }
}
