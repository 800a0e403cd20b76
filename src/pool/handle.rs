//! The pool as the rest of the daemon holds it: the state machine behind a
//! lock, its store, each member's upstream and counters, and the rules.
//! Routes each new flow (rules, then the active proxy), counts proxy-level
//! failures, logs and persists every change. Every event is logged with the
//! account, the proxy label and its `scheme://host:port`, never credentials.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, watch};

use super::service::{FeedbackSink, ServiceStatus};
use super::state::{Event, Pool, Reason};
use super::store::{Store, StoreError};
use crate::config::Account;
use crate::host::Paths;
pub use crate::proxy::route::{ProxyCounters, Refusal, Route, Router};
use crate::proxy::{ProxyError, Upstream};
use crate::rules::{Action, Dest, Rule};
use crate::secrets::Creds;

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The pool's clock in Unix seconds (burns are saved as Unix times): the
/// system clock, or a test's.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Pool-wide counters.
#[derive(Debug, Default)]
pub struct PoolCounters {
    pub failovers: AtomicU64,
    pub rotations: AtomicU64,
    /// Burns found by checks (manual ones are rotations).
    pub burns: AtomicU64,
    /// The same, by reason (`status_418`, `body`).
    pub burns_by_reason: Mutex<std::collections::BTreeMap<String, u64>>,
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
    pub(super) wake: Notify,
    /// Bumped by `rotate --reset-flows`: flows opened before are reset.
    pub(super) reset: watch::Sender<u64>,
    /// Bumped each time the pool's records change (and are saved).
    changed: watch::Sender<u64>,
    /// For the metrics: every proxy is unusable right now.
    pub all_down: std::sync::atomic::AtomicBool,
    /// Fleet mode: what `status` shows about the proxy service.
    pub(super) service: Mutex<Option<ServiceStatus>>,
    /// Fleet mode: where flows through the `service` member are reported.
    pub(super) feedback: std::sync::OnceLock<FeedbackSink>,
    clock: Clock,
}

impl PoolHandle {
    /// Loads the saved pool state (a corrupt file is an error: the daemon
    /// does not start) and resolves each member's credentials.
    pub fn open(paths: &Paths, account: &Account, creds: Vec<Option<Creds>>) -> Result<Arc<PoolHandle>, StoreError> {
        PoolHandle::open_with_clock(paths, account, creds, Arc::new(unix_now))
    }

    /// `open` with the clock given (tests drive it with tokio's paused one).
    pub fn open_with_clock(
        paths: &Paths,
        account: &Account,
        creds: Vec<Option<Creds>>,
        clock: Clock,
    ) -> Result<Arc<PoolHandle>, StoreError> {
        let store = Store::new(paths, &account.name);
        let saved = store.load()?;
        let (pool, events) = Pool::new(account, saved, clock());
        let upstreams = account
            .proxies
            .iter()
            .zip(creds.into_iter().chain(std::iter::repeat(None)))
            .map(|(p, c)| {
                let up = Arc::new(Upstream::new(p.clone(), c));
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
            changed: watch::channel(0).0,
            all_down: false.into(),
            service: Mutex::new(None),
            feedback: std::sync::OnceLock::new(),
            clock,
        });
        // The manager picks the first active proxy itself when it starts.
        h.apply(events.into_iter().filter(|e| !matches!(e, Event::NeedFailover { .. })).collect());
        h.persist();
        Ok(h)
    }

    pub(super) fn get(&self, label: &str) -> Option<(Arc<Upstream>, Arc<ProxyCounters>)> {
        self.upstreams.read().unwrap_or_else(|e| e.into_inner()).get(label).cloned()
    }

    /// Replaces the proxy behind a member (the `service` member, when the
    /// proxy service hands out another); its counters stay.
    pub fn set_upstream(&self, up: Upstream) {
        let mut map = self.upstreams.write().unwrap_or_else(|e| e.into_inner());
        let counters = map.get(&up.entry.label).map(|(_, c)| c.clone()).unwrap_or_default();
        map.insert(up.entry.label.clone(), (Arc::new(up), counters));
    }

    /// Now, in Unix seconds, by the pool's clock.
    pub fn now(&self) -> u64 {
        (self.clock)()
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
                Action::Via(label) => match self.lock().usable(label, self.now()) {
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
                self.lock().success(label, false, self.now())
            }
            Err(e) if e.is_proxy_level() => {
                route.counters.failures.fetch_add(1, Relaxed);
                self.lock().failure(label, &e.to_string(), false, self.now())
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

    /// A receiver whose `changed()` fires after the pool's records change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Where the pool stands now (the active proxy, its egress IP, counts).
    pub fn summary(&self) -> crate::published::pool::Summary {
        let records = self.lock().records().to_vec();
        crate::published::pool::Summary::of(&records, |l| self.endpoint(l))
    }

    pub(super) fn persist(&self) {
        let records = self.lock().records().to_vec();
        if let Err(e) = self.store.save(&records) {
            tracing::error!(account = %self.account, error = %e, "cannot save the pool state; burns may not survive a restart");
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(super) fn endpoint(&self, label: &str) -> String {
        self.get(label).map(|(u, _)| u.entry.endpoint()).unwrap_or_default()
    }

    /// Logs and counts events; wakes the manager when a failover is needed.
    pub(super) fn apply(&self, events: Vec<Event>) {
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

impl Router for PoolHandle {
    fn account(&self) -> &str {
        &self.account
    }
    fn route(&self, dest: &Dest<'_>) -> Result<Route, Refusal> {
        PoolHandle::route(self, dest)
    }
    fn active(&self) -> Option<Route> {
        PoolHandle::active(self)
    }
    fn report(&self, route: &Route, result: Result<(), &ProxyError>, started: std::time::Instant) {
        PoolHandle::report(self, route, result, started)
    }
    fn reset_signal(&self) -> watch::Receiver<u64> {
        PoolHandle::reset_signal(self)
    }
}
