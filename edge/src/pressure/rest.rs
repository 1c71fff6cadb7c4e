//! Seed 001's HTTP side: workout summaries, stored frames in order, and
//! `POST` of a frame for clients that do not stream (it takes the same path
//! as a streamed frame: analysed, stored, counted, published to the room).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_proto::v1::{FrameRequest, GetWorkoutRequest, ListFramesRequest};

use super::{FrameInput, Number, PressureState, StatsView};
use crate::error::ClientError;

#[derive(Debug, Serialize)]
pub struct Aggregate {
    mean_total_pressure: Number,
    mean_pressure: Number,
    max_peak_pressure: Number,
    mean_contact_area_ratio: Number,
}

#[derive(Debug, Serialize)]
pub struct WorkoutSummary {
    workout_id: String,
    frame_count: u64,
    /// Seconds between the first and the last frame the edge accepted.
    duration_seconds: f64,
    first_frame_timestamp: Number,
    last_frame_timestamp: Number,
    first_received_at: f64,
    last_received_at: f64,
    aggregate: Aggregate,
}

pub async fn workout(
    State(state): State<PressureState>,
    Path(workout_id): Path<String>,
) -> Result<Json<WorkoutSummary>, ClientError> {
    let workout = state
        .sessions
        .clone()
        .get_workout(GetWorkoutRequest { workout_id })
        .await
        .map_err(|status| ClientError::from_status("session", status))?
        .into_inner();
    let frames = workout.frame_count.max(1) as f64;
    Ok(Json(WorkoutSummary {
        duration_seconds: workout.last_received_at - workout.first_received_at,
        first_frame_timestamp: Number(workout.first_frame_at),
        last_frame_timestamp: Number(workout.last_frame_at),
        first_received_at: workout.first_received_at,
        last_received_at: workout.last_received_at,
        aggregate: Aggregate {
            mean_total_pressure: Number(workout.total_pressure_sum / frames),
            mean_pressure: Number(workout.mean_pressure_sum / frames),
            max_peak_pressure: Number(workout.peak_pressure_max),
            mean_contact_area_ratio: Number(workout.contact_area_ratio_sum / frames),
        },
        frame_count: workout.frame_count,
        workout_id: workout.workout_id,
    }))
}

#[derive(Debug, Deserialize)]
pub struct Page {
    /// Frames after this frame number; from the first when absent.
    #[serde(default)]
    after: u64,
    /// Page size, at most 500 (default 100).
    #[serde(default)]
    limit: u32,
}

#[derive(Debug, Serialize)]
pub struct FrameView {
    sequence: u64,
    timestamp: Number,
    received_at: f64,
    user_id: String,
    matrix: Vec<Vec<Number>>,
    nodes: Value,
    stats: Option<StatsView>,
    /// The client's id for the frame, when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FramePage {
    workout_id: String,
    frames: Vec<FrameView>,
    /// Pass as `after` for the next page; `null` on the last page.
    next_after: Option<u64>,
}

pub async fn frames(
    State(state): State<PressureState>,
    Path(workout_id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<FramePage>, ClientError> {
    let listed = state
        .sessions
        .clone()
        .list_frames(ListFramesRequest {
            workout_id: workout_id.clone(),
            after_sequence: page.after,
            limit: page.limit,
        })
        .await
        .map_err(|status| ClientError::from_status("session", status))?
        .into_inner();
    let frames = listed
        .frames
        .into_iter()
        .map(|frame| FrameView {
            sequence: frame.sequence,
            timestamp: Number(frame.timestamp),
            received_at: frame.received_at,
            user_id: frame.user_id,
            matrix: frame
                .matrix
                .into_iter()
                .map(|row| row.values.into_iter().map(Number).collect())
                .collect(),
            nodes: serde_json::from_str(&frame.nodes_json).unwrap_or(Value::Null),
            stats: frame.stats.as_ref().map(StatsView::from),
            message_id: (!frame.message_id.is_empty()).then_some(frame.message_id),
        })
        .collect();
    Ok(Json(FramePage {
        workout_id,
        frames,
        next_after: (listed.next_after_sequence != 0).then_some(listed.next_after_sequence),
    }))
}

#[derive(Debug, Serialize)]
pub struct Accepted {
    workout_id: String,
    stats: StatsView,
    frame_count: u64,
    sequence: u64,
    /// The client's id for the frame, when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
}

pub async fn post_frame(
    State(state): State<PressureState>,
    Path(workout_id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Accepted>), ClientError> {
    let Json(mut data) =
        body.map_err(|rejection| ClientError::InvalidMessage(rejection.body_text()))?;
    if !data.is_object() {
        return Err(ClientError::InvalidMessage("expected a JSON object".into()));
    }
    data["workout_id"] = Value::String(workout_id.clone());
    let input = FrameInput::parse(&data)?;
    let reply = state
        .detection
        .clone()
        .analyze_frame(FrameRequest {
            workout_id: workout_id.clone(),
            user_id: String::new(),
            matrix: input.matrix.clone(),
            // A unary call: its trace context travels in the call's metadata.
            trace_context: Default::default(),
        })
        .await
        .map_err(|status| ClientError::from_status("detection", status))?
        .into_inner();
    let frame = input.into_frame(reply.stats.unwrap_or_default(), "anonymous".to_owned());
    let recorded = super::record(&state, frame).await?;
    let accepted = Accepted {
        workout_id,
        stats: StatsView::from(&recorded.stats),
        frame_count: recorded.frame_count,
        sequence: recorded.sequence,
        message_id: recorded.message_id.clone(),
    };
    // A frame sent again is not created again: 200 with the original.
    let status = if recorded.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    super::publish(&state, recorded, None).await;
    Ok((status, Json(accepted)))
}
