//! `switchboard-bench realtime`: step-detection sessions streaming
//! accelerometer samples on `/ws/realtime`.
//!
//! Two ways to load:
//!
//! - **open loop** (`--rate R`): every session sends R messages a second
//!   on a fixed schedule (sessions staggered across the period), whatever
//!   the replies do, as phones would. A session with 1000 messages
//!   unanswered skips its sends (counted) rather than queueing forever.
//! - **closed loop** (`--rate 0`, the default): every session sends its next
//!   message as soon as the previous one is answered, so exactly
//!   `--sessions` messages are in flight; this finds the deployment's
//!   maximum throughput at that concurrency.
//!
//! A message carries one sample, or `--batch K` samples in the `samples`
//! array form. Samples follow a walking-like signal at 50 Hz of sample time
//! (the detector's clock is the samples' timestamps, not the wall clock).
//! Each reply is matched with the oldest unanswered message of its session
//! (the edge answers every message, in order); only messages sent inside the
//! measured window, after the warm-up, count.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;

use super::Common;
use super::baseline::BaselineProcess;
use super::client::{self, Ended, Socket};
use super::measure::{CpuMeter, CpuUse, Summary, instant_at, now_us, per_second};
use super::report::{Figure, Goal, Report, median};
use super::target::Target;

/// At most this many sessions, whatever is asked.
const MAX_SESSIONS: usize = 20_000;

/// Unanswered messages a session may have before it skips sends.
const MAX_OUTSTANDING: usize = 1000;

/// How long a session waits for its last replies after the window.
const DRAIN: Duration = Duration::from_secs(5);

/// Handshakes in flight while the sessions connect.
const CONNECT_CONCURRENCY: usize = 32;

/// Sample period of the synthetic sensor: 50 Hz.
const SAMPLE_PERIOD: f64 = 0.02;

#[derive(Debug, Args)]
pub struct RealtimeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Sessions streaming at once [default: 100; 4 with --tiny].
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Messages per second each session sends; 0 is a closed loop (each
    /// session sends as soon as its last message is answered, so
    /// `--sessions` messages are in flight).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Samples per message: 1 sends single-sample messages, more sends
    /// batches (`{"samples": [[t, x, y, z], ...]}`, at most 1000).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Seconds measured [default: 10; 1 with --tiny].
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Seconds of load before the measured window [default: 2; 0.2 with
    /// --tiny].
    #[arg(long)]
    pub warmup_secs: Option<f64>,
    /// Times (1 to 20) the deployment and the bare server are measured,
    /// one after the other; each figure is the median of its rounds
    /// (errors are added up), and server CPU per message is also given as
    /// each round's own ratio and their median. The bare server's cost
    /// drifts by up to a quarter from one minute to the next on a shared
    /// machine: alternating rounds keep a ratio from resting on one lucky
    /// or unlucky minute.
    #[arg(
        long,
        default_value_t = 1,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=20)
    )]
    pub rounds: usize,
}

#[derive(Debug, Clone, Copy)]
struct Load {
    sessions: usize,
    rate: f64,
    batch: usize,
    warmup: Duration,
    duration: Duration,
}

#[derive(Debug, Default, Serialize)]
struct Measured {
    sessions_requested: usize,
    sessions_opened: usize,
    connect_errors: BTreeMap<String, u64>,
    seconds: f64,
    /// Messages sent in the measured window.
    sent: u64,
    /// Of those, answered with `step_detection`.
    answered: u64,
    samples_answered: u64,
    messages_per_second: Option<f64>,
    samples_per_second: Option<f64>,
    offered_messages_per_second: Option<f64>,
    latency: Summary,
    /// Error replies by `code`, and sessions that ended by how.
    errors: BTreeMap<String, u64>,
    /// Messages sent in the window and never answered.
    unanswered: u64,
    /// Sends skipped because a session had too many unanswered.
    skipped_sends: u64,
    /// From the start of the load (warm-up included) until every session
    /// is done.
    cpu: CpuUse,
}

