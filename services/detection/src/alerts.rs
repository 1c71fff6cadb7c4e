//! Alerts: anomalies for one user, kept until the user acknowledges them.
//!
//! An alert is stored in the bus's `alerts` mailbox under its user before
//! anyone is told about it, so it survives the user being offline, the edge
//! holding the user's socket dying, and a delivery that was never
//! acknowledged. The edge holding the user's `/ws/alerts` socket reads the
//! mailbox (backlog, then live) and sends each as `anomaly_detected`; an
//! `ack` removes it here.

use bytes::Bytes;
use prost::Message as _;
use switchboard_bus::{Bus, BusError, Mailbox};
use switchboard_proto::unix_now;
use switchboard_proto::v1::{Alert, RaiseAlertRequest};
use tonic::Status;

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

fn check_label(name: &str, value: &str, required: bool) -> Result<(), Status> {
    if required && value.is_empty() {
        return Err(Status::invalid_argument(format!("{name} is required")));
    }
    if value.len() > MAX_LABEL_BYTES {
        return Err(Status::invalid_argument(format!(
            "{name} is longer than {MAX_LABEL_BYTES} bytes"
        )));
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
    pub async fn raise(&self, request: RaiseAlertRequest) -> Result<Alert, Status> {
        check_label("user_id", &request.user_id, true)?;
        check_label("anomaly_type", &request.anomaly_type, true)?;
        check_label("stream_id", &request.stream_id, false)?;
        check_label("source", &request.source, false)?;
        let severity = if request.severity.is_empty() {
            "warning".to_owned()
        } else if SEVERITIES.contains(&request.severity.as_str()) {
            request.severity
        } else {
            return Err(Status::invalid_argument(format!(
                "severity must be one of {SEVERITIES:?}, got {:?}",
                request.severity
            )));
        };
        let detection_result_json = match request.detection_result_json.trim() {
            "" => "{}".to_owned(),
            text if text.len() > MAX_RESULT_BYTES => {
                return Err(Status::invalid_argument(format!(
                    "detection_result_json is larger than {MAX_RESULT_BYTES} bytes"
                )));
            }
            text => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(_)) => text.to_owned(),
                Ok(_) => {
                    return Err(Status::invalid_argument(
                        "detection_result_json must be a JSON object",
                    ));
                }
                Err(error) => {
                    return Err(Status::invalid_argument(format!(
                        "detection_result_json is not JSON: {error}"
                    )));
                }
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
        let event = serde_json::json!({
            "alert_id": alert.alert_id,
            "user_id": alert.user_id,
            "anomaly_type": alert.anomaly_type,
            "severity": alert.severity,
            "stream_id": alert.stream_id,
        });
        self.bus.announce("alert_raised", event).await;
        Ok(alert)
    }

    /// Removes an acknowledged alert; NOT_FOUND when the user has no such
    /// alert (never raised, already acknowledged, or someone else's).
    pub async fn ack(&self, user_id: &str, alert_id: &str) -> Result<(), Status> {
        check_label("user_id", user_id, true)?;
        check_label("alert_id", alert_id, true)?;
        if self.mailbox.remove(user_id, alert_id).await? {
            tracing::info!(alert_id, "alert acknowledged");
            let event = serde_json::json!({"alert_id": alert_id, "user_id": user_id});
            self.bus.announce("alert_acked", event).await;
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "no unacknowledged alert {alert_id}"
            )))
        }
    }

    /// The user's unacknowledged alerts, oldest first.
    pub async fn list(&self, user_id: &str) -> Result<Vec<Alert>, Status> {
        check_label("user_id", user_id, true)?;
        self.mailbox
            .list(user_id)
            .await?
            .into_iter()
            .map(|letter| {
                Alert::decode(letter.payload.as_ref())
                    .map_err(|error| Status::internal(format!("corrupt alert: {error}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_bus::BusSettings;

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
        assert_eq!(
            alerts
                .ack("bob", &raised.alert_id)
                .await
                .unwrap_err()
                .code(),
            tonic::Code::NotFound,
            "one user cannot ack another's alert"
        );
        alerts.ack("ada", &raised.alert_id).await.unwrap();
        assert!(alerts.list("ada").await.unwrap().is_empty());
        assert_eq!(
            alerts
                .ack("ada", &raised.alert_id)
                .await
                .unwrap_err()
                .code(),
            tonic::Code::NotFound
        );
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
            let status = alerts.raise(bad).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(message), "{}", status.message());
        }
    }
}
