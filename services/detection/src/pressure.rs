//! Statistics of one pressure frame, and a per-stream monitor for abnormal
//! pressure peaks.
//!
//! A smart insole or pressure mat streams frames: a matrix of pressure values,
//! `rows x columns`, where row 0 is the front (toes) and the last row the back
//! (heel), column 0 is the left and the last column the right. The values are
//! in whatever unit the sensor reports (kPa, N/cm², raw ADC counts): nothing
//! here depends on the unit, and every result is in the same unit or is a
//! ratio.
//!
//! # Frame statistics
//!
//! [`frame_stats`] (nested rows, as JSON clients send them) and
//! [`frame_stats_flat`] (row-major values plus a shape, as the gRPC messages
//! carry them) validate a frame and compute, in one implementation:
//!
//! - **Totals.** Total and mean pressure (the mean is over all cells, loaded or
//!   not, so frames of one sensor compare directly), and the peak with its cell.
//!   The peak cell is the first maximum in row-major order, so ties resolve the
//!   same way on every call.
//! - **Contact area.** Cells strictly above the contact threshold, and their
//!   share of the frame. The threshold is in the frame's unit; the default
//!   ([`DEFAULT_CONTACT_THRESHOLD`], 0) counts every loaded cell, and a caller
//!   whose sensor has an idle offset raises it to just above that offset.
//! - **Centre of pressure.** The pressure-weighted centroid in cell
//!   coordinates: `(row, column)` with the centre of the front-left cell at
//!   `(0, 0)` and of the back-right cell at `(rows - 1, columns - 1)`, so it
//!   maps onto the sensor layout without knowing the cell pitch. This is the
//!   usual definition of the centre of pressure, the point of application of
//!   the resultant vertical force (D. A. Winter, "Biomechanics and Motor
//!   Control of Human Movement", 4th ed., Wiley, 2009), and its path during
//!   stance is the standard summary of how the load rolls from heel to toe.
//!   It is absent for an unloaded frame, where it is undefined.
//! - **Balance.** The share of the total on the left half (columns) and on the
//!   front half (rows). With an odd count the middle column (row) lies on the
//!   dividing line and is split half and half, so a frame that is symmetric
//!   about its middle gives exactly 0.5 whatever its size. Absent for an
//!   unloaded frame.
//!
//! # Validation
//!
//! A frame is rejected ([`FrameError`]) when it is empty, larger than
//! [`MAX_ROWS`] x [`MAX_COLUMNS`], ragged, or holds a non-finite or negative
//! value. Pressure sensors measure compression only, so a negative value is a
//! calibration or transport fault, not a reading; letting it through would
//! also make the centroid and balances meaningless (weights could cancel).
//! The checks run before any arithmetic, and the size bound is checked before
//! the rows are walked, so a hostile frame costs at most one pass over 4096
//! values.
//!
//! Sums are plain f64 additions over at most 4096 cells, exact for the integer
//! counts most sensors report. For values so large that the total could
//! overflow f64 (beyond about 4e304 per cell) the sums are taken on values
//! scaled by an exact power of two; the ratios are unaffected and
//! `total_pressure` saturates at `f64::MAX`, so no statistic is ever infinite
//! or NaN, whatever finite values a client sends.
//!
//! # Abnormal peaks
//!
//! [`PeakMonitor`] flags a frame whose peak pressure is abnormal for its own
//! stream: above `max(floor, ratio * mean, mean + k * std)` of the recent
//! peaks, after a warm-up. Judging a stream against its own history adapts to
//! the wearer's weight, gait and sensor gain, which an absolute limit cannot;
//! the `mean + k * std` rule is the usual adaptive control limit (Shewhart /
//! EWMA control charts: D. C. Montgomery, "Introduction to Statistical Quality
//! Control", Wiley), with the statistics kept as exponential moving
//! mean and variance (as in the step detector) so memory stays constant over
//! an unbounded stream. The ratio term keeps a very steady stream, whose
//! standard deviation collapses towards zero, from flagging ordinary jitter.
//! See [`PeakMonitorConfig`] for the defaults and why.

use std::fmt;

/// Largest accepted number of rows. Insoles and mats in use have at most a few
/// dozen sensing rows; the bound keeps one frame's work and memory small
/// (4096 cells at most) whatever a client sends.
pub const MAX_ROWS: usize = 64;

/// Largest accepted number of columns, for the same reason as [`MAX_ROWS`].
pub const MAX_COLUMNS: usize = 64;

/// Default contact threshold: a cell is in contact when its value is strictly
/// above the threshold, so with 0 every loaded cell counts and an unloaded
/// (zero) cell does not. The threshold is in the frame's own unit; raise it
/// for sensors that report an idle offset or noise floor.
pub const DEFAULT_CONTACT_THRESHOLD: f64 = 0.0;

