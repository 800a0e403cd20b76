//! UDP through the account's proxy (`udp: proxy`): one flow per program
//! address and port to a destination, each over its own SOCKS5 UDP
//! association (a control connection through the route's proxy, a host
//! socket connected to the relay it names). Datagrams are wrapped and
//! unwrapped with the SOCKS5 UDP header; answers go back into the TUN from
//! the address the program sent to (a fake IP stays a fake IP). Refused
//! (ICMP port unreachable, as with `udp: block`) when the route's proxy is
//! HTTP CONNECT, refuses UDP ASSOCIATE, or a limit is reached; nothing is
//! ever sent any other way.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::{Ctx, packet};
use crate::config::Scheme;
use crate::proxy::Target;
use crate::proxy::route::Route;
use crate::proxy::udp;
use crate::rules::Dest;

type Key = (SocketAddr, SocketAddr);

/// The open UDP flows: each one's queue, under an id so that a flow that
/// ends removes only itself.
#[derive(Default)]
pub(super) struct Flows {
    map: std::collections::HashMap<Key, (u64, mpsc::Sender<Vec<u8>>)>,
    next: u64,
    /// Proxies (`scheme://host:port`) that answered UDP ASSOCIATE with
    /// "command not supported": UDP through them is refused without asking
    /// again (logged once).
    refusing: std::collections::HashSet<String>,
}

/// A datagram from the program; `pkt` is the whole packet (for a refusal).
pub(super) fn on_datagram(ctx: &Arc<Ctx>, src: SocketAddr, dst: SocketAddr, payload: &[u8], pkt: &[u8]) {
    let Some(lim) = ctx.limits.udp.clone() else { return refuse(ctx, pkt) };
    let key = (src, dst);
    let mut flows = ctx.udp.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, tx)) = flows.map.get(&key) {
        match tx.try_send(payload.to_vec()) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => {
                ctx.stats.udp_dropped.fetch_add(1, Relaxed);
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                flows.map.remove(&key);
            }
        }
    }
    if flows.map.len() >= lim.max_flows {
        drop(flows);
        if let Some(suppressed) = ctx.may_log("udp-limit") {
            tracing::warn!(account = %ctx.account, dst = %dst, max = lim.max_flows, suppressed, "UDP refused: UDP flow limit reached");
        }
        return refuse(ctx, pkt);
    }
    let Some((target, route)) = route(ctx, dst) else {
        drop(flows);
        return refuse(ctx, pkt);
    };
    if flows.refusing.contains(&route.upstream.entry.endpoint()) {
        drop(flows);
        return refuse(ctx, pkt);
    }
    if route.upstream.entry.scheme != Scheme::Socks5 {
        drop(flows);
        if let Some(suppressed) = ctx.may_log("udp-http") {
            tracing::warn!(account = %ctx.account, proxy = %route.upstream.name(), suppressed, "UDP refused: an HTTP CONNECT proxy cannot carry UDP");
        }
        return refuse(ctx, pkt);
    }
    let (tx, rx) = mpsc::channel(lim.queue);
    let _ = tx.try_send(payload.to_vec());
    let id = flows.next;
    flows.next += 1;
    flows.map.insert(key, (id, tx));
    drop(flows);
    let (c, first) = (ctx.clone(), pkt.to_vec());
    ctx.spawn(async move {
        run(&c, key, target, route, rx, lim.idle, first).await;
        let mut flows = c.udp.lock().unwrap_or_else(|e| e.into_inner());
        if flows.map.get(&key).is_some_and(|(i, _)| *i == id) {
            flows.map.remove(&key);
        }
    });
}

/// The stack answers ICMP port unreachable; counted. (From a flow's task
/// the poll loop is woken to do it.)
fn refuse(ctx: &Arc<Ctx>, pkt: &[u8]) {
    ctx.stats.udp_refused.fetch_add(1, Relaxed);
    if !ctx.shared.lock().dev.push_copy(pkt) {
        ctx.stats.packets_dropped.fetch_add(1, Relaxed);
    }
    ctx.shared.notify.notify_one();
}

