//! The WebSocket edge: where clients connect.
//!
//! The edge is stateless: it holds sockets and their timers, validates and
//! size-limits every inbound message, turns each JSON action into a gRPC
//! call to the session, detection or statistics service, and writes the
//! result back. Anything another instance must know travels through the
//! services or NATS, so any edge can serve any client and an edge can be
//! killed at any time.
//!
//! Every WebSocket connection, Socket.IO included, runs through one driver
//! ([`connection`]); each feature is an endpoint handler for it plus its
//! REST routes, in a router of its own that takes only the state it needs:
//!
//! - [`realtime`]: `/ws/realtime`, seed 000's step-detection sessions.
//! - [`pressure`]: seed 001's pressure-frame streaming over Socket.IO and
//!   `/ws/pressure`, workout rooms across instances, `/api/workouts`.
//! - [`alerts`]: `/ws/alerts/{user_id}`, seed 002's per-user alerts, and
//!   their admin routes.
//! - [`hubs`]: seed 003's UI hub `/ws/ui` and seed 004's statistics stream
//!   `/api/ws/statistics`, with their REST routes.
//! - [`sessions`]: `/sessions`, `/sessions/{id}`.
//! - [`health`]: `/health`, `/ready`, `/metrics`.
//! - [`console`]: `/console`, the operator's page, and its admin feed.
//!
//! What they share:
//!
//! - [`server`] and [`admission`]: the HTTP server, and the connection
//!   limits it applies before reading anything.
//! - [`connection`]: the connection driver, its close table and transports.
//! - [`caller`]: a request's token becomes a typed caller, in one place.
//! - [`auth`]: JWT verification.
//! - [`origins`]: which web pages may call the edge (CORS, and the same
//!   allow-list on WebSocket upgrades).
//! - [`error`]: the one mapping from failures to what a client sees.
//! - [`control`]: closing a socket held here when the cluster says so.
//! - [`meter`]: sockets and messages counted, reported for the statistics.
//! - [`stream_call`]: request and reply over a long-lived gRPC stream.
//! - [`settings`]: limits, deadlines and service URLs; the gRPC clients.
//! - [`times`]: the times each seed writes.

pub mod admission;
pub mod alerts;
pub mod auth;
pub mod caller;
pub mod connection;
pub mod console;
pub mod control;
pub mod error;
pub mod health;
pub mod hubs;
pub mod meter;
pub mod origins;
pub mod pressure;
pub mod realtime;
pub mod server;
pub mod sessions;
pub mod settings;
pub mod step_streams;
pub mod stream_call;
pub mod times;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use switchboard_bus::{Bus, BusError, subjects};
use tokio::net::TcpListener;
use tokio::sync::watch;

use caller::Identities;
use connection::Driver;
pub use settings::{Backends, EdgeSettings, ServiceUrls};

