//! Real-time fall detection from phone accelerometer samples.
//!
//! A fall from standing has a recognisable signature in the magnitude of the
//! acceleration (with gravity): while the body drops, the sensor is partly in
//! free fall and the magnitude sinks well below 1 g; the body then hits the
//! ground and the magnitude spikes to several g; afterwards the person lies
//! on the ground, the sensor is still and its orientation has turned. This
//! module is the classic threshold detector built on those phases:
//!
//! > A. K. Bourke, J. V. O'Brien, G. M. Lyons, "Evaluation of a
//! > threshold-based tri-axial accelerometer fall detection algorithm",
//! > Gait & Posture 26(2), 194-199, 2007 (lower and upper fall thresholds on
//! > the resultant acceleration, trunk and thigh sensors).
//! >
//! > M. Kangas, A. Konttila, P. Lindgren, I. Winblad, T. Jämsä, "Comparison
//! > of low-complexity fall detection algorithms for body attached
//! > accelerometers", Gait & Posture 28(2), 285-291, 2008 (start of the fall,
//! > impact and posture after the fall as successive phases; the resultant
//! > without high-pass filtering as the most useful signal).
//! >
//! > G. Cola, A. Vecchio, M. Avvenuti, "Improving the performance of fall
//! > detection systems through walk recognition", Journal of Ambient
//! > Intelligence and Humanized Computing, 2014 (for a phone worn in no fixed
//! > orientation, the orientation learnt while walking is used to infer the
//! > posture after an event, which eliminated 98 % of false alarms).
//!
//! # Phases
//!
//! 1. **Free fall.** The magnitude `sqrt(x² + y² + z²)` stays below
//!    [`FallConfig::free_fall_g`] for at least [`FallConfig::min_free_fall_s`].
//!    The start and end are linear interpolations of the threshold crossings
//!    between samples, so the measured duration does not depend on the input
//!    rate (20 to 100 Hz) or its jitter. The magnitude makes the rule
//!    independent of how the phone is carried.
//! 2. **Impact.** Within [`FallConfig::impact_window_s`] after the free fall
//!    ends, the magnitude exceeds [`FallConfig::impact_g`]. The impact time is
//!    the highest sample of that burst. Impacts without a free fall before
//!    them (a bump, a stamp, a phone knocked on a table) never count.
//! 3. **Confirmation.** After [`FallConfig::settle_s`] (rolling and bouncing
//!    on the ground), the sensor must be still for
//!    [`FallConfig::still_window_s`]: the standard deviation of the magnitude
//!    at most [`FallConfig::still_max_std_g`]; and the mean acceleration
//!    vector over that window (gravity, i.e. the new orientation) must have
//!    turned by at least [`FallConfig::min_orientation_change_deg`] from the
//!    orientation before the free fall (an exponential average of the
//!    acceleration vector with a 1 s time constant, taken when the free fall
//!    starts). Standing up or walking on fails the stillness test; a jump, a
//!    stumble or the last stride before stopping leaves the person upright
//!    and fails the orientation test.
//!
//! A confirmed fall is reported once; impacts within
//! [`FallConfig::refractory_s`] after it are ignored, so the bounces and the
//! attempts to get up of one fall never raise a second alarm.
//!
//! # Parameters
//!
//! | field | default | why |
//! |---|---|---|
//! | `free_fall_g` | 0.6 g | Bourke et al. placed the lower fall threshold so that every recorded fall dipped below it: 0.60 g at the thigh (trouser pocket), 0.41 g at the trunk; the higher value keeps pocket falls |
//! | `min_free_fall_s` | 0.1 s | rejects isolated low samples (one low sample at 20 Hz measures about 50 ms) and the short dips of a landing foot, while a fall's free fall lasts a few hundred ms |
//! | `impact_g` | 2.5 g | Bourke et al.'s upper fall thresholds were 2.74 g (thigh) and 3.52 g (trunk); slightly lower because a 20 Hz stream under-samples a 50 to 100 ms impact peak |
//! | `impact_window_s` | 1.0 s | a fall from standing height lasts well under a second from loss of balance to impact |
//! | `settle_s` | 1.0 s | bouncing and rolling after the impact |
//! | `still_window_s` | 1.5 s | long enough that walking on or getting up cannot look still |
//! | `still_max_std_g` | 0.2 g | a phone at rest shows a few hundredths of a g; walking 0.2 to 0.9 g (Oxford walks, 1.5 s windows) |
//! | `min_orientation_change_deg` | 45° | half-way from upright (0°) to lying (90°) |
//! | `refractory_s` | 5 s | one alarm per fall |
//! | `max_gap_s` | 0.5 s | phases are not bridged across longer input gaps |
//!
//! The free-fall and impact thresholds alone do not separate falls from
//! walking with a phone in a pocket or bag. On the Oxford validation walks
//! (12 walks of about 200 s, 2 users, 6 phone positions) the magnitude stays
//! below 0.6 g for up to 0.18 s, below 0.4 g for up to 0.10 s, and peaks at up
//! to 5.2 g; the first two phases match about 300 times over the 12 walks at
//! 100 Hz, almost all with the phone in a front pocket or a bag. The
//! confirmation rejects every one of them: after such a stride the magnitude's
//! standard deviation is at least 0.37 g while walking continues, and the one
//! match followed by stillness (the last stride before the walker stops,
//! 0.07 g) has turned the phone by only about 15°. The unit tests assert that
//! none of the walks, fed at about 20, 50 and 100 Hz, raises a fall, and that
//! they would without the confirmation.
//!
//! # Limitations
//!
//! A fall is reported `settle_s + still_window_s` (2.5 s with the defaults)
//! after the impact, on the first sample after the still window, so the stream
//! must keep flowing for that long; a gap longer than `max_gap_s` during the
//! confirmation abandons it. Falls where the person gets up at once, or where
//! the phone keeps its orientation (a phone held in the hand, a fall onto the
//! knees), are missed by design, the price of not alarming on walks; setting
//! `min_orientation_change_deg` to 0 accepts them, but then the walk-stop
//! stride above is reported as a fall. A dropped phone that
//! lands flat looks like a fall. Below about 20 Hz the free fall and the
//! impact are too brief to be sampled reliably.
//!
//! # Memory
//!
//! The detector holds a few dozen numbers (the previous sample, the running
//! orientation and at most one free fall, one armed free fall and one impact
//! under confirmation) and never allocates.

