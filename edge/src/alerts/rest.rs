//! Seed 002's monitoring routes and the REST way to raise an alert, all for
//! admins: `GET /ws/connections`, `GET /ws/connections/{user_id}` (from the
//! session registry, so every edge answers for the whole cluster),
//! `POST /api/alerts` and `GET /api/alerts/{user_id}` (the alerts a user
//! has not acknowledged yet).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_proto::unix_now;
use switchboard_proto::v1::{
    Alert, ListAlertsRequest, ListSessionsRequest, RaiseAlertRequest, Session,
};

use super::AlertsState;
use crate::caller::Admin;
use crate::error::ClientError;
use crate::times::{rfc3339_seconds, whole_seconds};

/// An alerts connection as seed 002 reports it.
#[derive(Debug, Serialize)]
pub struct ConnectionView {
    user_id: String,
    connected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    edge_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connected_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uptime_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_heartbeat: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds_since_heartbeat: Option<u64>,
}

impl From<Session> for ConnectionView {
    fn from(session: Session) -> Self {
        let now = unix_now();
        Self {
            connected: true,
            connection_id: Some(session.session_id),
            edge_id: Some(session.edge_id),
            connected_at: Some(rfc3339_seconds(session.started_at)),
            uptime_seconds: Some(whole_seconds(session.started_at, now)),
            last_heartbeat: Some(rfc3339_seconds(session.last_activity)),
            seconds_since_heartbeat: Some(whole_seconds(session.last_activity, now)),
            user_id: session.user_id,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ConnectionList {
    total_connections: usize,
    total_users: usize,
    connections: Vec<ConnectionView>,
}

async fn alerts_connections(
    state: &AlertsState,
    user_id: &str,
) -> Result<Vec<Session>, ClientError> {
    Ok(state
        .sessions
        .clone()
        .list_sessions(ListSessionsRequest {
            kind: super::KIND.to_owned(),
            user_id: user_id.to_owned(),
        })
        .await
        .map_err(|status| ClientError::from_status("session", status))?
        .into_inner()
        .sessions)
}

pub async fn list_connections(
    State(state): State<AlertsState>,
    _admin: Admin,
) -> Result<Json<ConnectionList>, ClientError> {
    let sessions = alerts_connections(&state, "").await?;
    let users: std::collections::HashSet<&str> = sessions
        .iter()
        .map(|session| session.user_id.as_str())
        .collect();
    let total_users = users.len();
    Ok(Json(ConnectionList {
        total_connections: sessions.len(),
        total_users,
        connections: sessions.into_iter().map(ConnectionView::from).collect(),
    }))
}

pub async fn user_connection(
    State(state): State<AlertsState>,
    _admin: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<ConnectionView>, ClientError> {
    let newest = alerts_connections(&state, &user_id)
        .await?
        .into_iter()
        .max_by(|a, b| a.started_at.total_cmp(&b.started_at));
    Ok(Json(match newest {
        Some(session) => session.into(),
        None => ConnectionView {
            user_id,
            connected: false,
            connection_id: None,
            edge_id: None,
            connected_at: None,
            uptime_seconds: None,
            last_heartbeat: None,
            seconds_since_heartbeat: None,
        },
    }))
}

/// `POST /api/alerts`: what another backend sends.
#[derive(Debug, Deserialize)]
pub struct RaiseAlertBody {
    user_id: String,
    #[serde(alias = "type")]
    anomaly_type: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    stream_id: String,
    #[serde(default)]
    detection_result: Option<Value>,
    #[serde(default)]
    source: Option<String>,
}

/// An alert as REST and `anomaly_detected` show it.
#[derive(Debug, Serialize)]
pub struct AlertView {
    alert_id: String,
    user_id: String,
    stream_id: String,
    anomaly_type: String,
    severity: String,
    detection_result: Value,
    source: String,
    raised_at: f64,
}

impl From<Alert> for AlertView {
    fn from(alert: Alert) -> Self {
        Self {
            detection_result: serde_json::from_str(&alert.detection_result_json)
                .unwrap_or(Value::Object(Default::default())),
            alert_id: alert.alert_id,
            user_id: alert.user_id,
            stream_id: alert.stream_id,
            anomaly_type: alert.anomaly_type,
            severity: alert.severity,
            source: alert.source,
            raised_at: alert.raised_at,
        }
    }
}

pub async fn raise_alert(
    State(state): State<AlertsState>,
    _admin: Admin,
    body: Result<Json<RaiseAlertBody>, JsonRejection>,
) -> Result<(StatusCode, Json<AlertView>), ClientError> {
    let Json(body) =
        body.map_err(|rejection| ClientError::InvalidMessage(rejection.body_text()))?;
    let detection_result_json = match body.detection_result {
        None => String::new(),
        Some(Value::Object(object)) => Value::Object(object).to_string(),
        Some(_) => {
            return Err(ClientError::InvalidMessage(
                "detection_result must be a JSON object".into(),
            ));
        }
    };
    let alert = state
        .detection
        .clone()
        .raise_alert(RaiseAlertRequest {
            user_id: body.user_id,
            anomaly_type: body.anomaly_type,
            severity: body.severity,
            stream_id: body.stream_id,
            detection_result_json,
            source: body.source.unwrap_or_else(|| "api".to_owned()),
        })
        .await
        .map_err(|status| ClientError::from_status("detection", status))?
        .into_inner();
    Ok((StatusCode::CREATED, Json(alert.into())))
}

/// `GET /api/alerts/{user_id}`: the user's pending alerts.
#[derive(Debug, Serialize)]
pub struct PendingAlerts {
    user_id: String,
    /// How many wait for the user's `ack`.
    pending: usize,
    /// Oldest first, as the user's socket receives them.
    alerts: Vec<AlertView>,
}

/// The alerts waiting in `user_id`'s mailbox: raised and not yet
/// acknowledged, whether delivered or not (the detection service's
/// `ListAlerts`).
pub async fn pending_alerts(
    State(state): State<AlertsState>,
    _admin: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<PendingAlerts>, ClientError> {
    let alerts = state
        .detection
        .clone()
        .list_alerts(ListAlertsRequest {
            user_id: user_id.clone(),
        })
        .await
        .map_err(|status| ClientError::from_status("detection", status))?
        .into_inner()
        .alerts;
    Ok(Json(PendingAlerts {
        user_id,
        pending: alerts.len(),
        alerts: alerts.into_iter().map(AlertView::from).collect(),
    }))
}