/// Largest value whose frame total cannot overflow f64 (`f64::MAX / 4096`);
/// frames with a larger peak are summed on scaled values.
const UNSCALED_LIMIT: f64 = f64::MAX / (MAX_ROWS * MAX_COLUMNS) as f64;
/// Exact power-of-two scale (2^-16) for frames above [`UNSCALED_LIMIT`].
const OVERFLOW_SCALE: f64 = 1.0 / 65536.0;

/// Summary of one pressure frame. Pressures are in the frame's unit; positions
/// are in cell coordinates (row 0 front, column 0 left, cell centres at
/// integer coordinates).
#[derive(Debug, Clone, PartialEq)]
pub struct FrameStats {
    /// Number of rows (front to back).
    pub rows: usize,
    /// Number of columns (left to right).
    pub columns: usize,
    /// Sum of all cells: the load the sensor carries, up to its calibration.
    pub total_pressure: f64,
    /// Total divided by the number of cells (all cells, loaded or not).
    pub mean_pressure: f64,
    /// Highest cell value.
    pub peak_pressure: f64,
    /// Row of the peak cell (the first maximum in row-major order).
    pub peak_row: usize,
    /// Column of the peak cell.
    pub peak_column: usize,
    /// Cells whose value is strictly above the contact threshold.
    pub contact_cells: usize,
    /// `contact_cells` divided by the number of cells, 0..=1.
    pub contact_area_ratio: f64,
    /// Pressure-weighted centroid `(row, column)` in cell coordinates; `None`
    /// when the frame carries no load.
    pub center_of_pressure: Option<(f64, f64)>,
    /// Share of the total on the left half of the columns, 0..=1 (a middle
    /// column of an odd count counts half); `None` when the frame carries no load.
    pub left_right_balance: Option<f64>,
    /// Share of the total on the front half of the rows, 0..=1 (a middle row of
    /// an odd count counts half); `None` when the frame carries no load.
    pub front_back_balance: Option<f64>,
}

