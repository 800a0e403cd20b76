//! The userspace TCP/IP stack (smoltcp, any-IP mode) and its flow table.
//! Flows are accepted only after the upstream is connected (deferred
//! accept): until then the SYN is held, and on failure it is handed to the
//! stack with no listener, which answers RST (the program sees ECONNREFUSED).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration as StdDuration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};
use tokio::sync::Notify;

use super::device::{Sink, TunDevice};
use crate::config::plan;

pub type FlowKey = (SocketAddr, SocketAddr);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// SYN held while the upstream connects.
    Pending,
    Open(SocketHandle),
}

struct SockInfo {
    key: FlowKey,
    detached_at: Option<Instant>,
}

/// How long a detached socket may linger (FIN-WAIT, LAST-ACK) before it is
/// removed regardless.
const LINGER: Duration = Duration::from_secs(30);

pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    pub dev: TunDevice<Box<dyn Sink + Send>>,
    flows: HashMap<FlowKey, Flow>,
    socks: HashMap<SocketHandle, SockInfo>,
    epoch: std::time::Instant,
    buf_size: usize,
    pending: usize,
}

impl<T: Sink + ?Sized> Sink for Box<T> {
    fn send(&mut self, pkt: &[u8]) {
        (**self).send(pkt)
    }
}

impl Stack {
    pub fn new(sink: Box<dyn Sink + Send>, mtu: usize, buf_size: usize) -> Stack {
        let epoch = std::time::Instant::now();
        let mut dev = TunDevice::new(sink, mtu, 4096);
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = seed();
        let mut iface = Interface::new(cfg, &mut dev, Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(plan::DNS_V4), 32));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(plan::DNS_V4);
        iface.set_any_ip(true);
        Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            flows: HashMap::new(),
            socks: HashMap::new(),
            epoch,
            buf_size,
            pending: 0,
        }
    }

    /// Monotonic time since the stack started (never the wall clock).
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Runs the stack; true when socket state may have changed.
    pub fn poll(&mut self) -> bool {
        let now = self.now();
        let r = self.iface.poll(now, &mut self.dev, &mut self.sockets);
        matches!(r, smoltcp::iface::PollResult::SocketStateChanged)
    }

    /// When the stack next needs polling (None: only on new input).
    pub fn delay(&mut self) -> Option<StdDuration> {
        let now = self.now();
        self.iface.poll_delay(now, &self.sockets).map(|d| StdDuration::from_micros(d.total_micros()))
    }

    pub fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.flows.get(key).copied()
    }

    /// (open, pending) flows.
    pub fn counts(&self) -> (usize, usize) {
        (self.flows.len() - self.pending, self.pending)
    }

    pub fn begin(&mut self, key: FlowKey) {
        if self.flows.insert(key, Flow::Pending).is_none() {
            self.pending += 1;
        }
    }

    fn end_pending(&mut self, key: &FlowKey) {
        if self.flows.get(key) == Some(&Flow::Pending) {
            self.flows.remove(key);
            self.pending -= 1;
        }
    }

    /// Upstream is ready: create the listener and hand the held SYN to it.
    pub fn accept(&mut self, key: FlowKey, syn: Vec<u8>) -> Option<SocketHandle> {
        self.end_pending(&key);
        let rx = tcp::SocketBuffer::new(vec![0u8; self.buf_size]);
        let tx = tcp::SocketBuffer::new(vec![0u8; self.buf_size]);
        let mut s = tcp::Socket::new(rx, tx);
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        let ep = IpListenEndpoint { addr: Some(key.1.ip().into()), port: key.1.port() };
        if s.listen(ep).is_err() {
            self.dev.push(syn);
            return None;
        }
        let h = self.sockets.add(s);
        self.flows.insert(key, Flow::Open(h));
        self.socks.insert(h, SockInfo { key, detached_at: None });
        self.dev.push(syn);
        Some(h)
    }

    /// Refuses the flow: the SYN meets no listener and the stack sends RST.
    pub fn refuse(&mut self, key: FlowKey, syn: Vec<u8>) {
        self.end_pending(&key);
        self.dev.push(syn);
    }

    pub fn socket(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// The adapter is gone: close (FIN after queued data) or abort (RST).
    pub fn detach(&mut self, h: SocketHandle, abort: bool) {
        let now = self.now();
        if let Some(info) = self.socks.get_mut(&h) {
            info.detached_at = Some(now);
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            if abort { s.abort() } else { s.close() }
        }
    }

    /// Removes detached sockets that are closed, in TIME-WAIT, or lingered.
    pub fn reap(&mut self) -> usize {
        let now = self.now();
        let done: Vec<SocketHandle> = self
            .socks
            .iter()
            .filter(|(h, i)| {
                i.detached_at.is_some_and(|t| {
                    let st = self.sockets.get::<tcp::Socket>(**h).state();
                    matches!(st, tcp::State::Closed | tcp::State::TimeWait) || now - t > LINGER
                })
            })
            .map(|(h, _)| *h)
            .collect();
        for h in &done {
            if let Some(info) = self.socks.remove(h)
                && self.flows.get(&info.key) == Some(&Flow::Open(*h))
            {
                self.flows.remove(&info.key);
            }
            self.sockets.remove(*h);
        }
        done.len()
    }
}

fn seed() -> u64 {
    let t =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32)
}

/// The stack and the wake-up for its poll loop, shared with the adapters.
pub struct Shared {
    stack: Mutex<Stack>,
    pub notify: Notify,
}

impl Shared {
    pub fn new(stack: Stack) -> Shared {
        Shared { stack: Mutex::new(stack), notify: Notify::new() }
    }
    /// The stack; a poisoned lock (a panic elsewhere) is still usable, since
    /// every mutation leaves the stack consistent.
    pub fn lock(&self) -> MutexGuard<'_, Stack> {
        self.stack.lock().unwrap_or_else(|e| e.into_inner())
    }
}
