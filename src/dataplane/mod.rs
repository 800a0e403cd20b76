//! The data plane: one poll loop per account reads the device, classifies
//! each packet, answers DNS through the DNS server, holds each new SYN
//! until the upstream is connected through the route the router picks
//! (deferred accept), and feeds the rest to the smoltcp stack. One task per
//! flow relays between the stack socket and the upstream. Nothing leaves
//! except through the proxy.
//!
//! The device is any non-blocking datagram fd that carries one IP packet
//! per read and write behind a virtio-net header (vnet.rs): the account's
//! TUN (IFF_VNET_HDR), or one end of a Unix datagram socketpair in tests,
//! which then play the program's side with such frames, no root needed.

pub mod adapter;
pub mod device;
mod flow;
pub mod packet;
mod poll;
pub mod ratelog;
pub mod relay;
pub mod spin;
pub mod stack;
pub mod stats;
mod udp;
pub mod vnet;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Account;
use crate::dns::names::Names;
use crate::dns::server::DnsServer;
use crate::proxy::route::Router;
use crate::published::stats::Snapshot;
use device::FdSink;
use stack::{Shared, Stack};
use stats::Stats;

/// What the policy bounds in the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub mtu: usize,
    /// Per flow: the stack's receive buffer (the program's upload window).
    pub socket_buffer: usize,
    /// Per flow: the stack's send buffer (downloads waiting for the ACK).
    pub send_buffer: usize,
    /// A flow with no traffic for this long is reset on both sides.
    pub idle: Duration,
    pub max_flows: usize,
    pub max_half_open: usize,
    /// `ipv6: proxy`: IPv6 packets are handled, not dropped.
    pub ipv6: bool,
    /// `udp: proxy`: UDP flows through SOCKS5 UDP ASSOCIATE; None: refused.
    pub udp: Option<UdpLimits>,
    /// `host_services`, by index (the address inside): name and the
    /// loopback address on the host.
    pub host_services: Vec<(String, std::net::SocketAddr)>,
    /// The namespace's address plan (`dns.fake_ip_range`).
    pub addresses: crate::config::plan::Addresses,
}

/// Bounds of `udp: proxy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpLimits {
    pub max_flows: usize,
    /// An association with no datagram either way for this long closes.
    pub idle: Duration,
    /// Datagrams queued per flow while its association is set up (or the
    /// relay is slow); beyond: dropped and counted.
    pub queue: usize,
}

impl Limits {
    pub fn from_account(a: &Account) -> Limits {
        Limits {
            mtu: a.mtu as usize,
            socket_buffer: a.limits.socket_buffer as usize,
            send_buffer: a.limits.send_buffer as usize,
            idle: a.limits.idle_timeout,
            max_flows: a.limits.max_flows as usize,
            max_half_open: a.limits.max_half_open as usize,
            ipv6: a.ipv6 == crate::config::Ipv6Mode::Proxy,
            udp: (a.udp == crate::config::UdpMode::Proxy).then_some(UdpLimits {
                max_flows: a.limits.max_udp_flows as usize,
                idle: a.limits.udp_idle_timeout,
                queue: 256,
            }),
            host_services: a.host_services.iter().map(|h| (h.name.clone(), h.listen)).collect(),
            addresses: a.dns.fake_ip_range,
        }
    }
}

/// The device fd, shared between the reader (the loop) and the writers.
#[derive(Clone)]
struct TunRef(Arc<AsyncFd<OwnedFd>>);

impl AsFd for TunRef {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.get_ref().as_fd()
    }
}