/// Why the edge could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    InvalidUrl(#[from] settings::InvalidUrl),
    #[error(transparent)]
    Origins(#[from] origins::InvalidOrigin),
    #[error(transparent)]
    ProxyHeader(#[from] admission::InvalidHeader),
    #[error("authentication settings: {0}")]
    Auth(#[from] auth::AuthConfigError),
    #[error("message bus: {0}")]
    Bus(#[from] BusError),
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
}

/// Every feature's router, merged, behind the layers every request passes.
async fn app(
    settings: &EdgeSettings,
    backends: &Backends,
    bus: &Bus,
    driver: &Driver,
    hubs: (Arc<hubs::Hub>, Arc<hubs::Hub>),
    health: &Router,
) -> Result<Router, EdgeError> {
    let identities = Identities::new(auth::Authenticator::from_settings(&settings.auth)?);
    if !identities.configured() {
        tracing::warn!("no JWT key configured: token-protected endpoints refuse every client");
    }
    let origins = origins::OriginPolicy::from_list(&settings.allowed_origins)?;
    origins.log();
    let reply_deadline = settings.grpc_timeout();

    let (socketio, io) = socketioxide::SocketIo::builder()
        .max_payload(settings.max_message_bytes as u64)
        .build_layer();
    let pressure = pressure::PressureState {
        driver: driver.clone(),
        identities: identities.clone(),
        rooms: Arc::new(pressure::rooms::Rooms::new(bus.clone(), io.clone())),
        detection: backends.detection.clone(),
        sessions: backends.session.clone(),
        bus: bus.clone(),
        reply_deadline,
    };
    pressure::socketio::register(&io, pressure.clone());
    let realtime = realtime::RealtimeState {
        driver: driver.clone(),
        identities: identities.clone(),
        sessions: backends.session.clone(),
        steps: backends.steps.clone(),
        statistics: backends.statistics.clone(),
        bus: bus.clone(),
        reply_deadline,
    };
    let alerts = alerts::AlertsState {
        driver: driver.clone(),
        identities: identities.clone(),
        sessions: backends.session.clone(),
        detection: backends.detection.clone(),
        mailbox: bus.mailbox(subjects::ALERTS_MAILBOX).await?,
        heartbeat: settings.heartbeat,
        rate_limit: settings.alerts_rate_limit,
    };
    let (ui_hub, stream_hub) = hubs;
    let hubs = hubs::HubsState {
        driver: driver.clone(),
        identities: identities.clone(),
        ui_hub,
        stream_hub,
        stream_limits: hubs::StreamLimits {
            max_connections: settings.statistics_max_connections,
            rate_limit: settings.statistics_rate_limit,
        },
        sessions: backends.session.clone(),
        statistics: backends.statistics.clone(),
        bus: bus.clone(),
    };
    let console = console::ConsoleState {
        driver: driver.clone(),
        identities: identities.clone(),
        sessions: backends.session.clone(),
        channels: backends.channels.clone(),
        bus: bus.clone(),
        edges: bus.key_value("edges").await?,
    };
    let sessions = sessions::SessionsState {
        identities,
        sessions: backends.session.clone(),
    };
    Ok(Router::new()
        .merge(realtime::router(realtime))
        .merge(pressure::router(pressure))
        .merge(alerts::router(alerts))
        .merge(hubs::router(hubs))
        .merge(sessions::router(sessions))
        .merge(console::router(console))
        .merge(health.clone())
        .layer(axum::middleware::from_fn(admission::admit_upgrades))
        .layer(socketio)
        .layer(origins.cors())
        .layer(axum::middleware::from_fn_with_state(
            origins,
            origins::refuse_foreign,
        ))
        .layer(axum::middleware::from_fn(trace_request)))
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

/// Serves the edge on `listener` until `shutdown` completes, then drains:
/// readiness fails, every socket closes with 1012 (Socket.IO clients are
/// disconnected) and its last calls finish, within the drain deadline.
pub async fn serve(
    settings: EdgeSettings,
    urls: ServiceUrls,
    bus: Bus,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EdgeError> {
    let backends = Backends::connect_lazy(&urls, &settings)?;
    // The edge's future is large (every route's state): on the heap.
    Box::pin(serve_with(settings, backends, bus, listener, shutdown)).await
}

/// Serves the edge as [`serve`] does, calling the services through
/// `backends` (e.g. [`Backends::in_process`]).
pub async fn serve_with(
    settings: EdgeSettings,
    backends: Backends,
    bus: Bus,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EdgeError> {
    let edge_id = uuid::Uuid::new_v4().simple().to_string();
    let meter = Arc::new(meter::Meter::default());
    let sockets = Arc::new(control::Sockets::default());
    let (drain, draining) = watch::channel(false);
    let driver = Driver::new(
        edge_id.clone(),
        settings.max_message_bytes,
        Arc::clone(&meter),
        Arc::clone(&sockets),
        draining,
        backends.session.clone(),
    );
    let ui_hub = Arc::new(hubs::Hub::default());
    let stream_hub = Arc::new(hubs::Hub::default());
    let health = health::router(health::HealthState {
        driver: driver.clone(),
        channels: backends.channels.clone(),
        bus: bus.clone(),
    });
    let app = app(
        &settings,
        &backends,
        &bus,
        &driver,
        (Arc::clone(&ui_hub), Arc::clone(&stream_hub)),
        &health,
    )
    .await?;
    let descriptors = admission::raise_descriptor_limit();
    let admission = Arc::new(admission::Admission::new(&settings.admission, descriptors)?);
    // Probes and metrics on a listener of their own: a flood of clients
    // cannot take them.
    let ops = match settings.ops_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            tracing::info!(role = "ops", addr = %listener.local_addr()?, "listening");
            Some(tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, health).await {
                    tracing::warn!(%error, "ops listener failed");
                }
            }))
        }
        None => None,
    };

    // Subscribe before accepting, so no control message can miss a socket.
    let control = bus.subscribe(subjects::edge_control(&edge_id)).await?;
    let ui_history = bus.history(switchboard_bus::Channel::Ui);
    let stream_history = bus.history(switchboard_bus::Channel::Stream);
    let ui_messages = ui_history.follow().await?;
    let stream_messages = stream_history.follow().await?;
    let edges = bus.key_value("edges").await?;
    let presence = meter::Presence {
        address: listener
            .local_addr()
            .map(|addr| addr.to_string())
            .unwrap_or_default(),
        started_at: switchboard_proto::unix_now(),
        draining: drain.subscribe(),
        ui_hub: Arc::clone(&ui_hub),
    };
    let tasks = [
        tokio::spawn(control::route(control, sockets)),
        tokio::spawn(hubs::relay(
            ui_messages,
            ui_hub,
            switchboard_bus::Channel::Ui,
            ui_history.epoch().to_owned(),
        )),
        tokio::spawn(hubs::relay(
            stream_messages,
            stream_hub,
            switchboard_bus::Channel::Stream,
            stream_history.epoch().to_owned(),
        )),
        tokio::spawn(Arc::clone(&meter).report_forever(edge_id.clone(), edges, presence)),
    ];
    tracing::info!(addr = ?listener.local_addr().ok(), edge_id = %edge_id, "edge listening");

    let drain_started = {
        let drain = drain.clone();
        let meter = Arc::clone(&meter);
        async move {
            shutdown.await;
            tracing::info!(connections = ?meter.connections(), "draining");
            drain.send_replace(true);
        }
    };
    // Serves until the drain starts; then every socket closes (1012) and
    // its in-flight calls finish, within the deadline.
    server::serve(listener, app, admission, drain_started).await;
    let drained = async {
        meter.idle().await;
        driver.sessions_closed().await;
    };
    match tokio::time::timeout(settings.drain_timeout, drained).await {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!(connections = ?meter.connections(), "drain deadline passed"),
    }
    drop(drain);
    for task in tasks.into_iter().chain(ops) {
        task.abort();
    }
    Ok(())
}
