//! The detection service: the analytics behind Switchboard's streams.
//!
//! - [`steps`]: the step detector (Oxford step counter's windowed peak
//!   detection), pure and synchronous.
//! - [`fall`]: the fall detector (free fall, then impact), pure.
//! - [`alerts`]: anomalies for a user, stored until acknowledged.
//! - [`serve`]: the gRPC server. `StreamSteps` is one bidirectional stream
//!   per live session; the detector's state lives with the stream, so any
//!   replica can take a session and nothing is shared between replicas.
//!   If a replica goes away the edge opens a new stream elsewhere and the
//!   detector starts afresh (a few seconds of window), while the session's
//!   totals stay in the session registry. Every stream also watches for a
//!   fall; a fall becomes an alert for the stream's user, stored before the
//!   reply that names it.

pub mod alerts;
pub mod fall;
pub mod steps;

use std::future::Future;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use switchboard_bus::{Bus, BusError};
use switchboard_proto::server;
use switchboard_proto::v1::detection_service_server::{DetectionService, DetectionServiceServer};
use switchboard_proto::v1::{
    AccelSample, AckAlertRequest, AckAlertResponse, Alert, CountStepsRequest, CountStepsResponse,
    ListAlertsRequest, ListAlertsResponse, Observation, RaiseAlertRequest, StepReply, StepRequest,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

use alerts::Alerts;
use fall::{Fall, FallConfig, FallDetector};
use steps::{DetectorConfig, StepDetector};

/// Why the detection service could not run.
#[derive(Debug, thiserror::Error)]
pub enum DetectionError {
    #[error("alert store unavailable: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
}

/// Serves detection on `listener` until `shutdown` completes.
pub async fn serve(
    bus: Bus,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DetectionError> {
    let detection = Detection {
        alerts: Alerts::open(&bus).await?,
    };
    let routes = tonic::service::Routes::new(DetectionServiceServer::new(detection));
    server::serve(
        <DetectionServiceServer<Detection> as tonic::server::NamedService>::NAME,
        routes,
        listener,
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

/// The detectors of one live stream.
struct SessionDetectors {
    steps: StepDetector,
    falls: FallDetector,
    alerts: Alerts,
}

impl SessionDetectors {
    fn new(alerts: Alerts) -> Self {
        Self {
            steps: StepDetector::new(DetectorConfig::default()),
            falls: FallDetector::new(FallConfig::default()),
            alerts,
        }
    }

    /// Applies one request: reset, samples, flush; stores an alert for each
    /// fall before replying.
    async fn step(&mut self, request: StepRequest) -> Result<StepReply, Status> {
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
        let mut alert_ids = Vec::new();
        if !request.user_id.is_empty() {
            for fall in falls {
                let alert = self.alerts.raise(fall_alert(&request, &fall)).await?;
                alert_ids.push(alert.alert_id);
            }
        }
        Ok(StepReply {
            steps,
            observation,
            buffer_size: u32::try_from(self.steps.buffer_len()).unwrap_or(u32::MAX),
            alert_ids,
        })
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

type StepReplies = Pin<Box<dyn Stream<Item = Result<StepReply, Status>> + Send>>;

#[tonic::async_trait]
impl DetectionService for Detection {
    type StreamStepsStream = StepReplies;

    async fn stream_steps(
        &self,
        request: Request<Streaming<StepRequest>>,
    ) -> Result<Response<Self::StreamStepsStream>, Status> {
        let detectors = SessionDetectors::new(self.alerts.clone());
        let replies = futures::stream::unfold(
            (request.into_inner(), detectors),
            |(mut requests, mut detectors)| async move {
                let reply = match requests.next().await? {
                    Ok(request) => detectors.step(request).await,
                    Err(status) => Err(status),
                };
                Some((reply, (requests, detectors)))
            },
        );
        Ok(Response::new(Box::pin(replies)))
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
        self.alerts
            .raise(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn ack_alert(
        &self,
        request: Request<AckAlertRequest>,
    ) -> Result<Response<AckAlertResponse>, Status> {
        let request = request.into_inner();
        self.alerts.ack(&request.user_id, &request.alert_id).await?;
        Ok(Response::new(AckAlertResponse {}))
    }

    async fn list_alerts(
        &self,
        request: Request<ListAlertsRequest>,
    ) -> Result<Response<ListAlertsResponse>, Status> {
        let alerts = self.alerts.list(&request.into_inner().user_id).await?;
        Ok(Response::new(ListAlertsResponse { alerts }))
    }
}
