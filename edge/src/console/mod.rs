//! The console: the cluster as a page an operator looks at.
//!
//! - `GET /console` (and its script and style, compiled into the binary
//!   from `edge/console/`): a page with no data of its own. It asks for an
//!   admin token (a login box, or `?token=`) and then uses only the public
//!   REST and WebSocket routes and the two below, so it is also their
//!   example.
//! - `/api/admin/ws?token=` (admin): a [`ClusterSnapshot`] on connecting and
//!   every second after, through the connection driver like every socket.
//!   A missing, foreign or user's token is closed with 1008.
//! - `GET /api/admin/cluster` (admin): the same snapshot once, over REST
//!   (401, 403).
//! - `DELETE /api/admin/edges/{edge_id}/connections/{connection_id}`
//!   (admin): disconnects a hub client (`/ws/ui`), which is no registry
//!   session, through the control subject of the edge holding it.
//!
//! Any edge answers for the whole cluster: edges from the `edges` bucket
//! every edge reports into ([`crate::meter`]), sessions from the registry,
//! the services' health as this edge reaches them, and the bus.

mod snapshot;

use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, extract::FromRef};
use serde_json::{Value, json};

pub use snapshot::{ClusterSnapshot, ConsoleState};

use crate::caller::{Admin, Credentials, Identities};
use crate::connection::websocket::accept;
use crate::connection::{Conn, Flow, Handler, Inbound, Options, Transport};
use crate::error::ClientError;
use crate::meter::Endpoint;

/// How often the feed sends a snapshot.
const FEED_INTERVAL: Duration = Duration::from_secs(1);

const PAGE: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");

impl FromRef<ConsoleState> for Identities {
    fn from_ref(state: &ConsoleState) -> Self {
        state.identities.clone()
    }
}

/// `/console`, its assets, `/api/admin/ws` and `/api/admin/cluster`.
pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/console", get(page))
        .route("/console/console.js", get(script))
        .route("/console/console.css", get(style))
        .route("/api/admin/ws", get(feed))
        .route("/api/admin/cluster", get(cluster))
        .route(
            "/api/admin/edges/{edge_id}/connections/{connection_id}",
            delete(disconnect),
        )
        .with_state(state)
}

/// The page itself holds no data, so it is served to anyone: what it
/// shows comes over the admin routes, with the token it is given.
async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /api/admin/cluster`: one snapshot.
async fn cluster(State(state): State<ConsoleState>, _admin: Admin) -> Json<ClusterSnapshot> {
    Json(state.snapshot().await)
}

/// Longest edge or connection id a disconnect names.
const MAX_ID_BYTES: usize = 128;

/// `DELETE /api/admin/edges/{edge_id}/connections/{connection_id}`: tells
/// the edge to close that socket (close 1000, "ended by the cluster:
/// disconnected by an operator"); `202` once the edge was told (a socket it
/// no longer holds is simply not there).
async fn disconnect(
    State(state): State<ConsoleState>,
    _admin: Admin,
    Path((edge_id, connection_id)): Path<(String, String)>,
) -> Result<(axum::http::StatusCode, Json<Value>), ClientError> {
    let valid = |id: &str| {
        !id.is_empty()
            && id.len() <= MAX_ID_BYTES
            && id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    };
    if !valid(&edge_id) || !valid(&connection_id) {
        return Err(ClientError::InvalidMessage(
            "edge and connection ids are letters, digits, '-' and '_'".into(),
        ));
    }
    let control = switchboard_proto::v1::SessionControl {
        session_id: connection_id.clone(),
        kind: switchboard_proto::v1::session_control::Kind::Terminated as i32,
        reason: "disconnected by an operator".into(),
        session: None,
    };
    use prost::Message as _;
    state
        .bus
        .publish(
            switchboard_bus::subjects::edge_control(&edge_id),
            bytes::Bytes::from(control.encode_to_vec()),
        )
        .await
        .map_err(|error| ClientError::Unavailable {
            service: "message bus",
            detail: error.to_string(),
        })?;
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(
            json!({"status": "disconnecting", "edge_id": edge_id, "connection_id": connection_id}),
        ),
    ))
}

/// `/api/admin/ws`: a snapshot now and every second.
async fn feed(
    State(state): State<ConsoleState>,
    credentials: Credentials,
    upgrade: WebSocketUpgrade,
) -> Response {
    let driver = state.driver.clone();
    accept(
        upgrade,
        &driver,
        Endpoint::Console,
        credentials.admin(),
        move |_admin| (Options::new(Endpoint::Console), Feed { state }),
    )
}

/// One console's feed.
struct Feed {
    state: ConsoleState,
}

impl Feed {
    async fn send_snapshot<T: Transport>(&self, conn: &mut Conn<'_, T>) -> Flow {
        let snapshot = self.state.snapshot().await;
        conn.send(&snapshot).await.into()
    }
}

impl Handler for Feed {
    type Event = ();

    fn error_message(&self, error: &ClientError) -> String {
        crate::hubs::error_message(error).to_string()
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(FEED_INTERVAL)
    }

    async fn open<T: Transport>(&mut self, conn: &mut Conn<'_, T>) -> Flow {
        self.send_snapshot(conn).await
    }

    async fn on_tick<T: Transport>(&mut self, conn: &mut Conn<'_, T>) -> Flow {
        self.send_snapshot(conn).await
    }

    /// The feed only speaks; a `ping` is answered, so a client can tell
    /// a quiet feed from a dead one.
    async fn on_message<T: Transport>(
        &mut self,
        message: Inbound<'_>,
        conn: &mut Conn<'_, T>,
    ) -> Result<Flow, ClientError> {
        let Inbound::Text(text) = message else {
            return Ok(Flow::Continue);
        };
        let message: Value = serde_json::from_str(text)
            .map_err(|error| ClientError::InvalidJson(error.to_string()))?;
        match message.get("type").and_then(Value::as_str) {
            Some("ping") => Ok(conn
                .send(&json!({"type": "pong", "timestamp": switchboard_proto::unix_now()}))
                .await
                .into()),
            _ => Err(ClientError::InvalidMessage(
                "the admin feed sends cluster snapshots; it takes only {\"type\": \"ping\"}".into(),
            )),
        }
    }
}
