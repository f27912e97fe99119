//! Durations on the command line: `30s`, `10m`, `2h`, `7d`, or several at once (`1h30m`).

use std::time::Duration;

/// Parses a duration made of one or more `<number><unit>` parts, the unit one of `ms`, `s`,
/// `m`, `h`, `d` or `w`.
///
/// # Errors
///
/// A message saying what is wrong, for clap to show.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write for example 30s, 10m, 2h or 7d".to_owned());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("`{text}`: expected a number before `{rest}`"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|e| format!("`{text}`: {e}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let seconds_per_unit = match unit {
            "ms" => {
                total = total.saturating_add(Duration::from_millis(number));
                continue;
            }
            "s" | "sec" | "secs" => 1,
            "m" | "min" | "mins" => 60,
            "h" | "hr" | "hrs" => 3_600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 604_800,
            "" => return Err(format!("`{text}`: a unit is missing (ms, s, m, h, d or w)")),
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}` (ms, s, m, h, d or w)"
                ));
            }
        };
        total = total.saturating_add(Duration::from_secs(number.saturating_mul(seconds_per_unit)));
    }
    Ok(total)
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
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in ["", "10", "h", "5y", "1h 2m", "-1s"] {
            assert!(parse(bad).is_err(), "{bad} parsed");
        }
    }
}
