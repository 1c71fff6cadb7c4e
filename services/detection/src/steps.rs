//! Real-time step detection from phone accelerometer samples.
//!
//! This is a streaming implementation of the windowed peak detection step
//! counter of the Oxford Step Counter project:
//!
//! > D. Salvi, C. Velardo, J. Brynes, L. Tarassenko, "An optimised algorithm
//! > for accurate steps counting from smart-phone accelerometry", 40th Annual
//! > International Conference of the IEEE Engineering in Medicine and Biology
//! > Society (EMBC), 2018.
//!
//! The paper's pipeline is kept stage for stage; its batch statistics are
//! replaced by bounded running ones, and the smoothing and window lengths were
//! re-tuned on the project's recorded walks (see "Parameters").
//!
//! # Stages
//!
//! 1. **Magnitude.** `sqrt(x² + y² + z²)` in m/s² with gravity. The phone can be
//!    held in any orientation (hand, pocket, bag, armband), and the norm makes
//!    the signal independent of it; gravity only adds a constant offset that
//!    the scoring stage cancels.
//! 2. **Resampling.** Clients send 20 to 100 Hz with jittery timestamps. The
//!    magnitude is linearly interpolated onto a uniform grid
//!    ([`DetectorConfig::sample_rate_hz`]) so every later window has a fixed
//!    duration. Samples whose time is not after the previous one (duplicates,
//!    out-of-order) are dropped. A gap longer than
//!    [`DetectorConfig::max_gap_s`] is not interpolated across: it is treated
//!    as a pause (as [`StepDetector::flush`]) and the grid restarts at the new
//!    sample.
//! 3. **Smoothing.** A normalised Gaussian FIR kernel (the paper's filter
//!    family) removes sensor noise and the harmonics of the foot impact. The
//!    kernel is wider than the paper's (σ = 0.1 s, a low pass of about 2 Hz)
//!    so that each step leaves a single hump: with the phone in a pocket or
//!    bag the impact shows two or more sub-peaks per step, and a narrow kernel
//!    counts them as extra steps.
//! 4. **Scoring.** The mean difference between the centre sample of a window
//!    and every other sample in it, `Σ (c - v_i) / (W - 1)`. It is large only
//!    where the centre stands above its surroundings on both sides, i.e. at a
//!    peak, and is insensitive to the gravity offset and slow drift.
//! 5. **Adaptive threshold.** A score is a candidate when it exceeds
//!    `mean + k · std` of recent scores, so the detector adapts to gentle and
//!    vigorous walkers and to phone positions with very different amplitudes.
//!    The mean and variance are exponential moving statistics (cumulative
//!    until about one time constant of data has been seen, then exponential),
//!    so they never grow with session length and forget an old walking style.
//!    An absolute floor ([`DetectorConfig::min_score`]) keeps the detector
//!    silent when the phone lies still and the statistics collapse to noise.
//! 6. **Peak selection.** Candidates closer than
//!    [`DetectorConfig::min_step_interval_s`] to the pending peak compete and
//!    only the highest survives; the pending peak becomes a step once the
//!    score stream has moved that interval past it. Steps are thus at least
//!    that far apart, which removes the double peaks of one foot strike.
//!
//! # Parameters
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `sample_rate_hz` | 100 | resampling grid |
//! | `smoothing_window_s` | 0.4 | span of the Gaussian kernel (41 taps at 100 Hz) |
//! | `smoothing_sigma_s` | 0.1 | kernel standard deviation |
//! | `score_window_s` | 0.55 | span of the mean-difference score (55 samples) |
//! | `threshold_k` | 0.7 | standard deviations above the running mean |
//! | `stats_time_constant_s` | 10 | memory of the running mean and variance |
//! | `warmup_s` | 0.5 | scores seen before any peak may count |
//! | `min_score` | 0.5 | absolute threshold floor, m/s² of score |
//! | `min_step_interval_s` | 0.3 | shortest time between two steps |
//! | `max_gap_s` | 1.0 | longer input gaps are a pause |
//!
//! The defaults were chosen by a grid search on the Oxford validation walks
//! (12 walks, 2 users, 6 phone positions) fed at about 20, 50 and 100 Hz,
//! taking the middle of the broad region where all three rates reach about
//! 99 % mean accuracy, not the single best point.
//!
//! # Latency and pauses
//!
//! A step is reported [`StepDetector::latency_s`] after its peak at the latest
//! (0.47 s of filter and window delay plus the 0.3 s step interval with the
//! defaults), and only while samples keep arriving. When the stream pauses or
//! ends, call [`StepDetector::flush`] to confirm the step still in the window.
//!
//! # Memory
//!
//! All buffers are allocated in [`StepDetector::new`] and never grow: at most
//! 101 kernel taps and 101 + 201 window samples, each window sample held
//! twice so a window is one slice (under 6 KiB) for any configuration, 233
//! values (about 1.8 KiB) with the defaults.
//!
//! # Tests
//!
//! The unit tests include an accuracy check on the Oxford validation walks,
//! read from `$CARGO_MANIFEST_DIR/../../tests/data/oxford-steps/validation`
//! or from the directory named by the `OXFORD_STEPS_DIR` environment variable.

