//! The manager's checks through one proxy: every health check of the
//! policy (each answer classified: ok, burned, destination trouble, failed),
//! what the active proxy's result does to the pool (count a failure, burn
//! it, or compare with a standby before blaming it), and the egress IP.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::manager::Manager;
use crate::proxy::probe::{self, CheckError};
use crate::proxy::verdict::{self, Outage, Verdict};

/// Why a proxy did not pass its checks.
#[derive(Debug)]
pub(super) enum Fail {
    /// The check could not be made through the proxy (connect, handshake,
    /// TLS, timeout, a bad answer).
    Error(CheckError),
    /// The exchange refuses the proxy's IP.
    Burned { check: String, reason: String, until: Option<u64> },
    /// The exchange is in trouble (5xx, 429): not this IP's fault, maybe.
    Trouble { index: usize, check: String, reason: String },
    /// Any other answer.
    Refused { check: String, reason: String },
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Error(e) => write!(f, "{e}"),
            Fail::Burned { check, reason, .. } => write!(f, "burned by check {check}: {reason}"),
            Fail::Trouble { check, reason, .. } => write!(f, "check {check}: destination trouble: {reason}"),
            Fail::Refused { check, reason } => write!(f, "check {check}: {reason}"),
        }
    }
}

impl Fail {
    fn is_local(&self) -> bool {
        matches!(self, Fail::Error(e) if e.is_local())
    }
}

/// The metric label of a burn's reason: `body` for a body match, else
/// `status_NNN` (a bounded set: statuses are three digits).
fn burn_key(reason: &str) -> String {
    if reason.contains("body matches") {
        return "body".into();
    }
    let status: String =
        reason.strip_prefix("HTTP status ").unwrap_or("").chars().take_while(char::is_ascii_digit).take(3).collect();
    if status.len() == 3 { format!("status_{status}") } else { "other".into() }
}

/// Which checks to run.
#[derive(Debug, Clone, Copy)]
pub(super) enum Which<'a> {
    All,
    Only(&'a [usize]),
}

impl Manager {
    /// The checks `which` names, by index into the policy's; `None` is the
    /// one check there is without health checks: a connect to the proxy.
    pub(super) fn runs(&self, which: Which<'_>) -> Vec<Option<usize>> {
        if self.cfg.probes.is_empty() {
            return vec![None];
        }
        match which {
            Which::All => (0..self.cfg.probes.len()).map(Some).collect(),
            Which::Only(v) => v.iter().copied().map(Some).collect(),
        }
    }

    /// The policy's checks (`which` of them) through `label`, counted in its
    /// counters; the first that does not pass ends the round. Without
    /// health checks, a TCP connection to the proxy.
    pub(super) async fn check(&self, label: &str, which: Which<'_>) -> Result<Duration, Fail> {
        let Some((up, c)) = self.upstream(label) else {
            return Err(Fail::Error(CheckError::Bad {
                what: "check".into(),
                reason: format!("unknown proxy {label}"),
            }));
        };
        let mut total = Duration::ZERO;
        for i in self.runs(which) {
            let probe = i.and_then(|i| self.cfg.probes.get(i));
            let timeout = probe.map(|p| p.check.timeout).unwrap_or(up.entry.connect_timeout);
            let name = probe.map(|p| p.check.name.clone()).unwrap_or_default();
            let r = probe::check(&up, probe, timeout, self.h.now()).await;
            let r = match r {
                Ok((lat, Verdict::Ok)) => Ok(lat),
                Ok((_, Verdict::Burned { reason, until })) => Err(Fail::Burned { check: name, reason, until }),
                Ok((_, Verdict::DestinationTrouble { reason })) => {
                    Err(Fail::Trouble { index: i.unwrap_or(0), check: name, reason })
                }
                Ok((_, Verdict::Failed { reason })) => Err(Fail::Refused { check: name, reason }),
                Err(e) => Err(Fail::Error(e)),
            };
            match r {
                Ok(lat) => {
                    c.checks_ok.fetch_add(1, Relaxed);
                    c.check_latency.observe(lat);
                    total += lat;
                }
                Err(f) => {
                    c.checks_failed.fetch_add(1, Relaxed);
                    tracing::debug!(account = %self.h.account, proxy = %label, error = %f, "health check failed");
                    return Err(f);
                }
            }
        }
        Ok(total)
    }

