//! `BroadcastService`: how other backends reach WebSocket clients on every
//! edge (seed 003's `broadcast`, seed 004's `broadcast_camera_event`,
//! `broadcast_alert`, `broadcast_to_user`, `send_personal_message`).
//! Messages are validated here, then published on NATS; each edge hands
//! them to the clients it holds.

use bytes::Bytes;
use serde_json::{Map, Value};
use switchboard_bus::{Bus, subjects};
use switchboard_proto::v1::broadcast_service_server::BroadcastService;
use switchboard_proto::v1::{BroadcastAck, StreamMessage, TargetedMessage, UiMessage};
use tonic::{Request, Response, Status};

/// Largest message, as JSON: it must fit a client's 64 KiB frame limit with
/// room to spare.
pub const MAX_MESSAGE_BYTES: usize = 60 * 1024;
/// Longest type name.
const MAX_TYPE_BYTES: usize = 64;

#[derive(Clone, Debug)]
pub struct Broadcasts {
    bus: Bus,
}

fn json_object(name: &str, text: &str) -> Result<Map<String, Value>, Status> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(Status::invalid_argument(format!(
            "{name} is larger than {MAX_MESSAGE_BYTES} bytes"
        )));
    }
    match serde_json::from_str(if text.trim().is_empty() { "{}" } else { text }) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(Status::invalid_argument(format!(
            "{name} must be a JSON object"
        ))),
        Err(error) => Err(Status::invalid_argument(format!(
            "{name} is not JSON: {error}"
        ))),
    }
}

fn type_name(name: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() || value.len() > MAX_TYPE_BYTES {
        return Err(Status::invalid_argument(format!(
            "{name} must be 1 to {MAX_TYPE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A statistics-stream message: a JSON object with a string `type`.
fn stream_message(text: &str) -> Result<Bytes, Status> {
    let object = json_object("message_json", text)?;
    match object.get("type") {
        Some(Value::String(kind)) => type_name("type", kind)?,
        _ => {
            return Err(Status::invalid_argument(
                "message_json needs a string \"type\"",
            ));
        }
    }
    Ok(Bytes::from(Value::Object(object).to_string()))
}

impl Broadcasts {
    pub fn new(bus: Bus) -> Self {
        Self { bus }
    }

    async fn publish(
        &self,
        subject: String,
        payload: Bytes,
    ) -> Result<Response<BroadcastAck>, Status> {
        self.bus.publish(subject, payload).await?;
        Ok(Response::new(BroadcastAck {}))
    }
}

/// Seed 003's message for `request`, checked.
pub fn ui_message(request: &UiMessage) -> Result<Value, Status> {
    let data = json_object("data_json", &request.data_json)?;
    let mut message = Map::new();
    message.insert("type".into(), Value::String(request.r#type.clone()));
    match request.r#type.as_str() {
        "event" => {
            type_name("event_type", &request.event_type)?;
            message.insert(
                "event_type".into(),
                Value::String(request.event_type.clone()),
            );
        }
        "overlay" => {
            type_name("overlay_type", &request.overlay_type)?;
            message.insert(
                "overlay_type".into(),
                Value::String(request.overlay_type.clone()),
            );
        }
        "telemetry" => {}
        other => {
            return Err(Status::invalid_argument(format!(
                "type must be event, overlay or telemetry, got {other:?}"
            )));
        }
    }
    message.insert("data".into(), Value::Object(data));
    Ok(Value::Object(message))
}

#[tonic::async_trait]
impl BroadcastService for Broadcasts {
    async fn broadcast_ui(
        &self,
        request: Request<UiMessage>,
    ) -> Result<Response<BroadcastAck>, Status> {
        let message = ui_message(request.get_ref())?;
        self.publish(
            subjects::UI_MESSAGES.to_owned(),
            Bytes::from(message.to_string()),
        )
        .await
    }

    async fn broadcast_stream(
        &self,
        request: Request<StreamMessage>,
    ) -> Result<Response<BroadcastAck>, Status> {
        let payload = stream_message(&request.get_ref().message_json)?;
        self.publish(subjects::STREAM_ALL.to_owned(), payload).await
    }

    async fn send_to_user(
        &self,
        request: Request<TargetedMessage>,
    ) -> Result<Response<BroadcastAck>, Status> {
        let request = request.into_inner();
        type_name("target", &request.target)?;
        let payload = stream_message(&request.message_json)?;
        self.publish(subjects::stream_user(&request.target), payload)
            .await
    }

    async fn send_to_connection(
        &self,
        request: Request<TargetedMessage>,
    ) -> Result<Response<BroadcastAck>, Status> {
        let request = request.into_inner();
        type_name("target", &request.target)?;
        let payload = stream_message(&request.message_json)?;
        self.publish(subjects::stream_connection(&request.target), payload)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ui(kind: &str, event_type: &str, overlay_type: &str, data: &str) -> UiMessage {
        UiMessage {
            r#type: kind.into(),
            event_type: event_type.into(),
            overlay_type: overlay_type.into(),
            data_json: data.into(),
        }
    }

    #[test]
    fn ui_messages_take_the_seed_shapes() {
        assert_eq!(
            ui_message(&ui("event", "sit", "", r#"{"confidence":0.95}"#)).unwrap(),
            json!({"type": "event", "event_type": "sit", "data": {"confidence": 0.95}})
        );
        assert_eq!(
            ui_message(&ui("overlay", "", "detection", r#"{"boxes":[]}"#)).unwrap(),
            json!({"type": "overlay", "overlay_type": "detection", "data": {"boxes": []}})
        );
        assert_eq!(
            ui_message(&ui("telemetry", "", "", r#"{"fps":30}"#)).unwrap(),
            json!({"type": "telemetry", "data": {"fps": 30}})
        );
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        let cases = [
            (
                ui("event", "", "", "{}"),
                "event_type must be 1 to 64 bytes",
            ),
            (
                ui("overlay", "", "", "{}"),
                "overlay_type must be 1 to 64 bytes",
            ),
            (
                ui("shout", "", "", "{}"),
                "type must be event, overlay or telemetry",
            ),
            (
                ui("telemetry", "", "", "[1]"),
                "data_json must be a JSON object",
            ),
            (ui("telemetry", "", "", "{"), "data_json is not JSON"),
        ];
        for (request, expected) in cases {
            let status = ui_message(&request).unwrap_err();
            assert!(
                status.message().starts_with(expected),
                "{}",
                status.message()
            );
        }
        assert!(stream_message(r#"{"data":1}"#).is_err());
        assert!(stream_message(r#"{"type":"camera_event"}"#).is_ok());
    }
}