use crate::limits::MAX_MAGNITUDE;

/// Standard gravity, m/s^2: converts the thresholds given in g.
const G: f64 = 9.806_65;
/// Time constant of the running orientation (exponential average of the
/// acceleration vector): long enough to average out a stride, short enough to
/// describe the posture just before the fall.
const ORIENTATION_TIME_CONSTANT_S: f64 = 1.0;
/// Fewest samples in the still window for the stillness test to mean anything.
const MIN_STILL_SAMPLES: u32 = 5;

/// Tuning knobs of [`FallDetector`]. Times are in seconds and thresholds in g
/// (9.806 65 m/s²), independent of the input rate. Out-of-range or non-finite
/// values are clamped or replaced by the default when the detector is built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FallConfig {
    /// The magnitude is in free fall below this. Default 0.6 g, Bourke et al.'s
    /// lower fall threshold at the thigh (0.05..=0.95).
    pub free_fall_g: f64,
    /// Shortest free fall that counts. Default 0.1 s (0..=2).
    pub min_free_fall_s: f64,
    /// The magnitude is an impact above this. Default 2.5 g, just under Bourke
    /// et al.'s upper fall threshold at the thigh (1.2..=20).
    pub impact_g: f64,
    /// Longest time from the end of the free fall to the impact. Default 1 s (0.05..=5).
    pub impact_window_s: f64,
    /// Time after the impact before the stillness window starts, for bouncing
    /// and rolling. Default 1 s (0..=10).
    pub settle_s: f64,
    /// Length of the window that must be still. Default 1.5 s (0.2..=10).
    pub still_window_s: f64,
    /// Largest standard deviation of the magnitude in the still window.
    /// Default 0.2 g (0..=10; 10 disables the test).
    pub still_max_std_g: f64,
    /// Smallest turn of the gravity direction from before the free fall to the
    /// still window. Default 45° (0..=180; 0 disables the test).
    pub min_orientation_change_deg: f64,
    /// Impacts this soon after a reported fall's impact are ignored. Default 5 s (0..=600).
    pub refractory_s: f64,
    /// Input gaps longer than this abandon any phase in progress. Default 0.5 s (0.05..=10).
    pub max_gap_s: f64,
}

impl Default for FallConfig {
    fn default() -> Self {
        Self {
            free_fall_g: 0.6,
            min_free_fall_s: 0.1,
            impact_g: 2.5,
            impact_window_s: 1.0,
            settle_s: 1.0,
            still_window_s: 1.5,
            still_max_std_g: 0.2,
            min_orientation_change_deg: 45.0,
            refractory_s: 5.0,
            max_gap_s: 0.5,
        }
    }
}

