//! The pool manager task: health-checks the active proxy, checks a
//! replacement before switching to it, fetches the egress IP, expires
//! burns, fails back, refreshes the proxy service's allocation (fleet
//! mode), and carries out the daemon's `rotate` and `check` orders.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::checks::{Fail, Which};
use super::handle::{PoolHandle, ProxyCounters};
use super::service::Fleet;
use super::state::{Event, Reason};
use crate::config::{Account, OnBurn};
use crate::proxy::Upstream;
use crate::proxy::probe::{EgressProbe, Probe};
use crate::published::control::Response;

/// What the daemon asks of the manager (from the control socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Switch the active proxy now (`nsproxy rotate`).
    Rotate { to: Option<String>, burn: bool, burn_for_secs: Option<u64>, reset_flows: bool },
    /// Health and egress check of the active proxy now (`nsproxy check`).
    Check,
    /// Lift a burn (`nsproxy unburn`).
    Unburn { label: String },
}

/// An order with the channel its answer goes back on.
pub type OrderCall = (Order, oneshot::Sender<Response>);

/// What the manager needs from the policy.
pub struct ManagerConfig {
    /// The health checks, ready to run (TLS trust built).
    pub probes: Vec<Probe>,
    pub egress: Option<EgressProbe>,
    /// `pool.on_burn: reset-flows`.
    pub reset_flows_on_burn: bool,
}

impl ManagerConfig {
    /// Fails on a check whose TLS trust cannot be built (a bad `ca_file`),
    /// naming the check.
    pub fn new(a: &Account) -> Result<ManagerConfig, String> {
        let probes = a
            .health_checks
            .iter()
            .map(|c| Probe::new(c).map_err(|e| format!("health_check {}: {e}", c.name)))
            .collect::<Result<Vec<_>, _>>()?;
        let egress =
            a.egress_check.as_ref().map(EgressProbe::new).transpose().map_err(|e| format!("egress_check: {e}"))?;
        Ok(ManagerConfig { probes, egress, reset_flows_on_burn: a.pool.on_burn == OnBurn::ResetFlows })
    }

    /// How often the active proxy is checked and an empty pool retried:
    /// the shortest interval of the checks.
    pub fn interval(&self) -> Duration {
        self.probes.iter().map(|p| p.check.interval).min().unwrap_or(Duration::from_secs(30))
    }

    /// The longest the first choice can take when nothing answers: the
    /// proxy service asked first (fleet mode: each endpoint in turn), then
    /// every enabled proxy checked in turn (each check, then the egress
    /// check), each step bounded by its timeout.
    pub fn first_choice_bound(&self, a: &Account) -> Duration {
        let service = a
            .external_service
            .as_ref()
            .filter(|s| s.enabled)
            .map(|s| s.timeout * s.endpoints.len() as u32)
            .unwrap_or_default();
        let egress = self.egress.as_ref().map(|e| e.check.timeout).unwrap_or_default();
        let per_proxy = |p: &crate::config::ProxyEntry| -> Duration {
            let checks = if self.probes.is_empty() {
                p.connect_timeout + p.handshake_timeout
            } else {
                self.probes.iter().map(|c| c.check.timeout).sum()
            };
            checks + egress
        };
        // The service's member is checked like the others.
        let service_member =
            a.external_service.as_ref().filter(|s| s.enabled).map(|_| per_proxy(&super::service::placeholder_entry()));
        let proxies: Duration = a.proxies.iter().filter(|p| p.enabled).map(per_proxy).sum();
        service + service_member.unwrap_or_default() + proxies
    }
}

pub(super) struct Manager {
    pub(super) h: Arc<PoolHandle>,
    pub(super) cfg: ManagerConfig,
    /// When each check of the active proxy is next due.
    due: Mutex<Vec<Instant>>,
}

impl Manager {
    pub(super) fn upstream(&self, label: &str) -> Option<(Arc<Upstream>, Arc<ProxyCounters>)> {
        self.h.get(label)
    }

    pub(super) fn commit(&self, events: Vec<Event>) {
        self.h.apply(events);
        self.h.persist();
    }

    /// The checks of the active proxy due now (all of them when there is
    /// one interval), and when each is due next.
    fn due_now(&self) -> Vec<usize> {
        let now = Instant::now();
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = Vec::new();
        for (i, p) in self.cfg.probes.iter().enumerate() {
            if due[i] <= now + Duration::from_millis(50) {
                v.push(i);
                due[i] = now + p.check.interval;
            }
        }
        v
    }

