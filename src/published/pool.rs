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
