//! Timestamps as the outside world sees them.

use std::time::{Duration, UNIX_EPOCH};

/// Unix seconds as RFC 3339 in UTC, e.g. `2026-11-26T21:57:15Z`.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_730_235), "2026-11-26T21:57:15Z");
    }
}