impl FallConfig {
    /// Replaces non-finite or out-of-range values so every phase stays well
    /// defined (e.g. a free-fall threshold above the impact threshold).
    fn sanitized(self) -> Self {
        let d = Self::default();
        let pick = crate::limits::finite_within;
        Self {
            free_fall_g: pick(self.free_fall_g, d.free_fall_g, 0.05, 0.95),
            min_free_fall_s: pick(self.min_free_fall_s, d.min_free_fall_s, 0.0, 2.0),
            impact_g: pick(self.impact_g, d.impact_g, 1.2, 20.0),
            impact_window_s: pick(self.impact_window_s, d.impact_window_s, 0.05, 5.0),
            settle_s: pick(self.settle_s, d.settle_s, 0.0, 10.0),
            still_window_s: pick(self.still_window_s, d.still_window_s, 0.2, 10.0),
            still_max_std_g: pick(self.still_max_std_g, d.still_max_std_g, 0.0, 10.0),
            min_orientation_change_deg: pick(
                self.min_orientation_change_deg,
                d.min_orientation_change_deg,
                0.0,
                180.0,
            ),
            refractory_s: pick(self.refractory_s, d.refractory_s, 0.0, 600.0),
            max_gap_s: pick(self.max_gap_s, d.max_gap_s, 0.05, 10.0),
        }
    }
}

/// A confirmed fall.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fall {
    /// Time of the impact (the highest sample of the impact burst), in the
    /// input's clock; the fall is reported `settle_s + still_window_s` later.
    pub at: f64,
    /// Duration of the free fall before the impact, seconds.
    pub free_fall_seconds: f64,
    /// Lowest magnitude during the free fall, m/s^2.
    pub min_magnitude: f64,
    /// Highest magnitude of the impact, m/s^2.
    pub impact_magnitude: f64,
    /// 0..=1: the mean of five margins, each 0 at its threshold and 1 well
    /// beyond it: free-fall depth (0 g scores 1), free-fall duration (twice
    /// the minimum scores 1), impact (twice the threshold scores 1),
    /// orientation change (90° scores 1) and stillness (a motionless sensor
    /// scores 1). A textbook fall scores about 0.8; one that only just passes
    /// every test scores near 0.
    pub confidence: f64,
}

/// A free fall in progress.
#[derive(Debug, Clone, Copy)]
struct FreeFall {
    start: f64,
    min: f64,
    /// Running orientation just before the free fall started.
    before: [f64; 3],
}

/// A free fall long enough to count, waiting for its impact.
#[derive(Debug, Clone, Copy)]
struct Armed {
    end: f64,
    duration: f64,
    min: f64,
    before: [f64; 3],
}

/// Mean and variance of the magnitude (Welford) and the summed acceleration
/// vector over the still window.
#[derive(Debug, Clone, Copy, Default)]
struct StillStats {
    n: u32,
    mean: f64,
    m2: f64,
    sum: [f64; 3],
}

impl StillStats {
    fn add(&mut self, mag: f64, v: [f64; 3]) {
        self.n += 1;
        let d = mag - self.mean;
        self.mean += d / f64::from(self.n);
        self.m2 += d * (mag - self.mean);
        for (s, x) in self.sum.iter_mut().zip(v) {
            *s += x;
        }
    }
}

/// An impact after a free fall, waiting for its confirmation.
#[derive(Debug, Clone, Copy)]
struct Pending {
    at: f64,
    peak: f64,
    /// Still above the impact threshold: the peak may yet rise.
    in_burst: bool,
    free_fall: Armed,
    still: StillStats,
}

/// Streaming fall detector. Fixed memory (no allocation, a few hundred bytes),
/// so one can run per session for an unbounded time.
#[derive(Debug, Clone)]
pub struct FallDetector {
    config: FallConfig,
    /// Previous accepted sample: time and magnitude.
    last: Option<(f64, f64)>,
    /// Exponential average of the acceleration vector (the gravity direction).
    orientation: Option<[f64; 3]>,
    free_fall: Option<FreeFall>,
    armed: Option<Armed>,
    pending: Option<Pending>,
    /// Impacts before this time are ignored (the refractory period).
    quiet_until: f64,
}

/// Time at which the line from `(t0, m0)` to `(t1, m1)` crosses `level`.
fn crossing(t0: f64, m0: f64, t1: f64, m1: f64, level: f64) -> f64 {
    if m1 == m0 {
        return t1;
    }
    t0 + (t1 - t0) * ((level - m0) / (m1 - m0)).clamp(0.0, 1.0)
}

/// Angle between two vectors in degrees; 0 when either is (almost) zero.
fn angle_deg(a: [f64; 3], b: [f64; 3]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(p, q)| p * q).sum();
    let na = a.iter().map(|p| p * p).sum::<f64>().sqrt();
    let nb = b.iter().map(|p| p * p).sum::<f64>().sqrt();
    if na < 1e-9 || nb < 1e-9 {
        return 0.0;
    }
    (dot / (na * nb)).clamp(-1.0, 1.0).acos().to_degrees()
}