impl Measured {
    fn error_count(&self) -> u64 {
        self.errors.values().sum::<u64>()
            + self.connect_errors.values().sum::<u64>()
            + self.unanswered
    }
}

pub async fn run(args: &RealtimeArgs) -> anyhow::Result<Report> {
    let tiny = args.common.tiny;
    let load = Load {
        sessions: args
            .sessions
            .unwrap_or(if tiny { 4 } else { 100 })
            .clamp(1, MAX_SESSIONS),
        rate: args.rate.clamp(0.0, 10_000.0),
        batch: args.batch.clamp(1, 1000),
        warmup: Duration::from_secs_f64(
            args.warmup_secs
                .unwrap_or(if tiny { 0.2 } else { 2.0 })
                .clamp(0.0, 600.0),
        ),
        duration: Duration::from_secs_f64(
            args.duration_secs
                .unwrap_or(if tiny { 1.0 } else { 10.0 })
                .clamp(0.1, 3600.0),
        ),
    };
    let rounds = args.rounds;
    let deployment = Target::deployment(&args.common)?;
    let bare = if args.common.no_baseline {
        None
    } else {
        Some(BaselineProcess::start()?)
    };
    let mut measured = Vec::with_capacity(rounds);
    let mut baseline = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        measured.push(measure(&deployment, load).await?);
        if let Some(bare) = &bare {
            baseline.push(measure(&Target::baseline(bare), load).await?);
        }
    }
    let closed_loop = load.rate == 0.0;
    let figure = |name: &str, unit: &'static str, value: fn(&Measured) -> Option<f64>| {
        Figure::new(
            name,
            unit,
            median_of(&measured, value),
            median_of(&baseline, value),
        )
    };
    let mut messages = figure("messages/s", "msg/s", |m| m.messages_per_second);
    let mut p99 = figure("reply latency p99", "ms", |m| m.latency.p99_ms);
    if closed_loop && load.batch == 1 {
        messages = messages.goal(Goal::AtLeast(20_000.0));
        p99 = p99.goal(Goal::AtMost(5.0));
    }
    let figures = vec![
        messages,
        figure("samples/s", "samples/s", |m| m.samples_per_second),
        figure("reply latency p50", "ms", |m| m.latency.p50_ms),
        p99,
        figure("reply latency p99.9", "ms", |m| m.latency.p999_ms),
        Figure::new(
            "errors",
            "messages",
            total_errors(&measured),
            total_errors(&baseline),
        )
        .goal(Goal::AtMost(0.0)),
        figure("CPU of the target", "cores", |m| m.cpu.target_cores),
        figure("server CPU per message", "µs", cpu_per_message_us).round_ratios(round_ratios(
            &measured,
            &baseline,
            cpu_per_message_us,
        )),
        figure("CPU of the bench", "cores", |m| m.cpu.bench_cores),
    ];
    Ok(Report {
        scenario: "realtime",
        config: json!({
            "sessions": load.sessions,
            "rate_per_session": load.rate,
            "mode": if closed_loop { "closed loop" } else { "open loop" },
            "batch": load.batch,
            "warmup_secs": load.warmup.as_secs_f64(),
            "duration_secs": load.duration.as_secs_f64(),
            "rounds": rounds,
            "edges": deployment.edges,
        }),
        deployment: rounds_json(&measured)?,
        baseline: (!baseline.is_empty())
            .then(|| rounds_json(&baseline))
            .transpose()?,
        before: None,
        figures,
    })
}

/// The median of `value` over the rounds that have it (the mean of the
/// middle two for an even count); `None` when none has.
fn median_of(rounds: &[Measured], value: fn(&Measured) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = rounds.iter().filter_map(value).collect();
    median(&values)
}

/// Each round's ratio of `value`, the deployment's against the bare
/// server's of the same round; none with a single round.
fn round_ratios(
    measured: &[Measured],
    baseline: &[Measured],
    value: fn(&Measured) -> Option<f64>,
) -> Vec<f64> {
    if measured.len() < 2 {
        return Vec::new();
    }
    measured
        .iter()
        .zip(baseline)
        .filter_map(|(round, bare)| Some(value(round)? / value(bare).filter(|bare| *bare > 0.0)?))
        .collect()
}

