//! `/var/lib/nsproxy/<account>/pool.json`'s records: each pool member's
//! state, burn, last check and egress IP, as the daemon saves them and
//! `status` and the metrics read them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Active,
    Standby,
    Unhealthy,
    Burned,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Active => "active",
            State::Standby => "standby",
            State::Unhealthy => "unhealthy",
            State::Burned => "burned",
        })
    }
}

/// The persisted record of one proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub label: String,
    pub state: State,
    /// For `burned`: until when (Unix seconds); None = for good.
    #[serde(default)]
    pub burned_until: Option<u64>,
    #[serde(default)]
    pub last_checked_at: Option<u64>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default)]
    pub last_egress_ip: Option<IpAddr>,
    #[serde(default)]
    pub last_egress_at: Option<u64>,
    /// For `burned`: why (the check, its status and a body excerpt, or
    /// "manual").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_reason: Option<String>,
}

impl Record {
    /// A member with no history: standby.
    pub fn new(label: &str) -> Record {
        Record {
            label: label.into(),
            state: State::Standby,
            burned_until: None,
            last_checked_at: None,
            last_error: None,
            consecutive_failures: 0,
            last_egress_ip: None,
            last_egress_at: None,
            burn_reason: None,
        }
    }
}

/// The active proxy as `up` and systemd's `STATUS=` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveProxy {
    pub label: String,
    /// `scheme://host:port`, never credentials.
    pub endpoint: String,
    pub egress_ip: Option<IpAddr>,
}

/// Where the pool stands, in one line's worth: what `up` prints after the
/// first choice and what the daemon tells systemd on every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub active: Option<ActiveProxy>,
    pub members: usize,
    pub standby: usize,
    pub unhealthy: usize,
    pub burned: usize,
    /// Why members are unusable: `label: last error` or `label: burned (reason)`.
    pub problems: Vec<String>,
}

impl Summary {
    /// The pool's figures from its records; `endpoint` shows a member.
    pub fn of(records: &[Record], endpoint: impl Fn(&str) -> String) -> Summary {
        let count = |s: State| records.iter().filter(|r| r.state == s).count();
        let active = records.iter().find(|r| r.state == State::Active).map(|r| ActiveProxy {
            label: r.label.clone(),
            endpoint: endpoint(&r.label),
            egress_ip: r.last_egress_ip,
        });
        let problems = records
            .iter()
            .filter_map(|r| match r.state {
                State::Unhealthy => {
                    Some(format!("{}: {}", r.label, r.last_error.as_deref().unwrap_or("failed its check")))
                }
                State::Burned => {
                    Some(format!("{}: burned ({})", r.label, r.burn_reason.as_deref().unwrap_or("no reason recorded")))
                }
                _ => None,
            })
            .collect();
        Summary {
            active,
            members: records.len(),
            standby: count(State::Standby),
            unhealthy: count(State::Unhealthy),
            burned: count(State::Burned),
            problems,
        }
    }

    /// `1 active, 2 standby, 1 unhealthy, 0 burned`.
    pub fn counts(&self) -> String {
        format!(
            "{} active, {} standby, {} unhealthy, {} burned",
            usize::from(self.active.is_some()),
            self.standby,
            self.unhealthy,
            self.burned
        )
    }

    /// One line for systemd's `STATUS=` (and `up`): the active proxy and
    /// its egress IP, or that there is none.
    pub fn line(&self) -> String {
        match &self.active {
            Some(a) => format!(
                "proxy {} ({}), egress IP {}; pool: {}",
                a.label,
                a.endpoint,
                a.egress_ip.map(|i| i.to_string()).unwrap_or_else(|| "not checked".into()),
                self.counts()
            ),
            None => format!("NO USABLE PROXY: new flows are refused; pool: {}", self.counts()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_the_active_proxy_or_says_there_is_none() {
        let mut a = Record::new("p1");
        a.state = State::Active;
        a.last_egress_ip = Some("203.0.113.7".parse().expect("ip"));
        let mut b = Record::new("p2");
        b.state = State::Unhealthy;
        b.last_error = Some("connection refused".into());
        let mut c = Record::new("p3");
        c.state = State::Burned;
        c.burn_reason = Some("check ex: HTTP 403".into());
        let ep = |l: &str| format!("socks5://{l}.test:1080");
        let s = Summary::of(&[a.clone(), b.clone(), c.clone(), Record::new("p4")], ep);
        assert_eq!(
            s.line(),
            "proxy p1 (socks5://p1.test:1080), egress IP 203.0.113.7; pool: 1 active, 1 standby, 1 unhealthy, 1 burned"
        );
        assert_eq!(s.problems, vec!["p2: connection refused", "p3: burned (check ex: HTTP 403)"]);
        let s = Summary::of(&[b, c], ep);
        assert!(s.active.is_none());
        assert_eq!(
            s.line(),
            "NO USABLE PROXY: new flows are refused; pool: 0 active, 0 standby, 1 unhealthy, 1 burned"
        );
    }
}
