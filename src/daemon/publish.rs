//! What the daemon publishes: its counters on request while it runs (the
//! control socket's `stats`, for `status`: no timer wakes an idle daemon),
//! `stats.json` once it stops (the last figures, for `status` after), and
//! the figures behind the metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio_util::sync::CancellationToken;

use crate::dataplane::Observer;
use crate::host::rundir::RunDir;
use crate::metrics::{Figures, ProxyFigures};
use crate::pool::PoolHandle;
use crate::published::stats::Snapshot;

fn snapshot(pool: &PoolHandle, dp: &Observer) -> Snapshot {
    let mut snap = dp.snapshot();
    snap.service = pool.service_snapshot();
    snap
}

fn write(rundir: &RunDir, snap: &Snapshot) {
    if let Ok(json) = serde_json::to_vec_pretty(snap) {
        let _ = crate::host::rundir::write_volatile(&rundir.stats_path(), &json, 0o644);
    }
}

/// The counters of a running account, once its data plane exists.
#[derive(Clone)]
pub struct Live {
    pool: Arc<PoolHandle>,
    dp: Arc<std::sync::OnceLock<Observer>>,
    dns_mode: &'static str,
}

impl Live {
    pub fn new(pool: Arc<PoolHandle>, dns_mode: &'static str) -> Live {
        Live { pool, dp: Arc::default(), dns_mode }
    }

    /// The exposition the metrics listener serves.
    pub fn metrics(&self) -> Option<String> {
        self.dp.get().map(|dp| crate::metrics::render(&collect(&self.pool, dp, self.dns_mode)))
    }

    /// The data plane is built: its counters can be read.
    pub fn set(&self, dp: Observer) {
        let _ = self.dp.set(dp);
    }

    pub fn snapshot(&self) -> Option<Snapshot> {
        self.dp.get().map(|dp| snapshot(&self.pool, dp))
    }
}

/// Writes `stats.json` when `stop` is cancelled (the figures at the end).
pub async fn stats(live: Live, rundir: RunDir, stop: CancellationToken) {
    stop.cancelled().await;
    if let Some(snap) = live.snapshot() {
        write(&rundir, &snap);
    }
}

/// The current figures of a running account.
pub fn collect(pool: &PoolHandle, dp: &Observer, dns_mode: &str) -> Figures {
    let p = pool.lock();
    let proxies = p
        .members()
        .iter()
        .zip(p.records())
        .map(|(m, r)| {
            let c = pool.counters_of(&m.label);
            let g = |f: fn(&crate::proxy::route::ProxyCounters) -> &std::sync::atomic::AtomicU64| {
                c.as_ref().map(|c| f(c).load(Relaxed)).unwrap_or(0)
            };
            ProxyFigures {
                label: m.label.clone(),
                endpoint: m.endpoint.clone(),
                state: Some(r.state),
                egress_ip: r.last_egress_ip.map(|i| i.to_string()),
                bytes_up: g(|c| &c.bytes_up),
                bytes_down: g(|c| &c.bytes_down),
                flows: g(|c| &c.flows),
                failures: g(|c| &c.failures),
                checks_ok: g(|c| &c.checks_ok),
                checks_failed: g(|c| &c.checks_failed),
                check_latency: c.as_ref().map(|c| c.check_latency.snapshot()).unwrap_or_default(),
                connect_time: c.as_ref().map(|c| c.connect_time.snapshot()).unwrap_or_default(),
                handshake_time: c.as_ref().map(|c| c.handshake_time.snapshot()).unwrap_or_default(),
            }
        })
        .collect();
    Figures {
        account: pool.account.clone(),
        dns_mode: dns_mode.into(),
        stats: dp.snapshot(),
        failovers: pool.counters.failovers.load(Relaxed),
        rotations: pool.counters.rotations.load(Relaxed),
        burns: pool
            .counters
            .burns_by_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        all_down: pool.all_down.load(Relaxed),
        active: p.active().map(str::to_string),
        proxies,
    }
}
