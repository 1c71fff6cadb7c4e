//! Alerts: anomalies for one user, kept until the user acknowledges them.
//!
//! An alert is stored in the bus's `alerts` mailbox under its user before
//! anyone is told about it, so it survives the user being offline, the edge
//! holding the user's socket dying, and a delivery that was never
//! acknowledged. The edge holding the user's `/ws/alerts` socket reads the
//! mailbox (backlog, then live) and sends each as `anomaly_detected`; an
//! `ack` removes it here. Operations fail with an [`AlertError`].

use bytes::Bytes;
use prost::Message as _;
use switchboard_bus::{Bus, BusError, Mailbox};
use switchboard_proto::error::{ErrorCode, ServiceError};
use switchboard_proto::unix_now;
use switchboard_proto::v1::{Alert, RaiseAlertRequest};

use switchboard_bus::subjects::ALERTS_MAILBOX;

/// Longest user id, anomaly type, stream id or source accepted.
const MAX_LABEL_BYTES: usize = 128;

/// Largest `detection_result_json`.
const MAX_RESULT_BYTES: usize = 16 * 1024;

/// The severities an alert may carry.
pub const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

/// Raising, acknowledging and listing alerts.
#[derive(Clone, Debug)]
pub struct Alerts {
    mailbox: Mailbox,
    bus: Bus,
}