/// Where a datagram to `dst` goes: the name behind a fake IP, then the
/// rules and the active proxy, as for a TCP flow.
fn route(ctx: &Arc<Ctx>, dst: SocketAddr) -> Option<(Target, Route)> {
    let (target, name, is_fake) = super::flow::aimed_at(ctx, dst)?;
    let dest = Dest { name: name.as_deref(), ip: (!is_fake).then_some(dst.ip()), port: dst.port() };
    match ctx.router.route(&dest) {
        Ok(r) => Some((target, r)),
        Err(refusal) => {
            let reason = refusal.to_string();
            if let Some(suppressed) = ctx.may_log(&format!("udp {reason}")) {
                tracing::warn!(account = %ctx.account, target = %target, suppressed, "UDP refused: {reason}");
            }
            None
        }
    }
}

/// One flow: the association, then datagrams both ways until it is idle,
/// the proxy closes the control connection, or the daemon stops.
/// `first` is the flow's first packet: refused (ICMP) if no association
/// can be had, so the program hears at once.
async fn run(
    ctx: &Arc<Ctx>,
    key: Key,
    target: Target,
    route: Route,
    mut rx: mpsc::Receiver<Vec<u8>>,
    idle: std::time::Duration,
    first: Vec<u8>,
) {
    let assoc = match route.upstream.associate().await {
        Ok(a) => a,
        Err(e) => {
            refuse(ctx, &first);
            let reason = e.to_string();
            if reason.contains("(SOCKS5 reply 7)") {
                let ep = route.upstream.entry.endpoint();
                let first = ctx.udp.lock().unwrap_or_else(|e| e.into_inner()).refusing.insert(ep);
                if first {
                    tracing::warn!(account = %ctx.account, proxy = %route.upstream.name(), error = %reason, "this proxy refuses UDP ASSOCIATE: UDP through it fails closed from now on (TCP is unaffected)");
                }
                return;
            }
            if let Some(suppressed) = ctx.may_log(&format!("udp-assoc {reason}")) {
                tracing::warn!(account = %ctx.account, target = %target, error = %reason, suppressed, "UDP refused: no association through the proxy (UDP fails closed; TCP is unaffected)");
            }
            return;
        }
    };
    ctx.stats.udp_associations.fetch_add(1, Relaxed);
    let crate::proxy::Associated { mut control, socket, relay } = assoc;
    tracing::debug!(account = %ctx.account, target = %target, relay = %relay, "UDP association open");
    let count = |c: &AtomicU64, n: usize| {
        c.fetch_add(n as u64, Relaxed);
    };
    let mut buf = vec![0u8; 65536];
    let mut ctl = [0u8; 256];
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            p = rx.recv() => {
                let Some(p) = p else { break };
                let w = udp::wrap(&target, &p);
                if socket.send(&w).await.is_err() {
                    break;
                }
                count(&ctx.stats.udp_datagrams_up, 1);
                count(&ctx.stats.udp_bytes_up, p.len());
                route.counters.bytes_up.fetch_add(p.len() as u64, Relaxed);
                deadline.as_mut().reset(tokio::time::Instant::now() + idle);
            }
            r = socket.recv(&mut buf) => {
                let Ok(n) = r else { break };
                match udp::unwrap(&buf[..n]) {
                    Ok((_, data)) => {
                        // From the address the program sent to.
                        if let Some(out) = packet::udp_packet(key.1, key.0, data) {
                            super::device::write_plain(ctx.tun.as_fd(), &out, &ctx.stats.tun_writes_dropped);
                        }
                        count(&ctx.stats.udp_datagrams_down, 1);
                        count(&ctx.stats.udp_bytes_down, data.len());
                        route.counters.bytes_down.fetch_add(data.len() as u64, Relaxed);
                        deadline.as_mut().reset(tokio::time::Instant::now() + idle);
                    }
                    Err(udp::Bad::Fragment(_)) => count(&ctx.stats.udp_fragments_dropped, 1),
                    Err(e) => {
                        count(&ctx.stats.udp_dropped, 1);
                        if let Some(suppressed) = ctx.may_log("udp-bad") {
                            tracing::warn!(account = %ctx.account, relay = %relay, error = %e, suppressed, "UDP: datagram from the relay dropped");
                        }
                    }
                }
            }
            r = control.read(&mut ctl) => {
                if matches!(r, Ok(0) | Err(_)) {
                    tracing::debug!(account = %ctx.account, target = %target, "UDP association closed by the proxy");
                    break;
                }
            }
            _ = &mut deadline => break,
        }
    }
}
