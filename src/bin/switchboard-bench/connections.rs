//! `switchboard-bench connections`: many idle connections, held.
//!
//! Half the connections go to `/ws/realtime` (each one a registry session)
//! and half to `/ws/ui` (each one a hub member), in that order and in two
//! phases, so the resident memory each kind costs can be told apart: the
//! target's RSS is read before, after the realtime phase and after the UI
//! phase, once the connections have been held for a while. Realtime
//! connections go first because every session opened is announced to every
//! `/ws/ui` client; UI clients are closed first for the same reason.
//!
//! Handshake latency is TCP connect plus WebSocket upgrade; "first message"
//! adds the server's greeting (`session_started` needs a registry write,
//! `connection` does not). The connect rate is connections completed per
//! second of the phase with `--concurrency` handshakes in flight.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::Common;
use super::baseline::BaselineProcess;
use super::client::{self, Socket};
use super::measure::{Summary, now_us, per_second};
use super::report::{Figure, Goal, Report};
use super::target::Target;

/// At most this many connections, whatever is asked.
const MAX_CONNECTIONS: usize = 100_000;

#[derive(Debug, Args)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open, half to `/ws/realtime`, half to `/ws/ui`
    /// [default: 10000; 20 with --tiny].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds every phase's connections are held before memory is read
    /// [default: 2; 0.2 with --tiny].
    #[arg(long)]
    pub hold_secs: Option<f64>,
}

/// One phase: `count` connections to one path.
#[derive(Debug, Default, Serialize)]
struct Phase {
    path: &'static str,
    requested: usize,
    opened: usize,
    failed: usize,
    /// Why connections failed, by cause.
    errors: BTreeMap<String, u64>,
    seconds: f64,
    connects_per_second: Option<f64>,
    handshake: Summary,
    first_message: Summary,
}

#[derive(Debug, Serialize)]
struct Memory {
    rss_kib_before: Option<u64>,
    rss_kib_after_realtime: Option<u64>,
    rss_kib_after_ui: Option<u64>,
    kib_per_realtime_connection: Option<f64>,
    kib_per_ui_connection: Option<f64>,
    kib_per_connection: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Measured {
    realtime: Phase,
    ui: Phase,
    memory: Memory,
    /// Connections the server closed while they were held (should be 0).
    closed_while_held: u64,
}

pub async fn run(args: &ConnectionsArgs) -> anyhow::Result<Report> {
    let tiny = args.common.tiny;
    let total = args
        .connections
        .unwrap_or(if tiny { 20 } else { 10_000 })
        .clamp(2, MAX_CONNECTIONS);
    let concurrency = args.concurrency.clamp(1, 1000);
    let hold = Duration::from_secs_f64(
        args.hold_secs
            .unwrap_or(if tiny { 0.2 } else { 2.0 })
            .clamp(0.0, 600.0),
    );
    let deployment = Target::deployment(&args.common)?;
    let measured = measure(&deployment, total, concurrency, hold).await?;
    let baseline = if args.common.no_baseline {
        None
    } else {
        let process = BaselineProcess::start()?;
        Some(measure(&Target::baseline(&process), total, concurrency, hold).await?)
    };
    let pick =
        |value: fn(&Measured) -> Option<f64>| (value(&measured), baseline.as_ref().and_then(value));
    let figure = |name: &str, unit: &'static str, value: fn(&Measured) -> Option<f64>| {
        let (mine, theirs) = pick(value);
        Figure::new(name, unit, mine, theirs)
    };
    let figures = vec![
        figure("connect rate /ws/realtime", "conn/s", |m| {
            m.realtime.connects_per_second
        })
        .goal(Goal::AtLeast(2000.0)),
        figure("connect rate /ws/ui", "conn/s", |m| {
            m.ui.connects_per_second
        })
        .goal(Goal::AtLeast(2000.0)),
        figure("handshake p50 /ws/realtime", "ms", |m| {
            m.realtime.handshake.p50_ms
        }),
        figure("handshake p99 /ws/realtime", "ms", |m| {
            m.realtime.handshake.p99_ms
        })
        .goal(Goal::AtMost(20.0)),
        figure("handshake p50 /ws/ui", "ms", |m| m.ui.handshake.p50_ms),
        figure("handshake p99 /ws/ui", "ms", |m| m.ui.handshake.p99_ms).goal(Goal::AtMost(20.0)),
        figure("first message p99 /ws/realtime", "ms", |m| {
            m.realtime.first_message.p99_ms
        }),
        figure("first message p99 /ws/ui", "ms", |m| {
            m.ui.first_message.p99_ms
        }),
        figure("memory per connection /ws/realtime", "KiB", |m| {
            m.memory.kib_per_realtime_connection
        })
        .goal(Goal::AtMost(8.0)),
        figure("memory per connection /ws/ui", "KiB", |m| {
            m.memory.kib_per_ui_connection
        })
        .goal(Goal::AtMost(8.0)),
        figure("memory per connection (both)", "KiB", |m| {
            m.memory.kib_per_connection
        })
        .goal(Goal::AtMost(8.0)),
        figure("failed connections", "conn", |m| {
            Some((m.realtime.failed + m.ui.failed) as f64)
        })
        .goal(Goal::AtMost(0.0)),
        figure("closed while held", "conn", |m| {
            Some(m.closed_while_held as f64)
        })
        .goal(Goal::AtMost(0.0)),
    ];
    Ok(Report {
        scenario: "connections",
        config: json!({
            "connections": total,
            "concurrency": concurrency,
            "hold_secs": hold.as_secs_f64(),
            "edges": deployment.edges,
            "edge_pids": deployment.pids,
        }),
        deployment: serde_json::to_value(&measured)?,
        baseline: baseline.map(|b| serde_json::to_value(&b)).transpose()?,
        before: None,
        figures,
    })
}

