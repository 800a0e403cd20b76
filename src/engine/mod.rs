//! The data plane: one poll loop per account reads the TUN, classifies each
//! packet, answers DNS itself, holds each new SYN until the upstream is
//! connected through the proxy (deferred accept), and feeds the rest to the
//! smoltcp stack. One task per flow relays between the stack socket and the
//! upstream. Nothing leaves except through the proxy.

pub mod adapter;
pub mod device;
pub mod forward;
pub mod packet;
pub mod pool;
pub mod ratelog;
pub mod relay;
pub mod spin;
pub mod stack;
pub mod stats;

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::config::{Account, DnsMode, is_fake_ip};
use crate::dns::fakeip::FakeIpTable;
use crate::dns::names::Names;
use crate::proxy::{Connected, Target};
use crate::rules::Dest;
use crate::rundir::RunDir;
use adapter::SmolStream;
use device::FdSink;
use packet::Class;
use pool::{PoolHandle, Route};
use stack::{Flow, FlowKey, Shared, Stack};
use stats::Stats;

/// The TUN fd, shared between the reader (the loop) and the writers.
#[derive(Clone)]
struct TunRef(Arc<AsyncFd<OwnedFd>>);

impl AsFd for TunRef {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.get_ref().as_fd()
    }
}

/// Fake-IP table and its append-only log under the run directory.
struct FakeDns {
    table: FakeIpTable,
    log: Option<std::fs::File>,
}

impl FakeDns {
    fn open(rundir: &RunDir, account: &str) -> FakeDns {
        let path = rundir.fakeip_path();
        let (table, bad) = match std::fs::read_to_string(&path) {
            Ok(text) => FakeIpTable::from_text(&text),
            Err(_) => (FakeIpTable::default(), 0),
        };
        if bad > 0 {
            tracing::warn!(account, file = %path.display(), bad, "skipped corrupt lines of the fake-IP table");
        }
        // Compact: rewrite what was loaded, then append new entries.
        let _ = crate::rundir::write_atomic(&path, table.to_text().as_bytes(), 0o600);
        let log = OpenOptions::new().append(true).open(&path).ok();
        if !table.is_empty() {
            tracing::info!(account, entries = table.len(), "fake-IP table restored");
        }
        FakeDns { table, log }
    }

    fn answer(&mut self, msg: &[u8]) -> Option<Vec<u8>> {
        let a = crate::dns::answer_fake_ip(&mut self.table, msg)?;
        if let (Some((ip, name)), Some(log)) = (&a.new_entry, self.log.as_mut()) {
            let _ = log.write_all(format!("{ip} {name}\n").as_bytes());
        }
        Some(a.reply)
    }
}

/// Who answers the program's DNS queries.
enum DnsServer {
    FakeIp(Mutex<FakeDns>),
    Forward(forward::Forwarder),
}

impl DnsServer {
    /// The fake-IP table, when in fake-ip mode.
    fn fake(&self) -> Option<std::sync::MutexGuard<'_, FakeDns>> {
        match self {
            DnsServer::FakeIp(m) => Some(m.lock().unwrap_or_else(|e| e.into_inner())),
            DnsServer::Forward(_) => None,
        }
    }

    /// The answer to a DNS message (None: nothing to answer). Over UDP a
    /// forwarded answer larger than the client accepts is truncated (TC),
    /// so the client retries over TCP; fake-IP answers always fit.
    async fn answer(&self, msg: &[u8], udp: bool) -> Option<Vec<u8>> {
        use crate::dns::message::{fit_udp, udp_limit};
        match self {
            DnsServer::FakeIp(m) => m.lock().unwrap_or_else(|e| e.into_inner()).answer(msg),
            DnsServer::Forward(f) => match crate::dns::query_or_error(msg) {
                Ok(q) if udp => {
                    let r = f.resolve(q.clone(), msg).await;
                    Some(fit_udp(&r, &q, udp_limit(msg)))
                }
                Ok(q) => Some(f.resolve(q, msg).await),
                Err(reply) => reply,
            },
        }
    }
}

