//! Durations on the command line, read by `humantime`: `30s`, `10m`, `2h`, `7d`, `1h30m`,
//! `250ms`, `2weeks`.

use std::time::Duration;

/// Parses a duration made of one or more `<number><unit>` parts (`ms`, `s`, `m`, `h`, `d`,
/// `w` and their long forms).
///
/// # Errors
///
/// A message saying what is wrong, for clap to show.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}`: {e}; write for example 30s, 10m, 2h, 7d or 1h30m"))
}

/// `duration` in whole milliseconds, saturating at `i64::MAX`.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2w"), Ok(Duration::from_secs(1_209_600)));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in ["", "10", "h", "5 parsecs", "-1s", "1x"] {
            assert!(parse(bad).is_err(), "{bad} parsed");
        }
    }
}
