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
use crate::connection::Options;
use crate::connection::websocket::accept;
use crate::meter::Endpoint;

pub async fn upgrade(
    State(state): State<PressureState>,
    credentials: Credentials,
    upgrade: WebSocketUpgrade,
) -> Response {
    let driver = state.driver.clone();
    accept(
        upgrade,
        &driver,
        Endpoint::Pressure,
        credentials.anyone(),
        move |caller| {
            let handler = PressureConnection::with_queue(state, caller);
            (Options::new(Endpoint::Pressure), handler)
        },
    )
}