impl FallDetector {
    /// Builds a detector; out-of-range config values are clamped to safe limits.
    #[must_use]
    pub fn new(config: FallConfig) -> Self {
        Self {
            config: config.sanitized(),
            last: None,
            orientation: None,
            free_fall: None,
            armed: None,
            pending: None,
            quiet_until: f64::NEG_INFINITY,
        }
    }

    /// The configuration in use, after clamping.
    #[must_use]
    pub fn config(&self) -> &FallConfig {
        &self.config
    }

    /// Time from an impact to the report of its fall, if confirmed: the fall is
    /// returned by the first sample at or after `at + confirmation_delay_s()`.
    #[must_use]
    pub fn confirmation_delay_s(&self) -> f64 {
        self.config.settle_s + self.config.still_window_s
    }

    /// t in seconds (any origin, f64), x/y/z in m/s^2 with gravity. Returns the
    /// fall confirmed by this sample, if any.
    ///
    /// Samples with non-finite values, a magnitude above 1000 m/s² or a time
    /// not after the previous one are ignored. A forward gap longer than
    /// `max_gap_s` abandons the free fall, impact or confirmation in progress;
    /// a backward jump of that size (a clock restart) also clears the
    /// refractory period, whose times belong to the old clock.
    pub fn push(&mut self, t: f64, x: f64, y: f64, z: f64) -> Option<Fall> {
        let mag = (x * x + y * y + z * z).sqrt();
        if !t.is_finite() || !mag.is_finite() || mag > MAX_MAGNITUDE {
            return None;
        }
        if let Some((last_t, _)) = self.last {
            if last_t - t > self.config.max_gap_s {
                self.restart();
                self.quiet_until = f64::NEG_INFINITY;
            } else if t - last_t > self.config.max_gap_s {
                self.restart();
            } else if t <= last_t {
                return None;
            }
        }
        let v = [x, y, z];
        self.track_free_fall(t, mag);
        if self
            .armed
            .is_some_and(|a| t - a.end > self.config.impact_window_s)
        {
            self.armed = None;
        }
        let fall = self.confirm(t, mag, v);
        self.track_impact(t, mag);
        self.update_orientation(t, v);
        self.last = Some((t, mag));
        fall
    }

    /// Forget everything, as new.
    pub fn reset(&mut self) {
        *self = Self::new(self.config);
    }

    /// Drops the phases in progress and the history they rely on.
    fn restart(&mut self) {
        self.last = None;
        self.orientation = None;
        self.free_fall = None;
        self.armed = None;
        self.pending = None;
    }

    /// Phase 1: follows the magnitude below the free-fall threshold and arms
    /// the free fall when it ends after long enough.
    fn track_free_fall(&mut self, t: f64, mag: f64) {
        let level = self.config.free_fall_g * G;
        if mag < level {
            match &mut self.free_fall {
                Some(ff) => ff.min = ff.min.min(mag),
                None => {
                    let start = match self.last {
                        Some((pt, pm)) => crossing(pt, pm, t, mag, level),
                        None => t,
                    };
                    let before = self.orientation.unwrap_or([0.0; 3]);
                    self.free_fall = Some(FreeFall {
                        start,
                        min: mag,
                        before,
                    });
                }
            }
        } else if let (Some(ff), Some((pt, pm))) = (self.free_fall.take(), self.last) {
            let end = crossing(pt, pm, t, mag, level);
            let duration = end - ff.start;
            if duration >= self.config.min_free_fall_s {
                self.armed = Some(Armed {
                    end,
                    duration,
                    min: ff.min,
                    before: ff.before,
                });
            }
        }
    }

    /// Phase 2: an impact after an armed free fall starts a confirmation,
    /// replacing any older one (whose stillness this impact would break).
    fn track_impact(&mut self, t: f64, mag: f64) {
        if mag <= self.config.impact_g * G {
            return;
        }
        let Some(free_fall) = self.armed.take() else {
            return;
        };
        if t < self.quiet_until {
            return;
        }
        self.pending = Some(Pending {
            at: t,
            peak: mag,
            in_burst: true,
            free_fall,
            still: StillStats::default(),
        });
    }

    /// Phase 3: follows the impact burst to its peak, then gathers the still
    /// window and judges it once the window is over.
    fn confirm(&mut self, t: f64, mag: f64, v: [f64; 3]) -> Option<Fall> {
        let c = self.config;
        let p = self.pending.as_mut()?;
        if p.in_burst {
            if mag > c.impact_g * G {
                if mag > p.peak {
                    p.peak = mag;
                    p.at = t;
                }
                return None;
            }
            p.in_burst = false;
        }
        let start = p.at + c.settle_s;
        if t < start {
            return None;
        }
        if t < start + c.still_window_s {
            p.still.add(mag, v);
            return None;
        }
        let p = self.pending.take()?;
        let fall = self.judge(&p)?;
        self.quiet_until = p.at + c.refractory_s;
        self.armed = None;
        Some(fall)
    }

