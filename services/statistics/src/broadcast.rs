//! `BroadcastService`: how other backends reach WebSocket clients on every
//! edge (seed 003's `broadcast`, seed 004's `broadcast_camera_event`,
//! `broadcast_alert`, `broadcast_to_user`, `send_personal_message`).
//!
//! A thin gRPC face over the bus's [`hub`]: each call builds and checks its
//! message there, as the edge's REST broadcasts and the bus's own system
//! events do, and publishes it on NATS; each edge hands it to the clients
//! it holds. A refused message is `INVALID_ARGUMENT` with the hub's reason.

use switchboard_bus::Bus;
use switchboard_bus::hub::{self, StreamAudience, UiMessageKind};
use switchboard_proto::error::status;
use switchboard_proto::v1::broadcast_service_server::BroadcastService;
use switchboard_proto::v1::session_service_client::SessionServiceClient;
use switchboard_proto::v1::{
    BroadcastAck, GetSessionRequest, StreamMessage, TargetedMessage, UiMessage,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The broadcast service: publishes what other backends send.
#[derive(Clone, Debug)]
pub struct Broadcasts {
    bus: Bus,
    /// The registry, which says whose a statistics connection is: a message
    /// to a connection is then kept for that user's resumes.
    sessions: Option<SessionServiceClient<Channel>>,
}

impl Broadcasts {
    pub fn new(bus: Bus, sessions: Option<SessionServiceClient<Channel>>) -> Self {
        Self { bus, sessions }
    }

    /// `audience` with its user, when it is a connection the registry
    /// knows (a registry that cannot say leaves it as it is: the message
    /// still reaches the connection, it is just not resumable).
    async fn with_user(&self, audience: StreamAudience) -> StreamAudience {
        let (StreamAudience::Connection { connection_id, .. }, Some(sessions)) =
            (&audience, &self.sessions)
        else {
            return audience;
        };
        let request = GetSessionRequest {
            session_id: connection_id.clone(),
        };
        match sessions.clone().get_session(request).await {
            Ok(session) => {
                let user_id = session.into_inner().user_id;
                audience.of_user(&user_id)
            }
            Err(error) => {
                tracing::debug!(code = ?error.code(), "connection's user not known");
                audience
            }
        }
    }

    async fn to_stream(
        &self,
        audience: &StreamAudience,
        message_json: &str,
    ) -> Result<Response<BroadcastAck>, Status> {
        let message = hub::stream_message(message_json).map_err(status)?;
        self.bus
            .publish_stream(audience, message)
            .await
            .map_err(status)?;
        Ok(acknowledged())
    }
}

fn acknowledged() -> Response<BroadcastAck> {
    Response::new(BroadcastAck {})
}

/// Seed 003's message for `request`, checked.
fn ui_message(request: &UiMessage) -> Result<hub::UiMessage, hub::HubMessageError> {
    let data = hub::ui_data(&request.data_json)?;
    let kind =
        UiMessageKind::from_fields(&request.r#type, &request.event_type, &request.overlay_type)?;
    hub::ui_message(kind, data)
}

#[tonic::async_trait]
impl BroadcastService for Broadcasts {
    async fn broadcast_ui(
        &self,
        request: Request<UiMessage>,
    ) -> Result<Response<BroadcastAck>, Status> {
        let message = ui_message(request.get_ref()).map_err(status)?;
        self.bus.publish_ui(message).await.map_err(status)?;
        Ok(acknowledged())
    }

    async fn broadcast_stream(
        &self,
        request: Request<StreamMessage>,
    ) -> Result<Response<BroadcastAck>, Status> {
        self.to_stream(&StreamAudience::All, &request.get_ref().message_json)
            .await
    }

    async fn send_to_user(
        &self,
        request: Request<TargetedMessage>,
    ) -> Result<Response<BroadcastAck>, Status> {
        let request = request.into_inner();
        let audience = StreamAudience::user(&request.target).map_err(status)?;
        self.to_stream(&audience, &request.message_json).await
    }

    async fn send_to_connection(
        &self,
        request: Request<TargetedMessage>,
    ) -> Result<Response<BroadcastAck>, Status> {
        let request = request.into_inner();
        let audience = StreamAudience::connection(&request.target).map_err(status)?;
        let audience = self.with_user(audience).await;
        self.to_stream(&audience, &request.message_json).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};
    use switchboard_bus::{BusSettings, subjects};

    use super::*;

    async fn broadcasts() -> (Broadcasts, Bus) {
        let bus = Bus::connect(&BusSettings::default()).await.unwrap();
        (Broadcasts::new(bus.clone(), None), bus)
    }

    async fn next_json(subscription: &mut switchboard_bus::Subscription) -> Value {
        let message = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .expect("a message within 5 s")
            .expect("the bus is up");
        serde_json::from_slice(&message.payload).unwrap()
    }

    #[tokio::test]
    async fn ui_broadcasts_reach_the_ui_subject_in_the_seed_shape() {
        let (broadcasts, bus) = broadcasts().await;
        let mut ui = bus
            .subscribe(subjects::UI_MESSAGES.to_owned())
            .await
            .unwrap();
        broadcasts
            .broadcast_ui(Request::new(UiMessage {
                r#type: "event".into(),
                event_type: "sit".into(),
                overlay_type: String::new(),
                data_json: r#"{"confidence":0.95}"#.into(),
            }))
            .await
            .unwrap();
        assert_eq!(
            next_json(&mut ui).await,
            json!({"type": "event", "event_type": "sit", "data": {"confidence": 0.95}})
        );
    }

    #[tokio::test]
    async fn targeted_messages_reach_their_audience_s_subject() {
        let (broadcasts, bus) = broadcasts().await;
        let mut user = bus.subscribe(subjects::stream_user("ada")).await.unwrap();
        broadcasts
            .send_to_user(Request::new(TargetedMessage {
                target: "ada".into(),
                message_json: r#"{"type":"alert","level":"high"}"#.into(),
            }))
            .await
            .unwrap();
        assert_eq!(
            next_json(&mut user).await,
            json!({"type": "alert", "level": "high"})
        );
    }

    #[tokio::test]
    async fn bad_messages_are_invalid_arguments_with_the_hub_s_reason() {
        let (broadcasts, _) = broadcasts().await;
        let refused = broadcasts
            .broadcast_ui(Request::new(UiMessage {
                r#type: "shout".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            refused.message(),
            "type must be event, overlay or telemetry, got \"shout\""
        );
        let refused = broadcasts
            .broadcast_stream(Request::new(StreamMessage {
                message_json: r#"{"data":1}"#.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(refused.message(), "message_json needs a string \"type\"");
        let refused = broadcasts
            .send_to_connection(Request::new(TargetedMessage {
                target: String::new(),
                message_json: r#"{"type":"alert"}"#.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(refused.message(), "target must be 1 to 64 bytes");
    }
}