/// Every round's errors added up (one failed round is not outvoted).
fn total_errors(rounds: &[Measured]) -> Option<f64> {
    (!rounds.is_empty()).then(|| rounds.iter().map(|m| m.error_count() as f64).sum())
}

/// One round's measurements as they are; several as a list.
fn rounds_json(rounds: &[Measured]) -> serde_json::Result<serde_json::Value> {
    match rounds {
        [round] => serde_json::to_value(round),
        rounds => serde_json::to_value(rounds),
    }
}

/// The target's CPU time (every `--edge-pid` process: give them all, e.g.
/// the roles and `nats-server`) per message answered, in microseconds; its
/// ratio to the bare server's is the cost of everything but the protocol.
fn cpu_per_message_us(measured: &Measured) -> Option<f64> {
    let messages = measured.messages_per_second?;
    let cores = measured.cpu.target_cores?;
    (messages > 0.0).then(|| cores * 1e6 / messages)
}

async fn measure(target: &Target, load: Load) -> anyhow::Result<Measured> {
    let mut measured = Measured {
        sessions_requested: load.sessions,
        ..Measured::default()
    };
    let semaphore = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut connecting = Vec::with_capacity(load.sessions);
    for index in 0..load.sessions {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let url = target.ws(index, "/ws/realtime");
        connecting.push(tokio::spawn(async move {
            let mut socket = client::connect(&url)
                .await
                .map_err(|error| error.root_cause().to_string())?;
            client::next_text(&mut socket, client::REPLY_TIMEOUT)
                .await
                .map_err(|ended| format!("no session_started: {ended}"))?;
            drop(permit);
            Ok::<Socket, String>(socket)
        }));
    }
    let sockets = super::measure::opened(connecting, &mut measured.connect_errors).await;
    measured.sessions_opened = sockets.len();
    let start_us = now_us() + 100_000;
    let window = Window {
        start_us,
        measure_from_us: start_us + micros(load.warmup),
        end_us: start_us + micros(load.warmup) + micros(load.duration),
    };
    let count = sockets.len();
    tokio::time::sleep_until(instant_at(window.start_us).into()).await;
    let cpu = CpuMeter::start(&target.pids);
    let sessions: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(index, socket)| {
            let stagger = index as f64 / count as f64;
            tokio::spawn(session(socket, load, window, stagger, index))
        })
        .collect();
    let mut latencies = Vec::new();
    for session in sessions {
        let Ok(outcome) = session.await else {
            *measured.errors.entry("task failed".into()).or_default() += 1;
            continue;
        };
        measured.sent += outcome.sent;
        measured.answered += outcome.answered;
        measured.samples_answered += outcome.answered * load.batch as u64;
        measured.unanswered += outcome.unanswered;
        measured.skipped_sends += outcome.skipped;
        for (cause, count) in outcome.errors {
            *measured.errors.entry(cause).or_default() += count;
        }
        latencies.extend(outcome.latencies.into_iter().map(u64::from));
    }
    measured.cpu = cpu.stop();
    measured.seconds = load.duration.as_secs_f64();
    measured.messages_per_second = per_second(measured.answered, measured.seconds);
    measured.samples_per_second = per_second(measured.samples_answered, measured.seconds);
    measured.offered_messages_per_second =
        (load.rate > 0.0).then_some(load.rate * measured.sessions_opened as f64);
    measured.latency = Summary::of(latencies);
    Ok(measured)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// When the load starts, when measuring starts, when sending stops (bench
/// clock, microseconds).
#[derive(Debug, Clone, Copy)]
struct Window {
    start_us: u64,
    measure_from_us: u64,
    end_us: u64,
}

impl Window {
    fn measures(&self, sent_us: u64) -> bool {
        sent_us >= self.measure_from_us && sent_us < self.end_us
    }
}

#[derive(Debug, Default)]
struct Outcome {
    sent: u64,
    answered: u64,
    latencies: Vec<u32>,
    errors: BTreeMap<String, u64>,
    unanswered: u64,
    skipped: u64,
}