    /// The stillness and orientation tests, and the confidence of a fall that
    /// passes them.
    fn judge(&self, p: &Pending) -> Option<Fall> {
        let c = self.config;
        let s = p.still;
        if s.n < MIN_STILL_SAMPLES {
            return None;
        }
        let std_g = (s.m2 / f64::from(s.n)).sqrt() / G;
        if std_g > c.still_max_std_g {
            return None;
        }
        let turned = angle_deg(p.free_fall.before, s.sum);
        if turned < c.min_orientation_change_deg {
            return None;
        }
        let free_fall_level = c.free_fall_g * G;
        let impact_level = c.impact_g * G;
        let ff = p.free_fall;
        let margins = [
            (free_fall_level - ff.min) / free_fall_level,
            (ff.duration - c.min_free_fall_s) / c.min_free_fall_s.max(0.01),
            (p.peak - impact_level) / impact_level,
            turned / 90.0,
            if c.still_max_std_g > 0.0 {
                1.0 - std_g / c.still_max_std_g
            } else {
                1.0
            },
        ];
        let confidence = margins.iter().map(|m| m.clamp(0.0, 1.0)).sum::<f64>() / 5.0;
        Some(Fall {
            at: p.at,
            free_fall_seconds: ff.duration,
            min_magnitude: ff.min,
            impact_magnitude: p.peak,
            confidence,
        })
    }

    /// Exponential average of the acceleration vector, exact for uneven steps.
    fn update_orientation(&mut self, t: f64, v: [f64; 3]) {
        self.orientation = Some(match (self.orientation, self.last) {
            (Some(o), Some((pt, _))) => {
                let a = 1.0 - (-(t - pt) / ORIENTATION_TIME_CONSTANT_S).exp();
                [
                    o[0] + a * (v[0] - o[0]),
                    o[1] + a * (v[1] - o[1]),
                    o[2] + a * (v[2] - o[2]),
                ]
            }
            _ => v,
        });
    }
}

#[cfg(test)]
mod tests {
    //! Synthetic falls and non-falls, plus the Oxford validation walks, which
    //! must raise no fall. The walks are read from the directory in the
    //! `OXFORD_STEPS_DIR` environment variable if set, else from
    //! `$CARGO_MANIFEST_DIR/../../tests/data/oxford-steps/validation`.

    use super::*;
    use std::f64::consts::PI;
    use std::path::PathBuf;

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

    /// Gravity along +y: a phone upright in a trouser pocket of someone standing.
    const UPRIGHT: [f64; 3] = [0.0, 1.0, 0.0];
    /// Gravity along +z: the same phone when its wearer lies on the floor.
    const LYING: [f64; 3] = [0.0, 0.0, 1.0];

    /// One scripted event in a signal: magnitude (in g) and direction of the
    /// acceleration as functions of time since the event starts.
    #[derive(Clone, Copy)]
    struct Event {
        /// Duration of the 1 g to `low_g` ramp, then of the low phase.
        ramp_s: f64,
        low_s: f64,
        low_g: f64,
        /// Peak of the raised-cosine impact (150 ms wide) right after the low phase.
        impact_g: f64,
        /// Orientation before and after the event.
        from: [f64; 3],
        to: [f64; 3],
    }

    const IMPACT_WIDTH_S: f64 = 0.15;
    const BOUNCE_S: f64 = 0.6;

    impl Event {
        fn fall() -> Self {
            Self {
                ramp_s: 0.05,
                low_s: 0.3,
                low_g: 0.2,
                impact_g: 4.0,
                from: UPRIGHT,
                to: LYING,
            }
        }

        fn impact_centre(&self) -> f64 {
            self.ramp_s + self.low_s + IMPACT_WIDTH_S / 2.0
        }

        /// Acceleration (m/s^2) at `u` seconds after the event starts.
        fn at(&self, u: f64) -> [f64; 3] {
            let impact_start = self.ramp_s + self.low_s;
            let impact_end = impact_start + IMPACT_WIDTH_S;
            let (g, turn) = if u < 0.0 {
                (1.0, 0.0)
            } else if u < self.ramp_s {
                (1.0 - (1.0 - self.low_g) * u / self.ramp_s, 0.0)
            } else if u < impact_start {
                (self.low_g, (u - self.ramp_s) / self.low_s)
            } else if u < impact_end {
                let w = 2.0 * PI * (u - impact_start) / IMPACT_WIDTH_S;
                (1.0 + (self.impact_g - 1.0) * 0.5 * (1.0 - w.cos()), 1.0)
            } else if u < impact_end + BOUNCE_S {
                let b = u - impact_end;
                (
                    1.0 + 0.5 * (-b / 0.15).exp() * (2.0 * PI * 5.0 * b).sin(),
                    1.0,
                )
            } else {
                (1.0, 1.0)
            };
            let dir = [0, 1, 2].map(|i| self.from[i] * (1.0 - turn) + self.to[i] * turn);
            let norm = dir.iter().map(|d| d * d).sum::<f64>().sqrt();
            [0, 1, 2].map(|i| g * G * dir[i] / norm)
        }
    }

