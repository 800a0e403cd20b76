//! One TCP flow from SYN to relay: limits, the DNS port, fake-IP names,
//! the router's choice, the connect through the proxy (retried once through
//! the new active proxy after a failover), and the relay task.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Ctx;
use super::adapter::SmolStream;
use super::relay;
use super::stack::{Flow, FlowKey};
use crate::proxy::route::{Refusal, Route};
use crate::proxy::{Connected, Target};
use crate::rules::Dest;

/// What a packet to `dst` is aimed at: the name behind a fake IP, or the
/// address; the name the rules see (with DNS mode tcp and rules, the name
/// an address was answered for); whether `dst` is a fake IP. None: an
/// address of the account's reserved range (`dns.fake_ip_range`) that is
/// no fake IP with a name: a stale answer, an address nsproxy keeps for
/// itself, or a real address the range hides; never proxied. Used by TCP
/// and UDP flows alike.
pub(super) fn aimed_at(ctx: &Ctx, dst: SocketAddr) -> Option<(Target, Option<String>, bool)> {
    let range = &ctx.limits.addresses;
    let target = match dst.ip() {
        IpAddr::V4(v4) if range.contains(dst.ip()) => {
            let dns = ctx.dns.fake().filter(|_| range.is_fake(dst.ip()))?;
            Target::Name(dns.table.lookup(v4)?.to_string(), dst.port())
        }
        _ => Target::Ip(dst),
    };
    let is_fake = matches!(target, Target::Name(..));
    let name = match (&target, &ctx.names) {
        (Target::Name(n, _), _) => Some(n.clone()),
        (Target::Ip(a), Some(names)) => {
            names.lock().unwrap_or_else(|e| e.into_inner()).lookup(a.ip()).map(str::to_string)
        }
        (Target::Ip(_), None) => None,
    };
    Some((target, name, is_fake))
}

/// A TCP connection to a host service on the host's loopback (the daemon
/// runs in the host namespace).
async fn connect_local(listen: SocketAddr) -> std::io::Result<Connected> {
    let started = std::time::Instant::now();
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(listen))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no connection within 5 s"))??;
    let _ = stream.set_nodelay(true);
    Ok(Connected {
        stream: stream.into(),
        leftover: Vec::new(),
        connect_time: started.elapsed(),
        handshake_time: Duration::ZERO,
    })
}

/// A flow's route to a host service: no proxy, counters of its own.
fn local_route(name: &str, listen: SocketAddr) -> Route {
    let entry = crate::config::ProxyEntry {
        label: format!("host service {name}"),
        host: listen.ip().to_string(),
        port: listen.port(),
        ..crate::pool::service::placeholder_entry()
    };
    Route {
        upstream: Arc::new(crate::proxy::Upstream::new(entry, None)),
        counters: Arc::new(Default::default()),
        by_rule: true,
    }
}

/// A held SYN's outcome, handed back to the loop.
pub(super) enum Event {
    Ready(FlowKey, Vec<u8>, Connected, Route),
    Failed(FlowKey, Vec<u8>),
}

