//! The detection service: the analytics behind Switchboard's streams.
//!
//! - [`steps`]: the step detector (Oxford step counter's windowed peak
//!   detection), pure and synchronous.
//! - [`fall`]: the fall detector (free fall, then an impact, confirmed by
//!   stillness in a new orientation: reported 2.5 s after the impact), pure.
//! - [`pressure`]: statistics of a pressure frame and the abnormal-peak
//!   monitor, pure.
//! - [`alerts`]: anomalies for a user, stored until acknowledged.
//! - [`serve`]: the gRPC server. `StreamSteps` is one bidirectional stream
//!   per live session; `StreamStepBatches` ([`multiplexed`]) carries many
//!   sessions, in batches, for an edge in another process. Either way the
//!   detector's state lives with the stream, so any replica can take a
//!   session and nothing is shared between replicas. If a replica goes
//!   away the edge sends the session's next request to another stream and
//!   the detector starts afresh (a few seconds of window), while the
//!   session's totals stay in the session registry. Every stream also
//!   watches for a fall; a fall becomes an alert for the stream's user,
//!   stored before the reply that names it. The server is the one place the
//!   detectors' and the alerts' errors become gRPC statuses. In one process
//!   the edge calls a session's detectors without the codec
//!   ([`StepSessions`]).

pub mod alerts;
pub mod fall;
mod limits;
mod multiplexed;
pub mod pressure;
pub mod steps;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use switchboard_bus::{Bus, BusError};
use switchboard_proto::error::{ErrorCode, ServiceError, reply, status};
use switchboard_proto::in_process::{Listeners, StepSession, StepSessions, Stepped};
use switchboard_proto::server;
use switchboard_proto::trace::continued;
use switchboard_proto::v1::detection_service_server::{DetectionService, DetectionServiceServer};
use switchboard_proto::v1::{
    AccelSample, AckAlertRequest, AckAlertResponse, Alert, CountStepsRequest, CountStepsResponse,
    FrameReply, FrameRequest, FrameStats, ListAlertsRequest, ListAlertsResponse, Observation,
    RaiseAlertRequest, StepBatch, StepReply, StepReplyBatch, StepRequest,
};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use alerts::{AlertError, Alerts};
use fall::{Fall, FallConfig, FallDetector};
use pressure::{PeakAnomaly, PeakMonitor, PeakMonitorConfig};
use steps::{DetectorConfig, StepDetector};

/// Why the detection service could not run.
#[derive(Debug, thiserror::Error)]
pub enum DetectionError {
    #[error("alert store unavailable: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
}

