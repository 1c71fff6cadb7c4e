//! `/ws/pressure`: seed 001's actions for clients that do not speak
//! Socket.IO. Each message is a JSON object whose `action` (or `type`, or
//! `event`) names the seed's event, with the event's fields beside it:
//! `{"action": "join_session", "workout_id": "w1"}`. Replies carry the
//! seed's server event name in `type`.

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;

use super::{PressureConnection, PressureState};
use crate::caller::Credentials;
use crate::connection::websocket::{WebSocketTransport, configure};
use crate::connection::{Close, Options, Transport, drive};
use crate::meter::Endpoint;

pub async fn upgrade(
    State(state): State<PressureState>,
    credentials: Credentials,
    upgrade: WebSocketUpgrade,
) -> Response {
    let caller = credentials.anyone();
    let limit = state.driver.max_message_bytes();
    configure(upgrade, limit).on_upgrade(move |socket| async move {
        let mut transport = WebSocketTransport::new(socket, limit);
        let caller = match caller {
            Ok(caller) => caller,
            Err(reason) => return transport.close(&Close::Unauthorized(reason)).await,
        };
        let driver = state.driver.clone();
        let handler = PressureConnection::with_queue(state, caller);
        drive(
            &driver,
            Options::new(Endpoint::Pressure),
            transport,
            handler,
        )
        .await;
    })
}