/// Why an alert operation failed. Its `Display` is the message a client
/// reads; [`ServiceError`] says which status code it gets.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("{field} is required")]
    Missing { field: &'static str },
    #[error("{field} is longer than {MAX_LABEL_BYTES} bytes")]
    TooLong { field: &'static str },
    #[error("severity must be one of {SEVERITIES:?}, got {0:?}")]
    UnknownSeverity(String),
    #[error("detection_result_json is larger than {MAX_RESULT_BYTES} bytes")]
    ResultTooLarge,
    #[error("detection_result_json must be a JSON object")]
    ResultNotAnObject,
    #[error("detection_result_json is not JSON: {0}")]
    ResultNotJson(#[source] serde_json::Error),
    /// Never raised, already acknowledged, or someone else's.
    #[error("no unacknowledged alert {alert_id}")]
    NotFound { alert_id: String },
    #[error("corrupt alert: {0}")]
    Corrupt(#[source] prost::DecodeError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl ServiceError for AlertError {
    fn error_code(&self) -> ErrorCode {
        match self {
            AlertError::Missing { .. }
            | AlertError::TooLong { .. }
            | AlertError::UnknownSeverity(_)
            | AlertError::ResultTooLarge
            | AlertError::ResultNotAnObject
            | AlertError::ResultNotJson(_) => ErrorCode::InvalidArgument,
            AlertError::NotFound { .. } => ErrorCode::NotFound,
            AlertError::Corrupt(_) => ErrorCode::Internal,
            AlertError::Bus(error) => error.error_code(),
        }
    }
}

fn check_label(field: &'static str, value: &str, required: bool) -> Result<(), AlertError> {
    if required && value.is_empty() {
        return Err(AlertError::Missing { field });
    }
    if value.len() > MAX_LABEL_BYTES {
        return Err(AlertError::TooLong { field });
    }
    Ok(())
}

impl Alerts {
    pub async fn open(bus: &Bus) -> Result<Self, BusError> {
        Ok(Self {
            mailbox: bus.mailbox(ALERTS_MAILBOX).await?,
            bus: bus.clone(),
        })
    }

    /// Validates and stores a new alert; returns it once it is durable.
    pub async fn raise(&self, request: RaiseAlertRequest) -> Result<Alert, AlertError> {
        check_label("user_id", &request.user_id, true)?;
        check_label("anomaly_type", &request.anomaly_type, true)?;
        check_label("stream_id", &request.stream_id, false)?;
        check_label("source", &request.source, false)?;
        let severity = if request.severity.is_empty() {
            "warning".to_owned()
        } else if SEVERITIES.contains(&request.severity.as_str()) {
            request.severity
        } else {
            return Err(AlertError::UnknownSeverity(request.severity));
        };
        let detection_result_json = match request.detection_result_json.trim() {
            "" => "{}".to_owned(),
            text if text.len() > MAX_RESULT_BYTES => return Err(AlertError::ResultTooLarge),
            text => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(_)) => text.to_owned(),
                Ok(_) => return Err(AlertError::ResultNotAnObject),
                Err(error) => return Err(AlertError::ResultNotJson(error)),
            },
        };
        let alert = Alert {
            alert_id: uuid::Uuid::new_v4().to_string(),
            user_id: request.user_id,
            anomaly_type: request.anomaly_type,
            severity,
            stream_id: request.stream_id,
            detection_result_json,
            raised_at: unix_now(),
            source: if request.source.is_empty() {
                "detection".to_owned()
            } else {
                request.source
            },
        };
        self.mailbox
            .put(
                &alert.user_id,
                &alert.alert_id,
                Bytes::from(alert.encode_to_vec()),
            )
            .await?;
        tracing::info!(
            alert_id = %alert.alert_id,
            anomaly_type = %alert.anomaly_type,
            severity = %alert.severity,
            "alert raised"
        );
        let event = || {
            serde_json::json!({
                "alert_id": alert.alert_id,
                "user_id": alert.user_id,
                "anomaly_type": alert.anomaly_type,
                "severity": alert.severity,
                "stream_id": alert.stream_id,
            })
        };
        self.bus.announce("alert_raised", event).await;
        Ok(alert)
    }

    /// Removes an acknowledged alert; NOT_FOUND when the user has no such
    /// alert (never raised, already acknowledged, or someone else's).
    pub async fn ack(&self, user_id: &str, alert_id: &str) -> Result<(), AlertError> {
        check_label("user_id", user_id, true)?;
        check_label("alert_id", alert_id, true)?;
        if self.mailbox.remove(user_id, alert_id).await? {
            tracing::info!(alert_id, "alert acknowledged");
            let event = || serde_json::json!({"alert_id": alert_id, "user_id": user_id});
            self.bus.announce("alert_acked", event).await;
            Ok(())
        } else {
            Err(AlertError::NotFound {
                alert_id: alert_id.to_owned(),
            })
        }
    }

    /// The user's unacknowledged alerts, oldest first.
    pub async fn list(&self, user_id: &str) -> Result<Vec<Alert>, AlertError> {
        check_label("user_id", user_id, true)?;
        self.mailbox
            .list(user_id)
            .await?
            .into_iter()
            .map(|letter| Alert::decode(letter.payload.as_ref()).map_err(AlertError::Corrupt))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_bus::BusSettings;
    use switchboard_proto::error::status;

    async fn alerts() -> Alerts {
        let bus = Bus::connect(&BusSettings::default()).await.unwrap();
        Alerts::open(&bus).await.unwrap()
    }

    fn request(user_id: &str) -> RaiseAlertRequest {
        RaiseAlertRequest {
            user_id: user_id.into(),
            anomaly_type: "fall".into(),
            severity: "critical".into(),
            stream_id: "session-1".into(),
            detection_result_json: r#"{"impact_magnitude": 31.2}"#.into(),
            source: String::new(),
        }
    }

    #[tokio::test]
    async fn alerts_stay_until_acknowledged() {
        let alerts = alerts().await;
        let raised = alerts.raise(request("ada")).await.unwrap();
        assert_eq!(raised.source, "detection");
        assert_eq!(alerts.list("ada").await.unwrap(), vec![raised.clone()]);
        assert!(alerts.list("bob").await.unwrap().is_empty());
        let refused = status(alerts.ack("bob", &raised.alert_id).await.unwrap_err());
        assert_eq!(
            refused.code(),
            tonic::Code::NotFound,
            "one user cannot ack another's alert"
        );
        assert_eq!(
            refused.message(),
            format!("no unacknowledged alert {}", raised.alert_id)
        );
        alerts.ack("ada", &raised.alert_id).await.unwrap();
        assert!(alerts.list("ada").await.unwrap().is_empty());
        assert!(matches!(
            alerts.ack("ada", &raised.alert_id).await,
            Err(AlertError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn bad_alerts_are_refused_with_a_reason() {
        let alerts = alerts().await;
        let cases = [
            (
                RaiseAlertRequest {
                    user_id: String::new(),
                    ..request("a")
                },
                "user_id is required",
            ),
            (
                RaiseAlertRequest {
                    severity: "meh".into(),
                    ..request("a")
                },
                "severity must be one of",
            ),
            (
                RaiseAlertRequest {
                    detection_result_json: "[1]".into(),
                    ..request("a")
                },
                "must be a JSON object",
            ),
            (
                RaiseAlertRequest {
                    detection_result_json: "{".into(),
                    ..request("a")
                },
                "is not JSON",
            ),
        ];
        for (bad, message) in cases {
            let status = status(alerts.raise(bad).await.unwrap_err());
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(message), "{}", status.message());
        }
    }
}