/// Serves detection on `listeners` until `shutdown` completes.
pub async fn serve(
    bus: Bus,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DetectionError> {
    let detection = Detection {
        alerts: Alerts::open(&bus).await?,
    };
    let listeners = listeners.into();
    // Realtime sessions of this process's edge skip the codec
    // (`in_process::StepSessions`); everything else goes through `routes`.
    if let (Some(directory), Ok(addr)) = (&listeners.in_process, listeners.tcp.local_addr()) {
        directory.add_step_sessions(addr, Arc::new(detection.clone()));
    }
    let routes = tonic::service::Routes::new(DetectionServiceServer::new(detection));
    server::serve(
        &[<DetectionServiceServer<Detection> as tonic::server::NamedService>::NAME],
        routes,
        listeners,
        shutdown,
    )
    .await?;
    Ok(())
}

/// The gRPC face of the detectors. Stateless itself: each stream owns its
/// detectors.
#[derive(Debug, Clone)]
pub struct Detection {
    alerts: Alerts,
}

fn push_samples(
    detector: &mut StepDetector,
    samples: &[AccelSample],
) -> (u32, Option<Observation>) {
    let mut steps = 0;
    let mut observation = None;
    for sample in samples {
        let outcome = detector.push(sample.t, sample.x, sample.y, sample.z);
        steps += outcome.steps;
        observation = Some(Observation {
            magnitude: outcome.observation.magnitude,
            score: outcome.observation.score,
            threshold: outcome.observation.threshold,
            confidence: outcome.observation.confidence,
        });
    }
    (steps, observation)
}

/// One session's detectors: steps and falls.
struct StepState {
    steps: StepDetector,
    falls: FallDetector,
}

impl StepState {
    fn new() -> Self {
        Self {
            steps: StepDetector::new(DetectorConfig::default()),
            falls: FallDetector::new(FallConfig::default()),
        }
    }

    /// Applies one request (reset, samples, flush), synchronously: the reply
    /// without its alert ids, and the alerts to raise before it is sent
    /// (a fall, when the request names a user).
    fn detect(&mut self, request: &StepRequest) -> (StepReply, Vec<RaiseAlertRequest>) {
        if request.reset {
            self.steps.reset();
            self.falls.reset();
        }
        let (mut steps, observation) = push_samples(&mut self.steps, &request.samples);
        let falls: Vec<Fall> = request
            .samples
            .iter()
            .filter_map(|sample| self.falls.push(sample.t, sample.x, sample.y, sample.z))
            .collect();
        if request.flush {
            steps += self.steps.flush();
        }
        let alerts = if request.user_id.is_empty() {
            Vec::new()
        } else {
            falls.iter().map(|fall| fall_alert(request, fall)).collect()
        };
        let reply = StepReply {
            steps,
            observation,
            buffer_size: u32::try_from(self.steps.buffer_len()).unwrap_or(u32::MAX),
            call_id: request.call_id,
            ..Default::default()
        };
        (reply, alerts)
    }
}

/// Stores `alerts` (in order) and names them in `reply`.
async fn raise_all(
    alerts: &Alerts,
    to_raise: Vec<RaiseAlertRequest>,
    mut reply: StepReply,
) -> Result<StepReply, AlertError> {
    for alert in to_raise {
        reply.alert_ids.push(alerts.raise(alert).await?.alert_id);
    }
    Ok(reply)
}

/// The detectors of one live `StreamSteps` stream.
struct SessionDetectors {
    state: StepState,
    alerts: Alerts,
}

impl SessionDetectors {
    fn new(alerts: Alerts) -> Self {
        Self {
            state: StepState::new(),
            alerts,
        }
    }

    /// Applies one request: reset, samples, flush; stores an alert for each
    /// fall before replying.
    async fn step(&mut self, request: StepRequest) -> Result<StepReply, AlertError> {
        let (reply, to_raise) = self.state.detect(&request);
        raise_all(&self.alerts, to_raise, reply).await
    }
}

impl StepSessions for Detection {
    fn open(&self) -> Box<dyn StepSession> {
        Box::new(SessionDetectors::new(self.alerts.clone()))
    }
}

impl StepSession for SessionDetectors {
    /// What one request of a `StreamSteps` stream gets ([`replies`]), with
    /// the request and reply as they are, in the same span: ready at once
    /// unless the request raised alerts to store.
    fn step(&mut self, request: StepRequest) -> Stepped<'_> {
        let span = <Self as StreamDetectors>::span(&request);
        let (reply, to_raise) = span.in_scope(|| self.state.detect(&request));
        if to_raise.is_empty() {
            return Stepped::Ready(Ok(reply));
        }
        Stepped::Storing(Box::pin(
            async move {
                raise_all(&self.alerts, to_raise, reply)
                    .await
                    .map_err(status)
            }
            .instrument(span),
        ))
    }
}

/// The statistics of a frame, or why it is refused.
fn analyse(request: &FrameRequest) -> Result<pressure::FrameStats, pressure::FrameError> {
    let matrix: Vec<Vec<f64>> = request
        .matrix
        .iter()
        .map(|row| row.values.clone())
        .collect();
    pressure::frame_stats(&matrix, pressure::DEFAULT_CONTACT_THRESHOLD)
}

impl ServiceError for pressure::FrameError {
    /// A frame the detectors cannot read is the client's to fix.
    fn error_code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }
}

