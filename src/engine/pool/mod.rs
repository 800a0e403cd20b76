//! The daemon side of the proxy pool: routes each new flow (rules, then the
//! active proxy), counts proxy-level failures, and runs the manager task
//! that health-checks the active proxy, checks a replacement before
//! switching to it, fetches the egress IP, serves `rotate`/`check`, and
//! persists every change. Every event is logged with the account, the
//! proxy label and its `scheme://host:port`, never credentials.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};

pub mod fleet;

use crate::config::{Account, EgressCheck, HealthCheck};
use crate::control::{Call, Request, Response};
use crate::pool::store::{Store, StoreError};
use crate::pool::{Event, Pool, Reason};
use crate::proxy::probe::{self, CheckError};
use crate::proxy::{ProxyError, Upstream};
use crate::rules::{Action, Dest, Rule};
use crate::secrets::Creds;

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

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

/// Pool-wide counters.
#[derive(Debug, Default)]
pub struct PoolCounters {
    pub failovers: AtomicU64,
    pub rotations: AtomicU64,
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

/// A pool member's proxy and its counters.
type Member = (Arc<Upstream>, Arc<ProxyCounters>);

pub struct PoolHandle {
    pub account: String,
    pool: Mutex<Pool>,
    store: Store,
    /// Behind a lock only for the `service` member, whose proxy the proxy
    /// service replaces when it hands out another.
    upstreams: std::sync::RwLock<HashMap<String, Member>>,
    rules: Vec<Rule>,
    pub counters: PoolCounters,
    /// Wakes the manager (failover needed).
    wake: Notify,
    /// Bumped by `rotate --reset-flows`: flows opened before are reset.
    reset: watch::Sender<u64>,
    /// For the metrics: every proxy is unusable right now.
    pub all_down: std::sync::atomic::AtomicBool,
    /// Fleet mode: what `status` shows about the proxy service.
    service: Mutex<Option<fleet::ServiceStatus>>,
    /// Fleet mode: where flows through the `service` member are reported.
    feedback: std::sync::OnceLock<fleet::FeedbackSink>,
}

impl PoolHandle {
    /// Loads the saved pool state (a corrupt file is an error: the daemon
    /// does not start) and resolves each member's credentials.
    pub fn open(account: &Account, creds: Vec<Option<Creds>>) -> Result<Arc<PoolHandle>, StoreError> {
        let store = Store::new(&account.name);
        let saved = store.load()?;
        let (pool, events) = Pool::new(account, saved, unix_now());
        let upstreams = account
            .proxies
            .iter()
            .zip(creds.into_iter().chain(std::iter::repeat(None)))
            .map(|(p, c)| {
                let up = Arc::new(Upstream { entry: p.clone(), creds: c });
                (p.label.clone(), (up, Arc::new(ProxyCounters::default())))
            })
            .collect();
        let h = Arc::new(PoolHandle {
            account: account.name.clone(),
            pool: Mutex::new(pool),
            store,
            upstreams: std::sync::RwLock::new(upstreams),
            rules: account.rules.clone(),
            counters: PoolCounters::default(),
            wake: Notify::new(),
            reset: watch::channel(0).0,
            all_down: false.into(),
            service: Mutex::new(None),
            feedback: std::sync::OnceLock::new(),
        });
        // The manager picks the first active proxy itself when it starts.
        h.apply(events.into_iter().filter(|e| !matches!(e, Event::NeedFailover { .. })).collect());
        h.persist();
        Ok(h)
    }

    fn get(&self, label: &str) -> Option<(Arc<Upstream>, Arc<ProxyCounters>)> {
        self.upstreams.read().unwrap_or_else(|e| e.into_inner()).get(label).cloned()
    }

    /// Replaces the proxy behind a member (the `service` member, when the
    /// proxy service hands out another); its counters stay.
    pub fn set_upstream(&self, up: Upstream) {
        let mut map = self.upstreams.write().unwrap_or_else(|e| e.into_inner());
        let counters = map.get(&up.entry.label).map(|(_, c)| c.clone()).unwrap_or_default();
        map.insert(up.entry.label.clone(), (Arc::new(up), counters));
    }