/// Why a frame was rejected. Positions are 0-based, as in the request.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameError {
    /// No rows, or rows without values.
    Empty,
    /// More rows or columns than [`MAX_ROWS`] / [`MAX_COLUMNS`].
    TooLarge {
        /// Rows received.
        rows: usize,
        /// Columns received (of the first row, for nested frames).
        columns: usize,
    },
    /// A row whose length differs from the first row's.
    Ragged {
        /// The offending row.
        row: usize,
        /// Length of the first row.
        expected: usize,
        /// Length of this row.
        found: usize,
    },
    /// A flat frame whose value count is not `rows * columns`.
    LengthMismatch {
        /// Rows declared.
        rows: usize,
        /// Columns declared.
        columns: usize,
        /// Values received.
        found: usize,
    },
    /// A NaN or infinite value.
    NotFinite {
        /// Row of the first such value.
        row: usize,
        /// Column of the first such value.
        column: usize,
    },
    /// A negative value: pressure sensors measure compression only.
    Negative {
        /// Row of the first such value.
        row: usize,
        /// Column of the first such value.
        column: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty => write!(
                f,
                "the pressure frame is empty: send at least one row with one value"
            ),
            Self::TooLarge { rows, columns } => write!(
                f,
                "the pressure frame is {rows} x {columns}, larger than the maximum {MAX_ROWS} x {MAX_COLUMNS}"
            ),
            Self::Ragged {
                row,
                expected,
                found,
            } => write!(f, "row {row} has {found} values, expected {expected}"),
            Self::LengthMismatch {
                rows,
                columns,
                found,
            } => write!(
                f,
                "the frame has {found} values, expected {rows} rows x {columns} columns = {}",
                rows * columns
            ),
            Self::NotFinite { row, column } => write!(
                f,
                "the value at row {row}, column {column} is not a finite number"
            ),
            Self::Negative { row, column } => write!(
                f,
                "the value at row {row}, column {column} is negative; pressures must be 0 or more"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Validates a frame given as rows and computes its statistics.
///
/// `contact_threshold` is in the frame's unit: cells strictly above it are in
/// contact. A NaN threshold is replaced by [`DEFAULT_CONTACT_THRESHOLD`]; a
/// negative one counts every cell.
///
/// # Errors
///
/// [`FrameError`] for an empty, oversized or ragged frame, or one holding a
/// non-finite or negative value (the first such cell in row-major order).
pub fn frame_stats(matrix: &[Vec<f64>], contact_threshold: f64) -> Result<FrameStats, FrameError> {
    let rows = matrix.len();
    let columns = matrix.first().map_or(0, Vec::len);
    if rows == 0 || columns == 0 {
        return Err(FrameError::Empty);
    }
    if rows > MAX_ROWS || columns > MAX_COLUMNS {
        return Err(FrameError::TooLarge { rows, columns });
    }
    if let Some((row, r)) = matrix.iter().enumerate().find(|(_, r)| r.len() != columns) {
        return Err(FrameError::Ragged {
            row,
            expected: columns,
            found: r.len(),
        });
    }
    compute(rows, columns, contact_threshold, |r| &matrix[r])
}

/// Validates a frame given as row-major values (`values[row * columns +
/// column]`) and computes its statistics; the same computation as
/// [`frame_stats`], for transports that carry a flat array and a shape.
///
/// # Errors
///
/// As [`frame_stats`], with [`FrameError::LengthMismatch`] when `values` does
/// not hold exactly `rows * columns` values.
pub fn frame_stats_flat(
    values: &[f64],
    rows: usize,
    columns: usize,
    contact_threshold: f64,
) -> Result<FrameStats, FrameError> {
    if rows == 0 || columns == 0 {
        return Err(FrameError::Empty);
    }
    if rows > MAX_ROWS || columns > MAX_COLUMNS {
        return Err(FrameError::TooLarge { rows, columns });
    }
    if values.len() != rows * columns {
        return Err(FrameError::LengthMismatch {
            rows,
            columns,
            found: values.len(),
        });
    }
    compute(rows, columns, contact_threshold, |r| {
        &values[r * columns..(r + 1) * columns]
    })
}

/// Share of `total` in the first half of `sums`, the middle entry of an odd
/// count split half and half.
fn first_half_share(sums: &[f64], total: f64) -> f64 {
    let n = sums.len();
    let mut first: f64 = sums[..n / 2].iter().sum();
    if n % 2 == 1 {
        first += 0.5 * sums[n / 2];
    }
    (first / total).clamp(0.0, 1.0)
}

/// The shared computation: `row_at(r)` yields row `r` (already of length
/// `columns`) for `r < rows`; `rows` and `columns` are within bounds and non-zero.
fn compute<'a>(
    rows: usize,
    columns: usize,
    contact_threshold: f64,
    row_at: impl Fn(usize) -> &'a [f64],
) -> Result<FrameStats, FrameError> {
    let threshold = if contact_threshold.is_nan() {
        DEFAULT_CONTACT_THRESHOLD
    } else {
        contact_threshold
    };

    let mut peak = f64::NEG_INFINITY;
    let (mut peak_row, mut peak_column) = (0, 0);
    let mut contact_cells = 0;
    for r in 0..rows {
        for (c, &v) in row_at(r).iter().enumerate() {
            if !v.is_finite() {
                return Err(FrameError::NotFinite { row: r, column: c });
            }
            if v < 0.0 {
                return Err(FrameError::Negative { row: r, column: c });
            }
            if v > peak {
                peak = v;
                (peak_row, peak_column) = (r, c);
            }
            if v > threshold {
                contact_cells += 1;
            }
        }
    }

    let scale = if peak > UNSCALED_LIMIT {
        OVERFLOW_SCALE
    } else {
        1.0
    };
    let mut row_sums = [0.0; MAX_ROWS];
    let mut column_sums = [0.0; MAX_COLUMNS];
    for (r, row_sum) in row_sums.iter_mut().enumerate().take(rows) {
        for (c, &v) in row_at(r).iter().enumerate() {
            let v = v * scale;
            *row_sum += v;
            column_sums[c] += v;
        }
    }
    let row_sums = &row_sums[..rows];
    let column_sums = &column_sums[..columns];
    let scaled_total: f64 = row_sums.iter().sum();

    let cells = (rows * columns) as f64;
    let loaded = scaled_total > 0.0;
    let centroid = |sums: &[f64]| {
        sums.iter()
            .enumerate()
            .map(|(i, s)| i as f64 * s)
            .sum::<f64>()
            / scaled_total
    };
    Ok(FrameStats {
        rows,
        columns,
        total_pressure: (scaled_total / scale).min(f64::MAX),
        mean_pressure: scaled_total / cells / scale,
        peak_pressure: peak,
        peak_row,
        peak_column,
        contact_cells,
        contact_area_ratio: contact_cells as f64 / cells,
        center_of_pressure: loaded.then(|| (centroid(row_sums), centroid(column_sums))),
        left_right_balance: loaded.then(|| first_half_share(column_sums, scaled_total)),
        front_back_balance: loaded.then(|| first_half_share(row_sums, scaled_total)),
    })
}

/// Tuning of [`PeakMonitor`]. Counts are in frames, so the monitor does not
/// depend on the frame rate's clock; at the typical 20 to 100 frames/s of
/// insoles the defaults span a fraction of a second to a few seconds.
/// Non-finite or out-of-range values are replaced or clamped when the monitor
/// is built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakMonitorConfig {
    /// Frames observed after a reset before any frame may be flagged, so the
    /// baseline describes the stream and not its first frames. Default 20.
    pub warmup_frames: u32,
    /// Memory of the exponential running mean and variance of the peaks, in
    /// frames (the statistics are cumulative until this many frames were
    /// seen). Long enough to span many gait cycles, short enough to follow a
    /// change of activity or posture. Default 100.
    pub time_constant_frames: f64,
    /// Standard deviations above the running mean a peak must exceed. 3 is the
    /// classic control limit (about 0.1 % false alarms for a normal process);
    /// a walking stream's peaks alternate between swing and stance, so its
    /// standard deviation is large and 3 σ sits at about twice the stance
    /// peak. Default 3.
    pub threshold_k: f64,
    /// A peak must also exceed this multiple of the running mean. A very steady
    /// stream (someone standing still) has almost no variance, and `mean + k
    /// std` alone would flag any small shift; twice the usual peak is a
    /// clinically meaningful jump. Default 2.
    pub min_ratio: f64,
    /// Absolute floor on the threshold, in the frame's unit, so an almost
    /// unloaded stream (sensor noise) never flags. Default 0 (no floor), since
    /// the unit is the client's; set it for a known sensor.
    pub min_peak: f64,
    /// Frames after a flagged frame that cannot be flagged, so one event
    /// (usually several frames long) is reported once. Default 10.
    pub refractory_frames: u32,
}

