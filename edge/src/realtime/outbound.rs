//! What the server sends on `/ws/realtime`: seed 000's messages, with the
//! same type names and fields, plus `error` and `session_terminated`
//! (documented in `edge/WEBSOCKET.md`).

use serde::Serialize;

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outbound<'a> {
    SessionStarted {
        session_id: &'a str,
        message: &'static str,
        timestamp: String,
    },
    StepDetection {
        session_id: &'a str,
        step_detected: bool,
        prediction: Prediction,
        total_steps: u64,
        total_predictions: u64,
        buffer_size: u32,
        timestamp: String,
        /// The sensor message's `seq`, when it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// The sensor message's `message_id`, when it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<&'a str>,
    },
    StopResponse {
        status: &'static str,
        session_id: &'a str,
        message: &'static str,
        session_stats: SessionStats,
        timestamp: String,
    },
    ResetResponse {
        status: &'static str,
        session_id: &'a str,
        message: &'static str,
        total_steps: u64,
        timestamp: String,
    },
    StatsResponse {
        status: &'static str,
        session_id: &'a str,
        user_stats: UserStats,
        server_stats: ServerStats,
        timestamp: String,
    },
    TimeoutResponse {
        status: &'static str,
        session_id: &'a str,
        message: String,
        timestamp: String,
    },
    SessionTerminated {
        status: &'static str,
        session_id: &'a str,
        message: String,
        timestamp: String,
    },
    Error {
        status: &'static str,
        code: &'static str,
        message: String,
        session_id: Option<&'a str>,
        timestamp: String,
    },
}

/// What the detector saw for one sensor message.
#[derive(Debug, Default, Serialize)]
pub struct Prediction {
    /// |acceleration| of the message's last sample, m/s^2.
    pub magnitude: f64,
    /// The peak score (mean-difference of the smoothed magnitude).
    pub score: f64,
    /// The adaptive threshold a peak's score must exceed.
    pub threshold: f64,
    /// 0..1: how clearly the last confirmed peak cleared the threshold.
    pub confidence: f64,
    /// Steps confirmed by this message.
    pub steps: u32,
    /// Samples in this message.
    pub samples: usize,
}

#[derive(Debug, Serialize)]
pub struct SessionStats {
    pub duration: f64,
    pub total_requests: u64,
    pub total_steps: u64,
    pub total_predictions: u64,
}

#[derive(Debug, Serialize)]
pub struct UserStats {
    pub session_duration: f64,
    pub total_requests: u64,
    pub last_activity: f64,
    pub total_steps: u64,
    pub total_predictions: u64,
}

#[derive(Debug, Serialize)]
pub struct ServerStats {
    pub active_sessions: u64,
    pub total_server_requests: u64,
    pub total_steps: u64,
    pub total_predictions: u64,
    pub total_sessions: u64,
    pub users: u64,
}
