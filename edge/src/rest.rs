//! Seed 000's REST routes: the session list, one session, terminate, health.
//! Every answer comes from the session registry, so any edge answers for the
//! whole cluster.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use switchboard_proto::unix_now;
use switchboard_proto::v1::{
    GetSessionRequest, ListSessionsRequest, Session, TerminateSessionRequest,
};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::EdgeState;
use crate::error::ClientError;

/// One session as REST shows it.
#[derive(Debug, Serialize)]
pub struct SessionView {
    session_id: String,
    user_id: String,
    kind: String,
    edge_id: String,
    started_at: f64,
    last_activity: f64,
    duration: f64,
    idle_seconds: f64,
    total_requests: u64,
    total_steps: u64,
    total_predictions: u64,
}

impl From<Session> for SessionView {
    fn from(session: Session) -> Self {
        let now = unix_now();
        Self {
            duration: now - session.started_at,
            idle_seconds: now - session.last_activity,
            session_id: session.session_id,
            user_id: session.user_id,
            kind: session.kind,
            edge_id: session.edge_id,
            started_at: session.started_at,
            last_activity: session.last_activity,
            total_requests: session.total_requests,
            total_steps: session.total_steps,
            total_predictions: session.total_predictions,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SessionList {
    active_sessions: usize,
    sessions: Vec<SessionView>,
}

pub async fn list_sessions(
    State(state): State<EdgeState>,
) -> Result<Json<SessionList>, ClientError> {
    let sessions = state
        .backends()
        .session
        .clone()
        .list_sessions(ListSessionsRequest::default())
        .await
        .map_err(|status| ClientError::from_status("session", status))?
        .into_inner()
        .sessions;
    Ok(Json(SessionList {
        active_sessions: sessions.len(),
        sessions: sessions.into_iter().map(SessionView::from).collect(),
    }))
}

pub async fn get_session(
    State(state): State<EdgeState>,
    Path(session_id): Path<String>,
) -> Result<Json<SessionView>, ClientError> {
    let session = state
        .backends()
        .session
        .clone()
        .get_session(GetSessionRequest { session_id })
        .await
        .map_err(|status| ClientError::from_status("session", status))?
        .into_inner();
    Ok(Json(session.into()))
}

#[derive(Debug, Serialize)]
pub struct Terminated {
    status: &'static str,
    message: String,
    session: SessionView,
}

pub async fn terminate_session(
    State(state): State<EdgeState>,
    Path(session_id): Path<String>,
) -> Result<Json<Terminated>, ClientError> {
    let session = state
        .backends()
        .session
        .clone()
        .terminate_session(TerminateSessionRequest {
            session_id,
            reason: "terminated via REST".to_owned(),
        })
        .await
        .map_err(|status| ClientError::from_status("session", status))?
        .into_inner();
    Ok(Json(Terminated {
        status: "terminated",
        message: format!("Session {} terminated", session.session_id),
        session: session.into(),
    }))
}

#[derive(Debug, Serialize)]
pub struct Health {
    /// `healthy` when every service answers SERVING, else `degraded`.
    status: &'static str,
    edge_id: String,
    /// `cluster` with NATS, `single-instance` with the in-process bus.
    mode: &'static str,
    /// Sockets this edge holds, by endpoint.
    connections: std::collections::HashMap<String, u64>,
    services: std::collections::BTreeMap<&'static str, &'static str>,
    timestamp: f64,
}

/// Liveness and a view of the services: always 200 while the edge runs,
/// with each service's gRPC health.
pub async fn health(State(state): State<EdgeState>) -> Json<Health> {
    let checks = state.backends().channels.iter().map(|(name, channel)| {
        let mut client = HealthClient::new(channel.clone());
        async move {
            let check = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                client.check(HealthCheckRequest {
                    service: String::new(),
                }),
            )
            .await;
            let status = match check {
                Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving => {
                    "serving"
                }
                Ok(Ok(_)) => "not_serving",
                _ => "unreachable",
            };
            (*name, status)
        }
    });
    let services: std::collections::BTreeMap<_, _> = futures::future::join_all(checks)
        .await
        .into_iter()
        .collect();
    let healthy = services.values().all(|status| *status == "serving");
    Json(Health {
        status: if healthy { "healthy" } else { "degraded" },
        edge_id: state.edge_id().to_owned(),
        mode: if state.bus().is_single_instance() {
            "single-instance"
        } else {
            "cluster"
        },
        connections: state.meter().connections(),
        services,
        timestamp: unix_now(),
    })
}

/// Readiness: 200 while the edge accepts traffic and reaches the session
/// registry, 503 while draining or when it cannot (take it out of rotation).
pub async fn ready(
    State(state): State<EdgeState>,
) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    use axum::http::StatusCode;
    if state.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "draining"})),
        );
    }
    let (_, channel) = &state.backends().channels[0];
    let mut client = HealthClient::new(channel.clone());
    let check = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        client.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await;
    match check {
        Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving => {
            (StatusCode::OK, Json(serde_json::json!({"status": "ready"})))
        }
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"status": "not_ready", "reason": "session service unreachable"}),
            ),
        ),
    }
}

/// Prometheus/OpenMetrics text of this process's metrics.
pub async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            switchboard_proto::metrics::CONTENT_TYPE,
        )],
        switchboard_proto::metrics::encode(),
    )
}