impl Default for PeakMonitorConfig {
    fn default() -> Self {
        Self {
            warmup_frames: 20,
            time_constant_frames: 100.0,
            threshold_k: 3.0,
            min_ratio: 2.0,
            min_peak: 0.0,
            refractory_frames: 10,
        }
    }
}

impl PeakMonitorConfig {
    /// Replaces non-finite or out-of-range values so the monitor always has a
    /// usable threshold.
    fn sanitized(self) -> Self {
        let d = Self::default();
        let pick = crate::limits::finite_within;
        Self {
            warmup_frames: self.warmup_frames,
            time_constant_frames: pick(
                self.time_constant_frames,
                d.time_constant_frames,
                1.0,
                1.0e6,
            ),
            threshold_k: pick(self.threshold_k, d.threshold_k, 0.0, 100.0),
            min_ratio: pick(self.min_ratio, d.min_ratio, 0.0, 1.0e6),
            min_peak: pick(self.min_peak, d.min_peak, 0.0, f64::MAX),
            refractory_frames: self.refractory_frames,
        }
    }
}

/// A frame whose peak pressure was abnormal for its stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakAnomaly {
    /// The frame's peak pressure.
    pub peak_pressure: f64,
    /// Running mean of the stream's recent peaks, before this frame.
    pub baseline: f64,
    /// Threshold the peak exceeded.
    pub threshold: f64,
    /// Row of the peak cell.
    pub row: usize,
    /// Column of the peak cell.
    pub column: usize,
}

/// Running mean/variance: cumulative while fewer than `1/alpha` values were
/// seen, exponential afterwards, so it starts fast and never stops adapting.
#[derive(Debug, Clone, Copy, Default)]
struct RunningStats {
    mean: f64,
    var: f64,
    n: u32,
}

impl RunningStats {
    fn update(&mut self, x: f64, alpha: f64) {
        self.n = self.n.saturating_add(1);
        let a = (1.0 / f64::from(self.n)).max(alpha);
        let d = x - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
    }
}

/// Per-stream monitor of abnormal peak pressure. Holds a few numbers (running
/// statistics and counters), so it can follow a stream indefinitely; keep one
/// per stream and feed it every frame's [`FrameStats`].
#[derive(Debug, Clone)]
pub struct PeakMonitor {
    config: PeakMonitorConfig,
    alpha: f64,
    stats: RunningStats,
    /// Frames left in the refractory period after a flag.
    refractory_left: u32,
}

impl PeakMonitor {
    /// Builds a monitor; out-of-range config values are clamped.
    #[must_use]
    pub fn new(config: PeakMonitorConfig) -> Self {
        let config = config.sanitized();
        Self {
            config,
            alpha: 1.0 / config.time_constant_frames,
            stats: RunningStats::default(),
            refractory_left: 0,
        }
    }

    /// The configuration in use, after clamping.
    #[must_use]
    pub fn config(&self) -> &PeakMonitorConfig {
        &self.config
    }

