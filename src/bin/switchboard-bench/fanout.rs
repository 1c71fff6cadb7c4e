//! `switchboard-bench fanout`: `/ws/ui` clients spread over the edges, and
//! publishers.
//!
//! The publishers broadcast `--rate` telemetry messages a second through
//! the first instance (`POST /api/events/broadcast/telemetry`), each
//! carrying this run's id, a sequence number and its send time on the
//! bench's clock; clients on every edge receive them (those on other edges
//! through NATS). Each client records publish→delivery latency and which
//! sequence numbers it saw, so a message lost by a client that kept up is
//! counted, not guessed. "Full delivery" is, per broadcast, the time until
//! the last client keeping up had it.
//!
//! One publisher waits for each broadcast to be acknowledged before the
//! next, so its round trip caps the rate; `--publishers K` shares the
//! schedule among K publishers (broadcast `i` goes to publisher `i mod K`),
//! and messages may then arrive out of order (counted, not lost).
//!
//! `--before-edge URL` (with `--before-pid`, `--before-http`) names a second
//! deployment, e.g. an earlier build, that gets the same load in the same
//! run: its figures are reported beside the deployment's ("… before"), so a
//! change's cost is measured, not remembered.
//!
//! `--slow-percent P` makes P % of the clients stop reading once connected:
//! they stand for slow consumers. They are left out of latency and loss;
//! what is measured is whether they were cut off (close 1008) and how much
//! the edges' resident memory grew meanwhile (with `--edge-pid`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Semaphore, watch};

use super::Common;
use super::baseline::BaselineProcess;
use super::client::{self, Ended, Socket};
use super::measure::{CpuMeter, CpuUse, Summary, instant_at, now_us, per_second, run_id};
use super::report::{Figure, Goal, Report};
use super::target::{Publisher, Target};

/// At most this many clients, whatever is asked.
const MAX_CLIENTS: usize = 100_000;

/// At most this many broadcasts in one run.
const MAX_BROADCASTS: usize = 1_000_000;

/// How long clients wait for the last broadcasts after publishing ends.
const DRAIN: Duration = Duration::from_secs(5);

/// How long a slow client reads at the end to learn what became of it.
const SLOW_CHECK: Duration = Duration::from_secs(2);