use crate::limits::MAX_MAGNITUDE;

/// Lowest accepted resampling rate; below it a step peak spans too few samples.
const MIN_RATE_HZ: f64 = 10.0;
/// Highest accepted resampling rate; keeps the windows (and so memory) small.
const MAX_RATE_HZ: f64 = 200.0;
/// Largest smoothing kernel, in samples.
const MAX_SMOOTHING_TAPS: usize = 101;
/// Largest scoring window, in samples.
const MAX_SCORE_WINDOW: usize = 201;

/// Tuning knobs of [`StepDetector`]. Times are in seconds, independent of the
/// input rate, so one configuration serves 20 Hz and 100 Hz clients alike.
/// Out-of-range or non-finite values are clamped or replaced by the default
/// when the detector is built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorConfig {
    /// Rate of the uniform grid the input is resampled onto, so windows have a
    /// fixed duration whatever the client sends. Default 100 Hz (10..=200).
    pub sample_rate_hz: f64,
    /// Span of the Gaussian smoothing kernel; about ±2 σ keeps the truncation
    /// error small. Default 0.4 s (41 taps at 100 Hz), at most 0.5 s.
    pub smoothing_window_s: f64,
    /// Standard deviation of the smoothing kernel: wide enough to merge the
    /// sub-peaks of one foot strike into one hump (a low pass of about 2 Hz),
    /// narrow enough to keep the step rhythm. Default 0.1 s.
    pub smoothing_sigma_s: f64,
    /// Span of the mean-difference peak score: about one step period, so a
    /// peak is compared with the troughs on both sides. Default 0.55 s, at most 1 s.
    pub score_window_s: f64,
    /// Standard deviations above the running mean a score must reach to be a
    /// step candidate. Default 0.7.
    pub threshold_k: f64,
    /// Time constant of the exponential running mean and variance of the
    /// score: long enough to span many steps, short enough to follow a change
    /// of pace or phone position. Default 10 s.
    pub stats_time_constant_s: f64,
    /// Scores that must be seen after a reset before any peak may count, so the
    /// statistics are meaningful. Default 0.5 s.
    pub warmup_s: f64,
    /// Absolute floor on the threshold, in m/s^2 of score: a phone lying still
    /// has near-zero score variance, and without a floor its noise would pass
    /// `mean + k * std`. Walking peaks score about 1.2 to 3. Default 0.5.
    pub min_score: f64,
    /// Shortest time between two steps; a higher peak within this interval
    /// replaces the pending one. Human cadence stays below about 3.3 steps/s.
    /// Default 0.3 s.
    pub min_step_interval_s: f64,
    /// Input gaps longer than this are a pause: the pending step is confirmed
    /// and the resampler restarts instead of interpolating across. Default 1 s.
    pub max_gap_s: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            sample_rate_hz: 100.0,
            smoothing_window_s: 0.4,
            smoothing_sigma_s: 0.1,
            score_window_s: 0.55,
            threshold_k: 0.7,
            stats_time_constant_s: 10.0,
            warmup_s: 0.5,
            min_score: 0.5,
            min_step_interval_s: 0.3,
            max_gap_s: 1.0,
        }
    }
}

impl DetectorConfig {
    /// Replaces non-finite or out-of-range values so the detector can never be
    /// built with unbounded windows or a degenerate threshold.
    fn sanitized(self) -> Self {
        let d = Self::default();
        let pick = crate::limits::finite_within;
        Self {
            sample_rate_hz: pick(
                self.sample_rate_hz,
                d.sample_rate_hz,
                MIN_RATE_HZ,
                MAX_RATE_HZ,
            ),
            smoothing_window_s: pick(self.smoothing_window_s, d.smoothing_window_s, 0.0, 0.5),
            smoothing_sigma_s: pick(self.smoothing_sigma_s, d.smoothing_sigma_s, 0.001, 0.5),
            score_window_s: pick(self.score_window_s, d.score_window_s, 0.0, 1.0),
            threshold_k: pick(self.threshold_k, d.threshold_k, 0.0, 10.0),
            stats_time_constant_s: pick(
                self.stats_time_constant_s,
                d.stats_time_constant_s,
                0.5,
                600.0,
            ),
            warmup_s: pick(self.warmup_s, d.warmup_s, 0.0, 60.0),
            min_score: pick(self.min_score, d.min_score, 0.0, 100.0),
            min_step_interval_s: pick(self.min_step_interval_s, d.min_step_interval_s, 0.05, 2.0),
            max_gap_s: pick(self.max_gap_s, d.max_gap_s, 0.05, 60.0),
        }
    }
}

