//! What a check's HTTP answer says about the proxy's IP, as pure logic
//! with time passed in (Unix seconds): the IP is fine, the exchange refuses
//! it (burned: a ban, a WAF block, a restricted location), or the exchange
//! itself is in trouble (not the IP's fault). Transport failures (connect,
//! handshake, TLS, timeout) never reach here: they are proxy failures.

use std::time::{Duration, UNIX_EPOCH};

/// How a burn answer is recognised in a body.
#[derive(Debug, Clone)]
pub enum BodyMatch {
    /// Found anywhere in the body, ASCII case ignored.
    Contains(String),
    Regex(regex::Regex),
}

impl BodyMatch {
    /// `/…/` is a regular expression, anything else a substring.
    pub fn parse(s: &str) -> Result<BodyMatch, String> {
        match s.strip_prefix('/').and_then(|r| r.strip_suffix('/')) {
            Some(re) if !re.is_empty() => regex::Regex::new(re)
                .map(BodyMatch::Regex)
                .map_err(|e| format!("invalid regular expression {re:?}: {e}")),
            _ if s.is_empty() => Err("an empty pattern matches every body".into()),
            _ => Ok(BodyMatch::Contains(s.to_ascii_lowercase())),
        }
    }

    fn matches(&self, body: &str) -> bool {
        match self {
            BodyMatch::Contains(s) => body.to_ascii_lowercase().contains(s.as_str()),
            BodyMatch::Regex(r) => r.is_match(body),
        }
    }

    fn shown(&self) -> String {
        match self {
            BodyMatch::Contains(s) => format!("{s:?}"),
            BodyMatch::Regex(r) => format!("/{}/", r.as_str()),
        }
    }
}

/// What the policy says about answers.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Statuses that mean the check passed; empty: any 2xx.
    pub expect_status: Vec<u16>,
    /// Statuses that mean the exchange refuses this IP.
    pub burn_status: Vec<u16>,
    /// Bodies that mean the exchange refuses this IP (any status).
    pub burn_body: Vec<BodyMatch>,
    /// How long a burn lasts without `Retry-After`; None: for good.
    pub burn_for: Option<Duration>,
}

impl Default for Rules {
    /// Any 2xx passes; 418 (Binance's automatic ban), 403 (a WAF, or
    /// CloudFront's "The request could not be satisfied") and 451 (a
    /// restricted location) burn the IP for 24 hours.
    fn default() -> Rules {
        Rules {
            expect_status: Vec::new(),
            burn_status: vec![403, 418, 451],
            burn_body: Vec::new(),
            burn_for: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

/// One answer as the check saw it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: u16,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<&'a str>,
    pub body: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// The exchange refuses this IP until `until` (None: for good).
    Burned {
        reason: String,
        until: Option<u64>,
    },
    /// 5xx, or 429 without a ban: the exchange's trouble, not the IP's.
    DestinationTrouble {
        reason: String,
    },
    /// Any other answer: the check failed (counts like a proxy failure).
    Failed {
        reason: String,
    },
}

/// The longest body excerpt kept in a reason (and so in logs and the pool
/// file).
pub const EXCERPT: usize = 80;

/// A short, printable excerpt of `body`.
pub fn excerpt(body: &str) -> String {
    let flat: String = body.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let flat = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(EXCERPT) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// Seconds until the time a `Retry-After` value names: delta-seconds or an
/// HTTP-date (RFC 9110 section 10.2.3). None: absent or unreadable.
pub fn retry_after_secs(value: &str, now: u64) -> Option<u64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs);
    }
    let at = httpdate::parse_http_date(v).ok()?.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(at.saturating_sub(now))
}

pub fn classify(a: &Answer<'_>, rules: &Rules, now: u64) -> Verdict {
    let body = String::from_utf8_lossy(a.body);
    let until = || match a.retry_after.and_then(|v| retry_after_secs(v, now)) {
        Some(secs) => Some(now.saturating_add(secs.max(1))),
        None => rules.burn_for.map(|d| now.saturating_add(d.as_secs().max(1))),
    };
    let with_body = |what: String| {
        let e = excerpt(&body);
        if e.is_empty() { what } else { format!("{what}: {e}") }
    };
    if rules.burn_status.contains(&a.status) {
        return Verdict::Burned { reason: with_body(format!("HTTP status {}", a.status)), until: until() };
    }
    if let Some(m) = rules.burn_body.iter().find(|m| m.matches(&body)) {
        let reason = with_body(format!("HTTP status {}, body matches {}", a.status, m.shown()));
        return Verdict::Burned { reason, until: until() };
    }
    let ok = if rules.expect_status.is_empty() {
        (200..300).contains(&a.status)
    } else {
        rules.expect_status.contains(&a.status)
    };
    if ok {
        return Verdict::Ok;
    }
    if a.status >= 500 || a.status == 429 {
        return Verdict::DestinationTrouble { reason: with_body(format!("HTTP status {}", a.status)) };
    }
    Verdict::Failed { reason: with_body(format!("HTTP status {}", a.status)) }
}

/// What to do when the active proxy's check sees destination trouble and
/// one standby candidate was checked the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outage {
    /// The standby sees the same trouble: the exchange is down; nothing is
    /// burned or switched.
    ExchangeDown,
    /// The standby is fine: the active proxy is treated as unhealthy.
    ActiveUnhealthy,
    /// The standby's check failed in its own way, or no standby exists:
    /// nothing can be concluded; nothing is switched.
    Unknown,
}