    /// Feeds `lead` s of standing, the events at the given start times, and
    /// `tail` s after the last one, at `rate_hz` with ±20 % timestamp jitter
    /// and sensor noise. Returns the falls reported.
    fn run(
        det: &mut FallDetector,
        events: &[(f64, Event)],
        end: f64,
        rate_hz: f64,
        seed: u64,
    ) -> Vec<Fall> {
        let mut rng = Rng(seed);
        let dt = 1.0 / rate_hz;
        let mut falls = Vec::new();
        let mut t = 0.0;
        while t < end {
            let current = events.iter().rev().find(|(start, _)| t >= *start);
            let a = match current {
                Some((start, e)) => e.at(t - start),
                None => events[0].1.at(-1.0),
            };
            let noise = 0.05;
            if let Some(f) = det.push(
                t,
                a[0] + noise * rng.sym(),
                a[1] + noise * rng.sym(),
                a[2] + noise * rng.sym(),
            ) {
                falls.push(f);
            }
            t += dt * (1.0 + 0.2 * rng.sym());
        }
        falls
    }

    fn check_fall_at_rate(rate_hz: f64) {
        for seed in 1..=20 {
            let mut det = FallDetector::new(FallConfig::default());
            let e = Event::fall();
            let start = 10.0;
            let falls = run(&mut det, &[(start, e)], 30.0, rate_hz, seed);
            assert_eq!(falls.len(), 1, "{rate_hz} Hz seed {seed}: {falls:?}");
            let f = falls[0];
            let dt = 1.0 / rate_hz;
            assert!(
                (f.at - (start + e.impact_centre())).abs() <= 1.2 * dt,
                "{rate_hz} Hz: impact at {}",
                f.at
            );
            assert!(
                (0.28..=0.42).contains(&f.free_fall_seconds),
                "{rate_hz} Hz: free fall {}",
                f.free_fall_seconds
            );
            assert!((f.min_magnitude / G - 0.2).abs() < 0.05, "{f:?}");
            assert!(
                f.impact_magnitude > 2.5 * G && f.impact_magnitude < 4.1 * G,
                "{f:?}"
            );
            assert!(f.confidence > 0.5 && f.confidence <= 1.0, "{f:?}");
        }
    }

    #[test]
    fn synthetic_fall_20hz_with_jitter() {
        check_fall_at_rate(20.0);
    }

    #[test]
    fn synthetic_fall_50hz_with_jitter() {
        check_fall_at_rate(50.0);
    }

    #[test]
    fn synthetic_fall_100hz_with_jitter() {
        check_fall_at_rate(100.0);
    }

    #[test]
    fn fall_is_reported_after_the_confirmation_delay() {
        let mut det = FallDetector::new(FallConfig::default());
        let e = Event::fall();
        let mut reported = None;
        let mut t = 0.0;
        while t < 20.0 && reported.is_none() {
            let a = e.at(t - 5.0);
            reported = det.push(t, a[0], a[1], a[2]).map(|f| (t, f));
            t += 0.01;
        }
        let (when, fall) = reported.expect("fall reported");
        assert!((fall.at - (5.0 + e.impact_centre())).abs() <= 0.005);
        let delay = when - fall.at;
        let expected = det.confirmation_delay_s();
        assert!(
            delay >= expected && delay < expected + 0.011,
            "reported {delay} s after the impact"
        );
    }

    #[test]
    fn refractory_period_reports_once() {
        let mut det = FallDetector::new(FallConfig::default());
        let e = Event::fall();
        let second = Event {
            from: LYING,
            to: UPRIGHT,
            ..e
        };
        let third = Event {
            from: UPRIGHT,
            to: LYING,
            ..e
        };
        let falls = run(
            &mut det,
            &[(5.0, e), (8.5, second), (20.0, third)],
            30.0,
            50.0,
            4,
        );
        assert_eq!(falls.len(), 2, "{falls:?}");
        assert!((falls[0].at - (5.0 + e.impact_centre())).abs() < 0.05);
        assert!((falls[1].at - (20.0 + e.impact_centre())).abs() < 0.05);
    }

