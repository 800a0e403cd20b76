//! The poll loop: device reads, the stack's timers, flow events, the
//! busy-poll window, until the stop token is cancelled.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::flow::{self, Event};
use super::packet::{self, Class};
use super::{Ctx, spin, vnet};

/// A duration in microseconds from the environment variable `var` (the
/// benchmarks' knobs), else `default`.
fn micros_from_env(var: &str, default: Duration) -> Duration {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).map_or(default, Duration::from_micros)
}

pub(super) async fn run(ctx: Arc<Ctx>, stop: CancellationToken) -> anyhow::Result<()> {
    let name = ctx.account.clone();
    let shared = ctx.shared.clone();
    let tun = ctx.tun.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    // At least OWN_PAGES_FROM long: this buffer and the spares that replace
    // it (device.rs, `push_read`) are then mappings of their own whose
    // pages become resident only where a read wrote, so a short segment
    // queued in place holds a page or two, not 64 KiB.
    let read_len = (vnet::HDR_LEN + ctx.limits.mtu.max(1500) + 64).max(crate::host::sys::OWN_PAGES_FROM);
    let mut buf = vec![0u8; read_len];
    let mut window = spin::SpinWindow::new(
        // How long the loop keeps polling without sleeping after packets
        // moved, and how long a bulk turn keeps it from doing so (spin.rs,
        // docs/performance.md); `NSP_BULK_US=0` spins through bulk turns.
        micros_from_env("NSP_SPIN_US", Duration::from_micros(spin::SPIN_US)),
        micros_from_env("NSP_BULK_US", spin::BULK_HOLD),
        std::time::Instant::now(),
    );
    // Only the program's downloads count as bulk (spin.rs): in an upload
    // the daemon itself is the slow part and spinning keeps it reading.
    let relayed = || ctx.stats.bytes_down.load(Relaxed);
    let mut last_relayed = relayed();
    loop {
        shared.turned();
        let (delay, moved) = {
            let mut st = shared.lock();
            let mut moved = false;
            loop {
                let now = st.now();
                if !st.poll(now) {
                    break;
                }
                moved = true;
            }
            let now = st.now();
            st.reap(now);
            (st.delay(now), moved | shared.take_forwarded())
        };
        // After packets moved (or a flow task wrote to its upstream), keep
        // polling without sleeping for a short window, handing the core to
        // whoever else wants it on each turn (see spin.rs).
        let now = std::time::Instant::now();
        if moved {
            let total = relayed();
            window.activity(now, total.wrapping_sub(last_relayed));
            last_relayed = total;
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
            _ = stop.cancelled() => break,
            ev = rx.recv() => {
                if let Some(ev) = ev { flow::handle_event(&ctx, ev) }
                while let Ok(ev) = rx.try_recv() { flow::handle_event(&ctx, ev) }
            }
            g = tun.0.readable() => {
                let mut g = match g { Ok(g) => g, Err(e) => anyhow::bail!("account {name}: TUN: {e}") };
                for _ in 0..256 {
                    match g.try_io(|f| nix::unistd::read(f.get_ref(), &mut buf).map_err(std::io::Error::from)) {
                        Ok(Ok(0)) => break,
                        Ok(Ok(n)) => {
                            let queue = match vnet::parse(&buf[..n]) {
                                vnet::Frame::Packet { pkt, trusted } => ingress(&ctx, &tx, pkt, trusted),
                                vnet::Frame::Bad(reason) => {
                                    ctx.stats.packets_dropped.fetch_add(1, Relaxed);
                                    tracing::trace!(account = %ctx.account, reason, "frame dropped");
                                    false
                                }
                            };
                            // A TCP segment: its virtio-net header, then the packet.
                            if queue && !shared.lock().dev.push_read(&mut buf, vnet::HDR_LEN, n) {
                                ctx.stats.packets_dropped.fetch_add(1, Relaxed);
                            }
                        }
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
    Ok(())
}

/// One packet from the program; true: a TCP segment of a flow (or one
/// for the stack to answer) that the caller queues for the stack.
fn ingress(ctx: &Arc<Ctx>, tx: &mpsc::UnboundedSender<Event>, pkt: &[u8], trusted: bool) -> bool {
    match packet::classify(pkt, ctx.limits.ipv6, trusted) {
        Class::TcpSyn { src, dst } => flow::on_syn(ctx, tx, (src, dst), pkt),
        Class::Tcp => return true,
        Class::Udp { src, dst, payload } => super::udp::on_datagram(ctx, src, dst, payload, pkt),
        Class::Dns { src, dst, payload } => {
            ctx.stats.dns_queries.fetch_add(1, Relaxed);
            if let Some(mut fake) = ctx.dns.fake() {
                let reply = fake.answer(payload);
                drop(fake);
                if let Some(r) = &reply {
                    ctx.stats.dns_reply(r);
                }
                if let Some(out) = reply.and_then(|r| packet::udp_packet(dst, src, &r)) {
                    super::device::write_plain(ctx.tun.as_fd(), &out, &ctx.stats.tun_writes_dropped);
                }
                return false;
            }
            let (ctx, query) = (ctx.clone(), payload.to_vec());
            let spawner = ctx.clone();
            spawner.spawn(async move {
                let Some(r) = ctx.dns.answer(&query, true).await else { return };
                ctx.stats.dns_reply(&r);
                if let Some(out) = packet::udp_packet(dst, src, &r) {
                    super::device::write_plain(ctx.tun.as_fd(), &out, &ctx.stats.tun_writes_dropped);
                }
            });
        }
        Class::Drop(reason) => {
            ctx.stats.packets_dropped.fetch_add(1, Relaxed);
            tracing::trace!(account = %ctx.account, reason, "packet dropped");
        }
    }
    false
}