/// What the detector saw for the latest input, for the client's `prediction` object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Magnitude of the latest accepted sample, m/s^2 with gravity.
    pub magnitude: f64,
    /// Latest peak score (lags the input by the filter delay).
    pub score: f64,
    /// Threshold the score is compared with at the same instant.
    pub threshold: f64,
    /// 0..1: fraction of the confirmed step's peak score that lay above its
    /// threshold, for a step confirmed by this call; 0 when none was.
    pub confidence: f64,
}

/// Result of one [`StepDetector::push`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PushOutcome {
    /// Steps confirmed by this sample (usually 0 or 1; more only after a pause).
    pub steps: u32,
    /// Detector state after this sample.
    pub observation: Observation,
}

/// Fixed-capacity ring of the newest samples; never grows after construction.
///
/// Every sample is stored twice, at its slot and one capacity further, so
/// the samples held are always one contiguous slice, oldest first: the
/// smoothing and the score read their whole window for every input, and
/// with a slice that is a vectorised loop instead of an index computation
/// (a `%`) per read.
#[derive(Debug, Clone)]
struct Ring {
    /// Twice the capacity: `buf[i]` and `buf[i + capacity]` are equal.
    buf: Vec<f64>,
    capacity: usize,
    head: usize,
    len: usize,
}

impl Ring {
    fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0.0; 2 * capacity],
            capacity,
            head: 0,
            len: 0,
        }
    }

    fn push(&mut self, v: f64) {
        // `head < capacity` and `len <= capacity`: one subtraction wraps,
        // where a `%` divides.
        let wrap = |index: usize| {
            if index >= self.capacity {
                index - self.capacity
            } else {
                index
            }
        };
        let slot = if self.len < self.capacity {
            self.len += 1;
            wrap(self.head + self.len - 1)
        } else {
            let slot = self.head;
            self.head = wrap(self.head + 1);
            slot
        };
        self.buf[slot] = v;
        self.buf[slot + self.capacity] = v;
    }

    /// The samples held, oldest first.
    fn as_slice(&self) -> &[f64] {
        &self.buf[self.head..self.head + self.len]
    }

    fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// Four running sums side by side: independent additions the compiler
/// runs as one vector, where one running sum waits on each addition.
const LANES: usize = 4;

/// `Σ a[i] · b[i]` over the shorter of the two.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut sums = [0.0; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            sums[lane] += x[lane] * y[lane];
        }
    }
    (sums[0] + sums[1]) + (sums[2] + sums[3]) + tail
}

/// `Σ a[i]`, as [`dot`] adds.
fn sum(a: &[f64]) -> f64 {
    let mut sums = [0.0; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().sum();
    for x in chunks {
        for lane in 0..LANES {
            sums[lane] += x[lane];
        }
    }
    (sums[0] + sums[1]) + (sums[2] + sums[3]) + tail
}

/// Running mean/variance: cumulative while fewer than `1/alpha` values were
/// seen, exponential afterwards, so it starts fast and never stops adapting.
#[derive(Debug, Clone, Copy, Default)]
struct RunningStats {
    mean: f64,
    var: f64,
    n: u32,
    /// Whether `1/n` fell to `alpha` (it only falls): from then on the
    /// weight is `alpha`, and the division that found it is not repeated
    /// (the threshold, read after every update, waited on its latency).
    exponential: bool,
}

impl RunningStats {
    fn update(&mut self, x: f64, alpha: f64) {
        self.n = self.n.saturating_add(1);
        let a = if self.exponential {
            alpha
        } else {
            let cumulative = 1.0 / f64::from(self.n);
            self.exponential = cumulative <= alpha;
            cumulative.max(alpha)
        };
        let d = x - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
    }
}

/// One continuous stretch of input on which the resampling grid is anchored.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Absolute time of the segment's first sample; all other times are relative to it.
    origin: f64,
    last_rel: f64,
    last_mag: f64,
    /// Index of the next grid point to emit.
    next_k: u64,
}

/// The best peak seen since the last confirmed step, not yet confirmed.
#[derive(Debug, Clone, Copy)]
struct Pending {
    t: f64,
    score: f64,
    threshold: f64,
}

/// Steps and confidence gathered while processing one call.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    steps: u32,
    confidence: f64,
}

impl Tally {
    fn confirm(&mut self, p: Pending) {
        self.steps += 1;
        self.confidence = if p.score > 0.0 {
            ((p.score - p.threshold) / p.score).clamp(0.0, 1.0)
        } else {
            0.0
        };
    }
}

