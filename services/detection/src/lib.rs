//! The detection service: the analytics behind Switchboard's streams.
//!
//! - [`steps`]: the step detector (Oxford step counter's windowed peak
//!   detection), pure and synchronous.
//! - [`serve`]: the gRPC server. `StreamSteps` is one bidirectional stream
//!   per live session; the detector's state lives with the stream, so any
//!   replica can take a session and nothing is shared between replicas.
//!   If a replica goes away the edge opens a new stream elsewhere and the
//!   detector starts afresh (a few seconds of window), while the session's
//!   totals stay in the session registry.

pub mod steps;

use std::future::Future;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use switchboard_proto::server;
use switchboard_proto::v1::detection_service_server::{DetectionService, DetectionServiceServer};
use switchboard_proto::v1::{
    AccelSample, CountStepsRequest, CountStepsResponse, Observation, StepReply, StepRequest,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

use steps::{DetectorConfig, StepDetector};

/// Why the detection service could not run.
#[derive(Debug, thiserror::Error)]
pub enum DetectionError {
    #[error(transparent)]
    Serve(#[from] server::ServeError),
}

/// Serves detection on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DetectionError> {
    let routes = tonic::service::Routes::new(DetectionServiceServer::new(Detection));
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
/// detector.
#[derive(Debug, Clone, Copy, Default)]
pub struct Detection;

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

/// Applies one request to a session's detector: reset, samples, flush.
fn step(detector: &mut StepDetector, request: StepRequest) -> StepReply {
    if request.reset {
        detector.reset();
    }
    let (mut steps, observation) = push_samples(detector, &request.samples);
    if request.flush {
        steps += detector.flush();
    }
    StepReply {
        steps,
        observation,
        buffer_size: u32::try_from(detector.buffer_len()).unwrap_or(u32::MAX),
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
        let mut detector = StepDetector::new(DetectorConfig::default());
        let replies = request
            .into_inner()
            .map(move |request| request.map(|request| step(&mut detector, request)));
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
}
