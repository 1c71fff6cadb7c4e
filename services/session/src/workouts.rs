//! Workouts: the rooms of seed 001's pressure streaming.
//!
//! Every accepted frame is appended to the `frames` log (JetStream, file
//! storage) as the workout's next numbered frame, and only then counted in
//! the workout's record (the `workouts` bucket, compare-and-swap), so a
//! frame the client was told about is always stored, frames are numbered
//! 1, 2, 3, … per workout, and the count is cluster-wide whichever edge
//! took it. Operations fail with a [`WorkoutError`].
//!
//! A frame may carry its client's `message_id`: the log then remembers it
//! for the de-duplication window (JetStream's `Nats-Msg-Id` with NATS), and
//! the same frame sent again, through any edge, is neither stored nor
//! counted again; it is answered with the original frame's number, stats
//! and timestamp, marked `duplicate`.

use bytes::Bytes;
use prost::Message as _;
use std::time::Duration;

use switchboard_bus::{Appended, Bus, BusError, Change, Contended, KeyValue, Log};
use switchboard_proto::error::{ErrorCode, ServiceError};
use switchboard_proto::v1::{ListFramesResponse, PressureFrame, RecordFrameResponse, Workout};

const RECORDS_BUCKET: &str = "workouts";
const FRAMES_LOG: &str = "frames";
/// Attempts at claiming a frame number, and at counting a frame in the
/// workout's record, before a frame is refused with ABORTED.
const CAS_ATTEMPTS: usize = 32;

/// Largest page of frames.
pub const MAX_PAGE: u32 = 500;
/// Page size when none is asked for.
pub const DEFAULT_PAGE: u32 = 100;
/// Longest workout id.
const MAX_WORKOUT_ID_BYTES: usize = 128;
/// Longest frame `message_id`.
pub const MAX_MESSAGE_ID_BYTES: usize = 128;

/// Where a frame went.
enum Stored {
    /// Under this new number.
    New(u64),
    /// Nowhere: its `message_id` was stored before, as this frame.
    Duplicate(Box<PressureFrame>),
}

/// The workouts' records and their frames.
#[derive(Clone, Debug)]
pub struct Workouts {
    records: KeyValue,
    frames: Log,
}

/// Why a workout operation failed. Its `Display` is the message a client
/// reads; [`ServiceError`] says which status code it gets.
#[derive(Debug, thiserror::Error)]
pub enum WorkoutError {
    #[error("workout_id is required")]
    MissingWorkoutId,
    #[error("workout_id is longer than {MAX_WORKOUT_ID_BYTES} bytes")]
    WorkoutIdTooLong,
    #[error("message_id is longer than {MAX_MESSAGE_ID_BYTES} bytes")]
    MessageIdTooLong,
    #[error("frame is required")]
    MissingFrame,
    #[error("a frame is recorded with its stats")]
    MissingStats,
    #[error("workout {workout_id} not found")]
    NotFound { workout_id: String },
    /// Other writers kept claiming the frame numbers this one tried.
    #[error("workout {workout_id} took new frames concurrently too often")]
    FramesContended { workout_id: String },
    /// Other writers kept changing the workout's record.
    #[error("workout {workout_id} changed concurrently too often")]
    RecordContended { workout_id: String },
    #[error("corrupt workout data: {0}")]
    Corrupt(#[source] prost::DecodeError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl ServiceError for WorkoutError {
    fn error_code(&self) -> ErrorCode {
        match self {
            WorkoutError::MissingWorkoutId
            | WorkoutError::WorkoutIdTooLong
            | WorkoutError::MessageIdTooLong
            | WorkoutError::MissingFrame
            | WorkoutError::MissingStats => ErrorCode::InvalidArgument,
            WorkoutError::NotFound { .. } => ErrorCode::NotFound,
            WorkoutError::FramesContended { .. } | WorkoutError::RecordContended { .. } => {
                ErrorCode::Contended
            }
            WorkoutError::Corrupt(_) => ErrorCode::Internal,
            WorkoutError::Bus(error) => error.error_code(),
        }
    }
}

fn check_workout_id(workout_id: &str) -> Result<(), WorkoutError> {
    if workout_id.is_empty() {
        return Err(WorkoutError::MissingWorkoutId);
    }
    if workout_id.len() > MAX_WORKOUT_ID_BYTES {
        return Err(WorkoutError::WorkoutIdTooLong);
    }
    Ok(())
}

fn record_key(workout_id: &str) -> String {
    switchboard_bus::key_token(workout_id)
}

fn decode_workout(value: &Bytes) -> Result<Workout, WorkoutError> {
    Workout::decode(value.as_ref()).map_err(WorkoutError::Corrupt)
}

impl Workouts {
    /// Opens the workouts on `bus`; a frame's `message_id` is remembered
    /// for `dedup_window`.
    pub async fn open(bus: &Bus, dedup_window: Duration) -> Result<Self, BusError> {
        Ok(Self {
            records: bus.key_value(RECORDS_BUCKET).await?,
            frames: bus.log(FRAMES_LOG, dedup_window).await?,
        })
    }