/// Streaming step detector. Memory is fixed at construction (two small rings
/// and a kernel, at most a few KiB), so it can run for an unbounded session.
#[derive(Debug, Clone)]
pub struct StepDetector {
    config: DetectorConfig,
    dt: f64,
    kernel: Vec<f64>,
    /// Resampled magnitudes under the smoothing kernel.
    fir_window: Ring,
    /// Smoothed magnitudes under the scoring window.
    score_window: Ring,
    stats_alpha: f64,
    warmup_n: u32,
    segment: Option<Segment>,
    last_value: f64,
    fed: u64,
    stats: RunningStats,
    pending: Option<Pending>,
    observation: Observation,
}

fn odd_samples(span_s: f64, rate: f64, max: usize) -> usize {
    let n = (span_s * rate).round().max(1.0) as usize;
    (n | 1).min(max)
}

fn gaussian_kernel(taps: usize, sigma_samples: f64) -> Vec<f64> {
    let half = (taps - 1) as f64 / 2.0;
    let w: Vec<f64> = (0..taps)
        .map(|i| {
            let u = (i as f64 - half) / sigma_samples;
            (-0.5 * u * u).exp()
        })
        .collect();
    let sum: f64 = w.iter().sum();
    w.into_iter().map(|v| v / sum).collect()
}

impl StepDetector {
    /// Builds a detector; out-of-range config values are clamped to safe limits.
    #[must_use]
    pub fn new(config: DetectorConfig) -> Self {
        let config = config.sanitized();
        let rate = config.sample_rate_hz;
        let taps = odd_samples(config.smoothing_window_s, rate, MAX_SMOOTHING_TAPS);
        let score_len = odd_samples(config.score_window_s, rate, MAX_SCORE_WINDOW).max(3);
        Self {
            config,
            dt: 1.0 / rate,
            kernel: gaussian_kernel(taps, config.smoothing_sigma_s * rate),
            fir_window: Ring::new(taps),
            score_window: Ring::new(score_len),
            stats_alpha: 1.0 / (config.stats_time_constant_s * rate),
            warmup_n: (config.warmup_s * rate).round() as u32,
            segment: None,
            last_value: 0.0,
            fed: 0,
            stats: RunningStats::default(),
            pending: None,
            observation: Observation {
                magnitude: 0.0,
                score: 0.0,
                threshold: 0.0,
                confidence: 0.0,
            },
        }
    }

    /// The configuration in use, after clamping.
    #[must_use]
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Time from a peak in the input to the latest moment its step is confirmed
    /// while samples keep flowing: filter and score delays plus the step interval.
    #[must_use]
    pub fn latency_s(&self) -> f64 {
        self.pipeline_delay() as f64 * self.dt + self.config.min_step_interval_s
    }

    /// t in seconds (any origin, f64), x/y/z in m/s^2.
    ///
    /// Samples with non-finite values or a time not after the previous one are
    /// ignored; a forward gap longer than `max_gap_s` (or a backward jump of
    /// that size, i.e. a clock restart) acts as [`flush`](Self::flush) and
    /// starts afresh at the new time.
    pub fn push(&mut self, t: f64, x: f64, y: f64, z: f64) -> PushOutcome {
        let mag = (x * x + y * y + z * z).sqrt();
        if !t.is_finite() || !mag.is_finite() || mag > MAX_MAGNITUDE {
            return PushOutcome {
                steps: 0,
                observation: Observation {
                    confidence: 0.0,
                    ..self.observation
                },
            };
        }
        let mut tally = Tally::default();
        match self.segment {
            None => self.start_segment(t, mag, &mut tally),
            Some(seg) => {
                let rel = t - seg.origin;
                if rel - seg.last_rel > self.config.max_gap_s
                    || seg.last_rel - rel > self.config.max_gap_s
                {
                    self.drain(&mut tally);
                    self.start_segment(t, mag, &mut tally);
                } else if rel > seg.last_rel {
                    self.resample_to(seg, rel, mag, &mut tally);
                }
            }
        }
        self.observation.magnitude = mag;
        self.observation.confidence = if tally.steps > 0 {
            tally.confidence
        } else {
            0.0
        };
        PushOutcome {
            steps: tally.steps,
            observation: self.observation,
        }
    }

    /// Called when the stream pauses or stops: confirms a step still pending in the window so the last step before a pause is not lost. Returns steps confirmed.
    ///
    /// The samples still inside the filter windows are scored by holding the
    /// last value, the pending peak is confirmed, and the resampler restarts on
    /// the next push. The adaptive threshold's statistics are kept.
    pub fn flush(&mut self) -> u32 {
        let mut tally = Tally::default();
        self.drain(&mut tally);
        tally.steps
    }

    /// Forget everything, as new.
    pub fn reset(&mut self) {
        *self = Self::new(self.config);
    }

    /// Samples currently held in the window (for the client's `buffer_size`).
    #[must_use]
    pub fn buffer_len(&self) -> usize {
        self.fir_window.len + self.score_window.len
    }

    fn pipeline_delay(&self) -> usize {
        (self.fir_window.capacity - 1) / 2 + (self.score_window.capacity - 1) / 2
    }

