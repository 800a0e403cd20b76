//! Checks through one proxy: a health probe (a TCP connect, or an HTTP(S)
//! request whose answer is classified by `verdict`) and the egress-IP
//! fetch. The body parser is pure; `check` and `egress_ip` do the I/O.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::fetch::{self, FetchError, Request, Tls};
use super::verdict::{self, BodyMatch, Rules, Verdict};
use super::{ProxyError, Target, Upstream};
use crate::config::{CheckMethod, EgressCheck, HealthCheck, HealthTarget};

/// Largest HTTP response read from a health or egress URL.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// One health check of the policy, ready to run: its answer rules and,
/// for https, its TLS trust. Built when the daemon starts.
#[derive(Debug, Clone)]
pub struct Probe {
    pub check: HealthCheck,
    pub rules: Rules,
    pub tls: Option<Tls>,
}

impl Probe {
    pub fn new(c: &HealthCheck) -> Result<Probe, String> {
        let burn_body = c.burn_on.body.iter().map(|b| BodyMatch::parse(b)).collect::<Result<Vec<_>, _>>()?;
        let rules = Rules {
            expect_status: c.expect_status.clone(),
            burn_status: c.burn_on.status.clone(),
            burn_body,
            burn_for: c.burn_for,
        };
        let tls = match &c.target {
            HealthTarget::Http(u) if u.tls => Some(Tls::new(c.ca_file.as_deref())?),
            _ => None,
        };
        Ok(Probe { check: c.clone(), rules, tls })
    }
}

/// The egress check, ready to run.
#[derive(Debug, Clone)]
pub struct EgressProbe {
    pub check: EgressCheck,
    pub tls: Option<Tls>,
}

impl EgressProbe {
    pub fn new(c: &EgressCheck) -> Result<EgressProbe, String> {
        let tls = if c.url.tls { Some(Tls::new(c.ca_file.as_deref())?) } else { None };
        Ok(EgressProbe { check: c.clone(), tls })
    }
}

/// The address in an IP echo service's body: plain text (`203.0.113.7`),
/// or JSON with an `ip` or `origin` field.
pub fn parse_ip_body(body: &[u8]) -> Result<IpAddr, String> {
    let text = String::from_utf8_lossy(body);
    let t = text.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(ip);
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(t) {
        for key in ["ip", "origin", "address"] {
            if let Some(ip) = v.get(key).and_then(|x| x.as_str()).and_then(|s| s.trim().parse().ok()) {
                return Ok(ip);
            }
        }
    }
    let shown: String = t.chars().take(60).filter(|c| !c.is_control()).collect();
    Err(format!("the echo service answered {shown:?}, not an IP address"))
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("{what} timed out after {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("{what}: {reason}")]
    Bad { what: String, reason: String },
}

impl CheckError {
    /// The check failed because this host is out of resources: it says
    /// nothing about the proxy.
    pub fn is_local(&self) -> bool {
        matches!(self, CheckError::Proxy(e) if e.is_local())
    }

    fn fetch(what: &str, e: FetchError) -> CheckError {
        match e {
            FetchError::Proxy(p) => CheckError::Proxy(p),
            other => CheckError::Bad { what: what.to_string(), reason: other.to_string() },
        }
    }
}

/// One health check through `up`, with `now` (Unix seconds) for burn
/// times: its latency and what the answer says, or why it failed. Without
/// a probe, a TCP connection to the proxy itself.
pub async fn check(
    up: &Upstream,
    probe: Option<&Probe>,
    timeout: Duration,
    now: u64,
) -> Result<(Duration, Verdict), CheckError> {
    let start = Instant::now();
    let what = match probe {
        Some(p) => format!("health check {} ({})", p.check.name, p.check.target),
        None => "health check (connect to the proxy)".into(),
    };
    let work = async {
        match probe.map(|p| (p, &p.check.target)) {
            Some((_, HealthTarget::Tcp { host, port })) => {
                up.connect(&Target::Name(host.clone(), *port)).await?;
                Ok(Verdict::Ok)
            }
            Some((p, HealthTarget::Http(url))) => {
                let method = match p.check.method {
                    CheckMethod::Get => fetch::Method::Get,
                    CheckMethod::Head => fetch::Method::Head,
                };
                let req = Request { method, url, headers: &p.check.headers, body: None };
                let a = fetch::fetch(up, &req, p.tls.as_ref(), MAX_RESPONSE)
                    .await
                    .map_err(|e| CheckError::fetch(&what, e))?;
                let answer = verdict::Answer { status: a.status, retry_after: a.retry_after.as_deref(), body: &a.body };
                Ok(verdict::classify(&answer, &p.rules, now))
            }
            None => up.reach().await.map(|()| Verdict::Ok).map_err(CheckError::from),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => Err(CheckError::Timeout { what, timeout }),
        Ok(r) => r.map(|v| (start.elapsed(), v)),
    }
}

/// The egress address seen through `up` from the echo URL.
pub async fn egress_ip(up: &Upstream, e: &EgressProbe) -> Result<IpAddr, CheckError> {
    let url = &e.check.url;
    let what = format!("egress check {url}");
    let work = async {
        let req = Request { method: fetch::Method::Get, url, headers: &[], body: None };
        let a =
            fetch::fetch(up, &req, e.tls.as_ref(), MAX_RESPONSE).await.map_err(|err| CheckError::fetch(&what, err))?;
        match a.status {
            200..=299 => parse_ip_body(&a.body).map_err(|reason| CheckError::Bad { what: what.clone(), reason }),
            code => Err(CheckError::Bad { what: what.clone(), reason: format!("HTTP status {code}") }),
        }
    };
    let timeout = e.check.timeout;
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(CheckError::Timeout { what: what.clone(), timeout }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_bodies() {
        assert_eq!(parse_ip_body(b" 203.0.113.7\n").unwrap(), "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(parse_ip_body(br#"{"ip": "2001:db8::1"}"#).unwrap(), "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(parse_ip_body(br#"{"origin":"198.51.100.2"}"#).unwrap(), "198.51.100.2".parse::<IpAddr>().unwrap());
        let e = parse_ip_body(b"<html>blocked</html>").unwrap_err();
        assert!(e.contains("not an IP address") && e.contains("blocked"), "{e}");
        assert!(parse_ip_body(b"").is_err());
    }
}
