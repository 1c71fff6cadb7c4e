//! The times each seed writes, in one place: seed 000 and 002 send strings
//! of Unix seconds (`"1700000000.123"`), seeds 003 and 004 RFC 3339 with
//! milliseconds, seed 002's connection listings `2024-12-03T10:30:00Z`.

use std::time::{Duration, UNIX_EPOCH};

use switchboard_proto::unix_now;

/// Now, as seeds 000 and 002 write it: `"1700000000.123"`.
pub fn unix_seconds_text() -> String {
    // Integer formatting: every realtime reply carries one, and a float
    // formatted to a precision costs several times more.
    let millis = (unix_now() * 1000.0).round() as u64;
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

/// Now, as seeds 003 and 004 write it: `"2026-11-22T23:00:00.000Z"`.
pub fn rfc3339_millis() -> String {
    switchboard_bus::rfc3339_now()
}

/// A time as seed 002's listings write it, `2024-12-03T10:30:00`, with the
/// `Z` that says it is UTC: without it a browser's `new Date()` reads it as
/// local time.
pub fn rfc3339_seconds(unix_seconds: f64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs_f64(unix_seconds.max(0.0));
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Whole seconds from `from` to `to`, as seed 002 counts them.
pub fn whole_seconds(from: f64, to: f64) -> u64 {
    (to - from).max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_the_seeds_write_them() {
        assert_eq!(rfc3339_seconds(1_733_221_800.5), "2024-12-03T10:30:00Z");
        assert_eq!(whole_seconds(10.0, 3609.9), 3599);
        let text = unix_seconds_text();
        assert!(text.parse::<f64>().is_ok() && text.split('.').nth(1).unwrap().len() == 3);
    }
}
