//! The pool's side of fleet mode: the `service` member's proxy comes from
//! the proxy service, is refreshed when its cached answer expires, and each
//! flow through it is reported back through a bounded queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::handle::{PoolHandle, unix_now};
use super::manager::Manager;
use super::state::Reason;
use crate::config::{ExternalService, ProxyEntry, SERVICE_LABEL, Scheme};
use crate::fleet::breaker::{Allow, Breaker, State};
use crate::fleet::client::{ServiceClient, cache_for};
use crate::fleet::protocol::{Allocation, FallbackPolicy, Feedback};
use crate::proxy::Upstream;
use crate::secrets::Creds;

/// Feedback records waiting to be sent; beyond this they are dropped.
pub const FEEDBACK_QUEUE: usize = 256;

/// The `service` member as it stands before the first allocation.
pub fn placeholder_entry() -> ProxyEntry {
    ProxyEntry {
        label: SERVICE_LABEL.into(),
        scheme: Scheme::Socks5,
        host: "unallocated".into(),
        port: 0,
        username: None,
        password: None,
        priority: 0,
        enabled: true,
        connect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(10),
        expected_egress_ip: None,
        ca_file: None,
    }
}

fn upstream_for(a: &Allocation) -> Upstream {
    let creds = match (&a.username, &a.password) {
        (Some(u), Some(p)) => Some(Creds { user: u.clone(), pass: p.clone() }),
        _ => None,
    };
    Upstream::new(ProxyEntry { scheme: a.scheme, host: a.host.clone(), port: a.port, ..placeholder_entry() }, creds)
}

pub use crate::published::service::ServiceStatus;

/// Where flows through the `service` member are reported.
pub struct FeedbackSink {
    tx: mpsc::Sender<Feedback>,
    pub dropped: AtomicU64,
    account: String,
    connection_type: String,
    client_id: String,
}

