//! The clocks, and how times are written. A leaf: it imports no other module of the crate.
//!
//! The probes stamp records with `CLOCK_BOOTTIME`; events carry Unix time in RFC 3339.

/// Unix time now, in nanoseconds.
pub fn unix_now_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Unix time now, in seconds.
pub fn unix_now() -> i64 {
    (unix_now_ns() / 1_000_000_000) as i64
}

/// Unix time now, in milliseconds.
pub fn unix_now_ms() -> i64 {
    (unix_now_ns() / 1_000_000) as i64
}

/// `CLOCK_BOOTTIME` now, in nanoseconds: the clock of the probes' timestamps.
pub fn boot_now_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) as u64
}

/// What to add to a `CLOCK_BOOTTIME` timestamp to get Unix time, in nanoseconds.
pub fn boot_to_unix_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME)
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes to it.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// RFC 3339 in UTC with milliseconds: `2026-11-24T18:07:50.123Z`.
pub fn format_time(unix_ns: i128) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_string())
}

/// [`format_time`] of Unix seconds.
pub fn format_unix_secs(secs: i64) -> String {
    format_time(i128::from(secs) * 1_000_000_000)
}

/// Unix seconds of an RFC 3339 time (as [`format_time`] writes it).
pub fn parse_unix(rfc3339: &str) -> Option<i64> {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_time() {
        assert_eq!(format_time(1_764_007_670_123_456_789), "2025-11-24T18:07:50.123Z");
        assert_eq!(format_unix_secs(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse_unix("2025-11-24T18:07:50.123Z"), Some(1_764_007_670));
        assert_eq!(parse_unix("yesterday"), None);
    }

    #[test]
    fn clocks_agree() {
        let unix = unix_now_ns();
        let from_boot = i128::from(boot_now_ns()) + boot_to_unix_ns();
        assert!((unix - from_boot).abs() < 1_000_000_000, "{unix} vs {from_boot}");
    }
}
