//! The pool manager task: health-checks the active proxy, checks a
//! replacement before switching to it, fetches the egress IP, expires
//! burns, fails back, refreshes the proxy service's allocation (fleet
//! mode), and carries out the daemon's `rotate` and `check` orders.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::handle::{PoolHandle, ProxyCounters};
use super::service::Fleet;
use super::state::{Event, Reason};
use crate::config::{Account, EgressCheck, HealthCheck};
use crate::proxy::Upstream;
use crate::proxy::probe::{self, CheckError};
use crate::published::control::Response;

/// What the daemon asks of the manager (from the control socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Switch the active proxy now (`nsproxy rotate`).
    Rotate { to: Option<String>, burn: bool, burn_for_secs: Option<u64>, reset_flows: bool },
    /// Health and egress check of the active proxy now (`nsproxy check`).
    Check,
}

/// An order with the channel its answer goes back on.
pub type OrderCall = (Order, oneshot::Sender<Response>);

/// What the manager needs from the policy.
pub struct ManagerConfig {
    pub health: Option<HealthCheck>,
    pub egress: Option<EgressCheck>,
}

impl ManagerConfig {
    pub fn from_account(a: &Account) -> ManagerConfig {
        ManagerConfig { health: a.health_check.clone(), egress: a.egress_check.clone() }
    }

    /// How often the active proxy is checked and an empty pool retried.
    pub(super) fn interval(&self) -> Duration {
        self.health.as_ref().map(|h| h.interval).unwrap_or(Duration::from_secs(30))
    }

    fn check_timeout(&self, up: &Upstream) -> Duration {
        self.health.as_ref().map(|h| h.timeout).unwrap_or(up.entry.connect_timeout)
    }
}

pub(super) struct Manager {
    pub(super) h: Arc<PoolHandle>,
    pub(super) cfg: ManagerConfig,
}

impl Manager {
    pub(super) fn upstream(&self, label: &str) -> Option<(Arc<Upstream>, Arc<ProxyCounters>)> {
        self.h.get(label)
    }

    pub(super) fn commit(&self, events: Vec<Event>) {
        self.h.apply(events);
        self.h.persist();
    }

    /// One health check through `label`, recorded in the pool.
    async fn check(&self, label: &str) -> Result<Duration, CheckError> {
        let Some((up, c)) = self.upstream(label) else {
            return Err(CheckError::Bad { what: "check".into(), reason: format!("unknown proxy {label}") });
        };
        let target = self.cfg.health.as_ref().map(|h| &h.target);
        let r = probe::check(&up, target, self.cfg.check_timeout(&up)).await;
        match &r {
            Ok(lat) => {
                c.checks_ok.fetch_add(1, Relaxed);
                c.check_latency_us.fetch_add(lat.as_micros() as u64, Relaxed);
            }
            Err(e) => {
                c.checks_failed.fetch_add(1, Relaxed);
                tracing::debug!(account = %self.h.account, proxy = %label, error = %e, "health check failed");
            }
        }
        r
    }

    /// A health check of the active proxy `label`, counted towards its
    /// failure threshold (a failure at the threshold triggers failover).
    pub(super) async fn check_active(&self, label: &str) -> Result<Duration, CheckError> {
        let r = self.check(label).await;
        let ev = match &r {
            Ok(_) => self.h.lock().success(label, true, self.h.now()),
            Err(e) if e.is_local() => {
                tracing::warn!(account = %self.h.account, proxy = %label, error = %e, "health check not counted: this host is out of resources");
                Vec::new()
            }
            Err(e) => self.h.lock().failure(label, &e.to_string(), false, self.h.now()),
        };
        self.commit(ev);
        r
    }

