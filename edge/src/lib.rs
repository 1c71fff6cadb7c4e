//! The WebSocket edge: where clients connect.
//!
//! The edge is stateless: it holds sockets and their timers, validates and
//! size-limits every inbound message, turns each JSON action into a gRPC
//! call to the session, detection or statistics service, and writes the
//! result back. Anything another instance must know travels through the
//! services or NATS, so any edge can serve any client and an edge can be
//! killed at any time.
//!
//! - [`settings`]: limits, deadlines and service URLs; the gRPC clients.
//! - [`realtime`]: `/ws/realtime`, seed 000's step-detection sessions.
//! - [`alerts`]: `/ws/alerts/{user_id}`, seed 002's per-user alerts, and
//!   their admin routes.
//! - [`pressure`]: seed 001's pressure-frame streaming over Socket.IO and
//!   `/ws/pressure`, workout rooms across instances, `/api/workouts`.
//! - [`hubs`]: seed 003's UI hub `/ws/ui` and seed 004's statistics stream
//!   `/api/ws/statistics`, with their REST routes.
//! - [`meter`]: sockets and messages counted, reported for the statistics.
//! - [`auth`]: JWT verification.
//! - [`origins`]: which web pages may call the edge (CORS, and the same
//!   allow-list on WebSocket upgrades).
//! - [`socket`]: what the WebSocket endpoints share.
//! - [`stream_call`]: request and reply over a long-lived gRPC stream.
//! - [`rest`]: `/sessions`, `/sessions/{id}`, `/health`.
//! - [`control`]: closing a socket held here when the cluster says so.
//! - [`error`]: the one mapping from failures to what a client sees.

pub mod alerts;
pub mod auth;
pub mod control;
pub mod error;
pub mod hubs;
pub mod meter;
pub mod origins;
pub mod pressure;
pub mod realtime;
pub mod rest;
pub mod settings;
pub mod socket;
pub mod stream_call;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::routing::{get, post};
use switchboard_bus::{Bus, BusError, Mailbox, subjects};
use tokio::net::TcpListener;

pub use settings::{Backends, EdgeSettings, ServiceUrls};