struct Ctx {
    account: String,
    pool: Arc<PoolHandle>,
    /// DNS mode tcp with rules: names behind the addresses answered.
    names: Option<Arc<Mutex<Names>>>,
    idle: Duration,
    max_flows: usize,
    max_half_open: usize,
    stats: Arc<Stats>,
    shared: Arc<Shared>,
    dns: DnsServer,
    tun: TunRef,
    /// `ipv6: proxy`: IPv6 packets are handled, not dropped.
    ipv6: bool,
    /// Refusal warnings, at most one per reason per second.
    ratelog: Mutex<ratelog::RateLog>,
}

impl Ctx {
    /// Whether a warning for `reason` may be logged now, and how many were
    /// suppressed since the last one.
    fn may_log(&self, reason: &str) -> Option<u64> {
        self.ratelog.lock().unwrap_or_else(|e| e.into_inner()).allow(reason, std::time::Instant::now())
    }
}

enum Event {
    Ready(FlowKey, Vec<u8>, Connected, Route),
    Failed(FlowKey, Vec<u8>),
}

pub async fn run(
    account: Account,
    pool: Arc<PoolHandle>,
    fleet: Option<Arc<crate::fleet::client::ServiceClient>>,
    tun: OwnedFd,
    rundir: RunDir,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let name = account.name.clone();
    raise_nofile();
    let (calls_tx, calls_rx) = mpsc::channel(16);
    let control = crate::control::bind(&rundir.ctl_path())
        .map_err(|e| anyhow::anyhow!("account {name}: control socket {}: {e}", rundir.ctl_path().display()))?;
    let control = tokio::spawn(crate::control::serve(control, calls_tx, name.clone()));
    let (chosen_tx, chosen_rx) = tokio::sync::oneshot::channel();
    let mut feedback = None;
    let fleet = match (fleet, &account.external_service) {
        (Some(client), Some(svc)) => {
            let f = pool::fleet::Fleet::new(client.clone(), svc.clone());
            let (sink, rx) = f.sink(&name);
            pool.enable_fleet(sink, svc.fallback_to_embedded);
            feedback = Some(tokio::spawn(pool::fleet::send_feedback(client, pool.clone(), rx)));
            Some(f)
        }
        _ => None,
    };
    let manager = tokio::spawn(pool::manage(
        pool.clone(),
        pool::ManagerConfig::from_account(&account),
        calls_rx,
        chosen_tx,
        fleet,
    ));
    let names = (account.dns.mode == DnsMode::Tcp && pool.has_rules()).then(|| Arc::new(Mutex::new(Names::new(65536))));

    let tun = TunRef(Arc::new(crate::sys::register_async(tun)?));
    let mtu = account.mtu as usize;
    let stack =
        Stack::new(Box::new(FdSink { fd: tun.clone(), dropped: 0 }), mtu, account.limits.socket_buffer as usize);
    let shared = Arc::new(Shared::new(stack));
    let ctx = Arc::new(Ctx {
        account: name.clone(),
        pool: pool.clone(),
        names: names.clone(),
        idle: account.limits.idle_timeout,
        max_flows: account.limits.max_flows as usize,
        max_half_open: account.limits.max_half_open as usize,
        stats: Arc::new(Stats::default()),
        shared: shared.clone(),
        dns: match (account.dns.mode, account.dns.resolver) {
            (DnsMode::Tcp, Some(resolver)) => {
                tracing::info!(account = %name, resolver = %resolver, "DNS: forwarded over TCP through the proxy");
                DnsServer::Forward(forward::Forwarder::start(pool.clone(), resolver, names))
            }
            _ => DnsServer::FakeIp(Mutex::new(FakeDns::open(&rundir, &name))),
        },
        tun: tun.clone(),
        ipv6: account.ipv6 == crate::config::Ipv6Mode::Proxy,
        ratelog: Mutex::new(ratelog::RateLog::new(Duration::from_secs(1))),
    });
    let publisher = tokio::spawn(publish_stats(ctx.clone(), rundir.clone()));
    let metrics = account.metrics.clone().map(|listen| {
        let c = ctx.clone();
        let mode = match account.dns.mode {
            DnsMode::FakeIp => "fake-ip",
            DnsMode::Tcp => "tcp",
        };
        let source: crate::metrics::Source = Arc::new(move || {
            let (a, p) = c.shared.lock().counts();
            crate::metrics::render(&crate::metrics::collect(&c.pool, &c.stats, a, p, mode))
        });
        tokio::spawn(crate::metrics::serve(listen, name.clone(), source))
    });
    // The first choice takes one check per candidate, each bounded by its
    // timeout; `up` waits 30 s for READY, so stop waiting after 20 s (the
    // manager goes on; flows are refused until a proxy passed its check).
    let _ = tokio::time::timeout(Duration::from_secs(20), chosen_rx).await;
    ready();
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut buf = vec![0u8; mtu.max(1500) + 64];
    tokio::pin!(shutdown);
    let mut window = spin::SpinWindow::new(spin_window(), std::time::Instant::now());
    loop {
        let (delay, moved) = {
            let mut st = shared.lock();
            let mut moved = false;
            while st.poll() {
                moved = true;
            }
            st.reap();
            (st.delay(), moved | shared.take_forwarded())
        };
        // After packets moved (or a flow task wrote to its upstream), keep
        // polling without sleeping for a short window, handing the core to
        // whoever else wants it on each turn (see spin.rs).
        let now = std::time::Instant::now();
        if moved {
            window.activity(now);
        }
        let mut spinning = window.spinning(now);
        if spinning {
            std::thread::yield_now();
            let after = std::time::Instant::now();
            window.yielded(now, after);
            spinning = window.spinning(after);
        }
        let sleep = match delay {
            Some(d) if d.is_zero() => {
                tokio::task::yield_now().await;
                continue;
            }
            Some(d) => d,
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            ev = rx.recv() => {
                if let Some(ev) = ev { handle_event(&ctx, ev) }
                while let Ok(ev) = rx.try_recv() { handle_event(&ctx, ev) }
            }
            g = tun.0.readable() => {
                let mut g = match g { Ok(g) => g, Err(e) => anyhow::bail!("account {name}: TUN: {e}") };
                for _ in 0..256 {
                    match g.try_io(|f| nix::unistd::read(f.get_ref(), &mut buf).map_err(std::io::Error::from)) {
                        Ok(Ok(0)) => break,
                        Ok(Ok(n)) => ingress(&ctx, &tx, &buf[..n]),
                        Ok(Err(e)) => { tracing::warn!(account = %name, error = %e, "TUN read failed"); break }
                        Err(_would_block) => break,
                    }
                }
            }
            _ = shared.notify.notified() => {}
            // yield_now lets the runtime poll its reactor with a zero
            // timeout and run the flow tasks that became ready.
            _ = tokio::task::yield_now(), if spinning => {}
            _ = tokio::time::sleep(sleep), if !spinning => {}
        }
    }
    publisher.abort();
    control.abort();
    manager.abort();
    if let Some(f) = feedback {
        f.abort();
    }
    if let Some(m) = metrics {
        m.abort();
    }
    let _ = std::fs::remove_file(rundir.ctl_path());
    let (a, p) = shared.lock().counts();
    write_stats(&ctx, &rundir, a, p);
    Ok(())
}

