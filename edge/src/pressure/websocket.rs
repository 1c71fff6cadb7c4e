//! `/ws/pressure`: seed 001's actions for clients that do not speak
//! Socket.IO. Each message is a JSON object whose `action` (or `type`, or
//! `event`) names the seed's event, with the event's fields beside it:
//! `{"action": "join_session", "workout_id": "w1"}`. Replies carry the
//! seed's server event name in `type`. `?epoch=E&offset=N` resumes the
//! first `join_session` from that position (see [`super::resume`]).

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::response::Response;

use super::resume::PendingPosition;
use super::{PressureConnection, PressureState};
use crate::caller::Credentials;
use crate::connection::Options;
use crate::connection::websocket::accept;
use crate::meter::Endpoint;

pub async fn upgrade(
    State(state): State<PressureState>,
    credentials: Credentials,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // A bad position is the first join's error, not a refused socket.
    let position = match query {
        Ok(Query(pairs)) => PendingPosition::from_query(&pairs),
        Err(rejection) => PendingPosition::Malformed(rejection.body_text()),
    };
    let driver = state.driver.clone();
    accept(
        upgrade,
        &driver,
        Endpoint::Pressure,
        credentials.anyone(),
        move |caller| {
            let handler = PressureConnection::with_queue(state, caller, position);
            (Options::new(Endpoint::Pressure), handler)
        },
    )
}