fn to_proto(stats: &pressure::FrameStats) -> FrameStats {
    let as_u32 = |value: usize| u32::try_from(value).unwrap_or(u32::MAX);
    FrameStats {
        rows: as_u32(stats.rows),
        columns: as_u32(stats.columns),
        total_pressure: stats.total_pressure,
        mean_pressure: stats.mean_pressure,
        peak_pressure: stats.peak_pressure,
        peak_row: as_u32(stats.peak_row),
        peak_column: as_u32(stats.peak_column),
        contact_cells: as_u32(stats.contact_cells),
        contact_area_ratio: stats.contact_area_ratio,
        center_row: stats.center_of_pressure.map(|(row, _)| row),
        center_column: stats.center_of_pressure.map(|(_, column)| column),
        left_right_balance: stats.left_right_balance,
        front_back_balance: stats.front_back_balance,
    }
}

/// The detectors of one stream of pressure frames.
struct FrameDetectors {
    peaks: PeakMonitor,
    alerts: Alerts,
}

impl FrameDetectors {
    async fn frame(&mut self, request: FrameRequest) -> Result<FrameReply, AlertError> {
        let stats = match analyse(&request) {
            Ok(stats) => stats,
            Err(error) => {
                return Ok(FrameReply {
                    error: error.to_string(),
                    ..Default::default()
                });
            }
        };
        let mut alert_ids = Vec::new();
        if let Some(anomaly) = self.peaks.observe(&stats)
            && !request.user_id.is_empty()
        {
            let alert = self.alerts.raise(peak_alert(&request, &anomaly)).await?;
            alert_ids.push(alert.alert_id);
        }
        Ok(FrameReply {
            stats: Some(to_proto(&stats)),
            error: String::new(),
            alert_ids,
        })
    }
}

fn peak_alert(request: &FrameRequest, anomaly: &PeakAnomaly) -> RaiseAlertRequest {
    let result = format!(
        r#"{{"detector":"pressure_peak","peak_pressure":{},"baseline":{},"threshold":{},"row":{},"column":{}}}"#,
        anomaly.peak_pressure, anomaly.baseline, anomaly.threshold, anomaly.row, anomaly.column
    );
    RaiseAlertRequest {
        user_id: request.user_id.clone(),
        anomaly_type: "pressure_peak".to_owned(),
        severity: "warning".to_owned(),
        stream_id: request.workout_id.clone(),
        detection_result_json: result,
        source: "detection".to_owned(),
    }
}

fn fall_alert(request: &StepRequest, fall: &Fall) -> RaiseAlertRequest {
    let result = format!(
        r#"{{"detector":"fall","at":{},"free_fall_seconds":{},"min_magnitude":{},"impact_magnitude":{},"confidence":{}}}"#,
        fall.at, fall.free_fall_seconds, fall.min_magnitude, fall.impact_magnitude, fall.confidence
    );
    RaiseAlertRequest {
        user_id: request.user_id.clone(),
        anomaly_type: "fall".to_owned(),
        severity: "critical".to_owned(),
        stream_id: request.session_id.clone(),
        detection_result_json: result,
        source: "detection".to_owned(),
    }
}

type Replies<Reply> = Pin<Box<dyn Stream<Item = Result<Reply, Status>> + Send>>;

/// The detectors that live with one stream: what a message does to them,
/// and the message's span.
trait StreamDetectors: Send + 'static {
    type Request: Send + 'static;
    type Reply;

    /// The span of `request`: it continues the trace of the client message
    /// the edge sent it for, so an alert it raises is in that trace too.
    fn span(request: &Self::Request) -> tracing::Span;

    fn handle(
        &mut self,
        request: Self::Request,
    ) -> impl Future<Output = Result<Self::Reply, AlertError>> + Send + '_;
}

impl StreamDetectors for SessionDetectors {
    type Request = StepRequest;
    type Reply = StepReply;

    fn span(request: &StepRequest) -> tracing::Span {
        continued(
            &request.trace_context,
            || tracing::info_span!("detection.steps", session_id = %request.session_id, trace_id = tracing::field::Empty),
        )
    }

    fn handle(
        &mut self,
        request: StepRequest,
    ) -> impl Future<Output = Result<StepReply, AlertError>> + Send + '_ {
        self.step(request)
    }
}

impl StreamDetectors for FrameDetectors {
    type Request = FrameRequest;
    type Reply = FrameReply;

