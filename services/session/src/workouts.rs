//! Workouts: the rooms of seed 001's pressure streaming.
//!
//! Every accepted frame is appended to the `frames` log (JetStream, file
//! storage) as the workout's next numbered frame, and only then counted in
//! the workout's record (the `workouts` bucket, compare-and-swap), so a
//! frame the client was told about is always stored, frames are numbered
//! 1, 2, 3, … per workout, and the count is cluster-wide whichever edge
//! took it.

use bytes::Bytes;
use prost::Message as _;
use switchboard_bus::{Bus, BusError, KeyValue, Log};
use switchboard_proto::v1::{ListFramesResponse, PressureFrame, RecordFrameResponse, Workout};
use tonic::Status;

const RECORDS_BUCKET: &str = "workouts";
const FRAMES_LOG: &str = "frames";
const CAS_ATTEMPTS: usize = 32;

/// Largest page of frames.
pub const MAX_PAGE: u32 = 500;
/// Page size when none is asked for.
pub const DEFAULT_PAGE: u32 = 100;
/// Longest workout id.
const MAX_WORKOUT_ID_BYTES: usize = 128;

#[derive(Clone, Debug)]
pub struct Workouts {
    records: KeyValue,
    frames: Log,
}

fn check_workout_id(workout_id: &str) -> Result<(), Status> {
    if workout_id.is_empty() {
        return Err(Status::invalid_argument("workout_id is required"));
    }
    if workout_id.len() > MAX_WORKOUT_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "workout_id is longer than {MAX_WORKOUT_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

fn record_key(workout_id: &str) -> String {
    switchboard_bus::key_token(workout_id)
}

fn corrupt(error: prost::DecodeError) -> Status {
    Status::internal(format!("corrupt workout data: {error}"))
}

impl Workouts {
    pub async fn open(bus: &Bus) -> Result<Self, BusError> {
        Ok(Self {
            records: bus.key_value(RECORDS_BUCKET).await?,
            frames: bus.log(FRAMES_LOG).await?,
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
    pub async fn record_frame(
        &self,
        mut frame: PressureFrame,
    ) -> Result<RecordFrameResponse, Status> {
        check_workout_id(&frame.workout_id)?;
        let stats = frame
            .stats
            .ok_or_else(|| Status::invalid_argument("a frame is recorded with its stats"))?;
        let key = record_key(&frame.workout_id);
        let mut entry = self.records.get(&key).await?;
        let counted = match &entry {
            Some(entry) => {
                Workout::decode(entry.value.as_ref())
                    .map_err(corrupt)?
                    .frame_count
            }
            None => 0,
        };
        let mut number = counted + 1;
        let mut stored = false;
        for _ in 0..CAS_ATTEMPTS {
            frame.sequence = number;
            match self
                .frames
                .append_at(
                    &frame.workout_id,
                    number,
                    Bytes::from(frame.encode_to_vec()),
                )
                .await
            {
                Ok(()) => {
                    stored = true;
                    break;
                }
                Err(BusError::Conflict(_)) => number += 1,
                Err(error) => return Err(error.into()),
            }
        }
        if !stored {
            return Err(Status::aborted(format!(
                "workout {} took new frames concurrently too often",
                frame.workout_id
            )));
        }
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                entry = self.records.get(&key).await?;
            }
            let mut workout = match &entry {
                Some(entry) => Workout::decode(entry.value.as_ref()).map_err(corrupt)?,
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
            let written = match &entry {
                Some(entry) => self.records.update(&key, value, entry.revision).await,
                None => self.records.create(&key, value).await,
            };
            match written {
                Ok(_) => {
                    return Ok(RecordFrameResponse {
                        frame_count: workout.frame_count,
                        sequence: number,
                    });
                }
                Err(BusError::Conflict(_)) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(Status::aborted(format!(
            "workout {} changed concurrently too often",
            frame.workout_id
        )))
    }

    pub async fn workout(&self, workout_id: &str) -> Result<Workout, Status> {
        check_workout_id(workout_id)?;
        match self.records.get(&record_key(workout_id)).await? {
            Some(entry) => Workout::decode(entry.value.as_ref()).map_err(corrupt),
            None => Err(Status::not_found(format!("workout {workout_id} not found"))),
        }
    }

    pub async fn frames(
        &self,
        workout_id: &str,
        after_sequence: u64,
        limit: u32,
    ) -> Result<ListFramesResponse, Status> {
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
                let mut frame = PressureFrame::decode(entry.payload.as_ref()).map_err(corrupt)?;
                frame.sequence = entry.number;
                Ok(frame)
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let next_after_sequence = match (more, frames.last()) {
            (true, Some(last)) => last.sequence,
            _ => 0,
        };
        Ok(ListFramesResponse {
            frames,
            next_after_sequence,
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

    #[tokio::test]
    async fn frames_are_stored_counted_and_paged_in_order() {
        let bus = Bus::connect(&BusSettings::default()).await.unwrap();
        let workouts = Workouts::open(&bus).await.unwrap();
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
        assert_eq!(
            workouts.workout("nope").await.unwrap_err().code(),
            tonic::Code::NotFound
        );
    }
}