    pub fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn route_to(&self, label: &str, by_rule: bool) -> Option<Route> {
        self.get(label).map(|(upstream, counters)| Route { upstream, counters, by_rule })
    }

    /// The counters of one member.
    pub fn counters_of(&self, label: &str) -> Option<Arc<ProxyCounters>> {
        self.get(label).map(|(_, c)| c)
    }

    /// The active proxy, if any.
    pub fn active(&self) -> Option<Route> {
        let label = self.lock().active()?.to_string();
        self.route_to(&label, false)
    }

    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Where a new flow to `dest` goes.
    pub fn route(&self, dest: &Dest<'_>) -> Result<Route, Refusal> {
        if let Some((i, rule)) = crate::rules::decide(&self.rules, dest) {
            let shown = format!("#{} ({rule})", i + 1);
            return match &rule.action {
                Action::Block => Err(Refusal::Blocked { rule: shown }),
                Action::Via(label) => match self.lock().usable(label, unix_now()) {
                    Ok(()) => self.route_to(label, true).ok_or(Refusal::NoActive),
                    Err(why) => Err(Refusal::RuleTargetUnusable { rule: shown, label: label.clone(), why }),
                },
            };
        }
        self.active().ok_or(Refusal::NoActive)
    }

    /// The outcome of a flow's connection through `label`, begun at
    /// `started`.
    pub fn report(&self, route: &Route, result: Result<(), &ProxyError>, started: std::time::Instant) {
        let label = route.label();
        if label == crate::config::SERVICE_LABEL
            && let Some(sink) = self.feedback.get()
        {
            sink.offer(&route.upstream.entry.endpoint(), result.map(|()| started.elapsed()).map_err(|e| e.to_string()));
        }
        let events = match result {
            Ok(()) => {
                route.counters.flows.fetch_add(1, Relaxed);
                self.lock().success(label, false, unix_now())
            }
            Err(e) if e.is_proxy_level() => {
                route.counters.failures.fetch_add(1, Relaxed);
                self.lock().failure(label, &e.to_string(), false, unix_now())
            }
            Err(_) => Vec::new(), // the destination's fault, not the proxy's
        };
        if !events.is_empty() {
            self.apply(events);
            self.persist();
        }
    }

    /// A receiver whose `changed()` fires at the next `--reset-flows`.
    pub fn reset_signal(&self) -> watch::Receiver<u64> {
        self.reset.subscribe()
    }

    fn persist(&self) {
        let records = self.lock().records().to_vec();
        if let Err(e) = self.store.save(&records) {
            tracing::error!(account = %self.account, error = %e, "cannot save the pool state; burns may not survive a restart");
        }
    }

    fn endpoint(&self, label: &str) -> String {
        self.get(label).map(|(u, _)| u.entry.endpoint()).unwrap_or_default()
    }

    /// Logs and counts events; wakes the manager when a failover is needed.
    fn apply(&self, events: Vec<Event>) {
        let a = &self.account;
        for ev in events {
            match ev {
                Event::Activated { label, from, reason } => {
                    let ep = self.endpoint(&label);
                    let from = from.unwrap_or_else(|| "-".into());
                    self.all_down.store(false, Relaxed);
                    match reason {
                        Reason::Start => tracing::info!(account = %a, proxy = %label, endpoint = %ep, "proxy selected"),
                        Reason::Failover => {
                            self.counters.failovers.fetch_add(1, Relaxed);
                            tracing::warn!(account = %a, proxy = %label, endpoint = %ep, from = %from, "failover: new flows use this proxy")
                        }
                        Reason::Rotation => {
                            self.counters.rotations.fetch_add(1, Relaxed);
                            tracing::info!(account = %a, proxy = %label, endpoint = %ep, from = %from, "rotation: new flows use this proxy")
                        }
                        Reason::Failback => {
                            tracing::info!(account = %a, proxy = %label, endpoint = %ep, from = %from, "failback to the better-priority proxy")
                        }
                    }
                }
                Event::Unhealthy { label, error } => {
                    tracing::warn!(account = %a, proxy = %label, endpoint = %self.endpoint(&label), error = %error, "proxy unhealthy")
                }
                Event::Recovered { label } => {
                    tracing::info!(account = %a, proxy = %label, endpoint = %self.endpoint(&label), "proxy recovered")
                }
                Event::Burned { label, until } => {
                    let until = until.map(|u| u.to_string()).unwrap_or_else(|| "for good".into());
                    tracing::warn!(account = %a, proxy = %label, endpoint = %self.endpoint(&label), until = %until, "proxy burned")
                }
                Event::Unburned { label } => {
                    tracing::info!(account = %a, proxy = %label, endpoint = %self.endpoint(&label), "burn expired; proxy is standby again")
                }
                Event::NeedFailover { from } => {
                    if !from.is_empty() {
                        tracing::warn!(account = %a, proxy = %from, "active proxy unusable: checking a replacement");
                    }
                    self.wake.notify_one();
                }
                Event::Egress { label, ip, expected } => match expected {
                    Some(want) if want != ip => {
                        tracing::error!(account = %a, proxy = %label, endpoint = %self.endpoint(&label), egress_ip = %ip, expected = %want, "egress IP differs from the pinned address")
                    }
                    _ => {
                        tracing::info!(account = %a, proxy = %label, endpoint = %self.endpoint(&label), egress_ip = %ip, "egress IP")
                    }
                },
            }
        }
    }
}

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
    fn interval(&self) -> Duration {
        self.health.as_ref().map(|h| h.interval).unwrap_or(Duration::from_secs(30))
    }