/// Before publishing, let the connections settle.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// `/ws/ui` clients, spread over the edges [default: 10000; 20 with
    /// --tiny].
    #[arg(long)]
    pub clients: Option<usize>,
    /// Broadcasts per second [default: 30; 5 with --tiny].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of publishing [default: 10; 1 with --tiny].
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Percentage of clients that stop reading once connected (slow
    /// consumers); they are left out of latency and loss.
    #[arg(long, default_value_t = 0.0)]
    pub slow_percent: f64,
    /// Publishers sharing the schedule, each waiting for its broadcast to
    /// be acknowledged before its next.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Handshakes in flight while the clients connect.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// A deployment to compare with under the same load in the same run
    /// (e.g. the build before a change): its WebSocket base URL; repeat for
    /// several edges.
    #[arg(long = "before-edge", value_name = "URL")]
    pub before_edges: Vec<String>,
    /// That deployment's HTTP base URLs (default: its `--before-edge` URLs
    /// over http).
    #[arg(long = "before-http", value_name = "URL")]
    pub before_http: Vec<String>,
    /// Pids of that deployment's processes (memory and CPU).
    #[arg(long = "before-pid", value_name = "PID")]
    pub before_pids: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Load {
    clients: usize,
    slow: usize,
    rate: f64,
    broadcasts: usize,
    publishers: usize,
    concurrency: usize,
}

#[derive(Debug, Default, Serialize)]
struct Memory {
    rss_kib_before: Option<u64>,
    rss_kib_after: Option<u64>,
    growth_percent: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
struct Measured {
    clients_requested: usize,
    clients_connected: usize,
    connect_errors: BTreeMap<String, u64>,
    slow_clients: usize,
    broadcasts_planned: usize,
    published: u64,
    publish_errors: BTreeMap<String, u64>,
    publish_seconds: f64,
    publishes_per_second: Option<f64>,
    /// The publisher's call (REST round trip) per broadcast.
    publish_call: Summary,
    /// Messages received by the clients keeping up.
    deliveries: u64,
    deliveries_per_second: Option<f64>,
    latency: Summary,
    /// Per broadcast: until the last client keeping up had it.
    full_delivery: Summary,
    broadcasts_not_fully_delivered: u64,
    /// Published messages that clients keeping up (not slow, not closed)
    /// never received.
    lost: u64,
    /// Clients (not slow) the connection of which ended early, by how.
    clients_closed: BTreeMap<String, u64>,
    lost_by_closed_clients: u64,
    duplicates: u64,
    out_of_order: u64,
    /// What became of the slow clients: closed by the server (by code) or
    /// still open.
    slow_outcome: BTreeMap<String, u64>,
    memory: Memory,
    /// From the first broadcast until every client is done.
    cpu: CpuUse,
}

pub async fn run(args: &FanoutArgs) -> anyhow::Result<Report> {
    let tiny = args.common.tiny;
    let clients = args
        .clients
        .unwrap_or(if tiny { 20 } else { 10_000 })
        .clamp(1, MAX_CLIENTS);
    let rate = args
        .rate
        .unwrap_or(if tiny { 5.0 } else { 30.0 })
        .clamp(0.1, 100_000.0);
    let duration = args
        .duration_secs
        .unwrap_or(if tiny { 1.0 } else { 10.0 })
        .clamp(0.1, 3600.0);
    let slow_percent = args.slow_percent.clamp(0.0, 100.0);
    let load = Load {
        clients,
        slow: (clients as f64 * slow_percent / 100.0).round() as usize,
        rate,
        broadcasts: ((rate * duration).ceil() as usize).clamp(1, MAX_BROADCASTS),
        publishers: args.publishers.clamp(1, 64),
        concurrency: args.concurrency.clamp(1, 1000),
    };
    let deployment = Target::deployment(&args.common)?;
    let measured = measure(&deployment, load).await?;
    let before = if args.before_edges.is_empty() {
        None
    } else {
        let common = super::Common {
            edges: args.before_edges.clone(),
            http: args.before_http.clone(),
            edge_pids: args.before_pids.clone(),
            ..args.common.clone()
        };
        Some(measure(&Target::deployment(&common)?, load).await?)
    };
    let baseline = if args.common.no_baseline {
        None
    } else {
        let process = BaselineProcess::start()?;
        Some(measure(&Target::baseline(&process), load).await?)
    };
    let figure = |name: &str, unit: &'static str, value: fn(&Measured) -> Option<f64>| {
        Figure::new(
            name,
            unit,
            value(&measured),
            baseline.as_ref().and_then(value),
        )
    };
    let mut figures = vec![
        figure("deliveries/s", "msg/s", |m| m.deliveries_per_second).goal(Goal::AtLeast(300_000.0)),
        figure("broadcasts/s published", "msg/s", |m| {
            m.publishes_per_second
        }),
        figure("publish→delivery p50", "ms", |m| m.latency.p50_ms),
        figure("publish→delivery p99", "ms", |m| m.latency.p99_ms),
        figure("publish→delivery p99.9", "ms", |m| m.latency.p999_ms),
        figure("full delivery p99", "ms", |m| m.full_delivery.p99_ms).goal(Goal::AtMost(50.0)),
        figure("lost by clients keeping up", "messages", |m| {
            Some(m.lost as f64)
        })
        .goal(Goal::AtMost(0.0)),
        figure("clients closed (not slow)", "clients", |m| {
            Some(m.clients_closed.values().sum::<u64>() as f64)
        })
        .goal(Goal::AtMost(0.0)),
        figure("CPU of the target", "cores", |m| m.cpu.target_cores),
        figure("CPU per delivery", "µs", cpu_per_delivery_us),
        figure("CPU of the bench", "cores", |m| m.cpu.bench_cores),
    ];
    if let Some(before) = &before {
        let compared: [(&str, &'static str, Value); 7] = [
            ("deliveries/s", "msg/s", |m| m.deliveries_per_second),
            ("publish call p50", "ms", |m| m.publish_call.p50_ms),
            ("publish→delivery p50", "ms", |m| m.latency.p50_ms),
            ("publish→delivery p99", "ms", |m| m.latency.p99_ms),
            ("full delivery p99", "ms", |m| m.full_delivery.p99_ms),
            ("CPU of the target", "cores", |m| m.cpu.target_cores),
            ("CPU per delivery", "µs", cpu_per_delivery_us),
        ];
        for (name, unit, value) in compared {
            figures.push(Figure::new(
                format!("{name} before"),
                unit,
                value(before),
                baseline.as_ref().and_then(value),
            ));
            let change = match (value(&measured), value(before)) {
                (Some(now), Some(then)) if then > 0.0 => Some(now / then),
                _ => None,
            };
            figures.push(Figure::new(
                format!("{name}: now / before"),
                "×",
                change,
                None,
            ));
        }
        figures.push(Figure::new(
            "lost by clients keeping up before",
            "messages",
            Some(before.lost as f64),
            None,
        ));
    }
    if load.slow > 0 {
        figures.push(
            figure("memory growth with slow clients", "%", |m| {
                m.memory.growth_percent
            })
            .goal(Goal::AtMost(10.0)),
        );
        figures.push(figure("slow clients cut off", "clients", |m| {
            Some(
                m.slow_outcome
                    .iter()
                    .filter(|(how, _)| how.starts_with("closed"))
                    .map(|(_, count)| *count)
                    .sum::<u64>() as f64,
            )
        }));
    }
    Ok(Report {
        scenario: "fanout",
        config: json!({
            "clients": load.clients,
            "slow_clients": load.slow,
            "rate": load.rate,
            "broadcasts": load.broadcasts,
            "publishers": load.publishers,
            "duration_secs": duration,
            "edges": deployment.edges,
            "edge_pids": deployment.pids,
        }),
        deployment: serde_json::to_value(&measured)?,
        baseline: baseline.map(|b| serde_json::to_value(&b)).transpose()?,
        before: before.map(|b| serde_json::to_value(&b)).transpose()?,
        figures,
    })
}

/// What the clients share with the publisher.
struct Shared {
    run: u64,
    /// Per broadcast: deliveries to clients keeping up.
    delivered: Vec<AtomicU32>,
    /// Per broadcast: the slowest delivery so far, in microseconds.
    slowest_us: Vec<AtomicU64>,
    /// Broadcasts the target acknowledged.
    published: AtomicU64,
    last_delivery_us: AtomicU64,
}

async fn measure(target: &Target, load: Load) -> anyhow::Result<Measured> {
    let mut measured = Measured {
        clients_requested: load.clients,
        broadcasts_planned: load.broadcasts,
        ..Measured::default()
    };
    let shared = Arc::new(Shared {
        run: run_id(),
        delivered: (0..load.broadcasts).map(|_| AtomicU32::new(0)).collect(),
        slowest_us: (0..load.broadcasts).map(|_| AtomicU64::new(0)).collect(),
        published: AtomicU64::new(0),
        last_delivery_us: AtomicU64::new(0),
    });
    let (publishing_done, done) = watch::channel(false);
    let semaphore = Arc::new(Semaphore::new(load.concurrency));
    let mut connecting = Vec::with_capacity(load.clients);
    for index in 0..load.clients {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let url = target.ws(index, "/ws/ui");
        let slow = is_slow(index, load);
        let shared = Arc::clone(&shared);
        let done = done.clone();
        connecting.push(tokio::spawn(async move {
            let mut socket = client::connect(&url)
                .await
                .map_err(|error| error.root_cause().to_string())?;
            client::next_text(&mut socket, client::REPLY_TIMEOUT)
                .await
                .map_err(|ended| format!("no welcome: {ended}"))?;
            drop(permit);
            Ok::<_, String>(tokio::spawn(receive(socket, slow, shared, done)))
        }));
    }
    let receivers = super::measure::opened(connecting, &mut measured.connect_errors).await;
    measured.clients_connected = receivers.len();
    tokio::time::sleep(SETTLE).await;
    measured.memory.rss_kib_before = target.rss_kib();

    let mut publishers = Vec::with_capacity(load.publishers);
    for _ in 0..load.publishers {
        publishers.push(target.ui_publisher(0).await?);
    }
    let cpu = CpuMeter::start(&target.pids);
    let start_us = now_us();
    let schedules: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(first, publisher)| {
            tokio::spawn(publish(
                publisher,
                Arc::clone(&shared),
                load,
                first,
                start_us,
            ))
        })
        .collect();
    let mut calls = Vec::with_capacity(load.broadcasts);
    for schedule in schedules {
        let Ok((done_calls, errors)) = schedule.await else {
            *measured
                .publish_errors
                .entry("task failed".into())
                .or_default() += 1;
            continue;
        };
        calls.extend(done_calls);
        for (cause, count) in errors {
            *measured.publish_errors.entry(cause).or_default() += count;
        }
    }
    // The schedule's length, or longer if publishing fell behind it.
    let planned_seconds = load.broadcasts as f64 / load.rate;
    measured.publish_seconds = ((now_us() - start_us) as f64 / 1e6).max(planned_seconds);
    measured.memory.rss_kib_after = target.rss_kib();
    let _ = publishing_done.send(true);

    measured.published = shared.published.load(Ordering::Relaxed);
    measured.publishes_per_second = per_second(measured.published, measured.publish_seconds);
    measured.publish_call = Summary::of(calls);
    let mut latencies = Vec::new();
    let mut keeping_up: u32 = 0;
    for receiver in receivers {
        let Ok(outcome) = receiver.await else {
            *measured
                .clients_closed
                .entry("task failed".into())
                .or_default() += 1;
            continue;
        };
        if outcome.slow {
            measured.slow_clients += 1;
            let how = outcome
                .ended
                .map_or("still open".to_owned(), |ended| ended.to_string());
            *measured.slow_outcome.entry(how).or_default() += 1;
            continue;
        }
        let missing = measured.published.saturating_sub(outcome.received);
        measured.deliveries += outcome.received;
        measured.duplicates += outcome.duplicates;
        measured.out_of_order += outcome.out_of_order;
        latencies.extend(outcome.latencies.into_iter().map(u64::from));
        match outcome.ended {
            Some(ended) => {
                *measured
                    .clients_closed
                    .entry(ended.to_string())
                    .or_default() += 1;
                measured.lost_by_closed_clients += missing;
            }
            None => {
                keeping_up += 1;
                measured.lost += missing;
            }
        }
    }
    measured.cpu = cpu.stop();
    measured.latency = Summary::of(latencies);
    let last_us = shared.last_delivery_us.load(Ordering::Relaxed);
    measured.deliveries_per_second = per_second(
        measured.deliveries,
        (last_us.saturating_sub(start_us) as f64 / 1e6).max(planned_seconds),
    );
    let mut full = Vec::new();
    for (delivered, slowest) in shared.delivered.iter().zip(&shared.slowest_us) {
        if delivered.load(Ordering::Relaxed) >= keeping_up && keeping_up > 0 {
            full.push(slowest.load(Ordering::Relaxed));
        } else {
            measured.broadcasts_not_fully_delivered += 1;
        }
    }
    measured.full_delivery = Summary::of(full);
    measured.memory.growth_percent = match measured.memory {
        Memory {
            rss_kib_before: Some(before),
            rss_kib_after: Some(after),
            ..
        } if before > 0 => Some((after as f64 - before as f64) * 100.0 / before as f64),
        _ => None,
    };
    Ok(measured)
}

/// Publishes broadcasts `first`, `first + K`, … of the schedule (K
/// publishers); returns each call's duration and the failures by cause.
async fn publish(
    mut publisher: Publisher,
    shared: Arc<Shared>,
    load: Load,
    first: usize,
    start_us: u64,
) -> (Vec<u64>, BTreeMap<String, u64>) {
    let period_us = 1e6 / load.rate;
    let mut calls = Vec::new();
    let mut errors = BTreeMap::new();
    for seq in (first..load.broadcasts).step_by(load.publishers) {
        let due_us = start_us + (seq as f64 * period_us) as u64;
        tokio::time::sleep_until(instant_at(due_us).into()).await;
        let sent_us = now_us();
        let data = json!({"bench_run": shared.run, "seq": seq, "sent_us": sent_us});
        let delivered = json!({"type": "telemetry", "data": data});
        match publisher.publish(&json!({"data": data}), &delivered).await {
            Ok(()) => {
                shared.published.fetch_add(1, Ordering::Relaxed);
                calls.push(now_us() - sent_us);
            }
            Err(error) => *errors.entry(error.to_string()).or_default() += 1,
        }
    }
    publisher.finish().await;
    (calls, errors)
}

/// How a figure is read from a measurement.
type Value = fn(&Measured) -> Option<f64>;

/// The target's CPU time per message delivered, in microseconds.
fn cpu_per_delivery_us(measured: &Measured) -> Option<f64> {
    let deliveries = measured.deliveries_per_second?;
    let cores = measured.cpu.target_cores?;
    (deliveries > 0.0).then(|| cores * 1e6 / deliveries)
}

/// Whether client `index` is one of the slow ones (spread evenly).
fn is_slow(index: usize, load: Load) -> bool {
    load.slow > 0 && (index + 1) * load.slow / load.clients > index * load.slow / load.clients
}

#[derive(Debug, Default)]
struct ClientOutcome {
    slow: bool,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    latencies: Vec<u32>,
    ended: Option<Ended>,
}

#[derive(Deserialize)]
struct Delivery {
    data: Option<Probe>,
}

#[derive(Deserialize)]
struct Probe {
    bench_run: Option<u64>,
    seq: Option<usize>,
    sent_us: Option<u64>,
}

/// One client's receiving loop.
async fn receive(
    mut socket: Socket,
    slow: bool,
    shared: Arc<Shared>,
    mut done: watch::Receiver<bool>,
) -> ClientOutcome {
    let mut outcome = ClientOutcome {
        slow,
        ..ClientOutcome::default()
    };
    let mut seen = vec![0u64; shared.delivered.len().div_ceil(64)];
    let mut last_seq: Option<usize> = None;
    if slow {
        super::until_true(&mut done).await;
        let until = tokio::time::Instant::now() + SLOW_CHECK;
        while let Ok(message) = tokio::time::timeout_at(until, socket.next()).await {
            if let Err(ended) = client::text_of(message) {
                outcome.ended = Some(ended);
                return outcome;
            }
        }
        client::close(socket).await;
        return outcome;
    }
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if drain_until.is_some() && outcome.received >= shared.published.load(Ordering::Relaxed) {
            break;
        }
        tokio::select! {
            message = socket.next() => match client::text_of(message) {
                Ok(Some(text)) => {
                    let received_us = now_us();
                    if !text.as_str().contains("bench_run") {
                        continue;
                    }
                    let Ok(Delivery { data: Some(Probe { bench_run: Some(run), seq: Some(seq), sent_us: Some(sent_us) }) }) =
                        serde_json::from_str::<Delivery>(text.as_str())
                    else {
                        continue;
                    };
                    if run != shared.run || seq >= shared.delivered.len() {
                        continue;
                    }
                    let (word, bit) = (seq / 64, 1u64 << (seq % 64));
                    if seen[word] & bit != 0 {
                        outcome.duplicates += 1;
                        continue;
                    }
                    seen[word] |= bit;
                    if last_seq.is_some_and(|last| seq < last) {
                        outcome.out_of_order += 1;
                    }
                    last_seq = Some(seq);
                    outcome.received += 1;
                    let latency = received_us.saturating_sub(sent_us);
                    outcome.latencies.push(u32::try_from(latency).unwrap_or(u32::MAX));
                    shared.delivered[seq].fetch_add(1, Ordering::Relaxed);
                    shared.slowest_us[seq].fetch_max(latency, Ordering::Relaxed);
                    shared.last_delivery_us.fetch_max(received_us, Ordering::Relaxed);
                }
                Ok(None) => {}
                Err(ended) => {
                    outcome.ended = Some(ended);
                    return outcome;
                }
            },
            () = super::until_true(&mut done), if drain_until.is_none() => {
                drain_until = Some(tokio::time::Instant::now() + DRAIN);
            }
            () = tokio::time::sleep_until(drain_until.unwrap_or_else(tokio::time::Instant::now)), if drain_until.is_some() => break,
        }
    }
    client::close(socket).await;
    outcome
}
