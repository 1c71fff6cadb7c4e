//! `switchboard-bench alerts`: an alert raised → `anomaly_detected` on the
//! user's `/ws/alerts/{user}` socket, across instances.
//!
//! Every user has one alerts connection, on instance `i`; its alerts are
//! raised by an admin with `POST /api/alerts` on instance `i + 1` (the same
//! one when there is only one), so with two edges every alert crosses
//! NATS and the JetStream mailbox. Each alert carries this run's id, a
//! sequence number and its send time in `detection_result`; the client
//! measures the latency and acknowledges it, as a real client must (an
//! alert stays until acknowledged). Users are new for every run, so no
//! earlier backlog is delivered. Alerts to one user are paced by
//! `--interval-ms` because an alerts socket may send only 10 messages a
//! second (its acks included).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Semaphore, watch};

use super::Common;
use super::baseline::BaselineProcess;
use super::client::{self, Ended, Socket};
use super::measure::{Summary, instant_at, now_us, run_id};
use super::report::{Figure, Goal, Report};
use super::target::Target;

/// At most this many users, whatever is asked.
const MAX_USERS: usize = 10_000;

/// At most this many alerts per user.
const MAX_ALERTS: usize = 100_000;

/// How long clients wait for the last alerts once raising ends.
const DRAIN: Duration = Duration::from_secs(5);

/// Handshakes in flight while the clients connect.
const CONNECT_CONCURRENCY: usize = 32;

#[derive(Debug, Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Users, each with one `/ws/alerts` connection [default: 10; 2 with
    /// --tiny].
    #[arg(long)]
    pub users: Option<usize>,
    /// Alerts raised per user [default: 20; 2 with --tiny].
    #[arg(long)]
    pub alerts: Option<usize>,
    /// Milliseconds between two alerts to the same user (at least 120: the
    /// acknowledgements must stay under the socket's rate limit).
    #[arg(long, default_value_t = 250)]
    pub interval_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Load {
    users: usize,
    alerts: usize,
    interval: Duration,
}

#[derive(Debug, Default, Serialize)]
struct Measured {
    users: usize,
    connected: usize,
    connect_errors: BTreeMap<String, u64>,
    /// Whether clients and raisers were on different instances.
    cross_instance: bool,
    raised: u64,
    raise_errors: BTreeMap<String, u64>,
    /// The raiser's call (REST round trip) per alert.
    raise_call: Summary,
    delivered: u64,
    latency: Summary,
    lost: u64,
    duplicates: u64,
    /// Connections that ended before the run did, by how.
    closed: BTreeMap<String, u64>,
}

pub async fn run(args: &AlertsArgs) -> anyhow::Result<Report> {
    let tiny = args.common.tiny;
    let load = Load {
        users: args
            .users
            .unwrap_or(if tiny { 2 } else { 10 })
            .clamp(1, MAX_USERS),
        alerts: args
            .alerts
            .unwrap_or(if tiny { 2 } else { 20 })
            .clamp(1, MAX_ALERTS),
        interval: Duration::from_millis(args.interval_ms.clamp(120, 60_000)),
    };
    let deployment = Target::deployment(&args.common)?;
    let measured = measure(&deployment, load).await?;
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
    let figures = vec![
        figure("raise→anomaly_detected p50", "ms", |m| m.latency.p50_ms),
        figure("raise→anomaly_detected p99", "ms", |m| m.latency.p99_ms),
        figure("raise→anomaly_detected max", "ms", |m| m.latency.max_ms),
        figure("raise call p50", "ms", |m| m.raise_call.p50_ms),
        figure("alerts lost", "alerts", |m| Some(m.lost as f64)).goal(Goal::AtMost(0.0)),
        figure("errors", "errors", |m| {
            Some(
                (m.connect_errors.values().sum::<u64>()
                    + m.raise_errors.values().sum::<u64>()
                    + m.closed.values().sum::<u64>()) as f64,
            )
        })
        .goal(Goal::AtMost(0.0)),
    ];
    Ok(Report {
        scenario: "alerts",
        config: json!({
            "users": load.users,
            "alerts_per_user": load.alerts,
            "interval_ms": load.interval.as_millis() as u64,
            "edges": deployment.edges,
        }),
        deployment: serde_json::to_value(&measured)?,
        baseline: baseline.map(|b| serde_json::to_value(&b)).transpose()?,
        before: None,
        figures,
    })
}