    /// Stores `frame` as the workout's next frame, then counts it; returns
    /// the new count and the frame's number in the workout (1, 2, 3, …).
    ///
    /// The number is claimed in the log (the first append of a number wins,
    /// see [`Log::append_at`]), starting from the count this replica reads:
    /// so numbers follow the log's order with no gaps, even when two edges
    /// store frames of one workout at once, or a writer died between
    /// storing a frame and counting it. The count is the highest number
    /// stored.
    ///
    /// A frame whose `message_id` was stored within the window is not
    /// stored or counted again: the answer is the original's, with
    /// `duplicate` set and the workout's current count.
    pub async fn record_frame(
        &self,
        mut frame: PressureFrame,
    ) -> Result<RecordFrameResponse, WorkoutError> {
        check_workout_id(&frame.workout_id)?;
        if frame.message_id.len() > MAX_MESSAGE_ID_BYTES {
            return Err(WorkoutError::MessageIdTooLong);
        }
        let stats = frame.stats.ok_or(WorkoutError::MissingStats)?;
        let key = record_key(&frame.workout_id);
        let entry = self.records.get(&key).await?;
        let counted = match &entry {
            Some(entry) => decode_workout(&entry.value)?.frame_count,
            None => 0,
        };
        let number = match self.store(&mut frame, counted + 1).await? {
            Stored::New(number) => number,
            Stored::Duplicate(original) => {
                tracing::debug!(
                    workout_id = ?original.workout_id,
                    sequence = original.sequence,
                    "frame sent again: answered with the stored one"
                );
                return Ok(RecordFrameResponse {
                    frame_count: counted.max(original.sequence),
                    sequence: original.sequence,
                    duplicate: true,
                    stats: original.stats,
                    timestamp: original.timestamp,
                    epoch: self.frames.known_epoch(),
                });
            }
        };
        let (frame, stats) = (&frame, &stats);
        let frame_count = self
            .records
            .update_from(&key, entry, CAS_ATTEMPTS, |entry| async move {
                let mut workout = match entry {
                    Some(entry) => decode_workout(&entry.value)?,
                    None => Workout {
                        workout_id: frame.workout_id.clone(),
                        first_frame_at: frame.timestamp,
                        first_received_at: frame.received_at,
                        ..Default::default()
                    },
                };
                workout.frame_count = workout.frame_count.max(number);
                workout.last_frame_at = frame.timestamp;
                workout.last_received_at = frame.received_at;
                workout.total_pressure_sum += stats.total_pressure;
                workout.mean_pressure_sum += stats.mean_pressure;
                workout.contact_area_ratio_sum += stats.contact_area_ratio;
                workout.peak_pressure_max = workout.peak_pressure_max.max(stats.peak_pressure);
                let value = Bytes::from(workout.encode_to_vec());
                Ok::<_, WorkoutError>(Change::Put(value, workout.frame_count))
            })
            .await?
            .map_err(|Contended| WorkoutError::RecordContended {
                workout_id: frame.workout_id.clone(),
            })?;
        Ok(RecordFrameResponse {
            frame_count,
            sequence: number,
            duplicate: false,
            stats: Some(*stats),
            timestamp: frame.timestamp,
            epoch: self.frames.known_epoch(),
        })
    }