    fn start_segment(&mut self, t: f64, mag: f64, tally: &mut Tally) {
        self.segment = Some(Segment {
            origin: t,
            last_rel: 0.0,
            last_mag: mag,
            next_k: 1,
        });
        self.process(mag, true, tally);
    }

    /// Emits the grid points in `(seg.last_rel, rel]` by linear interpolation.
    fn resample_to(&mut self, mut seg: Segment, rel: f64, mag: f64, tally: &mut Tally) {
        let span = rel - seg.last_rel;
        loop {
            let tk = seg.next_k as f64 * self.dt;
            if tk > rel {
                break;
            }
            let v = seg.last_mag + (mag - seg.last_mag) * ((tk - seg.last_rel) / span);
            self.process(v, true, tally);
            seg.next_k += 1;
        }
        seg.last_rel = rel;
        seg.last_mag = mag;
        self.segment = Some(seg);
    }

    /// Pushes the held samples through the windows, confirms the pending peak
    /// and clears the per-segment state.
    fn drain(&mut self, tally: &mut Tally) {
        if self.fed > 0 {
            for _ in 0..self.pipeline_delay() {
                self.process(self.last_value, false, tally);
            }
        }
        if let Some(p) = self.pending.take() {
            tally.confirm(p);
        }
        self.segment = None;
        self.fir_window.clear();
        self.score_window.clear();
        self.fed = 0;
    }

