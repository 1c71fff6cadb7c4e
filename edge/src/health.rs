//! Operations: `/health` (liveness, and each service's state), `/ready`
//! (readiness, for load balancers) and `/metrics` (Prometheus).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use switchboard_proto::unix_now;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use switchboard_bus::Bus;

use crate::connection::Driver;

/// What the operations routes need.
#[derive(Clone, Debug)]
pub struct HealthState {
    pub driver: Driver,
    /// The services' channels, for their gRPC health.
    pub channels: ServiceChannels,
    /// NATS, whose state is the edge's too.
    pub bus: Bus,
}

/// A channel to each service, for its gRPC health: every detection
/// replica the edge spreads sessions over, by URL.
#[derive(Clone, Debug)]
pub struct ServiceChannels {
    pub session: Channel,
    pub detection: Vec<(String, Channel)>,
    pub statistics: Channel,
}

/// Each service's state, by name (`session`, `detection`, `statistics`,
/// `nats`), and each detection replica's by URL when there are several.
#[derive(Debug)]
pub struct ServiceStates {
    pub services: BTreeMap<&'static str, &'static str>,
    pub detection_replicas: BTreeMap<String, &'static str>,
}

/// The message bus's state, in a word.
fn bus_state(bus: &Bus) -> &'static str {
    match (bus.is_single_instance(), bus.is_connected()) {
        (true, _) => "in-process",
        (false, true) => "connected",
        (false, false) => "disconnected",
    }
}

/// `/health`, `/ready`, `/metrics`.
pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// How long one service health check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A service's gRPC health, in a word.
async fn service_health(channel: Channel) -> &'static str {
    let mut client = HealthClient::new(channel);
    let check = tokio::time::timeout(
        CHECK_TIMEOUT,
        client.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await;
    match check {
        Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving => "serving",
        Ok(Ok(_)) => "not_serving",
        _ => "unreachable",
    }
}

/// Each service's gRPC health, checked at once, and the bus's state
/// (`nats`). Detection is `serving` when every replica serves,
/// `partly_serving` when some do (sessions move to those), else the
/// first replica's state.
pub async fn services(channels: &ServiceChannels, bus: &Bus) -> ServiceStates {
    let (session, detection, statistics) = tokio::join!(
        service_health(channels.session.clone()),
        futures::future::join_all(
            channels
                .detection
                .iter()
                .map(|(_, channel)| service_health(channel.clone()))
        ),
        service_health(channels.statistics.clone()),
    );
    let serving = detection
        .iter()
        .filter(|state| **state == "serving")
        .count();
    let detection_state = match serving {
        all if all == detection.len() => "serving",
        0 => detection.first().copied().unwrap_or("unreachable"),
        _ => "partly_serving",
    };
    let detection_replicas = match channels.detection.len() {
        0 | 1 => BTreeMap::new(),
        _ => channels
            .detection
            .iter()
            .map(|(url, _)| url.clone())
            .zip(detection)
            .collect(),
    };
    ServiceStates {
        services: BTreeMap::from([
            ("session", session),
            ("detection", detection_state),
            ("statistics", statistics),
            ("nats", bus_state(bus)),
        ]),
        detection_replicas,
    }
}

#[derive(Debug, Serialize)]
pub struct Health {
    /// `healthy` when every service answers SERVING and NATS is connected,
    /// else `degraded`.
    status: &'static str,
    /// Why it is degraded: `session not_serving`, `nats disconnected`, …
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<String>,
    edge_id: String,
    /// `cluster` with NATS, `single-instance` with the in-process bus.
    mode: &'static str,
    /// Sockets this edge holds, by endpoint.
    connections: HashMap<String, u64>,
    services: BTreeMap<&'static str, &'static str>,
    /// Each detection replica's state, by URL, when there are several.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    detection_replicas: BTreeMap<String, &'static str>,
    timestamp: f64,
}

/// Liveness and a view of the services: always 200 while the edge runs,
/// with each service's gRPC health.
async fn health(State(state): State<HealthState>) -> Json<Health> {
    let ServiceStates {
        services,
        detection_replicas,
    } = services(&state.channels, &state.bus).await;
    let ok = |status: &str| matches!(status, "serving" | "connected" | "in-process");
    let reasons: Vec<String> = services
        .iter()
        .filter(|(_, status)| !ok(status))
        .map(|(name, status)| format!("{name} {status}"))
        .chain(
            detection_replicas
                .iter()
                .filter(|(_, status)| !ok(status))
                .map(|(url, status)| format!("detection {url} {status}")),
        )
        .collect();
    Json(Health {
        status: if reasons.is_empty() {
            "healthy"
        } else {
            "degraded"
        },
        reasons,
        edge_id: state.driver.edge_id().to_owned(),
        mode: if state.bus.is_single_instance() {
            "single-instance"
        } else {
            "cluster"
        },
        connections: state.driver.meter().connections(),
        services,
        detection_replicas,
        timestamp: unix_now(),
    })
}

/// Readiness: 200 while the edge accepts traffic and reaches NATS and the
/// session registry, 503 while draining or when it cannot, so a load
/// balancer moves clients to an edge that can serve them.
async fn ready(State(state): State<HealthState>) -> (StatusCode, Json<serde_json::Value>) {
    if state.driver.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "draining"})),
        );
    }
    if !state.bus.is_connected() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not_ready", "reason": "message bus unreachable"})),
        );
    }
    match service_health(state.channels.session.clone()).await {
        "serving" => (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"status": "not_ready", "reason": "session service unreachable"}),
            ),
        ),
    }
}

/// Prometheus/OpenMetrics text of this process's metrics.
async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            switchboard_proto::metrics::CONTENT_TYPE,
        )],
        switchboard_proto::metrics::encode(),
    )
}
