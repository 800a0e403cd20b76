//! Where a new flow goes: the `Route` (an upstream proxy and its counters)
//! that a `Router` picks for a destination, or the `Refusal` saying why
//! none. The pool implements `Router`; the data plane and the DNS forwarder
//! only see this trait.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    /// Latency of successful health checks.
    pub check_latency: Histogram,
    /// Flows' TCP connect to the proxy.
    pub connect_time: Histogram,
    /// Flows' SOCKS5 or CONNECT handshake, after the connect.
    pub handshake_time: Histogram,
}

/// Upper bounds of the latency histograms' buckets, in seconds.
pub const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A latency histogram with fixed buckets (`BUCKETS`, and +Inf), lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), the last one +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

/// What a histogram holds at one moment, cumulative as exposed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations at or below each of `BUCKETS`, then all of them.
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS.iter().position(|&b| s <= b).unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                total += c.load(Relaxed);
                total
            })
            .collect();
        HistogramSnapshot { cumulative, sum_seconds: self.sum_us.load(Relaxed) as f64 / 1e6 }
    }
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

#[cfg(test)]
mod histogram_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(20));
        let s = h.snapshot();
        assert_eq!(s.cumulative.len(), BUCKETS.len() + 1);
        assert_eq!(s.cumulative[0], 1, "0.5 ms <= 1 ms");
        assert_eq!(s.cumulative[4], 1, "30 ms > 25 ms");
        assert_eq!(s.cumulative[5], 3, "30 ms <= 50 ms");
        assert_eq!(s.cumulative[BUCKETS.len() - 1], 3, "20 s > 10 s");
        assert_eq!(s.count(), 4);
        assert!((s.sum_seconds - 20.0605).abs() < 1e-9, "{}", s.sum_seconds);
    }
}
