//! `switchboard-bench <scenario>`: the load generator that ships with the
//! project, so a deployment can be measured on the machine it runs on and
//! compared with what that machine does with the bare protocol. A binary of
//! its own, so none of it (nor its histogram and client crates) is linked
//! into `switchboard`, the server.
//!
//! Every scenario runs the same load twice in one run: against the
//! deployment (`--edge` / `--http` URLs) and against the [`baseline`], a
//! minimal tokio-tungstenite server with no services and no NATS. The
//! baseline runs in a child process of the bench, so its resident memory is
//! read from `/proc` exactly like the edge's and it does not share the
//! clients' threads. Each figure is reported with its ratio to the baseline
//! and, where the benchmark issue sets one, its target.
//!
//! - [`connections`]: idle connections; connect rate, handshake latency,
//!   resident memory per connection.
//! - [`realtime`]: sessions streaming accelerometer samples; messages and
//!   samples per second, reply latency, errors.
//! - [`fanout`]: `/ws/ui` clients over several edges and a publisher;
//!   publish→delivery latency, deliveries per second, losses, slow
//!   consumers.
//! - [`alerts`]: alert raised → `anomaly_detected` latency across instances.
//! - [`target`]: where the load goes (URLs, publishers, pids).
//! - [`client`], [`measure`], [`report`]: WebSocket clients, clocks and
//!   percentiles, the table and the JSON file.
//!
//! Only loopback addresses are accepted, every wait has a deadline, and
//! every loop is bounded in count and time.

mod alerts;
mod baseline;
mod client;
mod connections;
mod fanout;
mod measure;
mod realtime;
mod report;
mod target;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "switchboard-bench",
    version,
    about = "Load generator: measures a running Switchboard deployment against a bare baseline"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(&Cli::parse().scenario).await
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Opens idle connections to `/ws/realtime` and `/ws/ui` and holds them:
    /// connect rate, handshake latency, edge memory per connection.
    Connections(connections::ConnectionsArgs),
    /// Sessions streaming accelerometer samples on `/ws/realtime`:
    /// messages/s, samples/s, reply latency, errors.
    Realtime(realtime::RealtimeArgs),
    /// `/ws/ui` clients over the edges and publishers broadcasting:
    /// publish→delivery latency, deliveries/s, messages lost, slow
    /// consumers.
    Fanout(fanout::FanoutArgs),
    /// Alerts raised by REST on one instance and received on
    /// `/ws/alerts/{user}` on another: latency and losses.
    Alerts(alerts::AlertsArgs),
    /// The bare-protocol baseline server; the bench starts it itself.
    #[command(hide = true)]
    BaselineServer,
}

/// Options every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// An edge's WebSocket base URL; repeat for several edges (clients are
    /// spread over them in turn). Loopback only.
    #[arg(
        long = "edge",
        value_name = "URL",
        default_value = "ws://127.0.0.1:8000"
    )]
    pub edges: Vec<String>,
    /// An edge's HTTP base URL for REST calls (broadcasts, alerts); repeat
    /// for several. Defaults to the `--edge` URLs over http.
    #[arg(long = "http", value_name = "URL")]
    pub http: Vec<String>,
    /// Pid of a process serving the edge (`switchboard all` or `edge`);
    /// repeat for several. Their resident memory (VmRSS) is read from
    /// `/proc/<pid>/status` and added up.
    #[arg(long = "edge-pid", value_name = "PID")]
    pub edge_pids: Vec<u32>,
    /// The deployment's HS256 secret: the bench signs its admin and user
    /// tokens with it (needed for alerts, and for broadcasts when the
    /// deployment checks tokens).
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Also writes the results to this JSON file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Smoke-test size: a handful of clients for about a second.
    #[arg(long)]
    pub tiny: bool,
    /// Skips the baseline run (figures then have no ratio).
    #[arg(long)]
    pub no_baseline: bool,
}

/// Runs a scenario, prints its table and writes its JSON file.
async fn run(scenario: &Scenario) -> anyhow::Result<()> {
    let (common, report) = match scenario {
        Scenario::BaselineServer => return baseline::run_child().await,
        Scenario::Connections(args) => {
            raise_open_file_limit();
            (&args.common, connections::run(args).await?)
        }
        Scenario::Realtime(args) => {
            raise_open_file_limit();
            (&args.common, realtime::run(args).await?)
        }
        Scenario::Fanout(args) => {
            raise_open_file_limit();
            (&args.common, fanout::run(args).await?)
        }
        Scenario::Alerts(args) => {
            raise_open_file_limit();
            (&args.common, alerts::run(args).await?)
        }
    };
    print!("{}", report.table());
    if let Some(path) = &common.json {
        let json = serde_json::to_string_pretty(&report.json())?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Completes once `flag` is true, or once its sender is gone.
async fn until_true(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|value| *value).await;
}

/// Ten thousand sockets need more descriptors than the usual soft limit of
/// 1024: raise it to the hard limit (`ulimit -Hn`), which needs no
/// privilege. The baseline child inherits the raised limit.
#[allow(
    unsafe_code,
    reason = "std has no safe getrlimit/setrlimit; the calls only touch the struct given"
)]
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