pub fn outage(standby: Option<&Verdict>) -> Outage {
    match standby {
        Some(Verdict::DestinationTrouble { .. }) => Outage::ExchangeDown,
        Some(Verdict::Ok) => Outage::ActiveUnhealthy,
        _ => Outage::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_590_400; // 2025-12-01 12:00:00 UTC

    fn answer(status: u16, retry_after: Option<&'static str>, body: &'static str) -> Answer<'static> {
        Answer { status, retry_after, body: body.as_bytes() }
    }

    #[test]
    fn exchange_answers_are_classified() {
        let r = Rules::default();
        assert_eq!(classify(&answer(200, None, "{}"), &r, NOW), Verdict::Ok);
        assert_eq!(classify(&answer(204, None, ""), &r, NOW), Verdict::Ok);
        // Binance's automatic ban: 418 with Retry-After in seconds.
        assert_eq!(
            classify(
                &answer(418, Some("120"), "{\"code\":-1003,\"msg\":\"Way too many requests; IP banned\"}"),
                &r,
                NOW
            ),
            Verdict::Burned {
                reason: "HTTP status 418: {\"code\":-1003,\"msg\":\"Way too many requests; IP banned\"}".into(),
                until: Some(NOW + 120)
            }
        );
        // A WAF block without Retry-After: burn_for (24 h).
        let v = classify(&answer(403, None, ""), &r, NOW);
        assert_eq!(v, Verdict::Burned { reason: "HTTP status 403".into(), until: Some(NOW + 86_400) });
        // A restricted location.
        assert!(matches!(classify(&answer(451, None, "restricted"), &r, NOW), Verdict::Burned { .. }));
        // Trouble at the exchange, not the IP's fault.
        assert_eq!(
            classify(&answer(503, None, "maintenance"), &r, NOW),
            Verdict::DestinationTrouble { reason: "HTTP status 503: maintenance".into() }
        );
        assert!(matches!(classify(&answer(429, Some("1"), ""), &r, NOW), Verdict::DestinationTrouble { .. }));
        assert_eq!(classify(&answer(404, None, ""), &r, NOW), Verdict::Failed { reason: "HTTP status 404".into() });
    }

    #[test]
    fn bodies_burn_by_substring_or_regex_and_rules_can_change() {
        let r = Rules {
            expect_status: vec![200],
            burn_status: vec![418],
            burn_body: vec![
                BodyMatch::parse("The request could not be satisfied").unwrap(),
                BodyMatch::parse("/code\":\\s*-10(03|15)/").unwrap(),
            ],
            burn_for: None,
        };
        // CloudFront's block page, any case, for good (no burn_for).
        let v = classify(&answer(403, None, "<H1>403 ERROR</H1><H2>The request could NOT be satisfied.</H2>"), &r, NOW);
        match v {
            Verdict::Burned { reason, until: None } => {
                assert!(reason.contains("body matches \"the request could not be satisfied\""), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let v = classify(&answer(200, None, "{\"code\": -1015}"), &r, NOW);
        assert!(matches!(v, Verdict::Burned { until: None, .. }), "{v:?}");
        assert_eq!(classify(&answer(204, None, ""), &r, NOW), Verdict::Failed { reason: "HTTP status 204".into() });
        assert!(BodyMatch::parse("/(/").unwrap_err().contains("invalid regular expression"));
        assert!(BodyMatch::parse("").is_err());
    }

    #[test]
    fn retry_after_in_both_forms() {
        assert_eq!(retry_after_secs("5", NOW), Some(5));
        assert_eq!(retry_after_secs(" 0 ", NOW), Some(0));
        assert_eq!(retry_after_secs("Mon, 01 Dec 2025 12:01:00 GMT", NOW), Some(60));
        assert_eq!(retry_after_secs("Mon, 01 Dec 2025 11:00:00 GMT", NOW), Some(0), "a date in the past");
        assert_eq!(retry_after_secs("soon", NOW), None);
        assert_eq!(retry_after_secs("-5", NOW), None);
        // A date-form Retry-After sets the burn's end.
        let v = classify(&answer(418, Some("Mon, 01 Dec 2025 13:00:00 GMT"), ""), &Rules::default(), NOW);
        assert_eq!(v, Verdict::Burned { reason: "HTTP status 418".into(), until: Some(NOW + 3600) });
        // Retry-After: 0 still burns for a second, never "until now".
        let v = classify(&answer(418, Some("0"), ""), &Rules::default(), NOW);
        assert_eq!(v, Verdict::Burned { reason: "HTTP status 418".into(), until: Some(NOW + 1) });
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt("a\r\n\tb   c"), "a b c");
        let long = "x".repeat(500);
        assert_eq!(excerpt(&long).chars().count(), EXCERPT + 1);
        assert_eq!(excerpt(&"é".repeat(100)).chars().count(), EXCERPT + 1, "cut on a character boundary");
    }

    #[test]
    fn an_outage_is_told_apart_from_a_bad_ip() {
        let trouble = Verdict::DestinationTrouble { reason: "HTTP status 503".into() };
        assert_eq!(outage(Some(&trouble)), Outage::ExchangeDown);
        assert_eq!(outage(Some(&Verdict::Ok)), Outage::ActiveUnhealthy);
        assert_eq!(outage(Some(&Verdict::Failed { reason: "x".into() })), Outage::Unknown);
        assert_eq!(outage(None), Outage::Unknown);
    }
}
