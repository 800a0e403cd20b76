//! What the daemon publishes while it runs: `stats.json` (refreshed when it
//! changes, at most every 0.5 s, and once more at the end) and the figures
//! behind the metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

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
        let _ = crate::host::rundir::write_atomic(&rundir.stats_path(), &json, 0o644);
    }
}

/// Publishes `stats.json` until `stop`, then once more.
pub async fn stats(pool: Arc<PoolHandle>, dp: Observer, rundir: RunDir, stop: CancellationToken) {
    let mut last = None;
    loop {
        let snap = snapshot(&pool, &dp);
        if last.as_ref() != Some(&snap) {
            write(&rundir, &snap);
            last = Some(snap);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    write(&rundir, &snapshot(&pool, &dp));
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
