//! The `switchboard` binary's roles and how they are wired.
//!
//! - [`Cli`]: the command line; every option is also an environment
//!   variable (`switchboard <role> --help` lists them).
//! - [`run`]: binds each role's listener, logs `listening` with the role and
//!   address, and serves until SIGTERM or Ctrl-C.
//! - [`telemetry`]: logs, as text for people or JSON for machines.
//!
//! `all` runs every role in one process: the services bind loopback ports
//! the OS picks (so two `all` processes never collide) and the edge dials
//! them; with `NATS_URL` such processes form one cluster, without it the
//! process is a cluster of one.

pub mod bench;
pub mod probe;
pub mod telemetry;
pub mod token;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use switchboard_bus::{Bus, BusSettings};
use switchboard_edge::{EdgeSettings, ServiceUrls};
use switchboard_session::SessionSettings;
use switchboard_statistics::StatisticsSettings;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "A real-time WebSocket edge with gRPC services and NATS fan-out"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: telemetry::LogSettings,
    /// Seconds a role may take to shut down after SIGTERM: the edge drains
    /// its sockets (close 1012) and in-flight calls, services finish theirs.
    #[arg(
        long,
        env = "SWITCHBOARD_DRAIN_TIMEOUT_SECS",
        default_value_t = 25.0,
        global = true
    )]
    pub drain_timeout_secs: f64,
    #[command(subcommand)]
    pub role: Role,
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
    /// Checks a server's health and exits 0 when healthy (for container
    /// health checks).
    Probe(probe::ProbeArgs),
    /// Load generator: measures a running deployment against a bare baseline.
    Bench(bench::BenchArgs),
    /// Prints a JWT signed with the configured key, for development:
    /// `switchboard token --sub alice [--admin] [--ttl 1h] [--claim k=v]`.
    Token(token::TokenArgs),
}

#[derive(Debug, Args)]
pub struct AllArgs {
    /// Address the edge's HTTP and WebSocket server listens on.
    #[arg(long, env = "SWITCHBOARD_HTTP_ADDR", default_value = "0.0.0.0:8000")]
    pub http_addr: SocketAddr,
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
    #[command(flatten)]
    pub bus: BusSettings,
    #[command(flatten)]
    pub edge: EdgeSettings,
    #[command(flatten)]
    pub session: SessionSettings,
    /// Seconds between two `statistics_update` messages, cluster-wide.
    #[arg(
        long,
        env = "SWITCHBOARD_STATISTICS_INTERVAL_SECS",
        default_value_t = 5.0
    )]
    pub statistics_interval_secs: f64,
}

#[derive(Debug, Args)]
pub struct EdgeArgs {
    /// Address the HTTP and WebSocket server listens on.
    #[arg(long, env = "SWITCHBOARD_HTTP_ADDR", default_value = "0.0.0.0:8000")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub bus: BusSettings,
    #[command(flatten)]
    pub edge: EdgeSettings,
    #[command(flatten)]
    pub services: ServiceUrls,
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
    /// Where to serve Prometheus metrics (`/metrics`); none when unset.
    #[arg(long, env = "SWITCHBOARD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub bus: BusSettings,
    #[command(flatten)]
    pub session: SessionSettings,
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
    /// Where to serve Prometheus metrics (`/metrics`); none when unset.
    #[arg(long, env = "SWITCHBOARD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub bus: BusSettings,
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
    /// Where to serve Prometheus metrics (`/metrics`); none when unset.
    #[arg(long, env = "SWITCHBOARD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub bus: BusSettings,
    #[command(flatten)]
    pub statistics: StatisticsSettings,
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
            _ => "tool",
        }
    }

    /// Tools print their output on stdout and exit; roles serve.
    pub fn is_tool(&self) -> bool {
        matches!(self, Role::Probe(_) | Role::Bench(_) | Role::Token(_))
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

/// Runs the role the command line chose until shutdown, or until the drain
/// deadline after a shutdown signal.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Role::Probe(args) = &cli.role {
        return probe::run(args).await;
    }
    if let Role::Bench(args) = &cli.role {
        return bench::run(args).await;
    }
    if let Role::Token(args) = &cli.role {
        return token::run(args);
    }
    let shutdown = Shutdown::start();
    let deadline = std::time::Duration::from_secs_f64(cli.drain_timeout_secs.clamp(0.0, 3600.0));
    let stopped = shutdown.signal();
    let overdue = async move {
        stopped.await;
        // A little more than the edge's own drain deadline, so the edge
        // reports how its drain ended before anything is cut short.
        tokio::time::sleep(deadline + std::time::Duration::from_secs(1)).await;
    };
    tokio::select! {
        result = run_role(cli.role, deadline, shutdown) => result,
        () = overdue => {
            tracing::warn!("shutdown deadline passed, exiting");
            Ok(())
        }
    }
}

async fn run_role(
    role: Role,
    drain_timeout: std::time::Duration,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    match role {
        Role::Probe(_) => unreachable!("probes run before any role"),
        Role::Bench(_) => unreachable!("benches run before any role"),
        Role::Token(_) => unreachable!("tokens are minted before any role"),
        Role::All(mut args) => {
            args.edge.drain_timeout = drain_timeout;
            run_all(args, shutdown).await
        }
        Role::Edge(mut args) => {
            args.edge.drain_timeout = drain_timeout;
            let listener = bind("edge", args.http_addr).await?;
            let bus = Bus::connect(&args.bus).await?;
            switchboard_edge::serve(args.edge, args.services, bus, listener, shutdown.signal())
                .await?;
            Ok(())
        }
        Role::Session(args) => {
            let listener = bind("session", args.grpc_addr).await?;
            serve_metrics(args.metrics_addr, shutdown.signal()).await?;
            let bus = Bus::connect(&args.bus).await?;
            switchboard_session::serve(args.session, bus, listener, shutdown.signal()).await?;
            Ok(())
        }
        Role::Detection(args) => {
            let listener = bind("detection", args.grpc_addr).await?;
            serve_metrics(args.metrics_addr, shutdown.signal()).await?;
            let bus = Bus::connect(&args.bus).await?;
            switchboard_detection::serve(bus, listener, shutdown.signal()).await?;
            Ok(())
        }
        Role::Statistics(args) => {
            let listener = bind("statistics", args.grpc_addr).await?;
            serve_metrics(args.metrics_addr, shutdown.signal()).await?;
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
    let edge_listener = bind("edge", args.http_addr).await?;
    let statistics = StatisticsSettings {
        session_url: urls.session_url.clone(),
        interval_secs: args.statistics_interval_secs,
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
            let served = switchboard_edge::serve(
                args.edge,
                urls.clone(),
                bus.clone(),
                edge_listener,
                shutdown.signal(),
            )
            .await
            .context("edge");
            let _ = edge_done.send(true);
            served
        },
    )?;
    Ok(())
}