    /// Checks `targets` in order; the first that passes (and shows the
    /// pinned egress IP, if any) becomes active. Returns it, or every
    /// failure.
    pub(super) async fn switch(&self, targets: &[String], reason: Reason) -> Result<String, Vec<String>> {
        let mut errors = Vec::new();
        for label in targets {
            match self.check(label, Which::All).await {
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
                Err(Fail::Burned { check, reason, until }) => {
                    self.burn(label, &check, &reason, until);
                    errors.push(format!("{label}: burned by check {check}: {reason}"));
                }
                Err(Fail::Error(e)) if e.is_local() => errors.push(format!("{label}: {e}")),
                // The exchange's trouble is not this candidate's fault.
                Err(f @ Fail::Trouble { .. }) => errors.push(format!("{label}: {f}")),
                Err(f) => {
                    let ev = self.h.lock().failure(label, &f.to_string(), true, self.h.now());
                    self.commit(ev);
                    errors.push(format!("{label}: {f}"));
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
            Some(label) if !self.cfg.probes.is_empty() => {
                let due = self.due_now();
                if !due.is_empty() {
                    let _ = self.check_active(&label, Which::Only(&due)).await;
                }
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
        // Each check on its own, so every result is shown.
        let mut results = Vec::new();
        let mut shown = Vec::new();
        for i in self.runs(Which::All) {
            if self.h.lock().active() != Some(label.as_str()) {
                break; // burned or failed over by an earlier check
            }
            let only = i.map(|i| vec![i]).unwrap_or_default();
            let which = if i.is_some() { Which::Only(&only) } else { Which::All };
            let r = self.check_active(&label, which).await;
            let name = i.map(|i| self.cfg.probes[i].check.name.clone()).unwrap_or_else(|| "proxy".into());
            let (ok, text, verdict) = match &r {
                Ok(l) => (true, format!("ok in {} ms", l.as_millis()), "ok"),
                Err(Fail::Burned { .. }) => (
                    false,
                    format!("BURNED: {}", r.as_ref().err().map(|f| f.to_string()).unwrap_or_default()),
                    "burned",
                ),
                Err(Fail::Trouble { reason, .. }) => {
                    (false, format!("destination trouble: {reason}"), "destination_trouble")
                }
                Err(f) => (false, format!("FAILED: {f}"), "failed"),
            };
            shown.push(format!("{name} {text}"));
            results.push(json!({
                "check": name,
                "ok": ok,
                "verdict": verdict,
                "latency_ms": r.as_ref().ok().map(|l| l.as_millis() as u64),
                "detail": text,
            }));
        }
        let health_ok = results.iter().all(|r| r["ok"] == true);
        let egress = self.egress(&label).await;
        let ok = health_ok && !matches!(egress, Some(Err(_)));
        let msg = format!(
            "account {}: proxy {} ({}): health {}; egress IP {}",
            self.h.account,
            label,
            self.h.endpoint(&label),
            shown.join("; "),
            match &egress {
                None => "not checked (no egress_check in the policy)".to_string(),
                Some(Ok(ip)) => ip.to_string(),
                Some(Err(e)) => format!("FAILED: {e}"),
            }
        );
        let data = json!({
            "proxy": label,
            "endpoint": self.h.endpoint(&label),
            "health_ok": health_ok,
            "checks": results,
            "latency_ms": results.first().and_then(|r| r["latency_ms"].as_u64()),
            "egress_ip": egress.as_ref().and_then(|e| e.as_ref().ok()),
            "still_active": self.h.lock().active() == Some(label.as_str()),
        });
        Response { ok, message: msg, data }
    }

    fn unburn(&self, label: &str) -> Response {
        let r = self.h.lock().unburn(label);
        match r {
            Ok(ev) => {
                self.commit(ev);
                if self.h.lock().active().is_none() {
                    self.h.wake.notify_one();
                }
                Response::ok(
                    format!("account {}: proxy {label} is no longer burned (standby)", self.h.account),
                    json!({"proxy": label}),
                )
            }
            Err(e) => Response::err(format!("account {}: cannot unburn: {e}", self.h.account)),
        }
    }

    async fn handle(&self, order: Order) -> Response {
        match order {
            Order::Rotate { to, burn, burn_for_secs, reset_flows } => {
                self.rotate(to, burn, burn_for_secs, reset_flows).await
            }
            Order::Check => self.check_now().await,
            Order::Unburn { label } => self.unburn(&label),
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
    let due = Mutex::new(vec![Instant::now() + cfg.interval(); cfg.probes.len()]);
    let m = Manager { h, cfg, due };
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
