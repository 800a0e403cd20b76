//! Per-destination rules: an ordered list; the first rule whose every given
//! condition (domain, CIDR, port range) matches decides where a flow goes:
//! through a named pool entry, or nowhere. Pure: no I/O.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

/// `example.com` (that name only) or `*.example.com` (names under it, not
/// the name itself). Stored lower-case without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum DomainPattern {
    Exact(String),
    Suffix(String),
}

impl From<DomainPattern> for String {
    fn from(d: DomainPattern) -> String {
        d.to_string()
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(d) => f.write_str(d),
            DomainPattern::Suffix(d) => write!(f, "*.{d}"),
        }
    }
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !l.starts_with('-')
        })
}

impl DomainPattern {
    pub fn parse(s: &str) -> Result<DomainPattern, String> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let (suffix, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if !valid_domain(name) {
            return Err(format!("expected a domain such as exchange.test or *.exchange.test, got {s:?}"));
        }
        Ok(if suffix { DomainPattern::Suffix(name.into()) } else { DomainPattern::Exact(name.into()) })
    }

    /// `name` is compared case-insensitively, a trailing dot ignored.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        match self {
            DomainPattern::Exact(d) => name.eq_ignore_ascii_case(d),
            DomainPattern::Suffix(d) => {
                name.len() > d.len() + 1
                    && name.as_bytes()[name.len() - d.len() - 1] == b'.'
                    && name[name.len() - d.len()..].eq_ignore_ascii_case(d)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("expected an address block such as 10.0.0.0/8 or 2001:db8::/32, got {s:?}");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(bad)?,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Through the pool entry with this label (refused while it is not usable).
    Via(String),
    /// Refused.
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub domain: Option<DomainPattern>,
    pub cidr: Option<Cidr>,
    /// Inclusive port range.
    pub ports: Option<(u16, u16)>,
    pub action: Action,
}

/// What is known about a new flow's destination.
#[derive(Debug, Clone, Copy)]
pub struct Dest<'a> {
    /// The name the program resolved (fake-IP table, or remembered answers).
    pub name: Option<&'a str>,
    /// The real destination address (None for a fake IP).
    pub ip: Option<IpAddr>,
    pub port: u16,
}

impl Rule {
    /// Every condition given must match; a rule with a domain never
    /// matches a destination whose name is unknown, a CIDR never a
    /// destination known only by name.
    pub fn matches(&self, d: &Dest<'_>) -> bool {
        self.domain.as_ref().is_none_or(|p| d.name.is_some_and(|n| p.matches(n)))
            && self.cidr.is_none_or(|c| d.ip.is_some_and(|ip| c.contains(ip)))
            && self.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&d.port))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(d) = &self.domain {
            parts.push(format!("domain {d}"));
        }
        if let Some(c) = &self.cidr {
            parts.push(format!("cidr {c}"));
        }
        if let Some((lo, hi)) = self.ports {
            parts.push(if lo == hi { format!("port {lo}") } else { format!("ports {lo}-{hi}") });
        }
        let action = match &self.action {
            Action::Via(l) => format!("via {l}"),
            Action::Block => "block".into(),
        };
        write!(f, "{} -> {action}", parts.join(" "))
    }
}

/// The first matching rule and its index.
pub fn decide<'r>(rules: &'r [Rule], d: &Dest<'_>) -> Option<(usize, &'r Rule)> {
    rules.iter().enumerate().find(|(_, r)| r.matches(d))
}

/// `443` or `8000-8999`.
pub fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("expected a port (443) or an inclusive range (8000-8999), got {s:?}");
    let one = |p: &str| p.trim().parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(bad);
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b { Err(bad()) } else { Ok((a, b)) }
        }
        None => one(s).map(|p| (p, p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(domain: Option<&str>, cidr: Option<&str>, ports: Option<&str>, action: Action) -> Rule {
        Rule {
            domain: domain.map(|d| DomainPattern::parse(d).unwrap()),
            cidr: cidr.map(|c| Cidr::parse(c).unwrap()),
            ports: ports.map(|p| parse_ports(p).unwrap()),
            action,
        }
    }

    fn name(n: &str, port: u16) -> Dest<'_> {
        Dest { name: Some(n), ip: None, port }
    }

    #[test]
    fn domain_patterns() {
        let s = DomainPattern::parse("*.Exchange-A.test.").unwrap();
        assert_eq!(s, DomainPattern::Suffix("exchange-a.test".into()));
        assert!(s.matches("api.exchange-a.test"));
        assert!(s.matches("WS.API.EXCHANGE-A.TEST."));
        assert!(!s.matches("exchange-a.test"), "suffix rules do not match the apex");
        assert!(!s.matches("evilexchange-a.test"));
        assert!(!s.matches("exchange-a.test.evil"));
        let e = DomainPattern::parse("exchange-a.test").unwrap();
        assert!(e.matches("exchange-a.test") && !e.matches("api.exchange-a.test"));
        for bad in ["", "*.", "a..b", "-a.test", "a b.test", "*.*.test", "a/b"] {
            assert!(DomainPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cidr_and_ports() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32").unwrap().contains("2001:db8:1::5".parse().unwrap()));
        assert_eq!(Cidr::parse("192.0.2.7").unwrap().prefix, 32);
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "x/8", "10.0.0.0/"] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_ports("443"), Ok((443, 443)));
        assert_eq!(parse_ports("8000-8999"), Ok((8000, 8999)));
        for bad in ["0", "9-8", "70000", "a", "1-"] {
            assert!(parse_ports(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn first_match_wins_and_all_conditions_must_hold() {
        let rules = vec![
            rule(Some("blocked.exchange-a.test"), None, None, Action::Block),
            rule(Some("*.exchange-a.test"), None, Some("443"), Action::Via("x".into())),
            rule(Some("*.exchange-a.test"), None, None, Action::Via("y".into())),
            rule(None, Some("192.0.2.0/24"), Some("1000-2000"), Action::Block),
        ];
        let pick = |d: Dest<'_>| decide(&rules, &d).map(|(i, _)| i);
        assert_eq!(pick(name("blocked.exchange-a.test", 443)), Some(0));
        assert_eq!(pick(name("api.exchange-a.test", 443)), Some(1));
        assert_eq!(pick(name("api.exchange-a.test", 80)), Some(2));
        assert_eq!(pick(name("api.exchange-b.test", 443)), None);
        let ip = |a: &str, port| Dest { name: None, ip: Some(a.parse().unwrap()), port };
        assert_eq!(pick(ip("192.0.2.9", 1500)), Some(3));
        assert_eq!(pick(ip("192.0.2.9", 2001)), None);
        // A domain rule never matches an unnamed destination, a CIDR rule
        // never a name-only one.
        assert_eq!(pick(ip("10.0.0.1", 443)), None);
        assert_eq!(pick(name("192.0.2.9", 1500)), None);
        assert_eq!(rules[1].to_string(), "domain *.exchange-a.test port 443 -> via x");
    }
}