    /// Runs one uniformly sampled magnitude through smoothing, scoring,
    /// thresholding and peak selection.
    fn process(&mut self, value: f64, real: bool, tally: &mut Tally) {
        self.last_value = value;
        self.fed += 1;
        self.fir_window.push(value);
        if !self.fir_window.is_full() {
            return;
        }
        let smoothed = dot(&self.kernel, self.fir_window.as_slice());
        self.score_window.push(smoothed);
        if !self.score_window.is_full() {
            return;
        }
        let window = self.score_window.as_slice();
        let w = window.len();
        let centre = window[w / 2];
        let score = (w as f64 * centre - sum(window)) / (w - 1) as f64;
        let t = (self.fed - 1 - self.pipeline_delay() as u64) as f64 * self.dt;

        if real {
            self.stats.update(score, self.stats_alpha);
        }
        let threshold = (self.stats.mean + self.config.threshold_k * self.stats.var.sqrt())
            .max(self.config.min_score);
        self.observation.score = score;
        self.observation.threshold = threshold;

        let interval = self.config.min_step_interval_s;
        if let Some(p) = self.pending.filter(|p| t - p.t >= interval) {
            tally.confirm(p);
            self.pending = None;
        }
        if self.stats.n >= self.warmup_n && score > threshold {
            match self.pending {
                Some(p) if p.score >= score => {}
                _ => {
                    self.pending = Some(Pending {
                        t,
                        score,
                        threshold,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Synthetic signal tests plus an accuracy check on the Oxford validation
    //! walks. The walks are read from the directory in the `OXFORD_STEPS_DIR`
    //! environment variable if set, else from
    //! `$CARGO_MANIFEST_DIR/../../tests/data/oxford-steps/validation`.

    use super::*;
    use std::f64::consts::PI;
    use std::path::PathBuf;

    const G: f64 = 9.81;

    #[test]
    fn a_ring_holds_its_newest_samples_oldest_first() {
        let mut ring = Ring::new(4);
        for value in 0..11_u32 {
            ring.push(f64::from(value));
            let held: Vec<f64> = (value.saturating_sub(3)..=value).map(f64::from).collect();
            assert_eq!(ring.as_slice(), held.as_slice(), "after pushing {value}");
        }
        ring.clear();
        ring.push(7.0);
        assert_eq!(ring.as_slice(), [7.0]);
    }

    #[test]
    fn the_lane_sums_add_what_one_running_sum_adds() {
        let values: Vec<f64> = (0..55).map(|i| f64::from(i) * 0.25 - 3.0).collect();
        let weights: Vec<f64> = (0..41).map(|i| 1.0 / f64::from(i + 1)).collect();
        let plain_sum: f64 = values.iter().sum();
        assert!((sum(&values) - plain_sum).abs() < 1e-9);
        let plain_dot: f64 = weights.iter().zip(&values).map(|(w, v)| w * v).sum();
        assert!((dot(&weights, &values) - plain_dot).abs() < 1e-9);
        assert_eq!(sum(&[]), 0.0);
        assert_eq!(dot(&[2.0, 3.0], &[5.0]), 10.0);
    }

    /// Small deterministic generator (xorshift64*) so the tests need no crates.
    struct Rng(u64);

    impl Rng {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }

        fn sym(&mut self) -> f64 {
            2.0 * self.unit() - 1.0
        }
    }

    /// A walk: `lead` s standing, `walk` s walking with a cadence that wanders
    /// between 1.6 and 2.0 steps/s, `tail` s standing. One step per gait cycle
    /// of the magnitude, with a second harmonic and left/right asymmetry as in
    /// real recordings.
    struct Gait {
        lead: f64,
        walk: f64,
        tail: f64,
    }

    impl Gait {
        const F0: f64 = 1.8;
        const DF: f64 = 0.2;
        const PERIOD: f64 = 40.0;

        fn duration(&self) -> f64 {
            self.lead + self.walk + self.tail
        }

        /// Gait phase in cycles since walking started.
        fn cycles(&self, t: f64) -> f64 {
            let u = (t - self.lead).clamp(0.0, self.walk);
            let w = 2.0 * PI / Self::PERIOD;
            Self::F0 * u + Self::DF * (1.0 - (w * u).cos()) / w
        }

        /// Gait cycles whose magnitude peak falls inside the recording.
        fn steps(&self) -> u32 {
            let peak_phase = (0..1000)
                .map(|i| f64::from(i) / 1000.0)
                .max_by(|a, b| Self::shape(2.0 * PI * a).total_cmp(&Self::shape(2.0 * PI * b)))
                .unwrap_or(0.0);
            let total = self.cycles(self.duration());
            if total < peak_phase {
                0
            } else {
                (total - peak_phase).floor() as u32 + 1
            }
        }

        /// Vertical acceleration over one gait cycle, without the slower
        /// left/right asymmetry term.
        fn shape(phi: f64) -> f64 {
            2.5 * phi.sin() + 0.8 * (2.0 * phi + 0.7).sin()
        }

        /// Accelerometer vector at time `t` (seconds since start).
        fn sample(&self, t: f64, rng: &mut Rng) -> (f64, f64, f64) {
            let walking = t >= self.lead && t <= self.lead + self.walk;
            let phi = 2.0 * PI * self.cycles(t);
            let a = if walking {
                Self::shape(phi) + 0.4 * (0.5 * phi).sin()
            } else {
                0.0
            };
            let noise = if walking { 0.15 } else { 0.03 };
            (
                0.3 * phi.sin() + noise * rng.sym(),
                0.5 + noise * rng.sym(),
                G + a + noise * rng.sym(),
            )
        }
    }

    /// Feeds `gait` at `rate_hz` with ±20 % timestamp jitter, an occasional
    /// duplicate and an occasional stale (out-of-order) sample; returns the
    /// steps counted including the final flush.
    fn run_jittered(det: &mut StepDetector, gait: &Gait, rate_hz: f64, seed: u64) -> u32 {
        let mut rng = Rng(seed);
        let dt = 1.0 / rate_hz;
        let n = (gait.duration() * rate_hz) as usize;
        let mut steps = 0;
        for i in 0..n {
            let t = i as f64 * dt + 0.2 * dt * rng.sym();
            let (x, y, z) = gait.sample(t, &mut rng);
            steps += det.push(t, x, y, z).steps;
            if i % 97 == 0 {
                steps += det.push(t, x, y, z).steps;
            }
            if i % 131 == 0 && t > 3.0 * dt {
                let stale = t - 3.0 * dt;
                let (x, y, z) = gait.sample(stale, &mut rng);
                steps += det.push(stale, x, y, z).steps;
            }
        }
        steps + det.flush()
    }

    fn check_synthetic_rate(rate_hz: f64) {
        let gait = Gait {
            lead: 5.0,
            walk: 180.0,
            tail: 5.0,
        };
        let expected = gait.steps();
        let mut det = StepDetector::new(DetectorConfig::default());
        let counted = run_jittered(
            &mut det,
            &gait,
            rate_hz,
            0x9E37_79B9_7F4A_7C15 ^ rate_hz as u64,
        );
        let err = (f64::from(counted) - f64::from(expected)).abs() / f64::from(expected);
        assert!(
            err <= 0.015,
            "{rate_hz} Hz: counted {counted}, expected {expected}"
        );
    }

    #[test]
    fn synthetic_walk_20hz_with_jitter() {
        check_synthetic_rate(20.0);
    }

    #[test]
    fn synthetic_walk_50hz_with_jitter() {
        check_synthetic_rate(50.0);
    }

    #[test]
    fn synthetic_walk_100hz_with_jitter() {
        check_synthetic_rate(100.0);
    }

    #[test]
    fn standing_still_gives_no_steps() {
        let mut rng = Rng(7);
        let mut det = StepDetector::new(DetectorConfig::default());
        let mut steps = 0;
        for i in 0..50 * 600 {
            let t = i as f64 / 50.0;
            let tilt = 0.2 * (t / 30.0).sin();
            steps += det
                .push(
                    t,
                    tilt + 0.05 * rng.sym(),
                    0.3 + 0.05 * rng.sym(),
                    G + 0.05 * rng.sym(),
                )
                .steps;
        }
        assert_eq!(steps + det.flush(), 0);
    }

    /// A clean 2 steps/s walk whose stream stops 50 ms after the last peak.
    fn walk_then_stop(det: &mut StepDetector, start: f64, peaks: u32) -> u32 {
        let f = 2.0;
        let lead = 3.0;
        let last_peak = lead + (f64::from(peaks - 1) + 0.25) / f;
        let end = last_peak + 0.05;
        let mut steps = 0;
        let mut t = 0.0;
        while t <= end {
            let z = if t >= lead {
                G + 2.0 * (2.0 * PI * f * (t - lead)).sin()
            } else {
                G
            };
            steps += det.push(start + t, 0.0, 0.0, z).steps;
            t += 0.02;
        }
        steps
    }

    #[test]
    fn last_step_before_pause_is_counted_after_flush() {
        let mut det = StepDetector::new(DetectorConfig::default());
        let pushed = walk_then_stop(&mut det, 100.0, 20);
        assert!(
            pushed < 20,
            "the last step should still be pending, got {pushed}"
        );
        let flushed = det.flush();
        assert_eq!(pushed + flushed, 20);
        assert_eq!(det.flush(), 0, "a second flush must not count again");
        assert_eq!(det.buffer_len(), 0);
    }

    #[test]
    fn long_gap_acts_as_pause() {
        let mut det = StepDetector::new(DetectorConfig::default());
        let first = walk_then_stop(&mut det, 0.0, 20);
        let second = walk_then_stop(&mut det, 60.0, 20);
        assert_eq!(first + second + det.flush(), 40);
    }

    #[test]
    fn state_stays_bounded_over_a_long_stream() {
        let mut det = StepDetector::new(DetectorConfig::default());
        let caps = (
            det.kernel.capacity(),
            det.fir_window.buf.capacity(),
            det.score_window.buf.capacity(),
        );
        let bound = det.fir_window.capacity + det.score_window.capacity;
        let gait = Gait {
            lead: 0.0,
            walk: 1.0e9,
            tail: 0.0,
        };
        let mut rng = Rng(11);
        let mut steps: u64 = 0;
        let n: u32 = 2_000_000;
        let mut t = 0.0;
        for _ in 0..n {
            t += 0.01 * (1.0 + 0.2 * rng.sym());
            let (x, y, z) = gait.sample(t, &mut rng);
            let out = det.push(t, x, y, z);
            steps += u64::from(out.steps);
            assert!(det.buffer_len() <= bound);
        }
        steps += u64::from(det.flush());
        assert_eq!(
            (
                det.kernel.capacity(),
                det.fir_window.buf.capacity(),
                det.score_window.buf.capacity()
            ),
            caps
        );
        assert!(det.stats.mean.is_finite() && det.stats.var.is_finite());
        let expected = gait.cycles(t);
        let err = (steps as f64 - expected).abs() / expected;
        assert!(err < 0.02, "counted {steps}, expected {expected:.0}");
    }

    #[test]
    fn non_finite_samples_are_ignored() {
        let gait = Gait {
            lead: 2.0,
            walk: 60.0,
            tail: 2.0,
        };
        let mut clean = StepDetector::new(DetectorConfig::default());
        let mut dirty = StepDetector::new(DetectorConfig::default());
        let mut rng = Rng(3);
        let (mut a, mut b) = (0, 0);
        for i in 0..(gait.duration() * 50.0) as usize {
            let t = i as f64 / 50.0;
            let (x, y, z) = gait.sample(t, &mut rng);
            a += clean.push(t, x, y, z).steps;
            if i % 10 == 0 {
                for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                    let out = dirty.push(t + 0.001, bad, y, z);
                    assert_eq!(out.steps, 0);
                    dirty.push(bad, x, y, z);
                    dirty.push(t + 0.001, x, y, 1.0e200);
                }
            }
            let out = dirty.push(t, x, y, z);
            b += out.steps;
            let o = out.observation;
            assert!(o.magnitude.is_finite() && o.score.is_finite() && o.threshold.is_finite());
            assert!((0.0..=1.0).contains(&o.confidence));
        }
        a += clean.flush();
        b += dirty.flush();
        assert_eq!(a, b);
        assert!(a > 100);
    }

    #[test]
    fn reset_forgets_everything() {
        let gait = Gait {
            lead: 2.0,
            walk: 30.0,
            tail: 1.0,
        };
        let mut det = StepDetector::new(DetectorConfig::default());
        let first = run_jittered(&mut det, &gait, 50.0, 5);
        for i in 0..40 {
            det.push(1000.0 + i as f64 * 0.02, 0.0, 0.0, G + (i as f64).sin());
        }
        assert!(det.buffer_len() > 0);
        det.reset();
        assert_eq!(det.buffer_len(), 0);
        assert_eq!(det.flush(), 0);
        let again = run_jittered(&mut det, &gait, 50.0, 5);
        assert_eq!(first, again);
        let fresh = run_jittered(
            &mut StepDetector::new(DetectorConfig::default()),
            &gait,
            50.0,
            5,
        );
        assert_eq!(first, fresh);
    }

    #[test]
    fn steps_report_confidence() {
        let gait = Gait {
            lead: 2.0,
            walk: 20.0,
            tail: 1.0,
        };
        let mut det = StepDetector::new(DetectorConfig::default());
        let mut rng = Rng(9);
        for i in 0..(gait.duration() * 100.0) as usize {
            let t = i as f64 / 100.0;
            let (x, y, z) = gait.sample(t, &mut rng);
            let out = det.push(t, x, y, z);
            if out.steps > 0 {
                assert!(out.observation.confidence > 0.0 && out.observation.confidence <= 1.0);
            } else {
                assert_eq!(out.observation.confidence, 0.0);
            }
        }
    }

    #[test]
    fn detector_is_send_and_small() {
        fn assert_send<T: Send>() {}
        assert_send::<StepDetector>();
        let extreme = DetectorConfig {
            sample_rate_hz: 1.0e9,
            smoothing_window_s: 100.0,
            score_window_s: f64::NAN,
            ..DetectorConfig::default()
        };
        let det = StepDetector::new(extreme);
        let values = det.kernel.len() + det.fir_window.buf.len() + det.score_window.buf.len();
        assert!(values * std::mem::size_of::<f64>() <= 6 * 1024);
        assert!(det.latency_s() < 2.0);
    }

    struct Walk {
        name: String,
        rows: Vec<[f64; 4]>,
        truth: u32,
    }

    fn oxford_dir() -> PathBuf {
        match std::env::var_os("OXFORD_STEPS_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/data/oxford-steps/validation"),
        }
    }

    fn load_walks() -> Vec<Walk> {
        let dir = oxford_dir();
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "Oxford validation walks not found at {} ({e}); expected the data set's \
                 validation/*.csv there, or set OXFORD_STEPS_DIR to that folder",
                dir.display()
            )
        });
        let mut paths: Vec<PathBuf> = entries
            .map(|e| e.expect("readable directory entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no .csv walks in {}", dir.display());
        paths
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).expect("readable walk file");
                let mut rows = Vec::new();
                let mut truth = 0;
                for (n, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    let f: Vec<f64> = line
                        .split(',')
                        .map(|v| {
                            v.trim().parse().unwrap_or_else(|_| {
                                panic!("{}:{}: bad number", path.display(), n + 1)
                            })
                        })
                        .collect();
                    assert!(
                        f.len() >= 6,
                        "{}:{}: expected 7 columns",
                        path.display(),
                        n + 1
                    );
                    rows.push([f[0] * 1e-9, f[1], f[2], f[3]]);
                    truth = f[5] as u32;
                }
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Walk { name, rows, truth }
            })
            .collect()
    }

    fn count_walk(rows: &[[f64; 4]], stride: usize) -> u32 {
        let mut det = StepDetector::new(DetectorConfig::default());
        let mut steps = 0;
        for r in rows.iter().step_by(stride) {
            steps += det.push(r[0], r[1], r[2], r[3]).steps;
        }
        steps + det.flush()
    }

    fn accuracy(counted: u32, truth: u32) -> f64 {
        1.0 - (f64::from(counted) - f64::from(truth)).abs() / f64::from(truth)
    }

    #[test]
    fn oxford_validation_accuracy() {
        let walks = load_walks();
        let strides = [(5, "~20 Hz"), (2, "~50 Hz"), (1, "~100 Hz")];
        let mut sums = [0.0; 3];
        println!(
            "| walk | true | {} | acc | {} | acc | {} | acc |",
            strides[0].1, strides[1].1, strides[2].1
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for w in &walks {
            let mut line = format!("| {} | {} |", w.name, w.truth);
            for (i, (stride, _)) in strides.iter().enumerate() {
                let counted = count_walk(&w.rows, *stride);
                let acc = accuracy(counted, w.truth);
                sums[i] += acc;
                line.push_str(&format!(" {counted} | {:.1} % |", acc * 100.0));
            }
            println!("{line}");
        }
        let means = sums.map(|s| s / walks.len() as f64);
        println!(
            "| **mean** | | | **{:.2} %** | | **{:.2} %** | | **{:.2} %** |",
            means[0] * 100.0,
            means[1] * 100.0,
            means[2] * 100.0
        );
        assert!(
            means[1] >= 0.95,
            "mean accuracy at 50 Hz {:.4} < 0.95",
            means[1]
        );
        assert!(
            means[0] >= 0.90,
            "mean accuracy at 20 Hz {:.4} < 0.90",
            means[0]
        );
        assert!(
            means[2] >= 0.90,
            "mean accuracy at 100 Hz {:.4} < 0.90",
            means[2]
        );
    }
}
