//! Seed 000's REST routes: the session list, one session, terminate. Every
//! answer comes from the session registry, so any edge answers for the
//! whole cluster.

use axum::extract::{FromRef, Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use switchboard_proto::unix_now;
use switchboard_proto::v1::session_service_client::SessionServiceClient;
use switchboard_proto::v1::{
    GetSessionRequest, ListSessionsRequest, Session, TerminateSessionRequest,
};

use crate::caller::Identities;
use crate::error::ClientError;
use crate::settings::TimedChannel;

/// What the session routes need.
#[derive(Clone, Debug)]
pub struct SessionsState {
    pub identities: Identities,
    pub sessions: SessionServiceClient<TimedChannel>,
}

impl FromRef<SessionsState> for Identities {
    fn from_ref(state: &SessionsState) -> Self {
        state.identities.clone()
    }
}

/// `/sessions` and `/sessions/{id}`.
pub fn router(state: SessionsState) -> Router {
    Router::new()
        .route("/sessions", get(list_sessions))
        .route(
            "/sessions/{session_id}",
            get(get_session).delete(terminate_session),
        )
        .with_state(state)
}

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

async fn list_sessions(
    State(state): State<SessionsState>,
) -> Result<Json<SessionList>, ClientError> {
    let sessions = state
        .sessions
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

async fn get_session(
    State(state): State<SessionsState>,
    Path(session_id): Path<String>,
) -> Result<Json<SessionView>, ClientError> {
    let session = state
        .sessions
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

async fn terminate_session(
    State(state): State<SessionsState>,
    Path(session_id): Path<String>,
) -> Result<Json<Terminated>, ClientError> {
    let session = state
        .sessions
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