    fn check_timeout(&self, up: &Upstream) -> Duration {
        self.health.as_ref().map(|h| h.timeout).unwrap_or(up.entry.connect_timeout)
    }
}

struct Manager {
    h: Arc<PoolHandle>,
    cfg: ManagerConfig,
}

impl Manager {
    fn upstream(&self, label: &str) -> Option<(Arc<Upstream>, Arc<ProxyCounters>)> {
        self.h.get(label)
    }

    fn commit(&self, events: Vec<Event>) {
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
    async fn check_active(&self, label: &str) -> Result<Duration, CheckError> {
        let r = self.check(label).await;
        let ev = match &r {
            Ok(_) => self.h.lock().success(label, true, unix_now()),
            Err(e) if e.is_local() => {
                tracing::warn!(account = %self.h.account, proxy = %label, error = %e, "health check not counted: this host is out of resources");
                Vec::new()
            }
            Err(e) => self.h.lock().failure(label, &e.to_string(), false, unix_now()),
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
                let ev = self.h.lock().egress(label, ip, unix_now());
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
    async fn switch(&self, targets: &[String], reason: Reason) -> Result<String, Vec<String>> {
        let mut errors = Vec::new();
        for label in targets {
            match self.check(label).await {
                Ok(_) => {
                    let ev = {
                        let mut p = self.h.lock();
                        let mut ev = p.success(label, true, unix_now());
                        ev.extend(p.activate(label, reason, unix_now()));
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
                        let ev = self.h.lock().failure(label, &e.to_string(), true, unix_now());
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
        let targets = self.h.lock().candidates(unix_now());
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
        let ev = self.h.lock().expire_burns(unix_now());
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
        let candidate = self.h.lock().failback_candidate(unix_now());
        if let Some(better) = candidate
            && self.h.lock().active().is_some()
        {
            let _ = self.switch(&[better], Reason::Failback).await;
        }
    }

    async fn rotate(&self, to: Option<String>, burn: bool, burn_for: Option<u64>, reset_flows: bool) -> Response {
        let now = unix_now();
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

    async fn handle(&self, req: Request) -> Response {
        match req {
            Request::Rotate { to, burn, burn_for_secs, reset_flows } => {
                self.rotate(to, burn, burn_for_secs, reset_flows).await
            }
            Request::Check => self.check_now().await,
            Request::ExecRefused { caller, user, reason } => {
                tracing::warn!(account = %self.h.account, caller = %caller, user = %user, reason = %reason, "exec refused");
                Response::ok("logged", serde_json::Value::Null)
            }
        }
    }
}

/// The manager task: runs until dropped.
pub async fn manage(
    h: Arc<PoolHandle>,
    cfg: ManagerConfig,
    mut calls: mpsc::Receiver<Call>,
    chosen: tokio::sync::oneshot::Sender<()>,
    mut fleet: Option<fleet::Fleet>,
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