    /// Compares the frame's peak with the stream's recent peaks, then adds it
    /// to them. Returns the anomaly when the peak is above the threshold,
    /// the warm-up is over and no anomaly was flagged in the last
    /// `refractory_frames` frames.
    ///
    /// Every frame, flagged or not, joins the statistics: a lasting new level
    /// (heavier load, another activity) becomes the baseline within about one
    /// time constant instead of being flagged forever. A peak that is not a
    /// finite non-negative number (only possible for hand-built stats) is
    /// ignored.
    pub fn observe(&mut self, stats: &FrameStats) -> Option<PeakAnomaly> {
        let peak = stats.peak_pressure;
        if !peak.is_finite() || peak < 0.0 {
            return None;
        }
        let baseline = self.stats.mean;
        let threshold = (baseline + self.config.threshold_k * self.stats.var.sqrt())
            .max(self.config.min_ratio * baseline)
            .max(self.config.min_peak);
        let warmed_up = self.stats.n >= self.config.warmup_frames;
        self.stats.update(peak, self.alpha);

        if self.refractory_left > 0 {
            self.refractory_left -= 1;
            return None;
        }
        if !warmed_up || peak <= threshold {
            return None;
        }
        self.refractory_left = self.config.refractory_frames;
        Some(PeakAnomaly {
            peak_pressure: peak,
            baseline,
            threshold,
            row: stats.peak_row,
            column: stats.peak_column,
        })
    }

    /// Forget the stream's history, as new.
    pub fn reset(&mut self) {
        *self = Self::new(self.config);
    }
}