    /// Fetches and records the egress IP through `label` (when the policy
    /// has an echo URL). A pinned-address mismatch makes it unhealthy.
    async fn egress(&self, label: &str) -> Option<Result<IpAddr, String>> {
        let cfg = self.cfg.egress.as_ref()?;
        let (up, _) = self.upstream(label)?;
        let r = probe::egress_ip(&up, &cfg.url, cfg.timeout).await;
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

    /// Checks `targets` in order; the first that passes (and shows the
    /// pinned egress IP, if any) becomes active. Returns it, or every
    /// failure.
    pub(super) async fn switch(&self, targets: &[String], reason: Reason) -> Result<String, Vec<String>> {
        let mut errors = Vec::new();
        for label in targets {
            match self.check(label).await {
                Ok(_) => {
                    let ev = {
                        let mut p = self.h.lock();
                        let mut ev = p.success(label, true, self.h.now());
                        ev.extend(p.activate(label, reason, self.h.now()));
                        ev
                    };
                    self.commit(ev);
                    if let Some(Err(e)) = self.egress(label).await {
                        tracing::warn!(account = %self.h.account, proxy = %label, error = %e, "egress IP unknown");
                    }
                    if self.h.lock().active() == Some(label.as_str()) {
                        return Ok(label.clone());
                    }
                    errors.push(format!("{label}: egress IP check failed"));
                }
                Err(e) => {
                    if !e.is_local() {
                        let ev = self.h.lock().failure(label, &e.to_string(), true, self.h.now());
                        self.commit(ev);
                    }
                    errors.push(format!("{label}: {e}"));
                }
            }
        }
        Err(errors)
    }

    /// No active proxy: check candidates until one passes.
    async fn failover(&self, reason: Reason) {
        let targets = self.h.lock().candidates(self.h.now());
        match self.switch(&targets, reason).await {
            Ok(_) => {}
            Err(errors) => {
                self.h.all_down.store(true, Relaxed);
                let tried =
                    if errors.is_empty() { "no candidate (all burned or disabled)".into() } else { errors.join("; ") };
                tracing::error!(
                    account = %self.h.account,
                    tried = %tried,
                    retry_in = ?self.cfg.interval(),
                    "EVERY PROXY IS UNUSABLE: new flows are refused until one passes a check"
                );
            }
        }
    }

    /// The periodic round: expire burns, check the active proxy, retry an
    /// empty pool, try failback.
    async fn tick(&self) {
        let ev = self.h.lock().expire_burns(self.h.now());
        if !ev.is_empty() {
            self.commit(ev);
        }
        let active = self.h.lock().active().map(str::to_string);
        match active {
            Some(label) if self.cfg.health.is_some() => {
                let _ = self.check_active(&label).await;
            }
            Some(_) => {}
            None => self.failover(Reason::Failover).await,
        }
        let candidate = self.h.lock().failback_candidate(self.h.now());
        if let Some(better) = candidate
            && self.h.lock().active().is_some()
        {
            let _ = self.switch(&[better], Reason::Failback).await;
        }
    }

    async fn rotate(&self, to: Option<String>, burn: bool, burn_for: Option<u64>, reset_flows: bool) -> Response {
        let now = self.h.now();
        let from = self.h.lock().active().map(str::to_string);
        let burn = burn.then(|| burn_for.map(|s| now.saturating_add(s)));
        let planned = self.h.lock().plan_rotation(to.as_deref(), burn, now);
        let (targets, ev) = match planned {
            Ok(x) => x,
            Err(e) => return Response::err(format!("account {}: cannot rotate: {e}", self.h.account)),
        };
        self.commit(ev);
        match self.switch(&targets, Reason::Rotation).await {
            Ok(label) => {
                if reset_flows {
                    self.h.reset.send_modify(|n| *n += 1);
                    tracing::warn!(account = %self.h.account, proxy = %label, "existing flows reset: programs reconnect through the new proxy");
                }
                let p = self.h.lock();
                let egress = p.records().iter().find(|r| r.label == label).and_then(|r| r.last_egress_ip);
                Response::ok(
                    format!(
                        "account {}: active proxy {} ({}){}",
                        self.h.account,
                        label,
                        self.h.endpoint(&label),
                        egress.map(|ip| format!(", egress IP {ip}")).unwrap_or_default()
                    ),
                    json!({"from": from, "to": label, "egress_ip": egress, "flows_reset": reset_flows}),
                )
            }
            Err(errors) => {
                if self.h.lock().active().is_none() {
                    self.h.wake.notify_one();
                }
                Response::err(format!(
                    "account {}: no proxy passed its check ({}); {}",
                    self.h.account,
                    errors.join("; "),
                    match self.h.lock().active() {
                        Some(a) => format!("still using {a}"),
                        None => "new flows are refused until a proxy passes a check".into(),
                    }
                ))
            }
        }
    }

    async fn check_now(&self) -> Response {
        let Some(label) = self.h.lock().active().map(str::to_string) else {
            return Response::err(format!("account {}: no active proxy (every proxy is unusable)", self.h.account));
        };
        let health = self.check_active(&label).await;
        let egress = self.egress(&label).await;
        let ok = health.is_ok() && !matches!(egress, Some(Err(_)));
        let msg = format!(
            "account {}: proxy {} ({}): health {}; egress IP {}",
            self.h.account,
            label,
            self.h.endpoint(&label),
            match &health {
                Ok(l) => format!("ok in {} ms", l.as_millis()),
                Err(e) => format!("FAILED: {e}"),
            },
            match &egress {
                None => "not checked (no egress_check in the policy)".to_string(),
                Some(Ok(ip)) => ip.to_string(),
                Some(Err(e)) => format!("FAILED: {e}"),
            }
        );
        let data = json!({
            "proxy": label,
            "endpoint": self.h.endpoint(&label),
            "health_ok": health.is_ok(),
            "latency_ms": health.as_ref().ok().map(|l| l.as_millis() as u64),
            "egress_ip": egress.as_ref().and_then(|e| e.as_ref().ok()),
            "still_active": self.h.lock().active() == Some(label.as_str()),
        });
        Response { ok, message: msg, data }
    }

    async fn handle(&self, order: Order) -> Response {
        match order {
            Order::Rotate { to, burn, burn_for_secs, reset_flows } => {
                self.rotate(to, burn, burn_for_secs, reset_flows).await
            }
            Order::Check => self.check_now().await,
        }
    }
}

/// The manager task: runs until `stop` is cancelled or the orders' channel
/// closes. `chosen` fires once the first choice is made (a proxy passed its
/// check, or none did and that is logged).
pub async fn manage(
    h: Arc<PoolHandle>,
    cfg: ManagerConfig,
    mut calls: mpsc::Receiver<OrderCall>,
    chosen: oneshot::Sender<()>,
    mut fleet: Option<Fleet>,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = run(h, cfg, &mut calls, chosen, &mut fleet) => {}
    }
}