    #[test]
    fn standing_and_lying_still_give_no_fall() {
        let mut rng = Rng(7);
        for g in [UPRIGHT, LYING, [0.6, 0.0, 0.8]] {
            let mut det = FallDetector::new(FallConfig::default());
            for i in 0..50 * 600 {
                let t = f64::from(i) / 50.0;
                let n = 0.1;
                let fall = det.push(
                    t,
                    g[0] * G + n * rng.sym(),
                    g[1] * G + n * rng.sym(),
                    g[2] * G + n * rng.sym(),
                );
                assert_eq!(fall, None);
            }
        }
    }

    #[test]
    fn single_bump_gives_no_fall() {
        // A 4 g impact with no free fall before it, then lying: everything
        // but the first phase.
        let bump = Event {
            ramp_s: 0.05,
            low_s: 0.3,
            low_g: 1.0,
            ..Event::fall()
        };
        for rate in [20.0, 50.0, 100.0] {
            let mut det = FallDetector::new(FallConfig::default());
            assert!(run(&mut det, &[(5.0, bump)], 20.0, rate, 5).is_empty());
        }
    }

    #[test]
    fn short_dip_before_impact_gives_no_fall() {
        // A jump-like landing: 40 ms below 0.6 g, then 4 g, then lying still
        // with the orientation turned. Only the free-fall duration rejects it.
        let jump = Event {
            ramp_s: 0.01,
            low_s: 0.03,
            ..Event::fall()
        };
        for rate in [20.0, 50.0, 100.0] {
            for seed in 1..=10 {
                let mut det = FallDetector::new(FallConfig::default());
                let falls = run(&mut det, &[(5.0, jump)], 20.0, rate, seed);
                assert!(falls.is_empty(), "{rate} Hz: {falls:?}");
            }
        }
    }

    #[test]
    fn jump_landing_upright_gives_no_fall() {
        // A real jump: 300 ms of flight and a 4 g landing, but the jumper
        // lands upright. Only the orientation test rejects it.
        let jump = Event {
            to: UPRIGHT,
            ..Event::fall()
        };
        let mut det = FallDetector::new(FallConfig::default());
        assert!(run(&mut det, &[(5.0, jump)], 20.0, 50.0, 6).is_empty());
        let lenient = FallConfig {
            min_orientation_change_deg: 0.0,
            ..FallConfig::default()
        };
        let mut det = FallDetector::new(lenient);
        assert_eq!(run(&mut det, &[(5.0, jump)], 20.0, 50.0, 6).len(), 1);
    }

    #[test]
    fn getting_up_after_the_impact_is_not_a_fall() {
        let mut rng = Rng(8);
        let e = Event::fall();
        let mut det = FallDetector::new(FallConfig::default());
        let mut t: f64 = 0.0;
        while t < 20.0 {
            let mut a = e.at(t - 5.0);
            if t > 5.0 + e.impact_centre() + 1.0 {
                // Moving about: ±0.5 g at 2 Hz.
                a[2] += 0.5 * G * (2.0 * PI * 2.0 * t).sin();
            }
            let fall = det.push(t, a[0] + 0.05 * rng.sym(), a[1], a[2]);
            assert_eq!(fall, None, "at {t}");
            t += 0.02;
        }
    }

    /// Steps.rs-style synthetic walking, vigorous (±1.5 g), with a pocket-like
    /// sharp heel strike, followed by standing still.
    #[test]
    fn synthetic_walking_then_stopping_gives_no_fall() {
        let mut rng = Rng(9);
        for rate in [20.0, 50.0, 100.0] {
            let mut det = FallDetector::new(FallConfig::default());
            let mut t: f64 = 0.0;
            while t < 200.0 {
                let walking = t < 180.0;
                let phi = 2.0 * PI * 1.8 * t;
                let a = if walking {
                    G * (0.9 * phi.sin() + 0.35 * (2.0 * phi + 0.7).sin())
                        + G * 1.5 * (phi.cos().max(0.0)).powi(8)
                } else {
                    0.0
                };
                let fall = det.push(
                    t,
                    0.3 * G * phi.sin() + 0.1 * rng.sym(),
                    G + a + 0.1 * rng.sym(),
                    0.5 + 0.1 * rng.sym(),
                );
                assert_eq!(fall, None, "{rate} Hz at {t}");
                t += (1.0 + 0.2 * rng.sym()) / rate;
            }
        }
    }

