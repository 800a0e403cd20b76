//! The userspace TCP/IP stack (smoltcp, any-IP mode) and its flow table.
//! Flows are accepted only after the upstream is connected (deferred
//! accept): until then the SYN is held, and on failure it is handed to the
//! stack with no listener, which answers RST (the program sees ECONNREFUSED).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// The flow moved at most `RECYCLE_BYTES`: its buffers have few pages
    /// touched, so the socket may be kept for the next flow.
    small: bool,
}

/// How long a detached socket may linger (FIN-WAIT, LAST-ACK) before it is
/// removed regardless.
const LINGER: Duration = Duration::from_secs(30);

/// Closed sockets kept for the next flows: a new socket maps two fresh
/// buffers (`limits.socket_buffer` and `limits.send_buffer`, mappings of
/// their own: `host::sys::OwnPages`) and faults their first pages in, and
/// its removal unmaps them again, on every connection. Only a socket whose
/// flow moved at most `RECYCLE_BYTES` is kept (the buffers restart at their
/// first byte, so what stays resident is about what that flow touched), at
/// most `RECYCLE_MAX` of them, and all are released at the first turn after
/// `RECYCLE_IDLE` without a new flow (no wake-up of their own).
pub const RECYCLE_MAX: usize = 8;
pub const RECYCLE_BYTES: u64 = 64 * 1024;
const RECYCLE_IDLE: Duration = Duration::from_secs(2);

pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    pub dev: TunDevice<Box<dyn Sink + Send>>,
    flows: HashMap<FlowKey, Flow>,
    socks: HashMap<SocketHandle, SockInfo>,
    /// Sockets whose adapter is gone, waiting to close: the only ones
    /// `reap` looks at, so its cost does not grow with open flows.
    detached: Vec<SocketHandle>,
    /// Closed sockets kept for the next flows (`RECYCLE_MAX`).
    free: Vec<SocketHandle>,
    /// When a socket was last created or taken from `free`.
    last_accept: Instant,
    epoch: std::time::Instant,
    /// Bytes of each new socket's (receive, send) buffers.
    buf_sizes: (usize, usize),
    pending: usize,
}

impl<T: Sink + ?Sized> Sink for Box<T> {
    fn send(&mut self, frame: &[u8]) {
        (**self).send(frame)
    }
}

