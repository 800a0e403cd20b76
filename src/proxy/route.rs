//! Where a new flow goes: the `Route` (an upstream proxy and its counters)
//! that a `Router` picks for a destination, or the `Refusal` saying why
//! none. The pool implements `Router`; the data plane and the DNS forwarder
//! only see this trait.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::watch;

use super::{ProxyError, Upstream};
use crate::rules::Dest;

/// Counters of one proxy, for metrics and cost monitoring.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub flows: AtomicU64,
    pub failures: AtomicU64,
    pub checks_ok: AtomicU64,
    pub checks_failed: AtomicU64,
    /// Sum of successful check latencies, microseconds.
    pub check_latency_us: AtomicU64,
}

/// Why a new flow gets no proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Blocked { rule: String },
    RuleTargetUnusable { rule: String, label: String, why: String },
    NoActive,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Blocked { rule } => write!(f, "blocked by rule {rule}"),
            Refusal::RuleTargetUnusable { rule, label, why } => {
                write!(f, "rule {rule} sends it to proxy {label}, which is {why}")
            }
            Refusal::NoActive => {
                f.write_str("no usable proxy in the pool (every proxy is unhealthy, burned or disabled)")
            }
        }
    }
}

/// A route: the proxy to use and whether a rule chose it.
#[derive(Clone)]
pub struct Route {
    pub upstream: Arc<Upstream>,
    pub counters: Arc<ProxyCounters>,
    pub by_rule: bool,
}

impl Route {
    pub fn label(&self) -> &str {
        &self.upstream.entry.label
    }
}

/// Who decides the upstream of a flow, and hears how it went.
pub trait Router: Send + Sync + 'static {
    /// The account, for logs.
    fn account(&self) -> &str;
    /// Where a new flow to `dest` goes.
    fn route(&self, dest: &Dest<'_>) -> Result<Route, Refusal>;
    /// The active proxy, if any (a held SYN retries through it after a
    /// failover; the DNS forwarder follows it).
    fn active(&self) -> Option<Route>;
    /// The outcome of a connection through `route`, begun at `started`.
    fn report(&self, route: &Route, result: Result<(), &ProxyError>, started: std::time::Instant);
    /// A receiver whose `changed()` fires when open flows must be reset.
    fn reset_signal(&self) -> watch::Receiver<u64>;
}