/// How long the loop keeps polling without sleeping after packets moved
/// (see docs/performance.md). `NSP_SPIN_US` overrides it for benchmarks.
fn spin_window() -> Duration {
    let us = std::env::var("NSP_SPIN_US").ok().and_then(|v| v.parse().ok()).unwrap_or(SPIN_US);
    Duration::from_micros(us)
}

const SPIN_US: u64 = 300;

fn ingress(ctx: &Arc<Ctx>, tx: &mpsc::UnboundedSender<Event>, pkt: &[u8]) {
    match packet::classify(pkt, ctx.ipv6) {
        Class::TcpSyn { src, dst } => on_syn(ctx, tx, (src, dst), pkt),
        c @ (Class::Tcp | Class::Udp) => {
            if c == Class::Udp {
                ctx.stats.udp_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if !ctx.shared.lock().dev.push_copy(pkt) {
                ctx.stats.packets_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Class::Dns { src, dst, payload } => {
            ctx.stats.dns_queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(mut fake) = ctx.dns.fake() {
                let reply = fake.answer(payload);
                drop(fake);
                if let Some(r) = &reply {
                    ctx.stats.dns_reply(r);
                }
                if let Some(out) = reply.and_then(|r| packet::udp_packet(dst, src, &r)) {
                    let _ = nix::unistd::write(ctx.tun.as_fd(), &out);
                }
                return;
            }
            let (ctx, query) = (ctx.clone(), payload.to_vec());
            tokio::spawn(async move {
                let Some(r) = ctx.dns.answer(&query, true).await else { return };
                ctx.stats.dns_reply(&r);
                if let Some(out) = packet::udp_packet(dst, src, &r) {
                    let _ = nix::unistd::write(ctx.tun.as_fd(), &out);
                }
            });
        }
        Class::Drop(reason) => {
            ctx.stats.packets_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::trace!(account = %ctx.account, reason, "packet dropped");
        }
    }
}

fn on_syn(ctx: &Arc<Ctx>, tx: &mpsc::UnboundedSender<Event>, key: FlowKey, pkt: &[u8]) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut st = ctx.shared.lock();
    match st.flow(&key) {
        Some(Flow::Pending) => return, // retransmitted SYN: still connecting
        Some(Flow::Open(_)) => {
            st.dev.push_copy(pkt);
            return;
        }
        None => {}
    }
    let (open, pending) = st.counts();
    if open + pending >= ctx.max_flows || pending >= ctx.max_half_open {
        ctx.stats.flows_refused_limit.fetch_add(1, Relaxed);
        if let Some(suppressed) = ctx.may_log("limit") {
            tracing::warn!(account = %ctx.account, dst = %key.1, open, pending, suppressed, "flow refused: flow limit reached");
        }
        st.refuse(key, pkt.to_vec());
        return;
    }
    let dst = key.1;
    // DNS over TCP is answered here, never proxied.
    if dst.port() == 53 {
        if let Some(h) = st.accept(key, pkt.to_vec()) {
            drop(st);
            tokio::spawn(dns_tcp(ctx.clone(), SmolStream::new(ctx.shared.clone(), h)));
        }
        return;
    }
    let fake = if is_fake_ip(dst.ip()) { ctx.dns.fake() } else { None };
    let is_fake = fake.is_some();
    let target = match (dst.ip(), fake) {
        (IpAddr::V4(v4), Some(dns)) => match dns.table.lookup(v4) {
            Some(n) => Target::Name(n.to_string(), dst.port()),
            None => {
                drop(dns);
                ctx.stats.flows_refused_unknown_fake_ip.fetch_add(1, Relaxed);
                if let Some(suppressed) = ctx.may_log("fake-ip") {
                    tracing::warn!(account = %ctx.account, dst = %dst, suppressed, "flow refused: fake IP with no name (stale DNS answer?)");
                }
                st.refuse(key, pkt.to_vec());
                return;
            }
        },
        _ => Target::Ip(dst),
    };
    let remembered = match (&target, &ctx.names) {
        (Target::Ip(a), Some(names)) => {
            names.lock().unwrap_or_else(|e| e.into_inner()).lookup(a.ip()).map(str::to_string)
        }
        _ => None,
    };
    let name = match &target {
        Target::Name(n, _) => Some(n.as_str()),
        Target::Ip(_) => remembered.as_deref(),
    };
    let dest = Dest { name, ip: (!is_fake).then_some(dst.ip()), port: dst.port() };
    let route = match ctx.pool.route(&dest) {
        Ok(r) => r,
        Err(refusal) => {
            let no_proxy = refusal == pool::Refusal::NoActive;
            let counter = if no_proxy { &ctx.stats.flows_refused_no_proxy } else { &ctx.stats.flows_refused_rule };
            counter.fetch_add(1, Relaxed);
            let reason = refusal.to_string();
            if let Some(suppressed) = ctx.may_log(&reason) {
                if no_proxy {
                    tracing::error!(account = %ctx.account, target = %target, suppressed, "flow refused: {reason}");
                } else {
                    tracing::warn!(account = %ctx.account, target = %target, suppressed, "flow refused: {reason}");
                }
            }
            st.refuse(key, pkt.to_vec());
            return;
        }
    };
    st.begin(key);
    drop(st);
    let (ctx, tx, syn) = (ctx.clone(), tx.clone(), pkt.to_vec());
    tokio::spawn(async move {
        let ev = connect(&ctx, route, &target, key, syn).await;
        let _ = tx.send(ev);
    });
}

/// Connects through `route`. When the proxy itself fails and the pool has
/// meanwhile moved to another proxy (a failover), the held SYN gets one
/// more try through the new one; a rule's proxy is never swapped.
async fn connect(ctx: &Arc<Ctx>, mut route: Route, target: &Target, key: FlowKey, syn: Vec<u8>) -> Event {
    use std::sync::atomic::Ordering::Relaxed;
    let mut retried = false;
    loop {
        let started = std::time::Instant::now();
        match route.upstream.connect(target).await {
            Ok(c) => {
                ctx.pool.report(&route, Ok(()), started);
                return Event::Ready(key, syn, c, route);
            }
            Err(e) => {
                ctx.pool.report(&route, Err(&e), started);
                if !retried
                    && !route.by_rule
                    && e.is_proxy_level()
                    && let Some(next) = ctx.pool.active()
                    && next.label() != route.label()
                {
                    tracing::debug!(account = %ctx.account, target = %target, error = %e, next = %next.label(), "retrying through the new active proxy");
                    route = next;
                    retried = true;
                    continue;
                }
                ctx.stats.flows_refused_proxy.fetch_add(1, Relaxed);
                // The same failure repeated collapses; different ones all show.
                if let Some(suppressed) = ctx.may_log(&e.to_string()) {
                    tracing::warn!(account = %ctx.account, target = %target, error = %e, suppressed, "flow refused");
                }
                return Event::Failed(key, syn);
            }
        }
    }
}

fn handle_event(ctx: &Arc<Ctx>, ev: Event) {
    match ev {
        Event::Failed(key, syn) => ctx.shared.lock().refuse(key, syn),
        Event::Ready(key, syn, conn, route) => {
            let h = ctx.shared.lock().accept(key, syn);
            let Some(h) = h else { return };
            ctx.stats.flows_opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ctx = ctx.clone();
            let reset = ctx.pool.reset_signal();
            tokio::spawn(async move {
                let program = SmolStream::new(ctx.shared.clone(), h);
                if program.established().await.is_err() {
                    let _ = conn.stream.set_zero_linger();
                    return;
                }
                let end =
                    relay::relay(program, conn.stream, conn.leftover, ctx.idle, &ctx.stats, &route.counters, reset)
                        .await;
                tracing::debug!(account = %ctx.account, dst = %key.1, proxy = %route.label(), ?end, "flow ended");
            });
        }
    }
}

/// DNS over TCP (RFC 7766): length-prefixed queries, answered in order.
async fn dns_tcp(ctx: Arc<Ctx>, mut s: SmolStream) {
    if s.established().await.is_err() {
        return;
    }
    let mut msg = vec![0u8; 65535];
    loop {
        let mut len = [0u8; 2];
        let read = tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut len)).await;
        let Ok(Ok(_)) = read else { break };
        let n = u16::from_be_bytes(len) as usize;
        if tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut msg[..n])).await.is_err() {
            break;
        }
        ctx.stats.dns_queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(r) = ctx.dns.answer(&msg[..n], false).await else { break };
        ctx.stats.dns_reply(&r);
        let mut out = (r.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&r);
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
    let _ = s.shutdown().await;
}

fn snapshot(ctx: &Ctx, active: usize, pending: usize) -> crate::engine::stats::Snapshot {
    let mut snap = ctx.stats.snapshot(active, pending);
    snap.service = ctx.pool.service_snapshot();
    snap
}

fn write_stats(ctx: &Ctx, rundir: &RunDir, active: usize, pending: usize) {
    let snap = snapshot(ctx, active, pending);
    if let Ok(json) = serde_json::to_vec_pretty(&snap) {
        let _ = crate::rundir::write_atomic(&rundir.stats_path(), &json, 0o644);
    }
}

async fn publish_stats(ctx: Arc<Ctx>, rundir: RunDir) {
    let mut last = None;
    loop {
        let (a, p) = ctx.shared.lock().counts();
        let snap = snapshot(&ctx, a, p);
        if last.as_ref() != Some(&snap) {
            write_stats(&ctx, &rundir, a, p);
            last = Some(snap);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