pub(super) fn on_syn(ctx: &Arc<Ctx>, tx: &mpsc::UnboundedSender<Event>, key: FlowKey, pkt: &[u8]) {
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
    if open + pending >= ctx.limits.max_flows || pending >= ctx.limits.max_half_open {
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
            ctx.spawn(dns_tcp(ctx.clone(), SmolStream::new(ctx.shared.clone(), h)));
        }
        return;
    }
    // A host service: to the host's loopback, without the proxy; any other
    // address or port of that range is refused.
    if let Some(i) = ctx.limits.addresses.host_service_index(dst.ip()) {
        let svc = ctx.limits.host_services.get(i).filter(|(_, a)| a.port() == dst.port()).cloned();
        let Some((name, listen)) = svc else {
            ctx.stats.flows_refused_rule.fetch_add(1, Relaxed);
            if let Some(suppressed) = ctx.may_log("host-service") {
                tracing::warn!(account = %ctx.account, dst = %dst, suppressed, "flow refused: not a listed host service (host_services names the only host ports reachable from inside)");
            }
            st.refuse(key, pkt.to_vec());
            return;
        };
        st.begin(key);
        drop(st);
        let (c, tx, syn) = (ctx.clone(), tx.clone(), pkt.to_vec());
        ctx.spawn(async move {
            let ev = match connect_local(listen).await {
                Ok(conn) => Event::Ready(key, syn, conn, local_route(&name, listen)),
                Err(e) => {
                    tracing::warn!(account = %c.account, service = %name, listen = %listen, error = %e, "host service unreachable: the flow is reset");
                    Event::Failed(key, syn)
                }
            };
            let _ = tx.send(ev);
        });
        return;
    }
    let Some((target, name, is_fake)) = aimed_at(ctx, dst) else {
        ctx.stats.flows_refused_unknown_fake_ip.fetch_add(1, Relaxed);
        if let Some(suppressed) = ctx.may_log("fake-ip") {
            tracing::warn!(account = %ctx.account, dst = %dst, range = %ctx.limits.addresses, suppressed, "flow refused: the destination is in the account's reserved range (dns.fake_ip_range) but no name was answered for it (a stale DNS answer, or a real address in that range: move dns.fake_ip_range to reach it)");
        }
        st.refuse(key, pkt.to_vec());
        return;
    };
    let dest = Dest { name: name.as_deref(), ip: (!is_fake).then_some(dst.ip()), port: dst.port() };
    let route = match ctx.router.route(&dest) {
        Ok(r) => r,
        Err(refusal) => {
            let no_proxy = refusal == Refusal::NoActive;
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
    let spawner = ctx.clone();
    spawner.spawn(async move {
        let ev = connect(&ctx, route, &target, key, syn).await;
        let _ = tx.send(ev);
    });
}

/// Connects through `route`. When the proxy itself fails and the pool has
/// meanwhile moved to another proxy (a failover), the held SYN gets one
/// more try through the new one; a rule's proxy is never swapped.
async fn connect(ctx: &Arc<Ctx>, mut route: Route, target: &Target, key: FlowKey, syn: Vec<u8>) -> Event {
    let mut retried = false;
    loop {
        let started = std::time::Instant::now();
        match route.upstream.connect(target).await {
            Ok(c) => {
                route.counters.connect_time.observe(c.connect_time);
                route.counters.handshake_time.observe(c.handshake_time);
                ctx.router.report(&route, Ok(()), started);
                return Event::Ready(key, syn, c, route);
            }
            Err(e) => {
                ctx.router.report(&route, Err(&e), started);
                if !retried
                    && !route.by_rule
                    && e.is_proxy_level()
                    && let Some(next) = ctx.router.active()
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

pub(super) fn handle_event(ctx: &Arc<Ctx>, ev: Event) {
    match ev {
        Event::Failed(key, syn) => ctx.shared.lock().refuse(key, syn),
        Event::Ready(key, syn, conn, route) => {
            let h = ctx.shared.lock().accept(key, syn);
            let Some(h) = h else { return };
            ctx.stats.flows_opened.fetch_add(1, Relaxed);
            let ctx = ctx.clone();
            let reset = ctx.router.reset_signal();
            let spawner = ctx.clone();
            spawner.spawn(async move {
                let program = SmolStream::new(ctx.shared.clone(), h);
                if program.established().await.is_err() {
                    let _ = conn.stream.set_zero_linger();
                    return;
                }
                let end = relay::relay(
                    program,
                    conn.stream,
                    conn.leftover,
                    ctx.limits.idle,
                    &ctx.stats,
                    &route.counters,
                    reset,
                )
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
        ctx.stats.dns_queries.fetch_add(1, Relaxed);
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