impl Stack {
    /// `buf_sizes`: each socket's receive and send buffer in bytes;
    /// `address`: the stack's own IPv4 address (the namespace's DNS server).
    pub fn new(
        sink: Box<dyn Sink + Send>,
        mtu: usize,
        buf_sizes: (usize, usize),
        address: std::net::Ipv4Addr,
    ) -> Stack {
        let epoch = std::time::Instant::now();
        let mut dev = TunDevice::new(sink, mtu, 4096);
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = seed();
        let mut iface = Interface::new(cfg, &mut dev, Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(address), 32));
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(plan::STACK_V6), 128));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(address);
        let _ = iface.routes_mut().add_default_ipv6_route(plan::STACK_V6);
        iface.set_any_ip(true);
        Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            flows: HashMap::new(),
            socks: HashMap::new(),
            detached: Vec::new(),
            free: Vec::new(),
            last_accept: Instant::from_micros(0),
            epoch,
            buf_sizes,
            pending: 0,
        }
    }

    /// Monotonic time since the stack started (never the wall clock).
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Runs the stack at `now` (from `Stack::now` or a test's clock); true
    /// when socket state may have changed.
    pub fn poll(&mut self, now: Instant) -> bool {
        let r = self.iface.poll(now, &mut self.dev, &mut self.sockets);
        matches!(r, smoltcp::iface::PollResult::SocketStateChanged)
    }

    /// When the stack next needs polling (None: only on new input).
    pub fn delay(&mut self, now: Instant) -> Option<StdDuration> {
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

    /// Upstream is ready: create the listener (or take a kept one) and hand
    /// the held SYN to it.
    pub fn accept(&mut self, key: FlowKey, syn: Vec<u8>) -> Option<SocketHandle> {
        self.end_pending(&key);
        self.last_accept = self.now();
        let ep = IpListenEndpoint { addr: Some(key.1.ip().into()), port: key.1.port() };
        let h = match self.free.pop() {
            Some(h) => h,
            None => {
                let rx = tcp::SocketBuffer::new(vec![0u8; self.buf_sizes.0]);
                let tx = tcp::SocketBuffer::new(vec![0u8; self.buf_sizes.1]);
                let mut s = tcp::Socket::new(rx, tx);
                s.set_nagle_enabled(false);
                s.set_ack_delay(Some(Duration::from_millis(1)));
                self.sockets.add(s)
            }
        };
        // A kept socket is Closed: listen resets its state and buffers.
        if self.sockets.get_mut::<tcp::Socket>(h).listen(ep).is_err() {
            self.free.push(h);
            self.dev.push(syn);
            return None;
        }
        self.flows.insert(key, Flow::Open(h));
        self.socks.insert(h, SockInfo { key, detached_at: None, small: false });
        self.dev.push(syn);
        Some(h)
    }

    /// Sockets kept for the next flows (`RECYCLE_MAX` at most).
    pub fn kept(&self) -> usize {
        self.free.len()
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
    /// `moved`: the bytes its flow moved both ways.
    pub fn detach(&mut self, h: SocketHandle, abort: bool, moved: u64) {
        let now = self.now();
        if let Some(info) = self.socks.get_mut(&h) {
            if info.detached_at.is_none() {
                self.detached.push(h);
            }
            info.detached_at = Some(now);
            info.small = moved <= RECYCLE_BYTES;
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            if abort { s.abort() } else { s.close() }
        }
    }

    /// Removes detached sockets that are closed, in TIME-WAIT, or lingered
    /// (a small closed one is kept for the next flow instead), and the kept
    /// ones after `RECYCLE_IDLE` without a new flow.
    pub fn reap(&mut self, now: Instant) -> usize {
        if !self.free.is_empty() && now - self.last_accept > RECYCLE_IDLE {
            for h in self.free.drain(..) {
                self.sockets.remove(h);
            }
        }
        if self.detached.is_empty() {
            return 0;
        }
        let (socks, sockets) = (&self.socks, &self.sockets);
        let (done, waiting): (Vec<SocketHandle>, Vec<SocketHandle>) = self.detached.iter().partition(|h| {
            socks.get(h).and_then(|i| i.detached_at).is_none_or(|t| {
                let s = sockets.get::<tcp::Socket>(**h);
                closed_for_good(s) || s.state() == tcp::State::TimeWait || now - t > LINGER
            })
        });
        self.detached = waiting;
        let mut reaped = 0;
        for h in &done {
            // Only handles this stack still knows; a slot is removed once.
            let Some(info) = self.socks.remove(h) else { continue };
            if self.flows.get(&info.key) == Some(&Flow::Open(*h)) {
                self.flows.remove(&info.key);
            }
            reaped += 1;
            // listen() takes a socket closed for good as it is.
            let idle = closed_for_good(self.sockets.get::<tcp::Socket>(*h));
            if info.small && idle && self.free.len() < RECYCLE_MAX {
                self.free.push(*h);
                continue;
            }
            self.sockets.remove(*h);
        }
        reaped
    }
}

/// Closed with no peer left: not one aborted whose RST is still to be sent
/// (smoltcp forgets the peer once the RST is out).
fn closed_for_good(s: &tcp::Socket) -> bool {
    s.state() == tcp::State::Closed && s.remote_endpoint().is_none()
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
    /// A flow task moved bytes to an upstream since the poll loop last
    /// looked: the loop opens its busy-poll window from then, since the
    /// proxy's answer comes one upstream round trip after that write.
    forwarded: AtomicBool,
    /// Turns of the poll loop so far (the watchdog's proof of life).
    turns: AtomicU64,
}

impl Shared {
    pub fn new(stack: Stack) -> Shared {
        Shared {
            stack: Mutex::new(stack),
            notify: Notify::new(),
            forwarded: AtomicBool::new(false),
            turns: AtomicU64::new(0),
        }
    }
    /// Called by the poll loop on each turn.
    pub fn turned(&self) {
        self.turns.fetch_add(1, Ordering::Relaxed);
    }
    /// The poll loop's turns so far.
    pub fn turns(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }
    /// Called by a flow task after it wrote the program's bytes upstream.
    pub fn mark_forwarded(&self) {
        self.forwarded.store(true, Ordering::Relaxed);
    }
    /// Whether a flow task forwarded bytes since the last call.
    pub fn take_forwarded(&self) -> bool {
        self.forwarded.swap(false, Ordering::Relaxed)
    }
    /// The stack; a poisoned lock (a panic elsewhere) is still usable, since
    /// every mutation leaves the stack consistent.
    pub fn lock(&self) -> MutexGuard<'_, Stack> {
        self.stack.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    //! The stack driven through an in-memory device: segments built with
    //! `smoltcp::wire`, time from the stack's own monotonic clock.
    use super::*;
    use smoltcp::wire::{Ipv4Packet, TcpControl, TcpPacket};
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Capture(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);
    impl Sink for Capture {
        /// Keeps the packet as it would leave a real device: checksum
        /// completed from the partial one (the header says where).
        fn send(&mut self, frame: &[u8]) {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(crate::dataplane::vnet::complete(frame));
        }
    }
    impl Capture {
        fn take(&self) -> Vec<Vec<u8>> {
            std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
        }
    }

    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000);
    const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 443);

    fn seg(control: TcpControl, seq: u32, ack: Option<u32>, payload: &[u8]) -> Vec<u8> {
        seg_from(CLIENT, control, seq, ack, payload)
    }

    fn seg_from(client: SocketAddrV4, control: TcpControl, seq: u32, ack: Option<u32>, payload: &[u8]) -> Vec<u8> {
        crate::dataplane::packet::tcp_segment(client, SERVER, control, seq, ack, payload)
    }

    /// (rst, syn, ack, seq, ack_number, payload) of an emitted segment.
    fn parse(pkt: &[u8]) -> (bool, bool, bool, u32, u32, Vec<u8>) {
        parse_from(pkt, CLIENT)
    }

    /// The same for a segment to `client`, its port checked too.
    fn parse_from(pkt: &[u8], client: SocketAddrV4) -> (bool, bool, bool, u32, u32, Vec<u8>) {
        let ip = Ipv4Packet::new_checked(pkt).expect("ipv4");
        assert_eq!((ip.src_addr(), ip.dst_addr()), (*SERVER.ip(), *client.ip()), "reply addresses");
        let t = TcpPacket::new_checked(ip.payload()).expect("tcp");
        assert!(t.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        assert_eq!((t.src_port(), t.dst_port()), (SERVER.port(), client.port()), "reply ports");
        (t.rst(), t.syn(), t.ack(), t.seq_number().0 as u32, t.ack_number().0 as u32, t.payload().to_vec())
    }

    fn key() -> FlowKey {
        (SocketAddr::V4(CLIENT), SocketAddr::V4(SERVER))
    }

    fn stack() -> (Stack, Capture) {
        let cap = Capture::default();
        (Stack::new(Box::new(cap.clone()), 65000, (64 * 1024, 32 * 1024), plan::Addresses::DEFAULT.dns_v4()), cap)
    }

    #[test]
    fn refused_flow_gets_a_reset_and_leaves_nothing() {
        let (mut st, cap) = stack();
        st.begin(key());
        assert_eq!(st.flow(&key()), Some(Flow::Pending));
        assert_eq!(st.counts(), (0, 1));
        st.refuse(key(), seg(TcpControl::Syn, 1000, None, b""));
        let now = st.now();
        st.poll(now);
        let out = cap.take();
        assert_eq!(out.len(), 1, "one RST");
        let (rst, _, ack, _, ackn, _) = parse(&out[0]);
        assert!(rst && ack);
        assert_eq!(ackn, 1001, "the RST acknowledges the SYN, so the client takes it");
        assert_eq!(st.counts(), (0, 0));
        assert_eq!(st.flow(&key()), None);
    }

    #[test]
    fn accepted_flow_carries_data_both_ways_and_is_reaped() {
        let (mut st, cap) = stack();
        st.begin(key());
        let h = st.accept(key(), seg(TcpControl::Syn, 1000, None, b"")).expect("listener");
        let now = st.now();
        st.poll(now);
        let out = cap.take();
        let (rst, syn, ack, isn, ackn, _) = parse(&out[0]);
        assert!(syn && ack && !rst, "SYN-ACK only after accept");
        assert_eq!(ackn, 1001);
        assert_eq!(st.counts(), (1, 0));
        // Client completes the handshake and sends data.
        st.dev.push(seg(TcpControl::None, 1001, Some(isn + 1), b""));
        st.dev.push(seg(TcpControl::Psh, 1001, Some(isn + 1), b"hello"));
        let now = st.now();
        st.poll(now);
        let s = st.socket(h);
        assert_eq!(s.state(), tcp::State::Established);
        let mut buf = [0u8; 16];
        let n = s.recv_slice(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"hello");
        assert!(!s.nagle_enabled(), "Nagle is off");
        assert_eq!((s.recv_capacity(), s.send_capacity()), (64 * 1024, 32 * 1024), "the two buffer sizes");
        s.send_slice(b"world").expect("send");
        cap.take();
        let now = st.now();
        st.poll(now);
        let data: Vec<Vec<u8>> = cap.take().iter().map(|p| parse(p).5).filter(|p| !p.is_empty()).collect();
        assert_eq!(data, vec![b"world".to_vec()]);
        // A retransmitted SYN for an open flow is no new flow.
        assert_eq!(st.flow(&key()), Some(Flow::Open(h)));
        // Client resets; the detached socket is reaped.
        st.dev.push(seg(TcpControl::Rst, 1006, None, b""));
        let now = st.now();
        st.poll(now);
        assert_eq!(st.socket(h).state(), tcp::State::Closed);
        assert_eq!(st.reap(now), 0, "not reaped while the adapter holds it");
        st.detach(h, false, 10);
        assert_eq!(st.reap(now), 1);
        assert_eq!(st.counts(), (0, 0));
        assert_eq!(st.flow(&key()), None);
    }

    /// Accepts a flow from `port` and completes the handshake: the handle
    /// and the stack's initial sequence number.
    fn open_flow(st: &mut Stack, cap: &Capture, port: u16) -> (SocketHandle, u32) {
        let client = SocketAddrV4::new(*CLIENT.ip(), port);
        let k = (SocketAddr::V4(client), SocketAddr::V4(SERVER));
        let syn = seg_from(client, TcpControl::Syn, 1000, None, b"");
        st.begin(k);
        let h = st.accept(k, syn).expect("listener");
        let now = st.now();
        st.poll(now);
        let (_, synack, _, isn, ackn, _) = parse_from(&cap.take()[0], client);
        assert!(synack && ackn == 1001, "SYN-ACK for port {port}");
        let ack = seg_from(client, TcpControl::None, 1001, Some(isn + 1), b"");
        st.dev.push(ack);
        let now = st.now();
        st.poll(now);
        assert_eq!(st.socket(h).state(), tcp::State::Established);
        (h, isn)
    }

    /// The client resets the flow from `port` and the adapter lets go.
    fn end_flow(st: &mut Stack, h: SocketHandle, port: u16, seq: u32, moved: u64) {
        let client = SocketAddrV4::new(*CLIENT.ip(), port);
        st.dev.push(seg_from(client, TcpControl::Rst, seq, None, b""));
        let now = st.now();
        st.poll(now);
        assert_eq!(st.socket(h).state(), tcp::State::Closed, "the client's RST closed it");
        st.detach(h, false, moved);
        let now = st.now();
        assert_eq!(st.reap(now), 1);
    }

    #[test]
    fn a_small_flows_socket_carries_the_next_flow_and_a_big_ones_does_not() {
        let (mut st, cap) = stack();
        let (h1, _) = open_flow(&mut st, &cap, 40001);
        end_flow(&mut st, h1, 40001, 1001, RECYCLE_BYTES);
        assert_eq!((st.kept(), st.counts()), (1, (0, 0)), "kept, and no flow left");
        // The next flow gets the kept socket, reset: a new handshake, and
        // data at the start of its buffers, to the new port only.
        let (h2, isn) = open_flow(&mut st, &cap, 40002);
        assert_eq!((h2, st.kept()), (h1, 0));
        let client = SocketAddrV4::new(*CLIENT.ip(), 40002);
        st.dev.push(seg_from(client, TcpControl::Psh, 1001, Some(isn + 1), b"again"));
        let now = st.now();
        st.poll(now);
        let mut buf = [0u8; 16];
        let n = st.socket(h2).recv_slice(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"again");
        assert!(!st.socket(h2).nagle_enabled(), "its settings stay");
        st.socket(h2).send_slice(b"back").expect("send");
        let now = st.now();
        st.poll(now);
        let data: Vec<Vec<u8>> = cap.take().iter().map(|p| parse_from(p, client).5).filter(|p| !p.is_empty()).collect();
        assert_eq!(data, vec![b"back".to_vec()]);
        // A flow that moved more is removed, not kept.
        end_flow(&mut st, h2, 40002, 1006, RECYCLE_BYTES + 1);
        assert_eq!(st.kept(), 0);
    }

    #[test]
    fn kept_sockets_are_bounded_and_released_when_no_flow_comes() {
        let (mut st, cap) = stack();
        let flows: Vec<_> =
            (0..RECYCLE_MAX as u16 + 2).map(|i| (open_flow(&mut st, &cap, 41000 + i).0, 41000 + i)).collect();
        for (h, port) in flows {
            end_flow(&mut st, h, port, 1001, 100);
        }
        assert_eq!(st.kept(), RECYCLE_MAX);
        let now = st.now();
        st.reap(now);
        assert_eq!(st.kept(), RECYCLE_MAX, "not released while flows came a moment ago");
        st.reap(now + RECYCLE_IDLE + Duration::from_millis(1));
        assert_eq!(st.kept(), 0, "released after RECYCLE_IDLE without a new flow");
        let now = st.now();
        st.poll(now);
        assert_eq!(st.delay(now), None, "nothing left asks for a wake-up");
    }

    #[test]
    fn an_aborted_socket_is_reaped_only_after_its_reset_went_out() {
        let (mut st, cap) = stack();
        let (h, _) = open_flow(&mut st, &cap, 42000);
        st.detach(h, true, 0);
        let now = st.now();
        assert_eq!(st.reap(now), 0, "not reaped while its RST is still to be sent");
        assert_eq!(st.kept(), 0);
        st.poll(now);
        let out = cap.take();
        let client = SocketAddrV4::new(*CLIENT.ip(), 42000);
        assert!(out.iter().any(|p| parse_from(p, client).0), "the RST went out");
        assert_eq!((st.reap(now), st.kept()), (1, 1), "then reaped, and kept");
    }

    #[test]
    fn idle_stack_asks_for_no_wakeup() {
        let (mut st, _cap) = stack();
        let now = st.now();
        st.poll(now);
        assert_eq!(st.delay(now), None, "an idle stack must not spin");
    }
}
