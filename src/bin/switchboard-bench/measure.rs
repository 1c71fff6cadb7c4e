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

/// CPU time (user and system) `pid` has used, in seconds, from
/// `/proc/<pid>/stat`.
#[allow(
    unsafe_code,
    reason = "std has no safe sysconf; the clock tick rate is needed to read /proc/<pid>/stat"
)]
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}

fn total_cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| cpu_seconds(*pid)).sum()
}

/// CPU used while a load ran, in cores (CPU seconds per second): by the
/// target's processes (when their pids are known) and by the bench itself,
/// which shares the machine with them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUse {
    pub seconds: f64,
    pub target_cores: Option<f64>,
    pub bench_cores: Option<f64>,
}

/// Measures [`CpuUse`] from [`CpuMeter::start`] to [`CpuMeter::stop`].
pub struct CpuMeter {
    pids: Vec<u32>,
    started: Instant,
    target: Option<f64>,
    bench: Option<f64>,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            started: Instant::now(),
            target: total_cpu_seconds(pids),
            bench: cpu_seconds(std::process::id()),
        }
    }

    pub fn stop(self) -> CpuUse {
        let seconds = self.started.elapsed().as_secs_f64();
        let cores = |before: Option<f64>, after: Option<f64>| match (before, after) {
            (Some(before), Some(after)) if seconds > 0.0 => Some((after - before) / seconds),
            _ => None,
        };
        CpuUse {
            seconds,
            target_cores: cores(self.target, total_cpu_seconds(&self.pids)),
            bench_cores: cores(self.bench, cpu_seconds(std::process::id())),
        }
    }
}

/// Events per second over `seconds`, `None` for an empty window.
pub fn per_second(events: u64, seconds: f64) -> Option<f64> {
    (seconds > 0.0).then(|| events as f64 / seconds)
}

/// Awaits the connection tasks, keeping the connections that opened and
/// counting why the others did not.
pub async fn opened<T>(
    connecting: Vec<tokio::task::JoinHandle<Result<T, String>>>,
    errors: &mut std::collections::BTreeMap<String, u64>,
) -> Vec<T> {
    let mut opened = Vec::with_capacity(connecting.len());
    for connection in connecting {
        match connection.await {
            Ok(Ok(connection)) => opened.push(connection),
            Ok(Err(cause)) => *errors.entry(cause).or_default() += 1,
            Err(_) => *errors.entry("task failed".into()).or_default() += 1,
        }
    }
    opened
}