impl Outcome {
    fn error(&mut self, cause: impl Into<String>) {
        *self.errors.entry(cause.into()).or_default() += 1;
    }

    /// Accounts a reply to the message sent at `sent_us`.
    fn reply(&mut self, window: &Window, sent_us: u64, text: &str) {
        if !window.measures(sent_us) {
            return;
        }
        #[derive(Deserialize)]
        struct Reply {
            #[serde(rename = "type", default)]
            kind: String,
            #[serde(default)]
            code: String,
        }
        match serde_json::from_str::<Reply>(text) {
            Ok(reply) if reply.kind == "step_detection" => {
                self.answered += 1;
                let latency = now_us().saturating_sub(sent_us);
                self.latencies
                    .push(u32::try_from(latency).unwrap_or(u32::MAX));
            }
            Ok(reply) if reply.kind == "error" => self.error(format!("error {}", reply.code)),
            Ok(reply) => self.error(format!("unexpected {}", reply.kind)),
            Err(_) => self.error("reply not JSON"),
        }
    }
}

/// A synthetic accelerometer: a walking-like signal at 50 Hz.
///
/// The signal (1.8 steps a second) repeats every [`PERIOD_SAMPLES`]
/// samples, so its text is written once per session and a message only
/// copies it and writes timestamps: at 50 samples a message, formatting 200
/// numbers each time made the bench's own clients the limit on 2 cores.
struct Sensor {
    next: u64,
    /// `x`, `y`, `z` of each sample of one period, as written in JSON.
    period: Vec<[String; 3]>,
    /// The whole seconds of the last timestamp, and their text (they
    /// change every 50 samples).
    seconds: (u64, String),
}

/// Samples after which the signal repeats: 10 s at 50 Hz holds 18 steps
/// (and 9 periods of the sideways sway, at half the step rate).
const PERIOD_SAMPLES: u64 = 500;

/// First timestamp, in milliseconds.
const FIRST_TIMESTAMP_MS: u64 = 1_700_000_000_000;

impl Sensor {
    fn new(phase: f64) -> Self {
        let period = (0..PERIOD_SAMPLES)
            .map(|index| {
                motion(index, phase).map(|value| {
                    let mut written = String::new();
                    thousandths(&mut written, value);
                    written
                })
            })
            .collect();
        Self {
            next: 0,
            period,
            seconds: (0, "0".to_owned()),
        }
    }

    /// Appends the next sample's timestamp (seconds, three decimals) and
    /// returns its `x`, `y`, `z`.
    fn next_sample(&mut self, out: &mut String) -> &[String; 3] {
        let index = self.next;
        self.next += 1;
        let ms = FIRST_TIMESTAMP_MS + index * (SAMPLE_PERIOD * 1000.0) as u64;
        if self.seconds.0 != ms / 1000 {
            self.seconds = (ms / 1000, (ms / 1000).to_string());
        }
        out.push_str(&self.seconds.1);
        out.push('.');
        for digit in [ms / 100 % 10, ms / 10 % 10, ms % 10] {
            out.push(char::from(b'0' + digit as u8));
        }
        &self.period[(index % PERIOD_SAMPLES) as usize]
    }

