//! Durations written as `250ms`, `30s`, `5m`, `2h`, `1d` (or a bare number of
//! seconds).

use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(format!("expected a duration such as 500ms, 30s, 5m, 2h or 1d, got {s:?}"));
    }
    let n: u64 = s[..digits].parse().map_err(|_| format!("duration {s:?} is too large"))?;
    let unit_ms: u64 = match &s[digits..] {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => return Err(format!("unknown duration unit {u:?} in {s:?}: use ms, s, m, h or d")),
    };
    n.checked_mul(unit_ms).map(Duration::from_millis).ok_or_else(|| format!("duration {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86400)));
    }
    #[test]
    fn rejects_garbage() {
        assert!(parse("").is_err());
        assert!(parse("h").is_err());
        assert!(parse("5 weeks").unwrap_err().contains("unknown duration unit"));
        assert!(parse("99999999999999999999s").is_err());
        assert!(parse("18446744073709551615d").unwrap_err().contains("too large"));
    }
}
