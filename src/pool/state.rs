//! The proxy pool of one account as a state machine: which proxy is active,
//! which are standby, unhealthy or burned, and what each health result,
//! flow failure, egress observation or rotation does to that. Pure: time is
//! passed in (Unix seconds), nothing is read or written here; `store`
//! persists the state and the daemon's pool manager drives it.

use std::net::IpAddr;

use crate::config::{Account, ProxyEntry};

pub use crate::published::pool::{Record, State};

/// What the policy says about one member (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub label: String,
    pub endpoint: String,
    pub priority: u32,
    pub enabled: bool,
    pub expected_egress_ip: Option<IpAddr>,
}

impl Member {
    pub fn from_entry(p: &ProxyEntry) -> Member {
        Member {
            label: p.label.clone(),
            endpoint: p.endpoint(),
            priority: p.priority,
            enabled: p.enabled,
            expected_egress_ip: p.expected_egress_ip,
        }
    }
}

/// A state change worth logging, counting and persisting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `label` is now the active proxy (`from`: the previous one).
    Activated {
        label: String,
        from: Option<String>,
        reason: Reason,
    },
    /// Proxy-level failures reached the threshold.
    Unhealthy {
        label: String,
        error: String,
    },
    /// A check through an unhealthy proxy succeeded.
    Recovered {
        label: String,
    },
    Burned {
        label: String,
        until: Option<u64>,
    },
    /// A burn expired; the proxy is a standby again.
    Unburned {
        label: String,
    },
    /// The active proxy became unusable; a replacement must be checked.
    NeedFailover {
        from: String,
    },
    /// Egress observed; `pinned_mismatch` when it differs from the pin.
    Egress {
        label: String,
        ip: IpAddr,
        expected: Option<IpAddr>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Start,
    Failover,
    Rotation,
    Failback,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Start => "start",
            Reason::Failover => "failover",
            Reason::Rotation => "rotation",
            Reason::Failback => "failback",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotateError {
    #[error("no proxy labelled {0:?} in this account")]
    UnknownLabel(String),
    #[error("proxy {label} is {why}")]
    NotUsable { label: String, why: String },
    #[error("no other usable proxy to rotate to (every other proxy is disabled or burned)")]
    NoCandidate,
}

#[derive(Debug, Clone)]
pub struct Pool {
    members: Vec<Member>,
    records: Vec<Record>,
    threshold: u32,
    failback: bool,
}

/// `until` (Unix seconds) of a burn that has not expired at `now`.
fn burn_active(r: &Record, now: u64) -> bool {
    r.state == State::Burned && r.burned_until.is_none_or(|u| u > now)
}

impl Pool {
    /// The pool of `account`, with the saved records of a previous run
    /// (burns, errors, egress IPs). Members not in the policy any more are
    /// forgotten; new members start as standby. The saved active proxy stays
    /// active if it is still usable (sticky across restarts).
    pub fn new(account: &Account, saved: Vec<Record>, now: u64) -> (Pool, Vec<Event>) {
        let members: Vec<Member> = account.proxies.iter().map(Member::from_entry).collect();
        let records = members
            .iter()
            .map(|m| saved.iter().find(|r| r.label == m.label).cloned().unwrap_or_else(|| Record::new(&m.label)))
            .collect();
        let mut pool =
            Pool { members, records, threshold: account.failure_threshold().max(1), failback: account.pool.failback };
        let mut events = pool.expire_burns(now);
        // At most one active; only an enabled, unburned one.
        let mut seen_active = false;
        for i in 0..pool.records.len() {
            let usable = pool.members[i].enabled && !burn_active(&pool.records[i], now);
            let r = &mut pool.records[i];
            if r.state == State::Active && (seen_active || !usable) {
                r.state = State::Standby;
            }
            seen_active |= r.state == State::Active;
        }
        if !seen_active {
            events.push(Event::NeedFailover { from: String::new() });
        }
        (pool, events)
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, label: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.label == label)
    }

    fn index(&self, label: &str) -> Option<usize> {
        self.members.iter().position(|m| m.label == label)
    }

    pub fn active(&self) -> Option<&str> {
        self.records.iter().find(|r| r.state == State::Active).map(|r| r.label.as_str())
    }

    /// Whether `label` may carry flows now (rules name a member directly).
    pub fn usable(&self, label: &str, now: u64) -> Result<(), String> {
        let i = self.index(label).ok_or_else(|| format!("no proxy labelled {label:?}"))?;
        let r = &self.records[i];
        if !self.members[i].enabled {
            return Err("disabled in the policy".into());
        }
        if burn_active(r, now) {
            return Err(match r.burned_until {
                Some(u) => format!("burned until {u} (Unix time)"),
                None => "burned".into(),
            });
        }
        if r.state == State::Unhealthy {
            return Err(format!("unhealthy ({})", r.last_error.as_deref().unwrap_or("failed checks")));
        }
        Ok(())
    }

    /// Burns whose time has passed become standby again.
    pub fn expire_burns(&mut self, now: u64) -> Vec<Event> {
        let mut ev = Vec::new();
        for r in &mut self.records {
            if r.state == State::Burned && !burn_active(r, now) {
                r.state = State::Standby;
                r.burned_until = None;
                r.burn_reason = None;
                r.consecutive_failures = 0;
                ev.push(Event::Unburned { label: r.label.clone() });
            }
        }
        ev
    }

    /// Replacement candidates, in the order they should be checked:
    /// enabled, not burned, not active; standby before unhealthy, then by
    /// priority, then policy order.
    pub fn candidates(&self, now: u64) -> Vec<String> {
        let mut v: Vec<(bool, u32, usize)> = (0..self.members.len())
            .filter(|&i| {
                let r = &self.records[i];
                self.members[i].enabled && !burn_active(r, now) && r.state != State::Active
            })
            .map(|i| (self.records[i].state != State::Standby, self.members[i].priority, i))
            .collect();
        v.sort();
        v.into_iter().map(|(_, _, i)| self.members[i].label.clone()).collect()
    }

    /// With `failback`, a standby or unhealthy member of better priority
    /// than the active one, worth checking now (best first).
    pub fn failback_candidate(&self, now: u64) -> Option<String> {
        if !self.failback {
            return None;
        }
        let active = self.index(self.active()?)?;
        let best = self.members[active].priority;
        (0..self.members.len())
            .filter(|&i| {
                self.members[i].enabled
                    && self.members[i].priority < best
                    && !burn_active(&self.records[i], now)
                    && self.records[i].state != State::Active
            })
            .min_by_key(|&i| (self.members[i].priority, i))
            .map(|i| self.members[i].label.clone())
    }

    /// Makes `label` the active proxy (it passed its check). The previous
    /// active one becomes standby unless it is unhealthy or burned.
    pub fn activate(&mut self, label: &str, reason: Reason, now: u64) -> Vec<Event> {
        let Some(i) = self.index(label) else { return Vec::new() };
        let from = self.active().map(str::to_string);
        if from.as_deref() == Some(label) {
            return Vec::new();
        }
        for r in &mut self.records {
            if r.state == State::Active {
                r.state = State::Standby;
            }
        }
        let r = &mut self.records[i];
        r.state = State::Active;
        r.burned_until = None;
        r.consecutive_failures = 0;
        r.last_error = None;
        r.last_checked_at = Some(now);
        vec![Event::Activated { label: label.into(), from, reason }]
    }

    /// A proxy-level failure (connect refused or timed out, handshake
    /// timeout, authentication failure, failed health check) through
    /// `label`. At the threshold the proxy becomes unhealthy, and if it was
    /// active a failover is needed. `immediate` skips the count (a wrong
    /// egress address is not going to fix itself).
    pub fn failure(&mut self, label: &str, error: &str, immediate: bool, now: u64) -> Vec<Event> {
        let Some(i) = self.index(label) else { return Vec::new() };
        let threshold = self.threshold;
        let r = &mut self.records[i];
        r.last_error = Some(error.to_string());
        r.last_checked_at = Some(now);
        r.consecutive_failures = r.consecutive_failures.saturating_add(1);
        if r.state == State::Burned || r.state == State::Unhealthy {
            return Vec::new();
        }
        if !immediate && r.consecutive_failures < threshold {
            return Vec::new();
        }
        let was_active = r.state == State::Active;
        r.state = State::Unhealthy;
        let mut ev = vec![Event::Unhealthy { label: label.into(), error: error.into() }];
        if was_active {
            ev.push(Event::NeedFailover { from: label.into() });
        }
        ev
    }

    /// A success through `label` (a flow connected, a check passed).
    /// An unhealthy proxy that passes a check is standby again.
    pub fn success(&mut self, label: &str, checked: bool, now: u64) -> Vec<Event> {
        let Some(i) = self.index(label) else { return Vec::new() };
        let r = &mut self.records[i];
        r.consecutive_failures = 0;
        if checked {
            r.last_checked_at = Some(now);
            r.last_error = None;
        }
        if checked && r.state == State::Unhealthy {
            r.state = State::Standby;
            return vec![Event::Recovered { label: label.into() }];
        }
        Vec::new()
    }

    /// The egress address seen through `label`. Differs from the pinned
    /// one: the proxy is unhealthy at once.
    pub fn egress(&mut self, label: &str, ip: IpAddr, now: u64) -> Vec<Event> {
        let Some(i) = self.index(label) else { return Vec::new() };
        let expected = self.members[i].expected_egress_ip;
        let r = &mut self.records[i];
        r.last_egress_ip = Some(ip);
        r.last_egress_at = Some(now);
        let mut ev = vec![Event::Egress { label: label.into(), ip, expected }];
        if let Some(want) = expected
            && want != ip
        {
            ev.extend(self.failure(label, &format!("egress IP {ip} is not the pinned {want}"), true, now));
        }
        ev
    }

    /// Checks a manual rotation and burns the old proxy if asked. Returns
    /// the candidates to check, in order (the first that passes becomes
    /// active): `to` alone, or every candidate.
    pub fn plan_rotation(
        &mut self,
        to: Option<&str>,
        burn: Option<Option<u64>>,
        now: u64,
    ) -> Result<(Vec<String>, Vec<Event>), RotateError> {
        let targets = match to {
            Some(l) => {
                let i = self.index(l).ok_or_else(|| RotateError::UnknownLabel(l.into()))?;
                if !self.members[i].enabled {
                    return Err(RotateError::NotUsable { label: l.into(), why: "disabled in the policy".into() });
                }
                if burn_active(&self.records[i], now) {
                    return Err(RotateError::NotUsable { label: l.into(), why: "burned".into() });
                }
                if self.active() == Some(l) {
                    return Err(RotateError::NotUsable { label: l.into(), why: "already the active proxy".into() });
                }
                vec![l.to_string()]
            }
            None => self.candidates(now),
        };
        if targets.is_empty() {
            return Err(RotateError::NoCandidate);
        }
        let mut ev = Vec::new();
        if let Some(until) = burn
            && let Some(old) = self.active().map(str::to_string)
        {
            ev.extend(self.burn(&old, until));
            ev.push(Event::NeedFailover { from: old });
        }
        Ok((targets, ev))
    }

    /// Marks `label` burned (until a time, or for good).
    pub fn burn(&mut self, label: &str, until: Option<u64>) -> Vec<Event> {
        self.burn_because(label, until, "manual")
    }

    /// Marks `label` burned for `reason`; an active proxy needs replacing.
    pub fn burn_because(&mut self, label: &str, until: Option<u64>, reason: &str) -> Vec<Event> {
        let Some(i) = self.index(label) else { return Vec::new() };
        let r = &mut self.records[i];
        let was_active = r.state == State::Active;
        r.state = State::Burned;
        r.burned_until = until;
        r.burn_reason = Some(reason.to_string());
        let mut ev = vec![Event::Burned { label: label.into(), until }];
        if was_active && reason != "manual" {
            ev.push(Event::NeedFailover { from: label.into() });
        }
        ev
    }

    /// Lifts the burn of `label` (`nsproxy unburn`): standby again.
    pub fn unburn(&mut self, label: &str) -> Result<Vec<Event>, RotateError> {
        let i = self.index(label).ok_or_else(|| RotateError::UnknownLabel(label.into()))?;
        let r = &mut self.records[i];
        if r.state != State::Burned {
            return Err(RotateError::NotUsable { label: label.into(), why: format!("{}, not burned", r.state) });
        }
        r.state = State::Standby;
        r.burned_until = None;
        r.burn_reason = None;
        r.consecutive_failures = 0;
        Ok(vec![Event::Unburned { label: label.into() }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;
    use std::path::Path;

    fn account(extra: &str) -> Account {
        let text = format!(
            "accounts:\n  - name: a\n    proxies:\n      - label: p1\n        url: socks5://10.0.0.1:1080\n        priority: 10\n        expected_egress_ip: 192.0.2.1\n      - label: p2\n        url: socks5://10.0.0.2:1080\n        priority: 20\n      - label: p3\n        url: http://10.0.0.3:3128\n        priority: 30\n      - label: off\n        url: http://10.0.0.4:3128\n        priority: 1\n        enabled: false\n{extra}"
        );
        parse_str(Path::new("t.yaml"), &text).unwrap().remove(0)
    }

    fn started(extra: &str) -> Pool {
        let (mut pool, ev) = Pool::new(&account(extra), Vec::new(), 1000);
        assert_eq!(ev, vec![Event::NeedFailover { from: String::new() }]);
        assert_eq!(pool.candidates(1000), vec!["p1", "p2", "p3"], "disabled members are never candidates");
        pool.activate("p1", Reason::Start, 1000);
        pool
    }

    #[test]
    fn failover_after_threshold_and_never_on_success_in_between() {
        let mut pool = started("");
        assert!(pool.failure("p1", "connection refused", false, 1001).is_empty());
        assert!(pool.failure("p1", "connection refused", false, 1002).is_empty());
        pool.success("p1", false, 1003); // a flow got through: count restarts
        assert!(pool.failure("p1", "refused", false, 1004).is_empty());
        assert!(pool.failure("p1", "refused", false, 1005).is_empty());
        let ev = pool.failure("p1", "refused", false, 1006);
        assert_eq!(
            ev,
            vec![
                Event::Unhealthy { label: "p1".into(), error: "refused".into() },
                Event::NeedFailover { from: "p1".into() }
            ]
        );
        assert_eq!(pool.active(), None, "no proxy carries flows until a replacement passed its check");
        assert_eq!(pool.candidates(1006), vec!["p2", "p3", "p1"], "standby first, the unhealthy one last");
        let ev = pool.activate("p2", Reason::Failover, 1007);
        assert_eq!(ev, vec![Event::Activated { label: "p2".into(), from: None, reason: Reason::Failover }]);
        assert_eq!(pool.records()[0].state, State::Unhealthy);
        assert!(pool.usable("p1", 1007).is_err());
    }

    #[test]
    fn sticky_by_default_failback_when_asked() {
        let mut pool = started("");
        for t in 0..3 {
            pool.failure("p1", "down", false, 1001 + t);
        }
        pool.activate("p2", Reason::Failover, 1010);
        assert_eq!(pool.success("p1", true, 1020), vec![Event::Recovered { label: "p1".into() }]);
        assert_eq!(pool.failback_candidate(1020), None, "sticky: stays on p2");
        assert_eq!(pool.active(), Some("p2"));

        let mut pool = started("    pool:\n      failback: true\n");
        for t in 0..3 {
            pool.failure("p1", "down", false, 1001 + t);
        }
        pool.activate("p2", Reason::Failover, 1010);
        assert_eq!(pool.failback_candidate(1011), Some("p1".into()));
        pool.activate("p1", Reason::Failback, 1012);
        assert_eq!(pool.records()[1].state, State::Standby, "the replaced healthy proxy is a standby again");
    }

    #[test]
    fn rotation_with_burn_and_expiry() {
        let mut pool = started("");
        let (targets, ev) = pool.plan_rotation(None, Some(Some(2000)), 1100).unwrap();
        assert_eq!(targets, vec!["p2", "p3"]);
        assert_eq!(ev[0], Event::Burned { label: "p1".into(), until: Some(2000) });
        assert_eq!(pool.active(), None);
        pool.activate("p2", Reason::Rotation, 1101);
        assert!(!pool.candidates(1500).contains(&"p1".to_string()), "a burned proxy is never a candidate");
        assert!(pool.usable("p1", 1500).unwrap_err().contains("burned"));
        assert_eq!(pool.expire_burns(1999), vec![]);
        assert_eq!(pool.expire_burns(2000), vec![Event::Unburned { label: "p1".into() }]);
        assert_eq!(pool.records()[0].state, State::Standby);
        assert_eq!(pool.active(), Some("p2"), "an expired burn does not take the active role back");

        // --to: only that target; bad targets are refused with the reason.
        assert_eq!(pool.plan_rotation(Some("p3"), None, 2001).unwrap().0, vec!["p3"]);
        assert_eq!(pool.plan_rotation(Some("nope"), None, 2001).unwrap_err(), RotateError::UnknownLabel("nope".into()));
        assert!(matches!(pool.plan_rotation(Some("off"), None, 2001), Err(RotateError::NotUsable { .. })));
        assert!(matches!(pool.plan_rotation(Some("p2"), None, 2001), Err(RotateError::NotUsable { .. })));
        pool.burn("p3", None);
        assert!(matches!(pool.plan_rotation(Some("p3"), None, u64::MAX), Err(RotateError::NotUsable { .. })));
    }

    #[test]
    fn burned_for_good_and_no_candidate_left() {
        let mut pool = started("");
        pool.burn("p2", None);
        pool.burn("p3", None);
        assert_eq!(pool.plan_rotation(None, Some(None), 1100).unwrap_err(), RotateError::NoCandidate);
        assert_eq!(pool.active(), Some("p1"), "a refused rotation burns nothing");
        assert!(pool.expire_burns(u64::MAX).is_empty(), "a burn without end never expires");
    }

    #[test]
    fn pinned_egress_mismatch_is_unhealthy_at_once() {
        let mut pool = started("");
        let ev = pool.egress("p1", "192.0.2.1".parse().unwrap(), 1001);
        assert_eq!(ev.len(), 1);
        assert_eq!(pool.active(), Some("p1"));
        let ev = pool.egress("p1", "198.51.100.1".parse().unwrap(), 1002);
        assert!(matches!(&ev[1], Event::Unhealthy { error, .. } if error.contains("not the pinned 192.0.2.1")));
        assert_eq!(ev[2], Event::NeedFailover { from: "p1".into() });
        assert_eq!(pool.records()[0].last_egress_ip, Some("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn restart_keeps_burns_and_the_active_choice() {
        let mut pool = started("");
        pool.burn("p1", None);
        pool.activate("p2", Reason::Rotation, 1100);
        let saved = pool.records().to_vec();
        let (again, ev) = Pool::new(&account(""), saved.clone(), 5000);
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(again.active(), Some("p2"), "sticky across restarts");
        assert_eq!(again.records()[0].state, State::Burned);
        assert!(!again.candidates(5000).contains(&"p1".to_string()));

        // Two saved actives, or an active that is now disabled: fixed up.
        let mut bad = saved;
        bad[0].state = State::Active;
        bad[0].burned_until = None;
        bad.push(Record { state: State::Active, ..Record::new("off") });
        let (again, ev) = Pool::new(&account(""), bad, 5000);
        assert_eq!(again.active(), Some("p1"));
        assert!(ev.is_empty());
        assert_eq!(again.records()[3].state, State::Standby);
    }
}