    fn span(request: &FrameRequest) -> tracing::Span {
        continued(
            &request.trace_context,
            || tracing::info_span!("detection.frame", workout_id = ?request.workout_id, trace_id = tracing::field::Empty),
        )
    }

    fn handle(
        &mut self,
        request: FrameRequest,
    ) -> impl Future<Output = Result<FrameReply, AlertError>> + Send + '_ {
        self.frame(request)
    }
}

/// `detectors`' reply to `request`, in the request's span; its error as
/// the client's status.
async fn handled<D: StreamDetectors>(
    detectors: &mut D,
    request: D::Request,
) -> Result<D::Reply, Status> {
    let span = D::span(&request);
    detectors
        .handle(request)
        .instrument(span)
        .await
        .map_err(status)
}

/// One reply per request of a stream, in order, from `detectors`; a
/// request that fails is its error's status in the reply stream.
fn replies<D: StreamDetectors>(requests: Streaming<D::Request>, detectors: D) -> Replies<D::Reply> {
    Box::pin(futures::stream::unfold(
        (requests, detectors),
        |(mut requests, mut detectors)| async move {
            let reply = match requests.next().await? {
                Ok(request) => handled(&mut detectors, request).await,
                Err(status) => Err(status),
            };
            Some((reply, (requests, detectors)))
        },
    ))
}

#[tonic::async_trait]
impl DetectionService for Detection {
    type StreamStepsStream = Replies<StepReply>;
    type StreamFramesStream = Replies<FrameReply>;
    type StreamStepBatchesStream = Replies<StepReplyBatch>;

    async fn stream_frames(
        &self,
        request: Request<Streaming<FrameRequest>>,
    ) -> Result<Response<Self::StreamFramesStream>, Status> {
        let detectors = FrameDetectors {
            peaks: PeakMonitor::new(PeakMonitorConfig::default()),
            alerts: self.alerts.clone(),
        };
        Ok(Response::new(replies(request.into_inner(), detectors)))
    }

    async fn analyze_frame(
        &self,
        request: Request<FrameRequest>,
    ) -> Result<Response<FrameReply>, Status> {
        reply(analyse(request.get_ref()).map(|stats| FrameReply {
            stats: Some(to_proto(&stats)),
            ..Default::default()
        }))
    }

    async fn stream_steps(
        &self,
        request: Request<Streaming<StepRequest>>,
    ) -> Result<Response<Self::StreamStepsStream>, Status> {
        let detectors = SessionDetectors::new(self.alerts.clone());
        Ok(Response::new(replies(request.into_inner(), detectors)))
    }

    async fn stream_step_batches(
        &self,
        request: Request<Streaming<StepBatch>>,
    ) -> Result<Response<Self::StreamStepBatchesStream>, Status> {
        Ok(Response::new(multiplexed::replies(
            request.into_inner(),
            self.alerts.clone(),
        )))
    }

    async fn count_steps(
        &self,
        request: Request<CountStepsRequest>,
    ) -> Result<Response<CountStepsResponse>, Status> {
        let samples = request.into_inner().samples;
        let mut detector = StepDetector::new(DetectorConfig::default());
        let (steps, _) = push_samples(&mut detector, &samples);
        let steps = u64::from(steps) + u64::from(detector.flush());
        Ok(Response::new(CountStepsResponse {
            steps,
            samples: samples.len() as u64,
        }))
    }

    async fn raise_alert(
        &self,
        request: Request<RaiseAlertRequest>,
    ) -> Result<Response<Alert>, Status> {
        reply(self.alerts.raise(request.into_inner()).await)
    }

    async fn ack_alert(
        &self,
        request: Request<AckAlertRequest>,
    ) -> Result<Response<AckAlertResponse>, Status> {
        let request = request.into_inner();
        let acked = self.alerts.ack(&request.user_id, &request.alert_id).await;
        reply(acked.map(|()| AckAlertResponse {}))
    }

    async fn list_alerts(
        &self,
        request: Request<ListAlertsRequest>,
    ) -> Result<Response<ListAlertsResponse>, Status> {
        let alerts = self.alerts.list(&request.into_inner().user_id).await;
        reply(alerts.map(|alerts| ListAlertsResponse { alerts }))
    }
}
