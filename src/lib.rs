//! The `switchboard` binary's roles and tools, and how they are wired.
//!
//! - [`Cli`]: the command line: a [`Role`] to serve, or a [`Tool`] to run
//!   once. Every role option is also an environment variable
//!   (`switchboard <role> --help` lists them); each is declared once, in the
//!   settings struct of the subsystem it configures, and the roles compose
//!   those structs.
//! - [`serve`]: binds each role's listener, logs `listening` with the role
//!   and address, and serves until SIGTERM or Ctrl-C.
//! - [`probe`], [`token`]: the tools, which print their output and exit.
//! - [`telemetry`]: logs, as text for people or JSON for machines, and
//!   traces.
//!
//! `all` runs every role in one process: the services bind loopback ports
//! the OS picks (so two `all` processes never collide) and the edge dials
//! them; with `NATS_URL` such processes form one cluster, without it the
//! process is a cluster of one.
//!
//! The load generator is a binary of its own, `switchboard-bench`
//! (`src/bin/switchboard-bench/`), not linked into this one.

pub mod probe;
pub mod telemetry;
pub mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use switchboard_bus::hub::system_events::publish_counts;
use switchboard_bus::{Bus, BusSettings};
use switchboard_edge::{Backends, EdgeSettings, ServiceUrls};
use switchboard_proto::in_process::{Directory, Listeners};
use switchboard_session::SessionSettings;
use switchboard_statistics::{StatisticsSettings, UpdateSettings};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "A real-time WebSocket edge with gRPC services and NATS fan-out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// A role serves until it is stopped; a tool does one thing and exits.
#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process: a role's settings are worth no box"
)]
pub enum Command {
    #[command(flatten)]
    Role(Role),
    #[command(flatten)]
    Tool(Tool),
}

#[derive(Debug, Subcommand)]
pub enum Role {
    /// Every role in one process (the embedded default).
    All(AllArgs),
    /// The WebSocket and REST edge.
    Edge(EdgeArgs),
    /// The session registry service.
    Session(SessionArgs),
    /// The detection service.
    Detection(DetectionArgs),
    /// The statistics service.
    Statistics(StatisticsArgs),
}

/// Tools log to stderr, so that their stdout is only their output.
#[derive(Debug, Subcommand)]
pub enum Tool {
    /// Checks a server's health and exits 0 when healthy (for container
    /// health checks).
    Probe(probe::ProbeArgs),
    /// Prints a JWT signed with the configured key, for development:
    /// `switchboard token --sub alice [--admin] [--ttl 1h] [--claim k=v]`.
    Token(token::TokenArgs),
}

/// What every role takes, and no tool: how the process logs and traces,
/// and how long it may take to stop.
#[derive(Debug, Args)]
#[command(next_help_heading = "Logs, traces and shutdown")]
pub struct ProcessSettings {
    #[command(flatten)]
    pub log: telemetry::LogSettings,
    /// Seconds a role may take to shut down after SIGTERM: the edge drains
    /// its sockets (close 1012) and in-flight calls, services finish theirs.
    #[arg(long, env = "SWITCHBOARD_DRAIN_TIMEOUT_SECS", default_value_t = 25.0)]
    pub drain_timeout_secs: f64,
    /// Threads that run the role's tasks [default: one per CPU the process
    /// may use; a container's CPU limit counts]. Where several roles share
    /// a few cores, 1 each saves the wake-ups of idle threads.
    #[arg(long, env = "SWITCHBOARD_WORKER_THREADS")]
    pub worker_threads: Option<std::num::NonZeroUsize>,
}

impl ProcessSettings {
    /// The drain deadline, within an hour.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout_secs.clamp(0.0, 3600.0))
    }
}

/// Where the edge listens (roles `all` and `edge`).
#[derive(Debug, Args)]
pub struct EdgeAddr {
    /// Address the edge's HTTP and WebSocket server listens on.
    #[arg(long, env = "SWITCHBOARD_HTTP_ADDR", default_value = "0.0.0.0:8000")]
    pub http_addr: SocketAddr,
}

/// Where a service role serves Prometheus metrics (the edge serves its own
/// on its HTTP port).
#[derive(Debug, Args)]
pub struct MetricsAddr {
    /// Where to serve Prometheus metrics (`/metrics`); none when unset.
    #[arg(long, env = "SWITCHBOARD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct AllArgs {
    #[command(flatten)]
    pub edge_addr: EdgeAddr,
    /// gRPC address of the in-process session service (port 0: any free port).
    #[arg(
        long,
        env = "SWITCHBOARD_SESSION_GRPC_ADDR",
        default_value = "127.0.0.1:0"
    )]
    pub session_grpc_addr: SocketAddr,
    /// gRPC address of the in-process detection service.
    #[arg(
        long,
        env = "SWITCHBOARD_DETECTION_GRPC_ADDR",
        default_value = "127.0.0.1:0"
    )]
    pub detection_grpc_addr: SocketAddr,
    /// gRPC address of the in-process statistics service.
    #[arg(
        long,
        env = "SWITCHBOARD_STATISTICS_GRPC_ADDR",
        default_value = "127.0.0.1:0"
    )]
    pub statistics_grpc_addr: SocketAddr,
    /// The edge calls the services of this process in memory, without a
    /// socket (`false`: over their gRPC ports, as separate roles do; for
    /// comparing the two). The gRPC ports serve other clients either way.
    #[arg(
        long,
        env = "SWITCHBOARD_IN_PROCESS_CALLS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub in_process_calls: bool,
    #[command(flatten)]
    pub bus: BusSettings,
    #[command(flatten)]
    pub edge: EdgeSettings,
    #[command(flatten)]
    pub session: SessionSettings,
    // The statistics service's settings but its session URL: the session
    // service it asks is the one in this process.
    #[command(flatten)]
    pub statistics: UpdateSettings,
    #[command(flatten)]
    pub process: ProcessSettings,
}