/// Everything the loop and the flow tasks share.
struct Ctx {
    account: String,
    router: Arc<dyn Router>,
    /// DNS mode tcp with rules: names behind the addresses answered.
    names: Option<Arc<Mutex<Names>>>,
    limits: Limits,
    stats: Arc<Stats>,
    shared: Arc<Shared>,
    dns: Arc<DnsServer>,
    tun: TunRef,
    /// Flow and DNS tasks, drained on shutdown.
    tasks: TaskTracker,
    /// Cancelled at shutdown: every flow and DNS task ends.
    stop: CancellationToken,
    /// Refusal warnings, at most one per reason per second.
    ratelog: Mutex<ratelog::RateLog>,
    /// `udp: proxy`: the open UDP flows.
    udp: Mutex<udp::Flows>,
}

impl Ctx {
    /// Whether a warning for `reason` may be logged now, and how many were
    /// suppressed since the last one.
    fn may_log(&self, reason: &str) -> Option<u64> {
        self.ratelog.lock().unwrap_or_else(|e| e.into_inner()).allow(reason, std::time::Instant::now())
    }

    /// Spawns a flow or DNS task on the tracker; it ends at shutdown.
    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = fut => {}
            }
        });
    }
}

/// What the rest of the daemon reads from a running data plane.
#[derive(Clone)]
pub struct Observer {
    shared: Arc<Shared>,
    pub stats: Arc<Stats>,
}

impl Observer {
    /// (open, connecting) flows right now.
    pub fn counts(&self) -> (usize, usize) {
        self.shared.lock().counts()
    }

    /// Turns of the poll loop so far.
    pub fn turns(&self) -> u64 {
        self.shared.turns()
    }

    /// Wakes the poll loop for one turn (the watchdog asks it to prove it
    /// is alive).
    pub fn nudge(&self) {
        self.shared.notify.notify_one();
    }

    /// The counters as published (without the proxy service's part).
    pub fn snapshot(&self) -> Snapshot {
        let (a, p) = self.counts();
        self.stats.snapshot(a, p)
    }
}

/// One account's data plane, built on its device and ready to run.
pub struct Dataplane {
    ctx: Arc<Ctx>,
}

/// What the data plane is built from.
pub struct Parts {
    pub account: String,
    /// The device: the TUN fd (non-blocking), or a datagram socket in tests.
    pub device: OwnedFd,
    pub router: Arc<dyn Router>,
    pub dns: Arc<DnsServer>,
    pub names: Option<Arc<Mutex<Names>>>,
    pub limits: Limits,
    /// Where flow and DNS tasks are spawned.
    pub tasks: TaskTracker,
    /// Cancelled at shutdown: every flow and DNS task ends.
    pub stop: CancellationToken,
    /// The counters to add to: shared by every device of one account (its
    /// own TUN and its containers'), or None for counters of its own.
    pub stats: Option<Arc<Stats>>,
}

impl Dataplane {
    /// Registers the device with the runtime (call inside it).
    pub fn new(p: Parts) -> std::io::Result<Dataplane> {
        let tun = TunRef(Arc::new(crate::host::sys::register_async(p.device)?));
        let stats: Arc<Stats> = p.stats.unwrap_or_default();
        let stack = Stack::new(
            Box::new(FdSink { fd: tun.clone(), dropped: stats.tun_writes_dropped.clone() }),
            p.limits.mtu,
            (p.limits.socket_buffer, p.limits.send_buffer),
            p.limits.addresses.dns_v4(),
        );
        let ctx = Ctx {
            account: p.account,
            router: p.router,
            names: p.names,
            limits: p.limits,
            stats,
            shared: Arc::new(Shared::new(stack)),
            dns: p.dns,
            tun,
            tasks: p.tasks,
            stop: p.stop,
            ratelog: Mutex::new(ratelog::RateLog::new(Duration::from_secs(1))),
            udp: Mutex::new(udp::Flows::default()),
        };
        Ok(Dataplane { ctx: Arc::new(ctx) })
    }

    pub fn observer(&self) -> Observer {
        Observer { shared: self.ctx.shared.clone(), stats: self.ctx.stats.clone() }
    }

    /// Runs the poll loop until `stop` is cancelled; an error of the device
    /// ends it early.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        poll::run(self.ctx, stop).await
    }
}