    fn message(&mut self, batch: usize) -> String {
        let mut message = String::with_capacity(16 + batch * 48);
        if batch == 1 {
            message.push_str(r#"{"timestamp":"#);
            let motion = self.next_sample(&mut message);
            for (key, value) in [r#","x":"#, r#","y":"#, r#","z":"#].iter().zip(motion) {
                message.push_str(key);
                message.push_str(value);
            }
            message.push('}');
            return message;
        }
        message.push_str(r#"{"samples":["#);
        for index in 0..batch {
            message.push_str(if index > 0 { ",[" } else { "[" });
            for value in self.next_sample(&mut message) {
                message.push(',');
                message.push_str(value);
            }
            message.push(']');
        }
        message.push_str("]}");
        message
    }
}

/// Sample `index`'s `x`, `y`, `z` (m/s²) for a walker at `phase`.
fn motion(index: u64, phase: f64) -> [f64; 3] {
    let step = std::f64::consts::TAU * 1.8 * ((index + 1) as f64 * SAMPLE_PERIOD) + phase;
    [
        0.4 * (step / 2.0).sin(),
        9.81 + 2.5 * step.sin(),
        0.6 * step.cos(),
    ]
}

/// Writes `value` to the nearest thousandth, with three decimals (as
/// `{value:.3}` would).
fn thousandths(out: &mut String, value: f64) {
    let scaled = (value * 1000.0).round() as i64;
    let sign = if scaled < 0 { "-" } else { "" };
    let magnitude = scaled.unsigned_abs();
    let _ = write!(out, "{sign}{}.{:03}", magnitude / 1000, magnitude % 1000);
}

async fn session(
    mut socket: Socket,
    load: Load,
    window: Window,
    stagger: f64,
    index: usize,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut sensor = Sensor::new(index as f64 * 0.37);
    tokio::time::sleep_until(instant_at(window.start_us).into()).await;
    if load.rate == 0.0 {
        closed_loop(&mut socket, &mut sensor, load, window, &mut outcome).await;
    } else {
        let first_us = window.start_us + (stagger * 1e6 / load.rate) as u64;
        open_loop(
            &mut socket,
            &mut sensor,
            load,
            window,
            first_us,
            &mut outcome,
        )
        .await;
    }
    client::close(socket).await;
    outcome
}

async fn closed_loop(
    socket: &mut Socket,
    sensor: &mut Sensor,
    load: Load,
    window: Window,
    outcome: &mut Outcome,
) {
    while now_us() < window.end_us {
        let message = sensor.message(load.batch);
        let sent_us = now_us();
        if let Err(ended) = client::send_text(socket, message).await {
            outcome.error(format!("send failed: {ended}"));
            return;
        }
        if window.measures(sent_us) {
            outcome.sent += 1;
        }
        match client::next_text(socket, client::REPLY_TIMEOUT).await {
            Ok(text) => outcome.reply(&window, sent_us, text.as_str()),
            Err(ended) => {
                if window.measures(sent_us) {
                    outcome.unanswered += 1;
                }
                outcome.error(format!("session ended: {ended}"));
                return;
            }
        }
    }
}

async fn open_loop(
    socket: &mut Socket,
    sensor: &mut Sensor,
    load: Load,
    window: Window,
    first_us: u64,
    outcome: &mut Outcome,
) {
    let period_us = 1e6 / load.rate;
    let mut sends: u64 = 0;
    let mut outstanding: VecDeque<u64> = VecDeque::new();
    let mut ended: Option<Ended> = None;
    loop {
        let due_us = first_us + (sends as f64 * period_us) as u64;
        if due_us >= window.end_us {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until(instant_at(due_us).into()) => {
                sends += 1;
                if outstanding.len() >= MAX_OUTSTANDING {
                    outcome.skipped += 1;
                    continue;
                }
                let sent_us = now_us();
                if let Err(failed) = client::send_text(socket, sensor.message(load.batch)).await {
                    ended = Some(failed);
                    break;
                }
                if window.measures(sent_us) {
                    outcome.sent += 1;
                }
                outstanding.push_back(sent_us);
            }
            message = socket.next() => match client::text_of(message) {
                Ok(Some(text)) => match outstanding.pop_front() {
                    Some(sent_us) => outcome.reply(&window, sent_us, text.as_str()),
                    None => outcome.error("reply to nothing"),
                },
                Ok(None) => {}
                Err(closed) => {
                    ended = Some(closed);
                    break;
                }
            },
        }
    }
    let drain_until = tokio::time::Instant::now() + DRAIN;
    while ended.is_none() && !outstanding.is_empty() {
        let left = drain_until.saturating_duration_since(tokio::time::Instant::now());
        match client::next_text(socket, left).await {
            Ok(text) => {
                let sent_us = outstanding.pop_front().unwrap_or_default();
                outcome.reply(&window, sent_us, text.as_str());
            }
            Err(stopped) => ended = Some(stopped),
        }
    }
    outcome.unanswered += outstanding
        .iter()
        .filter(|sent_us| window.measures(**sent_us))
        .count() as u64;
    if let Some(ended) = ended {
        outcome.error(format!("session ended: {ended}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousandths_are_the_value_to_three_decimals() {
        for value in [
            0.0,
            -0.0004,
            -0.0006,
            0.5,
            -2.5,
            9.81,
            -12.3456,
            1_700_000_000.02,
        ] {
            let mut written = String::new();
            thousandths(&mut written, value);
            let (_, decimals) = written.split_once('.').expect("a decimal point");
            assert_eq!(decimals.len(), 3, "{written}");
            let read: f64 = written.parse().expect("a number");
            assert!(
                (read - value).abs() <= 0.0005 + 1e-9,
                "{value} written as {written}"
            );
        }
    }

    #[test]
    fn figures_are_the_median_of_their_rounds() {
        let round = |per_second: Option<f64>, unanswered: u64| Measured {
            messages_per_second: per_second,
            unanswered,
            ..Measured::default()
        };
        let rate = |m: &Measured| m.messages_per_second;
        let rounds = [
            round(Some(9.0), 0),
            round(Some(1.0), 2),
            round(Some(5.0), 0),
        ];
        assert_eq!(median_of(&rounds, rate), Some(5.0));
        assert_eq!(
            median_of(&rounds[..2], rate),
            Some(5.0),
            "the middle two's mean"
        );
        assert_eq!(
            median_of(&[round(None, 0), round(Some(3.0), 0)], rate),
            Some(3.0)
        );
        assert_eq!(median_of(&[], rate), None);
        let bare = [
            round(Some(3.0), 0),
            round(Some(2.0), 0),
            round(Some(0.0), 0),
        ];
        assert_eq!(
            round_ratios(&rounds, &bare, rate),
            vec![3.0, 0.5],
            "each round against its own bare round; none against zero"
        );
        assert!(round_ratios(&rounds[..1], &bare, rate).is_empty());
        assert_eq!(total_errors(&rounds), Some(2.0), "errors add up");
        assert_eq!(total_errors(&[]), None);
        assert!(rounds_json(&rounds[..1]).unwrap().is_object());
        assert_eq!(
            rounds_json(&rounds).unwrap().as_array().map(Vec::len),
            Some(3)
        );
    }

    #[test]
    fn the_signal_repeats_after_its_period() {
        let written = |values: [f64; 3]| {
            values.map(|value| {
                let mut text = String::new();
                thousandths(&mut text, value);
                text
            })
        };
        for index in 0..PERIOD_SAMPLES {
            assert_eq!(
                written(motion(index, 0.37)),
                written(motion(index + 7 * PERIOD_SAMPLES, 0.37)),
                "sample {index}"
            );
        }
    }

    #[test]
    fn messages_are_the_json_the_edge_reads() {
        let mut sensor = Sensor::new(0.3);
        let single: serde_json::Value =
            serde_json::from_str(&sensor.message(1)).expect("single sample JSON");
        for key in ["x", "y", "z", "timestamp"] {
            assert!(single[key].is_f64(), "{key} in {single}");
        }
        let batch: serde_json::Value =
            serde_json::from_str(&sensor.message(50)).expect("batch JSON");
        let samples = batch["samples"].as_array().expect("samples");
        assert_eq!(samples.len(), 50);
        let first = samples[0].as_array().expect("a sample");
        assert_eq!(first.len(), 4);
        assert_eq!(single["timestamp"].as_f64(), Some(1_700_000_000.0));
        assert_eq!(
            first[0].as_f64(),
            Some(1_700_000_000.02),
            "the second sample's time"
        );
        // Timestamps advance by the sample period.
        let t0 = first[0].as_f64().unwrap();
        let t1 = samples[1][0].as_f64().unwrap();
        assert!((t1 - t0 - SAMPLE_PERIOD).abs() < 1e-3, "{t0} then {t1}");
    }
}