#[derive(Debug, Args)]
pub struct EdgeArgs {
    #[command(flatten)]
    pub edge_addr: EdgeAddr,
    #[command(flatten)]
    pub bus: BusSettings,
    #[command(flatten)]
    pub edge: EdgeSettings,
    #[command(flatten)]
    pub services: ServiceUrls,
    #[command(flatten)]
    pub process: ProcessSettings,
}

#[derive(Debug, Args)]
pub struct SessionArgs {
    /// gRPC listen address.
    #[arg(
        long,
        env = "SWITCHBOARD_SESSION_GRPC_ADDR",
        default_value = "0.0.0.0:50051"
    )]
    pub grpc_addr: SocketAddr,
    #[command(flatten)]
    pub metrics: MetricsAddr,
    #[command(flatten)]
    pub bus: BusSettings,
    #[command(flatten)]
    pub session: SessionSettings,
    #[command(flatten)]
    pub process: ProcessSettings,
}

#[derive(Debug, Args)]
pub struct DetectionArgs {
    /// gRPC listen address.
    #[arg(
        long,
        env = "SWITCHBOARD_DETECTION_GRPC_ADDR",
        default_value = "0.0.0.0:50052"
    )]
    pub grpc_addr: SocketAddr,
    #[command(flatten)]
    pub metrics: MetricsAddr,
    #[command(flatten)]
    pub bus: BusSettings,
    #[command(flatten)]
    pub process: ProcessSettings,
}

#[derive(Debug, Args)]
pub struct StatisticsArgs {
    /// gRPC listen address.
    #[arg(
        long,
        env = "SWITCHBOARD_STATISTICS_GRPC_ADDR",
        default_value = "0.0.0.0:50053"
    )]
    pub grpc_addr: SocketAddr,
    #[command(flatten)]
    pub metrics: MetricsAddr,
    #[command(flatten)]
    pub bus: BusSettings,
    #[command(flatten)]
    pub statistics: StatisticsSettings,
    #[command(flatten)]
    pub process: ProcessSettings,
}

impl Role {
    /// The role's name, as traces and logs call it.
    pub fn name(&self) -> &'static str {
        match self {
            Role::All(_) => "all",
            Role::Edge(_) => "edge",
            Role::Session(_) => "session",
            Role::Detection(_) => "detection",
            Role::Statistics(_) => "statistics",
        }
    }

    /// How the role's process logs, traces and stops.
    pub fn process(&self) -> &ProcessSettings {
        match self {
            Role::All(args) => &args.process,
            Role::Edge(args) => &args.process,
            Role::Session(args) => &args.process,
            Role::Detection(args) => &args.process,
            Role::Statistics(args) => &args.process,
        }
    }
}

impl Tool {
    /// Runs the tool; its output goes to stdout.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Tool::Probe(args) => probe::run(&args).await,
            Tool::Token(args) => token::run(&args),
        }
    }
}

/// Binds `addr` and logs where `role` listens (tests and operators read it).
async fn bind(role: &'static str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("{role}: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(role, addr = %bound, "listening");
    Ok(listener)
}

/// Serves `/metrics` on `addr` (when given) until `shutdown`, for the
/// service roles; the edge serves its own.
async fn serve_metrics(
    addr: Option<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = bind("metrics", addr).await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    switchboard_proto::metrics::CONTENT_TYPE,
                )],
                switchboard_proto::metrics::encode(),
            )
        }),
    );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(%error, "metrics server failed");
        }
    });
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested");
}

/// One shutdown signal, handed to as many servers as a role runs.
struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    fn start() -> Self {
        let (sender, receiver) = watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = sender.send(true);
        });
        Self(receiver)
    }

    fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.0.clone();
        async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        }
    }
}