#[cfg(test)]
mod tests {
    //! Frame statistics against values computed by hand, validation errors,
    //! and the peak monitor on synthetic streams.

    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * (1.0 + a.abs().max(b.abs()))
    }

    /// Asserts every field, floats to a relative 1e-12.
    fn assert_stats(got: &FrameStats, want: &FrameStats) {
        assert_eq!((got.rows, got.columns), (want.rows, want.columns));
        assert!(
            close(got.total_pressure, want.total_pressure),
            "total {got:?}"
        );
        assert!(close(got.mean_pressure, want.mean_pressure), "mean {got:?}");
        assert!(close(got.peak_pressure, want.peak_pressure), "peak {got:?}");
        assert_eq!(
            (got.peak_row, got.peak_column),
            (want.peak_row, want.peak_column)
        );
        assert_eq!(got.contact_cells, want.contact_cells);
        assert!(
            close(got.contact_area_ratio, want.contact_area_ratio),
            "area {got:?}"
        );
        match (got.center_of_pressure, want.center_of_pressure) {
            (Some((r, c)), Some((wr, wc))) => {
                assert!(close(r, wr) && close(c, wc), "cop {got:?}");
            }
            (None, None) => {}
            _ => panic!("cop {got:?}, want {want:?}"),
        }
        for (g, w, name) in [
            (
                got.left_right_balance,
                want.left_right_balance,
                "left/right",
            ),
            (
                got.front_back_balance,
                want.front_back_balance,
                "front/back",
            ),
        ] {
            match (g, w) {
                (Some(g), Some(w)) => assert!(close(g, w), "{name} {got:?}"),
                (None, None) => {}
                _ => panic!("{name} {got:?}, want {want:?}"),
            }
        }
    }

    fn flat(matrix: &[Vec<f64>]) -> Vec<f64> {
        matrix.iter().flatten().copied().collect()
    }

    /// Checks the nested and the flat form against the same expectation.
    fn check(matrix: &[Vec<f64>], threshold: f64, want: &FrameStats) {
        assert_stats(&frame_stats(matrix, threshold).expect("valid frame"), want);
        let values = flat(matrix);
        let got = frame_stats_flat(&values, matrix.len(), matrix[0].len(), threshold)
            .expect("valid flat frame");
        assert_stats(&got, want);
    }

    #[test]
    fn one_by_one() {
        // One cell of 5: everything sits at (0, 0); the single column and the
        // single row are both "middle" ones, split half and half.
        check(
            &[vec![5.0]],
            DEFAULT_CONTACT_THRESHOLD,
            &FrameStats {
                rows: 1,
                columns: 1,
                total_pressure: 5.0,
                mean_pressure: 5.0,
                peak_pressure: 5.0,
                peak_row: 0,
                peak_column: 0,
                contact_cells: 1,
                contact_area_ratio: 1.0,
                center_of_pressure: Some((0.0, 0.0)),
                left_right_balance: Some(0.5),
                front_back_balance: Some(0.5),
            },
        );
    }

    #[test]
    fn two_by_two() {
        // [[1, 2], [3, 4]]: total 10, mean 2.5, peak 4 at (1, 1).
        // Row sums 3 and 7: centre row = 7 / 10 = 0.7, front share 3 / 10.
        // Column sums 4 and 6: centre column = 6 / 10 = 0.6, left share 4 / 10.
        // Threshold 1.5: cells 2, 3, 4 are in contact, 3 / 4.
        check(
            &[vec![1.0, 2.0], vec![3.0, 4.0]],
            1.5,
            &FrameStats {
                rows: 2,
                columns: 2,
                total_pressure: 10.0,
                mean_pressure: 2.5,
                peak_pressure: 4.0,
                peak_row: 1,
                peak_column: 1,
                contact_cells: 3,
                contact_area_ratio: 0.75,
                center_of_pressure: Some((0.7, 0.6)),
                left_right_balance: Some(0.4),
                front_back_balance: Some(0.3),
            },
        );
    }

    #[test]
    fn three_by_three_with_middle_row_and_column() {
        // [[0, 1, 2],
        //  [3, 4, 0],
        //  [0, 0, 6]]
        // total 16, mean 16 / 9, peak 6 at (2, 2); 5 cells > 0 -> 5 / 9.
        // Row sums 3, 7, 6: centre row (0*3 + 1*7 + 2*6) / 16 = 19 / 16;
        //   front share (3 + 7 / 2) / 16 = 6.5 / 16.
        // Column sums 3, 5, 8: centre column (5 + 16) / 16 = 21 / 16;
        //   left share (3 + 5 / 2) / 16 = 5.5 / 16.
        check(
            &[
                vec![0.0, 1.0, 2.0],
                vec![3.0, 4.0, 0.0],
                vec![0.0, 0.0, 6.0],
            ],
            0.0,
            &FrameStats {
                rows: 3,
                columns: 3,
                total_pressure: 16.0,
                mean_pressure: 16.0 / 9.0,
                peak_pressure: 6.0,
                peak_row: 2,
                peak_column: 2,
                contact_cells: 5,
                contact_area_ratio: 5.0 / 9.0,
                center_of_pressure: Some((19.0 / 16.0, 21.0 / 16.0)),
                left_right_balance: Some(5.5 / 16.0),
                front_back_balance: Some(6.5 / 16.0),
            },
        );
    }

    #[test]
    fn non_square_and_ties() {
        // 2 x 3, [[2, 0, 2], [2, 0, 2]]: the peak 2 appears four times, the
        // first in row-major order is (0, 0). Symmetric about the middle
        // column and between the rows: balances 0.5, centre (0.5, 1).
        // Threshold 2 is exclusive: no cell is in contact.
        check(
            &[vec![2.0, 0.0, 2.0], vec![2.0, 0.0, 2.0]],
            2.0,
            &FrameStats {
                rows: 2,
                columns: 3,
                total_pressure: 8.0,
                mean_pressure: 8.0 / 6.0,
                peak_pressure: 2.0,
                peak_row: 0,
                peak_column: 0,
                contact_cells: 0,
                contact_area_ratio: 0.0,
                center_of_pressure: Some((0.5, 1.0)),
                left_right_balance: Some(0.5),
                front_back_balance: Some(0.5),
            },
        );
    }

    #[test]
    fn all_zero_frame_has_no_centre_or_balance() {
        check(
            &vec![vec![0.0; 4]; 3],
            DEFAULT_CONTACT_THRESHOLD,
            &FrameStats {
                rows: 3,
                columns: 4,
                total_pressure: 0.0,
                mean_pressure: 0.0,
                peak_pressure: 0.0,
                peak_row: 0,
                peak_column: 0,
                contact_cells: 0,
                contact_area_ratio: 0.0,
                center_of_pressure: None,
                left_right_balance: None,
                front_back_balance: None,
            },
        );
    }

    #[test]
    fn thresholds_negative_and_nan() {
        let m = [vec![0.0, 1.0]];
        let all = frame_stats(&m, -1.0).expect("valid");
        assert_eq!(all.contact_cells, 2);
        let nan = frame_stats(&m, f64::NAN).expect("valid");
        assert_eq!(nan.contact_cells, 1, "NaN threshold acts as the default");
        assert_eq!(
            frame_stats(&m, f64::INFINITY).expect("valid").contact_cells,
            0
        );
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let big = f64::MAX / 2.0;
        let s = frame_stats(&[vec![big, big], vec![big, big]], 0.0).expect("valid");
        assert_eq!(s.total_pressure, f64::MAX);
        assert!(close(s.mean_pressure, big));
        assert_eq!(s.center_of_pressure, Some((0.5, 0.5)));
        assert_eq!(s.left_right_balance, Some(0.5));
        assert_eq!(s.front_back_balance, Some(0.5));
    }

    #[test]
    fn empty_frames() {
        assert_eq!(frame_stats(&[], 0.0), Err(FrameError::Empty));
        assert_eq!(frame_stats(&[vec![]], 0.0), Err(FrameError::Empty));
        assert_eq!(frame_stats_flat(&[], 0, 3, 0.0), Err(FrameError::Empty));
        assert_eq!(frame_stats_flat(&[], 3, 0, 0.0), Err(FrameError::Empty));
    }

    #[test]
    fn ragged_frame() {
        let m = [vec![1.0; 4], vec![1.0; 4], vec![1.0; 3]];
        let err = frame_stats(&m, 0.0).unwrap_err();
        assert_eq!(
            err,
            FrameError::Ragged {
                row: 2,
                expected: 4,
                found: 3
            }
        );
        assert_eq!(err.to_string(), "row 2 has 3 values, expected 4");
        let longer = [vec![1.0; 2], vec![1.0; 100]];
        assert_eq!(
            frame_stats(&longer, 0.0),
            Err(FrameError::Ragged {
                row: 1,
                expected: 2,
                found: 100
            })
        );
    }

    #[test]
    fn flat_length_mismatch() {
        let err = frame_stats_flat(&[1.0; 10], 3, 4, 0.0).unwrap_err();
        assert_eq!(
            err,
            FrameError::LengthMismatch {
                rows: 3,
                columns: 4,
                found: 10
            }
        );
        assert_eq!(
            err.to_string(),
            "the frame has 10 values, expected 3 rows x 4 columns = 12"
        );
        assert!(frame_stats_flat(&[1.0; 14], 3, 4, 0.0).is_err());
    }

    #[test]
    fn non_finite_values() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let m = [vec![1.0, 2.0], vec![3.0, bad]];
            let want = FrameError::NotFinite { row: 1, column: 1 };
            assert_eq!(frame_stats(&m, 0.0), Err(want.clone()));
            assert_eq!(frame_stats_flat(&flat(&m), 2, 2, 0.0), Err(want));
        }
        assert_eq!(
            FrameError::NotFinite { row: 1, column: 1 }.to_string(),
            "the value at row 1, column 1 is not a finite number"
        );
    }

    #[test]
    fn negative_values() {
        let m = [vec![1.0, -0.5, -2.0]];
        let want = FrameError::Negative { row: 0, column: 1 };
        assert_eq!(frame_stats(&m, 0.0), Err(want.clone()));
        assert_eq!(frame_stats_flat(&flat(&m), 1, 3, 0.0), Err(want.clone()));
        assert!(want.to_string().contains("row 0, column 1 is negative"));
        let zero = frame_stats(&[vec![-0.0]], 0.0).expect("-0 is zero");
        assert_eq!(zero.total_pressure, 0.0);
    }

    #[test]
    fn too_large_frames() {
        let tall = vec![vec![0.0; 2]; MAX_ROWS + 1];
        assert_eq!(
            frame_stats(&tall, 0.0),
            Err(FrameError::TooLarge {
                rows: MAX_ROWS + 1,
                columns: 2
            })
        );
        let wide = vec![vec![0.0; MAX_COLUMNS + 1]];
        assert_eq!(
            frame_stats(&wide, 0.0),
            Err(FrameError::TooLarge {
                rows: 1,
                columns: MAX_COLUMNS + 1
            })
        );
        assert_eq!(
            frame_stats_flat(&[], usize::MAX, usize::MAX, 0.0),
            Err(FrameError::TooLarge {
                rows: usize::MAX,
                columns: usize::MAX
            })
        );
        let err = frame_stats(&tall, 0.0).unwrap_err().to_string();
        assert_eq!(
            err,
            "the pressure frame is 65 x 2, larger than the maximum 64 x 64"
        );
        let largest = vec![vec![1.0; MAX_COLUMNS]; MAX_ROWS];
        let s = frame_stats(&largest, 0.0).expect("the maximum size is accepted");
        assert_eq!(s.total_pressure, 4096.0);
        assert_eq!(s.center_of_pressure, Some((31.5, 31.5)));
    }

    #[test]
    fn errors_are_std_errors() {
        fn takes(_: &dyn std::error::Error) {}
        takes(&FrameError::Empty);
        assert!(FrameError::Empty.to_string().contains("empty"));
    }

    /// Stats of a frame whose only loaded cell is (1, 2) with value `peak`.
    fn frame_with_peak(peak: f64) -> FrameStats {
        let mut m = vec![vec![0.0; 4]; 3];
        m[1][2] = peak;
        frame_stats(&m, 0.0).expect("valid")
    }

    /// Deterministic jitter in -1..1 (a small LCG), so the tests need no crates.
    fn jitter(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((*state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    #[test]
    fn steady_frames_never_flag() {
        let mut monitor = PeakMonitor::new(PeakMonitorConfig::default());
        let mut rng = 1;
        for _ in 0..20_000 {
            let peak = 100.0 * (1.0 + 0.1 * jitter(&mut rng));
            assert_eq!(monitor.observe(&frame_with_peak(peak)), None);
        }
        let mut exact = PeakMonitor::new(PeakMonitorConfig::default());
        for _ in 0..1000 {
            assert_eq!(exact.observe(&frame_with_peak(100.0)), None);
        }
    }

    #[test]
    fn walking_stream_never_flags() {
        // Stance frames near 100 alternate with swing frames near 0 (25 frames
        // each, 1 s steps at 50 frames/s).
        let mut monitor = PeakMonitor::new(PeakMonitorConfig::default());
        let mut rng = 2;
        for i in 0..20_000 {
            let stance = (i / 25) % 2 == 0;
            let peak = if stance {
                100.0 * (1.0 + 0.15 * jitter(&mut rng))
            } else {
                2.0 * (1.0 + jitter(&mut rng))
            };
            assert_eq!(monitor.observe(&frame_with_peak(peak)), None, "frame {i}");
        }
    }

    #[test]
    fn sudden_triple_peak_flags_once() {
        let mut monitor = PeakMonitor::new(PeakMonitorConfig::default());
        let mut rng = 3;
        for _ in 0..200 {
            let peak = 100.0 * (1.0 + 0.1 * jitter(&mut rng));
            assert_eq!(monitor.observe(&frame_with_peak(peak)), None);
        }
        let baseline = monitor.stats.mean;
        let anomaly = monitor
            .observe(&frame_with_peak(300.0))
            .expect("a 3x peak is abnormal");
        assert_eq!(anomaly.peak_pressure, 300.0);
        assert_eq!(anomaly.baseline, baseline);
        assert!(anomaly.threshold > 150.0 && anomaly.threshold < 300.0);
        assert_eq!((anomaly.row, anomaly.column), (1, 2));
        let later: usize = (0..5)
            .filter(|_| monitor.observe(&frame_with_peak(300.0)).is_some())
            .count();
        assert_eq!(later, 0, "the refractory period suppresses repeats");
        let mut flags = 0;
        for _ in 0..200 {
            let peak = 100.0 * (1.0 + 0.1 * jitter(&mut rng));
            flags += usize::from(monitor.observe(&frame_with_peak(peak)).is_some());
        }
        assert_eq!(flags, 0, "back to normal");
    }

    #[test]
    fn no_flag_during_warmup() {
        let config = PeakMonitorConfig::default();
        let mut monitor = PeakMonitor::new(config);
        for i in 0..config.warmup_frames {
            let peak = if i % 2 == 0 { 10.0 } else { 1000.0 };
            assert_eq!(monitor.observe(&frame_with_peak(peak)), None, "frame {i}");
        }
    }

    #[test]
    fn lasting_new_level_becomes_the_baseline() {
        let mut monitor = PeakMonitor::new(PeakMonitorConfig::default());
        for _ in 0..200 {
            monitor.observe(&frame_with_peak(100.0));
        }
        let flags = (0..2000)
            .filter(|_| monitor.observe(&frame_with_peak(300.0)).is_some())
            .count();
        assert!((1..=3).contains(&flags), "flagged {flags} times");
    }

    #[test]
    fn floor_silences_noise_and_reset_restarts() {
        let config = PeakMonitorConfig {
            min_peak: 50.0,
            ..PeakMonitorConfig::default()
        };
        let mut monitor = PeakMonitor::new(config);
        for _ in 0..100 {
            monitor.observe(&frame_with_peak(1.0));
        }
        assert_eq!(monitor.observe(&frame_with_peak(10.0)), None);
        assert!(monitor.observe(&frame_with_peak(60.0)).is_some());
        monitor.reset();
        assert_eq!(monitor.stats.n, 0);
        assert_eq!(
            monitor.observe(&frame_with_peak(1000.0)),
            None,
            "warm-up again"
        );
        let mut bad = frame_with_peak(1.0);
        bad.peak_pressure = f64::NAN;
        assert_eq!(monitor.observe(&bad), None);
        assert_eq!(monitor.stats.n, 1, "a NaN peak is not counted");
    }

    #[test]
    fn config_is_sanitized() {
        let monitor = PeakMonitor::new(PeakMonitorConfig {
            time_constant_frames: f64::NAN,
            threshold_k: -1.0,
            min_peak: f64::INFINITY,
            ..PeakMonitorConfig::default()
        });
        let c = monitor.config();
        assert_eq!(c.time_constant_frames, 100.0);
        assert_eq!(c.threshold_k, 0.0);
        assert_eq!(c.min_peak, 0.0);
        fn assert_send<T: Send>() {}
        assert_send::<PeakMonitor>();
    }
}