async fn measure(
    target: &Target,
    total: usize,
    concurrency: usize,
    hold: Duration,
) -> anyhow::Result<Measured> {
    let realtime_count = total.div_ceil(2);
    let ui_count = total - realtime_count;
    let (stop_realtime, realtime_stopped) = watch::channel(false);
    let (stop_ui, ui_stopped) = watch::channel(false);
    let before = target.rss_kib();
    let (realtime, realtime_holders) = open_phase(
        target,
        "/ws/realtime",
        0,
        realtime_count,
        concurrency,
        realtime_stopped,
    )
    .await?;
    tokio::time::sleep(hold).await;
    let after_realtime = target.rss_kib();
    let (ui, ui_holders) = open_phase(
        target,
        "/ws/ui",
        realtime_count,
        ui_count,
        concurrency,
        ui_stopped,
    )
    .await?;
    tokio::time::sleep(hold).await;
    let after_ui = target.rss_kib();
    let mut closed_while_held = 0;
    for (stop, holders) in [(stop_ui, ui_holders), (stop_realtime, realtime_holders)] {
        let _ = stop.send(true);
        for holder in holders {
            if holder.await.unwrap_or(true) {
                closed_while_held += 1;
            }
        }
    }
    let per_connection = |from: Option<u64>, to: Option<u64>, count: usize| match (from, to) {
        (Some(from), Some(to)) if count > 0 => Some((to as f64 - from as f64) / count as f64),
        _ => None,
    };
    let memory = Memory {
        rss_kib_before: before,
        rss_kib_after_realtime: after_realtime,
        rss_kib_after_ui: after_ui,
        kib_per_realtime_connection: per_connection(before, after_realtime, realtime.opened),
        kib_per_ui_connection: per_connection(after_realtime, after_ui, ui.opened),
        kib_per_connection: per_connection(before, after_ui, realtime.opened + ui.opened),
    };
    Ok(Measured {
        realtime,
        ui,
        memory,
        closed_while_held,
    })
}

/// What one connection attempt gave: latencies and the task holding it.
struct Opened {
    handshake_us: u64,
    first_message_us: u64,
    holder: JoinHandle<bool>,
}

async fn open_phase(
    target: &Target,
    path: &'static str,
    first_index: usize,
    count: usize,
    concurrency: usize,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(Phase, Vec<JoinHandle<bool>>)> {
    let semaphore = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut attempts = Vec::with_capacity(count);
    for index in 0..count {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let url = target.ws(first_index + index, path);
        let stop = stop.clone();
        attempts.push(tokio::spawn(async move {
            let opened = open_one(&url, stop).await;
            drop(permit);
            opened
        }));
    }
    let mut phase = Phase {
        path,
        requested: count,
        ..Phase::default()
    };
    let mut handshakes = Vec::with_capacity(count);
    let mut first_messages = Vec::with_capacity(count);
    let mut holders = Vec::with_capacity(count);
    for attempt in attempts {
        match attempt.await {
            Ok(Ok(opened)) => {
                handshakes.push(opened.handshake_us);
                first_messages.push(opened.first_message_us);
                holders.push(opened.holder);
            }
            Ok(Err(cause)) => *phase.errors.entry(cause).or_default() += 1,
            Err(_) => *phase.errors.entry("task failed".to_owned()).or_default() += 1,
        }
    }
    phase.seconds = started.elapsed().as_secs_f64();
    phase.opened = holders.len();
    phase.failed = count - phase.opened;
    phase.connects_per_second = per_second(phase.opened as u64, phase.seconds);
    phase.handshake = Summary::of(handshakes);
    phase.first_message = Summary::of(first_messages);
    Ok((phase, holders))
}

async fn open_one(url: &str, stop: watch::Receiver<bool>) -> Result<Opened, String> {
    let started = now_us();
    let mut socket = client::connect(url)
        .await
        .map_err(|error| error.root_cause().to_string())?;
    let handshake_us = now_us() - started;
    client::next_text(&mut socket, client::REPLY_TIMEOUT)
        .await
        .map_err(|ended| format!("no greeting: {ended}"))?;
    let first_message_us = now_us() - started;
    Ok(Opened {
        handshake_us,
        first_message_us,
        holder: tokio::spawn(hold(socket, stop)),
    })
}

/// Keeps a connection open, reading (and dropping) whatever the server
/// sends, until told to stop; true when the server closed it first.
async fn hold(mut socket: Socket, mut stop: watch::Receiver<bool>) -> bool {
    loop {
        tokio::select! {
            () = super::until_true(&mut stop) => {
                client::close(socket).await;
                return false;
            }
            message = socket.next() => {
                if client::text_of(message).is_err() {
                    return true;
                }
            }
        }
    }
}
