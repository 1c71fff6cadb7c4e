//! What every detector accepts: the physical bound on a phone's
//! acceleration, and how a configuration value outside its range is made
//! safe, so no detector can be built with unbounded windows or a degenerate
//! threshold.

/// Magnitudes above this (about 100 g) are not physical for a phone and are
/// ignored.
pub(crate) const MAX_MAGNITUDE: f64 = 1000.0;

/// `value` clamped to `low..=high`, or `default` when it is not finite.
pub(crate) fn finite_within(value: f64, default: f64, low: f64, high: f64) -> f64 {
    if value.is_finite() {
        value.clamp(low, high)
    } else {
        default
    }
}

#[cfg(test)]
mod tests {
    use super::finite_within;

    #[test]
    fn out_of_range_values_are_clamped_and_non_finite_ones_replaced() {
        assert_eq!(finite_within(5.0, 1.0, 0.0, 2.0), 2.0);
        assert_eq!(finite_within(-1.0, 1.0, 0.0, 2.0), 0.0);
        assert_eq!(finite_within(f64::NAN, 1.0, 0.0, 2.0), 1.0);
        assert_eq!(finite_within(f64::INFINITY, 1.0, 0.0, 2.0), 1.0);
    }
}