/// Bytes tungstenite reads from a socket at a time. Its default allocates
/// 128 KiB per connection up front; messages larger than this still arrive
/// whole (the buffer grows for them, up to the message limit).
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Outbound bytes a socket may have queued while its client does not read;
/// past this the write fails and the connection ends instead of growing.
pub const MAX_WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Why the edge could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    InvalidUrl(#[from] settings::InvalidUrl),
    #[error(transparent)]
    Origins(#[from] origins::InvalidOrigin),
    #[error("authentication settings: {0}")]
    Auth(#[from] auth::AuthConfigError),
    #[error("message bus: {0}")]
    Bus(#[from] BusError),
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
}

/// What every handler shares: cheap to clone.
#[derive(Clone)]
pub struct EdgeState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EdgeState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EdgeState")
            .field("edge_id", &self.inner.edge_id)
            .field("sockets", &self.inner.sockets.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// This instance's id: the registry records it so control messages for
    /// a session reach the edge holding its socket.
    edge_id: String,
    settings: EdgeSettings,
    backends: Backends,
    bus: Bus,
    sockets: Arc<control::Sockets>,
    /// Where users' alerts wait; read for the alerts sockets held here.
    alerts: Mailbox,
    /// `None` when no JWT key is configured: token-protected endpoints then
    /// refuse everyone.
    authenticator: Option<auth::Authenticator>,
    /// Workout rooms with members here.
    rooms: Arc<pressure::rooms::Rooms>,
    /// The Socket.IO layer on `/socket.io/`.
    socketio: socketioxide::layer::SocketIoLayer,
    /// `/ws/ui` clients here.
    ui_hub: Arc<hubs::Hub>,
    /// `/api/ws/statistics` clients here.
    stream_hub: Arc<hubs::Hub>,
    meter: Arc<meter::Meter>,
    /// Flips to true when the edge starts draining.
    drain: tokio::sync::watch::Sender<bool>,
    /// Socket.IO's handle, to disconnect its clients on drain.
    io: socketioxide::SocketIo,
    /// Which web pages may call the edge.
    origins: origins::OriginPolicy,
}

impl EdgeState {
    /// Builds the edge's shared state: gRPC clients, the alerts mailbox,
    /// the token verifier.
    pub async fn new(
        settings: EdgeSettings,
        urls: &ServiceUrls,
        bus: Bus,
    ) -> Result<Self, EdgeError> {
        let backends = Backends::connect_lazy(urls, &settings)?;
        let authenticator = auth::Authenticator::from_settings(&settings.auth)?;
        if authenticator.is_none() {
            tracing::warn!("no JWT key configured: token-protected endpoints refuse every client");
        }
        let origins = origins::OriginPolicy::from_list(&settings.allowed_origins)?;
        origins.log();
        let alerts = bus.mailbox(subjects::ALERTS_MAILBOX).await?;
        let (socketio, io) = socketioxide::SocketIo::builder()
            .max_payload(settings.max_message_bytes as u64)
            .build_layer();
        let rooms = Arc::new(pressure::rooms::Rooms::new(bus.clone(), io.clone()));
        let state = Self {
            inner: Arc::new(Inner {
                edge_id: uuid::Uuid::new_v4().simple().to_string(),
                settings,
                backends,
                bus,
                sockets: Arc::default(),
                alerts,
                authenticator,
                rooms,
                socketio,
                ui_hub: Arc::default(),
                stream_hub: Arc::default(),
                meter: Arc::default(),
                drain: tokio::sync::watch::Sender::new(false),
                io: io.clone(),
                origins,
            }),
        };
        pressure::socketio::register(&io, state.clone());
        Ok(state)
    }

    pub fn rooms(&self) -> &Arc<pressure::rooms::Rooms> {
        &self.inner.rooms
    }

    pub fn ui_hub(&self) -> &Arc<hubs::Hub> {
        &self.inner.ui_hub
    }

    pub fn stream_hub(&self) -> &Arc<hubs::Hub> {
        &self.inner.stream_hub
    }

    pub fn meter(&self) -> &Arc<meter::Meter> {
        &self.inner.meter
    }

    /// Completes when the edge starts draining.
    pub fn draining(&self) -> socket::Draining {
        socket::Draining(self.inner.drain.subscribe())
    }

    pub fn is_draining(&self) -> bool {
        *self.inner.drain.borrow()
    }

    /// Starts the drain: readiness fails, every socket closes with 1012.
    pub async fn begin_drain(&self) {
        if self.inner.drain.send_replace(true) {
            return;
        }
        tracing::info!(connections = ?self.meter().connections(), "draining");
        self.inner.io.disconnect().await.ok();
    }

    /// Waits until every socket of this edge has closed.
    async fn sockets_closed(&self) {
        while self.meter().connections().values().sum::<u64>() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Whether a JWT key is configured (switches the broadcast routes to
    /// admin-only).
    pub fn auth_configured(&self) -> bool {
        self.inner.authenticator.is_some()
    }

    /// Verifies a token with the configured keys.
    pub fn authenticate(&self, token: &str) -> Result<auth::Identity, auth::AuthError> {
        match &self.inner.authenticator {
            Some(authenticator) => authenticator.verify(token),
            None => Err(auth::AuthError::NotConfigured),
        }
    }

    pub fn alerts_mailbox(&self) -> &Mailbox {
        &self.inner.alerts
    }

    pub fn edge_id(&self) -> &str {
        &self.inner.edge_id
    }

    pub fn settings(&self) -> &EdgeSettings {
        &self.inner.settings
    }

    pub fn backends(&self) -> &Backends {
        &self.inner.backends
    }

    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    pub fn sockets(&self) -> &Arc<control::Sockets> {
        &self.inner.sockets
    }

    /// Applies the edge's WebSocket limits and buffer sizes to an upgrade.
    pub fn configure(&self, upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
        let limit = self.settings().max_message_bytes;
        upgrade
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES.max(limit * 2))
            .max_message_size(limit)
            .max_frame_size(limit)
    }
}

/// Every route of the edge.
pub fn app(state: EdgeState) -> Router {
    Router::new()
        .route("/ws/realtime", get(realtime::upgrade))
        .route("/sessions", get(rest::list_sessions))
        .route(
            "/sessions/{session_id}",
            get(rest::get_session).delete(rest::terminate_session),
        )
        .route("/health", get(rest::health))
        .route("/ready", get(rest::ready))
        .route("/metrics", get(rest::metrics))
        .route("/ws/alerts/{user_id}", get(alerts::upgrade))
        .route("/ws/connections", get(alerts::rest::list_connections))
        .route(
            "/ws/connections/{user_id}",
            get(alerts::rest::user_connection),
        )
        .route(
            "/api/alerts",
            axum::routing::post(alerts::rest::raise_alert),
        )
        .route("/ws/pressure", get(pressure::websocket::upgrade))
        .route("/ws/ui", get(hubs::ui::upgrade))
        .route("/api/events/broadcast", post(hubs::ui::broadcast_event))
        .route(
            "/api/events/broadcast/action",
            post(hubs::ui::broadcast_action),
        )
        .route(
            "/api/events/broadcast/overlay",
            post(hubs::ui::broadcast_overlay),
        )
        .route(
            "/api/events/broadcast/telemetry",
            post(hubs::ui::broadcast_telemetry),
        )
        .route("/api/ws/statistics", get(hubs::statistics::upgrade))
        .route("/api/statistics", get(hubs::statistics::current))
        .route(
            "/api/ws/statistics/connections",
            get(hubs::statistics::connections),
        )
        .route(
            "/api/ws/statistics/broadcast",
            post(hubs::statistics::broadcast),
        )
        .route(
            "/api/ws/statistics/users/{user_id}/messages",
            post(hubs::statistics::to_user),
        )
        .route(
            "/api/ws/statistics/connections/{connection_id}/messages",
            post(hubs::statistics::to_connection),
        )
        .route("/api/workouts/{workout_id}", get(pressure::rest::workout))
        .route(
            "/api/workouts/{workout_id}/frames",
            get(pressure::rest::frames).post(pressure::rest::post_frame),
        )
        .layer(state.inner.socketio.clone())
        .layer(state.inner.origins.cors())
        .layer(axum::middleware::from_fn_with_state(
            state.inner.origins.clone(),
            origins::refuse_foreign,
        ))
        .layer(axum::middleware::from_fn(trace_request))
        .with_state(state)
}

/// Every HTTP request gets a span that continues the caller's trace
/// (`traceparent`), so a REST action and what it causes are one trace.
async fn trace_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "http.request",
        http.method = %request.method(),
        http.path = %request.uri().path(),
        trace_id = tracing::field::Empty,
    );
    let parent = switchboard_proto::trace::extract(request.headers());
    switchboard_proto::trace::continue_trace(&span, parent);
    next.run(request).instrument(span).await
}

/// Serves the edge on `listener` until `shutdown` completes.
pub async fn serve(
    settings: EdgeSettings,
    urls: ServiceUrls,
    bus: Bus,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EdgeError> {
    let state = EdgeState::new(settings, &urls, bus.clone()).await?;
    // Subscribe before accepting, so no control message can miss a socket.
    let control = bus
        .subscribe(subjects::edge_control(state.edge_id()))
        .await?;
    let ui_messages = bus.subscribe(subjects::UI_MESSAGES.to_owned()).await?;
    let stream_messages = bus.subscribe(subjects::STREAM_ANY.to_owned()).await?;
    let edges = bus.key_value("edges").await?;
    let tasks = [
        tokio::spawn(control::route(control, Arc::clone(state.sockets()))),
        tokio::spawn(hubs::relay_ui(ui_messages, Arc::clone(state.ui_hub()))),
        tokio::spawn(hubs::relay_stream(
            stream_messages,
            Arc::clone(state.stream_hub()),
        )),
        tokio::spawn(Arc::clone(state.meter()).report_forever(state.edge_id().to_owned(), edges)),
    ];
    tracing::info!(addr = ?listener.local_addr().ok(), edge_id = %state.edge_id(), "edge listening");
    let drain_timeout = state.settings().drain_timeout;
    let signal_state = state.clone();
    let server = axum::serve(listener, app(state.clone())).with_graceful_shutdown(async move {
        shutdown.await;
        signal_state.begin_drain().await;
    });
    let mut server = std::pin::pin!(server.into_future());
    let mut draining = state.draining();
    // Until a drain starts, serve. The server may also end first, in the
    // same instant as the drain starts (axum does not wait for upgraded
    // sockets), so whichever comes first, a started drain is waited for:
    // every socket closes (1012) and its in-flight calls finish, within the
    // deadline.
    let ended = tokio::select! {
        served = &mut server => Some(served),
        () = draining.started() => None,
    };
    let served = if state.is_draining() {
        let drained = async {
            let served = match ended {
                Some(served) => served,
                None => server.await,
            };
            state.sockets_closed().await;
            served
        };
        match tokio::time::timeout(drain_timeout, drained).await {
            Ok(served) => {
                tracing::info!("drained");
                served
            }
            Err(_) => {
                tracing::warn!(connections = ?state.meter().connections(), "drain deadline passed");
                Ok(())
            }
        }
    } else {
        ended.expect("not draining, so the server ended on its own")
    };
    for task in tasks {
        task.abort();
    }
    Ok(served?)
}