    /// Appends `frame` to its workout's log under the first free number
    /// from `first` on; returns the number it took (also set in `frame`),
    /// or the frame stored before with the same `message_id`.
    async fn store(&self, frame: &mut PressureFrame, first: u64) -> Result<Stored, WorkoutError> {
        let message_id = (!frame.message_id.is_empty()).then(|| frame.message_id.clone());
        let mut number = first;
        for _ in 0..CAS_ATTEMPTS {
            frame.sequence = number;
            let payload = Bytes::from(frame.encode_to_vec());
            match self
                .frames
                .append_at(&frame.workout_id, number, payload, message_id.as_deref())
                .await
            {
                Ok(Appended::Stored) => return Ok(Stored::New(number)),
                Ok(Appended::Duplicate(entry)) => {
                    let mut original = PressureFrame::decode(entry.payload.as_ref())
                        .map_err(WorkoutError::Corrupt)?;
                    original.sequence = entry.number;
                    return Ok(Stored::Duplicate(Box::new(original)));
                }
                // Taken: by a racing writer, or by frames whose writers
                // failed after appending and before counting them (a NATS
                // outage): the count is behind the log. Go on from the
                // log's end, not one number at a time (past CAS_ATTEMPTS
                // uncounted frames, that never got there).
                Err(BusError::Conflict(_)) => {
                    number = self.frames.next_free(&frame.workout_id, number + 1).await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(WorkoutError::FramesContended {
            workout_id: frame.workout_id.clone(),
        })
    }

    /// The workout's record, with the frames log's current epoch.
    pub async fn workout(&self, workout_id: &str) -> Result<Workout, WorkoutError> {
        check_workout_id(workout_id)?;
        match self.records.get(&record_key(workout_id)).await? {
            Some(entry) => Ok(Workout {
                epoch: self.frames.epoch().await?,
                ..decode_workout(&entry.value)?
            }),
            None => Err(WorkoutError::NotFound {
                workout_id: workout_id.to_owned(),
            }),
        }
    }

    pub async fn frames(
        &self,
        workout_id: &str,
        after_sequence: u64,
        limit: u32,
    ) -> Result<ListFramesResponse, WorkoutError> {
        check_workout_id(workout_id)?;
        let limit = match limit {
            0 => DEFAULT_PAGE,
            limit => limit.min(MAX_PAGE),
        } as usize;
        // One more than asked, to know whether another page follows.
        let entries = self
            .frames
            .read(workout_id, after_sequence, limit + 1)
            .await?;
        let more = entries.len() > limit;
        let frames = entries
            .into_iter()
            .take(limit)
            .map(|entry| {
                let mut frame =
                    PressureFrame::decode(entry.payload.as_ref()).map_err(WorkoutError::Corrupt)?;
                frame.sequence = entry.number;
                Ok(frame)
            })
            .collect::<Result<Vec<_>, WorkoutError>>()?;
        let next_after_sequence = match (more, frames.last()) {
            (true, Some(last)) => last.sequence,
            _ => 0,
        };
        Ok(ListFramesResponse {
            frames,
            next_after_sequence,
            epoch: self.frames.epoch().await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_bus::BusSettings;
    use switchboard_proto::v1::FrameStats;

    fn frame(workout_id: &str, timestamp: f64, total: f64, peak: f64) -> PressureFrame {
        PressureFrame {
            workout_id: workout_id.into(),
            timestamp,
            received_at: timestamp,
            stats: Some(FrameStats {
                total_pressure: total,
                peak_pressure: peak,
                contact_area_ratio: 0.5,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Workouts on the in-memory bus.
    async fn in_memory() -> Workouts {
        let bus = Bus::connect(&BusSettings::default()).await.unwrap();
        Workouts::open(&bus, Duration::from_secs(600))
            .await
            .unwrap()
    }

    /// Frames appended by writers that failed before counting them (as a
    /// NATS outage can make them) leave the count behind the log: a frame
    /// after them is still stored, at the log's end, and counted there.
    #[tokio::test]
    async fn a_count_far_behind_its_log_catches_up() {
        let workouts = in_memory().await;
        let first = workouts
            .record_frame(frame("w1", 1.0, 10.0, 5.0))
            .await
            .unwrap();
        assert_eq!(first.sequence, 1);
        let uncounted = 2 * CAS_ATTEMPTS as u64;
        for number in 2..=1 + uncounted {
            let mut orphan = frame("w1", number as f64, 10.0, 5.0);
            orphan.sequence = number;
            workouts
                .frames
                .append_at("w1", number, Bytes::from(orphan.encode_to_vec()), None)
                .await
                .unwrap();
        }
        let next = workouts
            .record_frame(frame("w1", 100.0, 10.0, 5.0))
            .await
            .unwrap();
        assert_eq!(next.sequence, 2 + uncounted);
        assert_eq!(next.frame_count, 2 + uncounted);
        assert_eq!(
            workouts.workout("w1").await.unwrap().frame_count,
            2 + uncounted
        );
    }

    #[tokio::test]
    async fn frames_are_stored_counted_and_paged_in_order() {
        let workouts = in_memory().await;
        for i in 1..=5u32 {
            let recorded = workouts
                .record_frame(frame("w1", f64::from(i), 10.0 * f64::from(i), f64::from(i)))
                .await
                .unwrap();
            assert_eq!(recorded.frame_count, u64::from(i));
            assert_eq!(
                recorded.sequence,
                u64::from(i),
                "numbered per workout from 1"
            );
        }
        let other = workouts
            .record_frame(frame("w2", 1.0, 1.0, 1.0))
            .await
            .unwrap();
        assert_eq!(other.sequence, 1, "each workout counts from 1");

        let workout = workouts.workout("w1").await.unwrap();
        assert_eq!(workout.frame_count, 5);
        assert_eq!((workout.first_frame_at, workout.last_frame_at), (1.0, 5.0));
        assert_eq!(workout.total_pressure_sum, 150.0);
        assert_eq!(workout.peak_pressure_max, 5.0);

        let page = workouts.frames("w1", 0, 2).await.unwrap();
        assert_eq!(
            page.frames.iter().map(|f| f.timestamp).collect::<Vec<_>>(),
            [1.0, 2.0]
        );
        let rest = workouts
            .frames("w1", page.next_after_sequence, 10)
            .await
            .unwrap();
        assert_eq!(
            rest.frames.iter().map(|f| f.timestamp).collect::<Vec<_>>(),
            [3.0, 4.0, 5.0]
        );
        assert_eq!(rest.next_after_sequence, 0, "no page after the last");
        let epoch = workouts.frames.epoch().await.unwrap();
        assert_eq!(
            (rest.epoch.as_str(), workout.epoch.as_str()),
            (epoch.as_str(), epoch.as_str()),
            "the log's epoch comes with its frames and the workout"
        );
        let recorded = workouts
            .record_frame(frame("w1", 6.0, 1.0, 1.0))
            .await
            .unwrap();
        assert_eq!(recorded.epoch, epoch);
        let empty = workouts.frames("never-sent", 0, 10).await.unwrap();
        assert_eq!(empty.epoch, epoch, "even of a workout with no frames");
        let missing = switchboard_proto::error::status(workouts.workout("nope").await.unwrap_err());
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert_eq!(missing.message(), "workout nope not found");
    }

    #[tokio::test]
    async fn a_frame_sent_again_with_its_message_id_is_stored_and_counted_once() {
        let workouts = in_memory().await;
        let with_id = |timestamp: f64, total: f64, id: &str| PressureFrame {
            message_id: id.into(),
            ..frame("w1", timestamp, total, 1.0)
        };
        let first = workouts
            .record_frame(with_id(1.0, 10.0, "a"))
            .await
            .unwrap();
        workouts
            .record_frame(with_id(2.0, 20.0, "b"))
            .await
            .unwrap();
        assert!(!first.duplicate);
        // The resend differs (a client may restamp it): the stored one wins.
        let again = workouts
            .record_frame(with_id(9.0, 99.0, "a"))
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(again.sequence, 1);
        assert_eq!(again.frame_count, 2);
        assert_eq!(again.timestamp, 1.0);
        assert_eq!(again.stats, first.stats);
        let workout = workouts.workout("w1").await.unwrap();
        assert_eq!(workout.frame_count, 2);
        assert_eq!(workout.total_pressure_sum, 30.0, "not counted again");
        assert_eq!(workouts.frames("w1", 0, 10).await.unwrap().frames.len(), 2);
        let other = workouts
            .record_frame(PressureFrame {
                message_id: "a".into(),
                ..frame("w2", 1.0, 1.0, 1.0)
            })
            .await
            .unwrap();
        assert!(!other.duplicate, "ids are per workout");
        let too_long = workouts
            .record_frame(with_id(3.0, 1.0, &"m".repeat(129)))
            .await
            .unwrap_err();
        assert_eq!(too_long.to_string(), "message_id is longer than 128 bytes");
    }
}