    #[test]
    fn non_finite_and_stale_samples_are_ignored() {
        for rate in [20.0, 100.0] {
            let e = Event::fall();
            let mut clean = FallDetector::new(FallConfig::default());
            let mut dirty = FallDetector::new(FallConfig::default());
            let mut rng = Rng(10);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let mut t = 0.0;
            let mut i = 0;
            while t < 20.0 {
                let v = e.at(t - 5.0);
                let (x, y, z) = (v[0] + 0.05 * rng.sym(), v[1], v[2]);
                a.extend(clean.push(t, x, y, z));
                if i % 3 == 0 {
                    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                        assert_eq!(dirty.push(t + 0.001, bad, y, z), None);
                        assert_eq!(dirty.push(bad, x, y, z), None);
                    }
                    assert_eq!(dirty.push(t + 0.001, x, y, 1.0e200), None);
                }
                b.extend(dirty.push(t, x, y, z));
                if i % 7 == 0 {
                    assert_eq!(dirty.push(t, 0.0, 0.0, 0.0), None, "duplicate time");
                    assert_eq!(dirty.push(t - 0.1, 0.0, 0.0, 0.0), None, "stale");
                }
                t += 1.0 / rate;
                i += 1;
            }
            assert_eq!(a.len(), 1);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn gap_abandons_the_confirmation() {
        let e = Event::fall();
        let mut det = FallDetector::new(FallConfig::default());
        let mut t: f64 = 0.0;
        let impact = 5.0 + e.impact_centre();
        while t < 20.0 {
            let in_gap = t > impact + 1.2 && t < impact + 2.0;
            if !in_gap {
                let a = e.at(t - 5.0);
                assert_eq!(det.push(t, a[0], a[1], a[2]), None, "at {t}");
            }
            t += 0.02;
        }
    }

    #[test]
    fn reset_and_clock_restart() {
        let e = Event::fall();
        let mut det = FallDetector::new(FallConfig::default());
        assert_eq!(run(&mut det, &[(5.0, e)], 20.0, 50.0, 11).len(), 1);
        // The client's clock restarts at 0: the refractory period of the old
        // clock must not hide a fall on the new one.
        assert_eq!(run(&mut det, &[(5.0, e)], 20.0, 50.0, 12).len(), 1);
        det.reset();
        assert_eq!(run(&mut det, &[(5.0, e)], 20.0, 50.0, 13).len(), 1);
    }

    #[test]
    fn detector_is_send_and_fixed_size() {
        fn assert_send<T: Send>() {}
        assert_send::<FallDetector>();
        assert!(std::mem::size_of::<FallDetector>() <= 512);
        let wild = FallConfig {
            free_fall_g: 5.0,
            impact_g: f64::NAN,
            min_free_fall_s: -1.0,
            ..FallConfig::default()
        };
        let c = *FallDetector::new(wild).config();
        assert_eq!(c.free_fall_g, 0.95);
        assert_eq!(c.impact_g, 2.5);
        assert_eq!(c.min_free_fall_s, 0.0);
    }

    fn oxford_dir() -> PathBuf {
        match std::env::var_os("OXFORD_STEPS_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/data/oxford-steps/validation"),
        }
    }

    /// `(name, [t s, x, y, z])` for every walk in the validation folder.
    fn load_walks() -> Vec<(String, Vec<[f64; 4]>)> {
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
        paths
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).expect("readable walk file");
                let rows = text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                    .map(|(n, line)| {
                        let f: Vec<f64> = line
                            .split(',')
                            .take(4)
                            .map(|v| {
                                v.trim().parse().unwrap_or_else(|_| {
                                    panic!("{}:{}: bad number", path.display(), n + 1)
                                })
                            })
                            .collect();
                        assert_eq!(f.len(), 4, "{}:{}: too few columns", path.display(), n + 1);
                        [f[0] * 1e-9, f[1], f[2], f[3]]
                    })
                    .collect();
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (name, rows)
            })
            .collect()
    }

    #[test]
    fn oxford_walks_raise_no_fall() {
        let walks = load_walks();
        assert_eq!(walks.len(), 12, "expected the 12 validation walks");
        let mut runs = 0;
        for (name, rows) in &walks {
            for stride in [1, 2, 5] {
                for offset in 0..stride {
                    let mut det = FallDetector::new(FallConfig::default());
                    for r in rows.iter().skip(offset).step_by(stride) {
                        let fall = det.push(r[0], r[1], r[2], r[3]);
                        assert_eq!(fall, None, "{name} every {stride}th sample from {offset}");
                    }
                    runs += 1;
                }
            }
        }
        assert_eq!(runs, 12 * 8);

        // The confirmation is what rejects these walks: without it, the free
        // fall and impact phases alone fire on them.
        let unconfirmed = FallConfig {
            still_max_std_g: 10.0,
            min_orientation_change_deg: 0.0,
            ..FallConfig::default()
        };
        let fired: usize = walks
            .iter()
            .map(|(_, rows)| {
                let mut det = FallDetector::new(unconfirmed);
                rows.iter()
                    .filter(|r| det.push(r[0], r[1], r[2], r[3]).is_some())
                    .count()
            })
            .sum();
        assert!(fired >= 10, "only {fired} unconfirmed falls on the walks");
    }
}
