//! Clocks, latency percentiles and resident memory.
//!
//! Every timestamp the bench puts in a message is microseconds on one
//! monotonic clock shared by the publisher and the clients (they live in
//! the same process), so a latency is a subtraction with no clock skew.
//! Latencies are collected as plain microsecond values by each client task
//! and summarised once at the end with an HDR histogram (3 significant
//! digits), so recording costs nothing while the load runs.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Microseconds since the bench's clock started.
pub fn now_us() -> u64 {
    u64::try_from(origin().elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The instant `micros` on the bench's clock stands for.
pub fn instant_at(micros: u64) -> Instant {
    origin() + Duration::from_micros(micros)
}

/// An id that no earlier run's messages carry, so messages left over from
/// another run (or another bench) are never counted.
pub fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Summary {
    /// Summarises latencies given in microseconds.
    pub fn of(micros: impl IntoIterator<Item = u64>) -> Self {
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        for value in micros {
            histogram.saturating_record(value.max(1));
        }
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| Some(micros as f64 / 1000.0);
        Self {
            count: histogram.len(),
            mean_ms: Some(histogram.mean() / 1000.0),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Resident memory of `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident memory of several processes added up; `None` when no pid was
/// given or one cannot be read.
pub fn total_rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| rss_kib(*pid)).sum()
}

/// Events per second over `seconds`, `None` for an empty window.
pub fn per_second(events: u64, seconds: f64) -> Option<f64> {
    (seconds > 0.0).then(|| events as f64 / seconds)
}