async fn measure(target: &Target, load: Load) -> anyhow::Result<Measured> {
    let run = run_id();
    let mut measured = Measured {
        users: load.users,
        cross_instance: target.instances() > 1,
        ..Measured::default()
    };
    let users: Vec<String> = (0..load.users)
        .map(|index| format!("bench-{run:x}-{index}"))
        .collect();
    let raised: Arc<Vec<AtomicU64>> =
        Arc::new((0..load.users).map(|_| AtomicU64::new(0)).collect());
    let (raising_done, done) = watch::channel(false);
    let semaphore = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut connecting = Vec::with_capacity(load.users);
    for (index, user) in users.iter().enumerate() {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let url = match target.user_token(user)? {
            Some(token) => target.ws(index, &format!("/ws/alerts/{user}?token={token}")),
            None => target.ws(index, &format!("/ws/alerts/{user}")),
        };
        let raised = Arc::clone(&raised);
        let done = done.clone();
        connecting.push(tokio::spawn(async move {
            let mut socket = client::connect(&url)
                .await
                .map_err(|error| error.root_cause().to_string())?;
            let welcome = client::next_text(&mut socket, client::REPLY_TIMEOUT)
                .await
                .map_err(|ended| format!("no welcome: {ended}"))?;
            if !welcome.as_str().contains("\"connected\"") {
                return Err(format!("refused: {}", welcome.as_str()));
            }
            drop(permit);
            Ok(tokio::spawn(receive(socket, run, index, raised, done)))
        }));
    }
    let receivers = super::measure::opened(connecting, &mut measured.connect_errors).await;
    measured.connected = receivers.len();

    let start_us = now_us() + 100_000;
    let stagger_us = load.interval.as_micros() as u64 / load.users as u64;
    let mut raisers = Vec::with_capacity(load.users);
    for (index, user) in users.iter().enumerate() {
        let publisher = target.alert_publisher(index + 1, user).await?;
        let first_us = start_us + index as u64 * stagger_us;
        raisers.push(tokio::spawn(raise(
            publisher,
            user.clone(),
            run,
            load,
            first_us,
            Arc::clone(&raised),
            index,
        )));
    }
    let mut calls = Vec::new();
    for raiser in raisers {
        let Ok((raise_calls, errors)) = raiser.await else {
            *measured
                .raise_errors
                .entry("task failed".into())
                .or_default() += 1;
            continue;
        };
        calls.extend(raise_calls);
        for (cause, count) in errors {
            *measured.raise_errors.entry(cause).or_default() += count;
        }
    }
    let _ = raising_done.send(true);
    measured.raised = raised
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .sum();
    measured.raise_call = Summary::of(calls);
    let mut latencies = Vec::new();
    for receiver in receivers {
        let Ok(outcome) = receiver.await else {
            *measured.closed.entry("task failed".into()).or_default() += 1;
            continue;
        };
        measured.delivered += outcome.latencies.len() as u64;
        measured.duplicates += outcome.duplicates;
        latencies.extend(outcome.latencies.into_iter().map(u64::from));
        if let Some(ended) = outcome.ended {
            *measured.closed.entry(ended.to_string()).or_default() += 1;
        }
    }
    measured.lost = measured.raised.saturating_sub(measured.delivered);
    measured.latency = Summary::of(latencies);
    Ok(measured)
}

/// Raises one user's alerts on schedule; returns each call's duration and
/// the failures by cause.
async fn raise(
    mut publisher: super::target::Publisher,
    user: String,
    run: u64,
    load: Load,
    first_us: u64,
    raised: Arc<Vec<AtomicU64>>,
    index: usize,
) -> (Vec<u64>, BTreeMap<String, u64>) {
    let mut calls = Vec::with_capacity(load.alerts);
    let mut errors = BTreeMap::new();
    let interval_us = load.interval.as_micros() as u64;
    for seq in 0..load.alerts {
        tokio::time::sleep_until(instant_at(first_us + seq as u64 * interval_us).into()).await;
        let sent_us = now_us();
        let result = json!({"bench_run": run, "seq": seq, "sent_us": sent_us});
        let body = json!({
            "user_id": user,
            "anomaly_type": "bench",
            "severity": "info",
            "stream_id": "bench",
            "detection_result": result,
            "source": "bench",
        });
        let delivered = json!({
            "type": "anomaly_detected",
            "alert_id": format!("baseline-{run:x}-{index}-{seq}"),
            "user_id": user,
            "stream_id": "bench",
            "anomaly_type": "bench",
            "severity": "info",
            "detection_result": result,
            "source": "bench",
        });
        match publisher.publish(&body, &delivered).await {
            Ok(()) => {
                raised[index].fetch_add(1, Ordering::Relaxed);
                calls.push(now_us() - sent_us);
            }
            Err(error) => *errors.entry(error.to_string()).or_default() += 1,
        }
    }
    publisher.finish().await;
    (calls, errors)
}

#[derive(Debug, Default)]
struct Outcome {
    latencies: Vec<u32>,
    duplicates: u64,
    ended: Option<Ended>,
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    alert_id: String,
    detection_result: Option<Probe>,
}

#[derive(Deserialize)]
struct Probe {
    bench_run: Option<u64>,
    seq: Option<usize>,
    sent_us: Option<u64>,
}

/// One user's alerts socket: measures, acknowledges, answers heartbeats.
async fn receive(
    mut socket: Socket,
    run: u64,
    index: usize,
    raised: Arc<Vec<AtomicU64>>,
    mut done: watch::Receiver<bool>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut seen = std::collections::HashSet::new();
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if drain_until.is_some() && seen.len() as u64 >= raised[index].load(Ordering::Relaxed) {
            break;
        }
        tokio::select! {
            message = socket.next() => match client::text_of(message) {
                Ok(Some(text)) => {
                    let received_us = now_us();
                    let Ok(incoming) = serde_json::from_str::<Incoming>(text.as_str()) else {
                        continue;
                    };
                    let reply = match incoming.kind.as_str() {
                        "ping" => Some(json!({"type": "pong"})),
                        "anomaly_detected" => {
                            if let Some(Probe { bench_run: Some(alert_run), seq: Some(seq), sent_us: Some(sent_us) }) = incoming.detection_result
                                && alert_run == run
                            {
                                if seen.insert(seq) {
                                    let latency = received_us.saturating_sub(sent_us);
                                    outcome.latencies.push(u32::try_from(latency).unwrap_or(u32::MAX));
                                } else {
                                    outcome.duplicates += 1;
                                }
                            }
                            Some(json!({"type": "ack", "alert_id": incoming.alert_id}))
                        }
                        _ => None,
                    };
                    if let Some(reply) = reply
                        && let Err(ended) = client::send_text(&mut socket, reply.to_string()).await
                    {
                        outcome.ended = Some(ended);
                        return outcome;
                    }
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