/// Serves `role` until shutdown, or until the drain deadline after a
/// shutdown signal.
pub async fn serve(role: Role) -> anyhow::Result<()> {
    tracing::info!(
        role = role.name(),
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "runtime started"
    );
    let shutdown = Shutdown::start();
    let deadline = role.process().drain_timeout();
    let stopped = shutdown.signal();
    let overdue = async move {
        stopped.await;
        // A little more than the edge's own drain deadline, so the edge
        // reports how its drain ended before anything is cut short.
        tokio::time::sleep(deadline + Duration::from_secs(1)).await;
    };
    tokio::select! {
        result = serve_role(role, deadline, shutdown) => result,
        () = overdue => {
            tracing::warn!("shutdown deadline passed, exiting");
            Ok(())
        }
    }
}

async fn serve_role(role: Role, drain_timeout: Duration, shutdown: Shutdown) -> anyhow::Result<()> {
    match role {
        Role::All(mut args) => {
            args.edge.drain_timeout = drain_timeout;
            // The whole system's state machine: on the heap, not on the stack.
            Box::pin(run_all(args, shutdown)).await
        }
        Role::Edge(mut args) => {
            args.edge.drain_timeout = drain_timeout;
            let listener = bind("edge", args.edge_addr.http_addr).await?;
            let bus = Bus::connect(&args.bus).await?;
            switchboard_edge::serve(
                args.edge,
                args.services,
                bus.clone(),
                listener,
                shutdown.signal(),
            )
            .await?;
            publish_counts(&bus).await;
            Ok(())
        }
        Role::Session(args) => {
            let listener = bind("session", args.grpc_addr).await?;
            serve_metrics(args.metrics.metrics_addr, shutdown.signal()).await?;
            let bus = Bus::connect(&args.bus).await?;
            switchboard_session::serve(args.session, bus.clone(), listener, shutdown.signal())
                .await?;
            publish_counts(&bus).await;
            Ok(())
        }
        Role::Detection(args) => {
            let listener = bind("detection", args.grpc_addr).await?;
            serve_metrics(args.metrics.metrics_addr, shutdown.signal()).await?;
            let bus = Bus::connect(&args.bus).await?;
            switchboard_detection::serve(bus.clone(), listener, shutdown.signal()).await?;
            publish_counts(&bus).await;
            Ok(())
        }
        Role::Statistics(args) => {
            let listener = bind("statistics", args.grpc_addr).await?;
            serve_metrics(args.metrics.metrics_addr, shutdown.signal()).await?;
            let bus = Bus::connect(&args.bus).await?;
            switchboard_statistics::serve(args.statistics, bus, listener, shutdown.signal())
                .await?;
            Ok(())
        }
    }
}

async fn run_all(args: AllArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let bus = Bus::connect(&args.bus).await?;
    let session_listener = bind("session", args.session_grpc_addr).await?;
    let detection_listener = bind("detection", args.detection_grpc_addr).await?;
    let statistics_listener = bind("statistics", args.statistics_grpc_addr).await?;
    let urls = ServiceUrls::local(
        session_listener.local_addr()?,
        detection_listener.local_addr()?,
        statistics_listener.local_addr()?,
    );
    let edge_listener = bind("edge", args.edge_addr.http_addr).await?;
    // The services join this directory, where the edge finds them to call
    // them in memory.
    let directory = Directory::default();
    let in_process = [
        session_listener.local_addr()?,
        detection_listener.local_addr()?,
        statistics_listener.local_addr()?,
    ];
    let listeners = |listener| match args.in_process_calls {
        true => Listeners::with_directory(listener, &directory),
        false => Listeners::from(listener),
    };
    let (session_listener, detection_listener, statistics_listener) = (
        listeners(session_listener),
        listeners(detection_listener),
        listeners(statistics_listener),
    );
    let statistics = StatisticsSettings {
        session_url: urls.session_url.clone(),
        updates: args.statistics,
    };
    // The services stop only once the edge has drained, so its last calls
    // (closing sessions, reporting usage) still find them.
    let (edge_done, edge_finished) = watch::channel(false);
    let after_edge = || {
        let signal = shutdown.signal();
        let mut edge_finished = edge_finished.clone();
        async move {
            signal.await;
            let _ = edge_finished.wait_for(|done| *done).await;
        }
    };
    tokio::try_join!(
        async {
            switchboard_session::serve(args.session, bus.clone(), session_listener, after_edge())
                .await
                .context("session service")
        },
        async {
            switchboard_detection::serve(bus.clone(), detection_listener, after_edge())
                .await
                .context("detection service")
        },
        async {
            switchboard_statistics::serve(
                statistics,
                bus.clone(),
                statistics_listener,
                after_edge(),
            )
            .await
            .context("statistics service")
        },
        async {
            let served = async {
                let backends = match args.in_process_calls {
                    true => Backends::in_process(&urls, &args.edge, &directory, in_process).await,
                    false => Backends::connect_lazy(&urls, &args.edge),
                }?;
                Box::pin(switchboard_edge::serve_with(
                    args.edge,
                    backends,
                    bus.clone(),
                    edge_listener,
                    shutdown.signal(),
                ))
                .await
            }
            .await
            .context("edge");
            let _ = edge_done.send(true);
            served
        },
    )?;
    publish_counts(&bus).await;
    Ok(())
}
