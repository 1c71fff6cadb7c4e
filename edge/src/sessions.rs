//! Seed 000's REST routes: the session list, one session, terminate. Every
//! answer comes from the session registry, so any edge answers for the
//! whole cluster.
//!
//! Who may see and end what:
//!
//! - **With a JWT key configured**, every route needs an admin's token (401
//!   without a valid one, 403 for a user's): sessions include users' alerts
//!   and statistics connections.
//! - **Without one** (seed 000 has no authentication), the routes are open
//!   for realtime sessions only, as seed 000 has them: other kinds are not
//!   listed, not shown and not terminated (404: to them they do not
//!   exist), so nobody can end a user's alerts socket; and no `user_id` is
//!   shown, so the list reveals nobody's.

use axum::extract::{FromRef, Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use switchboard_proto::unix_now;
use switchboard_proto::v1::session_service_client::SessionServiceClient;
use switchboard_proto::v1::{
    GetSessionRequest, ListSessionsRequest, Session, TerminateSessionRequest,
};

use crate::caller::{Credentials, Identities};
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

/// The only kind of session anonymous callers see.
const OPEN_KIND: &str = "realtime";

/// What a caller may see of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// An admin: every session, every field.
    Admin,
    /// No JWT key configured: realtime sessions, without user ids.
    Open,
}

impl Access {
    /// The caller's access, or why they have none (401, 403).
    fn of(credentials: &Credentials, identities: &Identities) -> Result<Self, ClientError> {
        if !identities.configured() {
            return Ok(Access::Open);
        }
        credentials
            .admin()
            .map(|_| Access::Admin)
            .map_err(crate::caller::refusal)
    }

    fn shows(self, session: &Session) -> bool {
        self == Access::Admin || session.kind == OPEN_KIND
    }

    fn view(self, session: Session) -> SessionView {
        let mut view = SessionView::from(session);
        if self == Access::Open {
            view.user_id = None;
        }
        view
    }
}

/// One session as REST shows it.
#[derive(Debug, Serialize)]
pub struct SessionView {
    session_id: String,
    /// Shown to admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
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
            user_id: Some(session.user_id),
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
    credentials: Credentials,
) -> Result<Json<SessionList>, ClientError> {
    let access = Access::of(&credentials, &state.identities)?;
    let kind = match access {
        Access::Admin => String::new(),
        Access::Open => OPEN_KIND.to_owned(),
    };
    let sessions = state
        .sessions
        .clone()
        .list_sessions(ListSessionsRequest {
            kind,
            user_id: String::new(),
        })
        .await
        .map_err(|status| ClientError::from_status("session", status))?
        .into_inner()
        .sessions;
    Ok(Json(SessionList {
        active_sessions: sessions.len(),
        sessions: sessions
            .into_iter()
            .map(|session| access.view(session))
            .collect(),
    }))
}

/// The session `session_id`, if `access` may see it (404 otherwise, as
/// for one that does not exist).
async fn visible_session(
    state: &SessionsState,
    access: Access,
    session_id: String,
) -> Result<Session, ClientError> {
    let session = state
        .sessions
        .clone()
        .get_session(GetSessionRequest {
            session_id: session_id.clone(),
        })
        .await
        .map_err(|status| ClientError::from_status("session", status))?
        .into_inner();
    if access.shows(&session) {
        Ok(session)
    } else {
        Err(ClientError::NotFound(format!(
            "session {session_id} not found"
        )))
    }
}

async fn get_session(
    State(state): State<SessionsState>,
    credentials: Credentials,
    Path(session_id): Path<String>,
) -> Result<Json<SessionView>, ClientError> {
    let access = Access::of(&credentials, &state.identities)?;
    let session = visible_session(&state, access, session_id).await?;
    Ok(Json(access.view(session)))
}

#[derive(Debug, Serialize)]
pub struct Terminated {
    status: &'static str,
    message: String,
    session: SessionView,
}

async fn terminate_session(
    State(state): State<SessionsState>,
    credentials: Credentials,
    Path(session_id): Path<String>,
) -> Result<Json<Terminated>, ClientError> {
    let access = Access::of(&credentials, &state.identities)?;
    let session_id = visible_session(&state, access, session_id)
        .await?
        .session_id;
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
        session: access.view(session),
    }))
}