    /// Burns `label` for what a check saw: logged once, persisted, and an
    /// active proxy is replaced at once (flows reset if the policy says so).
    pub(super) fn burn(&self, label: &str, check: &str, reason: &str, until: Option<u64>) {
        let egress = {
            let p = self.h.lock();
            p.records().iter().find(|r| r.label == label).and_then(|r| r.last_egress_ip)
        };
        let shown_until = until.map(|u| u.to_string()).unwrap_or_else(|| "for good".into());
        tracing::warn!(
            account = %self.h.account,
            proxy = %label,
            endpoint = %self.h.endpoint(label),
            egress_ip = %egress.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            check = %check,
            reason = %reason,
            until = %shown_until,
            "BURNED: the exchange refuses this proxy's IP"
        );
        let full = format!("check {check}: {reason}");
        let ev = self.h.lock().burn_because(label, until, &full);
        self.h.counters.burns.fetch_add(1, Relaxed);
        let key = burn_key(reason);
        *self.h.counters.burns_by_reason.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
        let was_active = ev.iter().any(|e| matches!(e, super::state::Event::NeedFailover { .. }));
        self.commit(ev);
        if was_active && self.cfg.reset_flows_on_burn {
            self.h.reset.send_modify(|n| *n += 1);
            tracing::warn!(account = %self.h.account, proxy = %label, "existing flows reset after the burn (pool.on_burn: reset-flows)");
        }
    }

    /// A round of checks of the active proxy `label` (`which` of them),
    /// and what the result does: a failure counts towards the threshold, a
    /// burn replaces the proxy, destination trouble is compared with one
    /// standby before anything is blamed.
    pub(super) async fn check_active(&self, label: &str, which: Which<'_>) -> Result<Duration, Fail> {
        let r = self.check(label, which).await;
        let now = self.h.now();
        match &r {
            Ok(_) => {
                let ev = self.h.lock().success(label, true, now);
                self.commit(ev);
            }
            Err(f) if f.is_local() => {
                tracing::warn!(account = %self.h.account, proxy = %label, error = %f, "health check not counted: this host is out of resources");
            }
            Err(Fail::Burned { check, reason, until }) => self.burn(label, check, reason, *until),
            Err(Fail::Trouble { index, check, reason }) => self.outage(label, *index, check, reason).await,
            Err(f) => {
                let ev = self.h.lock().failure(label, &f.to_string(), false, now);
                self.commit(ev);
            }
        }
        r
    }

    /// The active proxy's check `index` saw destination trouble: the same
    /// check through one standby tells an exchange outage (nothing is
    /// burned or switched) from a problem of the active proxy (unhealthy,
    /// failover).
    async fn outage(&self, label: &str, index: usize, check: &str, reason: &str) {
        let standby = self.h.lock().candidates(self.h.now()).into_iter().next();
        let Some(other) = standby else {
            tracing::warn!(account = %self.h.account, proxy = %label, check = %check, reason = %reason, "destination trouble; no standby to compare with: nothing switched");
            return;
        };
        let seen = match self.check(&other, Which::Only(&[index])).await {
            Ok(_) => Some(Verdict::Ok),
            Err(Fail::Trouble { reason, .. }) => Some(Verdict::DestinationTrouble { reason }),
            Err(_) => None,
        };
        match verdict::outage(seen.as_ref()) {
            Outage::ExchangeDown => {
                tracing::warn!(account = %self.h.account, proxy = %label, standby = %other, check = %check, reason = %reason, "destination trouble seen through the standby too: the exchange is down; nothing burned or switched");
            }
            Outage::ActiveUnhealthy => {
                tracing::warn!(account = %self.h.account, proxy = %label, standby = %other, check = %check, reason = %reason, "destination trouble through this proxy only: failing over");
                let error = format!("check {check}: destination trouble through this proxy only: {reason}");
                let ev = self.h.lock().failure(label, &error, true, self.h.now());
                self.commit(ev);
            }
            Outage::Unknown => {
                tracing::warn!(account = %self.h.account, proxy = %label, standby = %other, check = %check, reason = %reason, "destination trouble; the standby's check failed otherwise: nothing switched");
            }
        }
    }

    /// Fetches and records the egress IP through `label` (when the policy
    /// has an echo URL). A pinned-address mismatch makes it unhealthy.
    pub(super) async fn egress(&self, label: &str) -> Option<Result<IpAddr, String>> {
        let cfg = self.cfg.egress.as_ref()?;
        let (up, _) = self.upstream(label)?;
        let r = probe::egress_ip(&up, cfg).await;
        Some(match r {
            Ok(ip) => {
                let ev = self.h.lock().egress(label, ip, self.h.now());
                self.commit(ev);
                Ok(ip)
            }
            Err(e) => {
                tracing::warn!(account = %self.h.account, proxy = %label, error = %e, "egress IP check failed");
                Err(e.to_string())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn burn_reasons_make_few_metric_labels() {
        assert_eq!(super::burn_key("HTTP status 418: {\"code\":-1003}"), "status_418");
        assert_eq!(super::burn_key("HTTP status 403, body matches \"x\": y"), "body");
        assert_eq!(super::burn_key("something else"), "other");
    }
}