impl FeedbackSink {
    /// Queues one record; never waits (a full queue drops it, counted).
    pub fn offer(&self, proxy: &str, result: Result<Duration, String>) {
        let (success, latency_ms, error_details) = match result {
            Ok(d) => (true, Some(d.as_millis() as u64), None),
            Err(e) => (false, None, Some(e)),
        };
        let f = Feedback {
            proxy_url: proxy.to_string(),
            account: self.account.clone(),
            connection_type: self.connection_type.clone(),
            success,
            latency_ms,
            error_details,
            timestamp: unix_now(),
            client_id: self.client_id.clone(),
        };
        if self.tx.try_send(f).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// Sends queued feedback, one record at a time, until the queue closes.
pub async fn send_feedback(client: Arc<ServiceClient>, h: Arc<PoolHandle>, mut rx: mpsc::Receiver<Feedback>) {
    while let Some(f) = rx.recv().await {
        match client.feedback(&f).await {
            Ok(()) => h.service_status(|s| s.feedback_sent += 1),
            Err(e) => {
                h.service_status(|s| s.feedback_failed += 1);
                tracing::debug!(account = %h.account, error = %e, "feedback not delivered");
            }
        }
    }
}

/// The fleet state the manager keeps.
pub struct Fleet {
    pub client: Arc<ServiceClient>,
    breaker: Breaker,
    current: Option<Allocation>,
    cfg: ExternalService,
    started: Instant,
}

impl Fleet {
    pub fn new(client: Arc<ServiceClient>, cfg: ExternalService) -> Fleet {
        Fleet {
            client,
            breaker: Breaker::new(cfg.circuit_breaker, cfg.breaker_failures, cfg.breaker_cooldown.as_millis() as u64),
            current: None,
            cfg,
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The queue flows report into, and its receiving end.
    pub fn sink(&self, account: &str) -> (FeedbackSink, mpsc::Receiver<Feedback>) {
        let (tx, rx) = mpsc::channel(FEEDBACK_QUEUE);
        let sink = FeedbackSink {
            tx,
            dropped: AtomicU64::new(0),
            account: account.into(),
            connection_type: self.client.connection_type().into(),
            client_id: self.client.client_id.clone(),
        };
        (sink, rx)
    }
}

fn breaker_name(s: State) -> String {
    match s {
        State::Closed => "closed",
        State::Open => "open",
        State::HalfOpen => "half-open",
    }
    .into()
}

impl Manager {
    /// Asks the service for a proxy (unless the breaker is open), puts a
    /// new one into the `service` member and moves the pool onto it.
    /// Returns when to ask again.
    pub(super) async fn refresh(&self, f: &mut Fleet) -> Duration {
        let a = &self.h.account;
        let retry = Duration::from_secs(5).min(self.cfg.interval());
        if let Allow::No { until_ms } = f.breaker.allow(f.now_ms()) {
            let wait = Duration::from_millis(until_ms.saturating_sub(f.now_ms()).max(100));
            let b = breaker_name(f.breaker.state(f.now_ms()));
            self.h.service_status(|s| s.breaker = b);
            return wait;
        }
        match f.client.allocate().await {
            Ok(alloc) => {
                f.breaker.success();
                if alloc.refused_direct {
                    tracing::warn!(account = %a, "proxy service asked for fallback_policy direct_connection: refused (it would show the host's address); treated as fail");
                }
                let changed = f.current.as_ref().is_none_or(|c| !c.same_proxy(&alloc));
                let ttl = cache_for(&alloc, f.cfg.cache_ttl);
                let endpoint = alloc.endpoint();
                self.h.service_status(|s| {
                    s.state = "allocated".into();
                    s.breaker = breaker_name(State::Closed);
                    s.proxy = Some(endpoint.clone());
                    s.strategy = Some(alloc.strategy.clone());
                    s.fallback_policy = Some(
                        match alloc.fallback_policy {
                            FallbackPolicy::EmbeddedFallback => "embedded_fallback",
                            _ => "fail",
                        }
                        .into(),
                    );
                    s.refresh_in_s = Some(ttl.as_secs());
                    s.last_error = None;
                    s.allocations += 1;
                });
                if changed {
                    tracing::info!(account = %a, proxy = SERVICE_LABEL, endpoint = %endpoint, strategy = %alloc.strategy, ttl_s = ttl.as_secs(), "proxy service handed out a proxy");
                    self.h.set_upstream(upstream_for(&alloc));
                    f.current = Some(alloc);
                    let active = self.h.lock().active().map(str::to_string);
                    if active.as_deref() == Some(SERVICE_LABEL) {
                        let _ = self.check_active(SERVICE_LABEL, super::checks::Which::All).await;
                    } else if let Err(e) = self
                        .switch(
                            &[SERVICE_LABEL.to_string()],
                            if active.is_none() { Reason::Start } else { Reason::Rotation },
                        )
                        .await
                    {
                        tracing::warn!(account = %a, errors = %e.join("; "), "the service's proxy failed its check");
                    }
                } else {
                    f.current = Some(alloc);
                }
                ttl
            }
            Err(errors) => {
                let opened = f.breaker.failure(f.now_ms());
                let text = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
                tracing::warn!(account = %a, errors = %text, "proxy service unavailable");
                let has = f.current.is_some();
                let b = breaker_name(f.breaker.state(f.now_ms()));
                self.h.service_status(|s| {
                    s.failed_calls += 1;
                    s.last_error = Some(text.clone());
                    if !has {
                        s.state = "unavailable".into();
                    }
                    s.breaker = b;
                });
                if opened {
                    tracing::warn!(account = %a, cooldown_s = f.cfg.breaker_cooldown.as_secs(), "circuit breaker open: the proxy service is not called until the cool-down passes");
                }
                if !has {
                    if f.cfg.fallback_to_embedded {
                        tracing::warn!(account = %a, "no proxy from the service: the account's own proxies carry the flows");
                    } else {
                        tracing::error!(account = %a, "no proxy from the service and fallback_to_embedded is false: flows are refused");
                    }
                }
                if opened { f.cfg.breaker_cooldown } else { retry }
            }
        }
    }
}

impl PoolHandle {
    /// Updates what `status` shows about the service.
    pub fn service_status(&self, f: impl FnOnce(&mut ServiceStatus)) {
        let mut g = self.service.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = g.as_mut() {
            f(s);
        }
    }

    /// The service's status, with the live drop counter and breaker.
    pub fn service_snapshot(&self) -> Option<ServiceStatus> {
        let mut s = self.service.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        if let Some(sink) = self.feedback.get() {
            s.feedback_dropped = sink.dropped.load(Relaxed);
        }
        Some(s)
    }

    /// Turns on fleet status and feedback for this pool.
    pub fn enable_fleet(&self, sink: FeedbackSink, fallback_to_embedded: bool) {
        *self.service.lock().unwrap_or_else(|e| e.into_inner()) = Some(ServiceStatus {
            state: "starting".into(),
            breaker: "closed".into(),
            fallback_to_embedded,
            ..Default::default()
        });
        let _ = self.feedback.set(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_feedback_queue_drops_and_counts_without_waiting() {
        let (tx, mut rx) = mpsc::channel(FEEDBACK_QUEUE);
        let sink = FeedbackSink {
            tx,
            dropped: AtomicU64::new(0),
            account: "a".into(),
            connection_type: "all".into(),
            client_id: "c".into(),
        };
        for i in 0..FEEDBACK_QUEUE + 10 {
            let r = if i % 2 == 0 { Ok(Duration::from_millis(3)) } else { Err("refused".to_string()) };
            sink.offer("socks5://h:1", r);
        }
        assert_eq!(sink.dropped.load(Relaxed), 10);
        let first = rx.recv().await.expect("queued");
        assert!(first.success && first.latency_ms == Some(3) && first.proxy_url == "socks5://h:1");
        let second = rx.recv().await.expect("queued");
        assert!(!second.success && second.error_details.as_deref() == Some("refused"));
    }
}