async fn run(
    h: Arc<PoolHandle>,
    cfg: ManagerConfig,
    calls: &mut mpsc::Receiver<OrderCall>,
    chosen: oneshot::Sender<()>,
    fleet: &mut Option<Fleet>,
) {
    let m = Manager { h, cfg };
    let before = m.h.lock().active().map(str::to_string);
    // Fleet mode: the service first, so the first choice can be its proxy.
    let mut next_alloc = None;
    if let Some(f) = fleet.as_mut() {
        next_alloc = Some(tokio::time::Instant::now() + m.refresh(f).await);
    }
    // At start: a remembered active proxy is kept (sticky) and its egress
    // recorded; otherwise the best candidate that passes its check.
    let active = m.h.lock().active().map(str::to_string);
    match active {
        Some(label) if before.as_ref() != Some(&label) => {}
        Some(label) => {
            let ep = m.h.endpoint(&label);
            tracing::info!(account = %m.h.account, proxy = %label, endpoint = %ep, "proxy selected (kept from the previous run)");
            let _ = m.egress(&label).await;
        }
        None => m.failover(Reason::Start).await,
    }
    let _ = chosen.send(());
    let interval = m.cfg.interval();
    let mut next = tokio::time::Instant::now() + interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                m.tick().await;
                next = tokio::time::Instant::now() + interval;
            }
            _ = async {
                match next_alloc {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(f) = fleet.as_mut() {
                    next_alloc = Some(tokio::time::Instant::now() + m.refresh(f).await);
                }
            }
            _ = m.h.wake.notified() => {
                if m.h.lock().active().is_none() {
                    m.failover(Reason::Failover).await;
                }
            }
            call = calls.recv() => {
                let Some((req, reply)) = call else { return };
                let resp = m.handle(req).await;
                let _ = reply.send(resp);
            }
        }
    }
}
