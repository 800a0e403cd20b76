//! The data plane without root: a Unix datagram socketpair stands in for
//! the TUN (one IP packet per datagram), the test plays the program with
//! raw segments, and in-process SOCKS5 proxies are the upstreams. A held
//! SYN whose proxy fails is retried once through the pool's new active
//! proxy (a failover meanwhile); without a new one, the program gets RST.

mod support;

use std::net::{SocketAddrV4, TcpListener};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nsproxy::dataplane::packet::tcp_segment;
use nsproxy::dataplane::{Dataplane, Limits, Parts, vnet};
use nsproxy::dns::server::{DnsServer, FakeDns};
use nsproxy::proxy::route::{ProxyCounters, Refusal, Route, Router};
use nsproxy::proxy::{ProxyError, Upstream};
use nsproxy::rules::Dest;
use smoltcp::wire::{Ipv4Packet, TcpControl, TcpPacket};
use support::socks::Socks;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Routes every flow to `first`; `active` is the pool's active proxy by
/// the time the connect fails.
struct TestRouter {
    first: Route,
    active: Route,
    reports: Mutex<Vec<(String, bool)>>,
    reset: watch::Sender<u64>,
}

impl Router for TestRouter {
    fn account(&self) -> &str {
        "acct"
    }
    fn route(&self, _dest: &Dest<'_>) -> Result<Route, Refusal> {
        Ok(self.first.clone())
    }
    fn active(&self) -> Option<Route> {
        Some(self.active.clone())
    }
    fn report(&self, route: &Route, result: Result<(), &ProxyError>, _started: std::time::Instant) {
        self.reports.lock().unwrap().push((route.label().to_string(), result.is_ok()));
    }
    fn reset_signal(&self) -> watch::Receiver<u64> {
        self.reset.subscribe()
    }
}

fn route(label: &str, url: &str) -> Route {
    let text = format!("accounts:\n  - name: acct\n    proxies:\n      - label: {label}\n        url: {url}\n");
    let a = nsproxy::config::parse_str(Path::new("t.yaml"), &text).expect("policy").remove(0);
    let entry = a.proxies[0].clone();
    Route {
        upstream: Arc::new(Upstream::new(entry, None)),
        counters: Arc::new(ProxyCounters::default()),
        by_rule: false,
    }
}

/// A proxy address nothing listens on: connect is refused at once.
fn dead_proxy() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("socks5://{addr}")
}

const PROGRAM: &str = "198.18.0.1:40000";
const ORIGIN: &str = "10.9.9.9:443";

/// Sends the program's SYN through the data plane and returns the
/// segment it answers with.
async fn answer_to_syn(router: Arc<TestRouter>) -> (TcpControl, bool) {
    let (ours, device) = std::os::unix::net::UnixDatagram::pair().expect("socketpair");
    device.set_nonblocking(true).expect("nonblocking");
    ours.set_nonblocking(true).expect("nonblocking");
    let ours = tokio::net::UnixDatagram::from_std(ours).expect("register");
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let dp = Dataplane::new(Parts {
        account: "acct".into(),
        device: OwnedFd::from(device),
        router,
        dns: Arc::new(DnsServer::FakeIp(Mutex::new(FakeDns::in_memory()))),
        names: None,
        limits: Limits {
            mtu: 1500,
            socket_buffer: 64 * 1024,
            send_buffer: 64 * 1024,
            idle: Duration::from_secs(60),
            max_flows: 16,
            max_half_open: 16,
            ipv6: false,
            udp: None,
            host_services: Vec::new(),
            addresses: Default::default(),
        },
        tasks: tasks.clone(),
        stop: stop.clone(),
        stats: None,
    })
    .expect("data plane on the socketpair");
    let run = tokio::spawn(dp.run(stop.clone()));
    let (src, dst): (SocketAddrV4, SocketAddrV4) = (PROGRAM.parse().unwrap(), ORIGIN.parse().unwrap());
    // The device speaks what the TUN does: a virtio-net header, then the packet.
    let mut syn = vnet::PLAIN.to_vec();
    syn.extend_from_slice(&tcp_segment(src, dst, TcpControl::Syn, 1000, None, &[]));
    ours.send(&syn).await.expect("send SYN");
    let mut buf = vec![0u8; 2048];
    let answer = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), ours.recv(&mut buf))
            .await
            .expect("an answer to the SYN within 10 s")
            .expect("recv");
        let vnet::Frame::Packet { pkt, .. } = vnet::parse(&buf[..n]) else { panic!("not a frame: {:?}", &buf[..n]) };
        let ip = Ipv4Packet::new_checked(pkt).expect("an IPv4 packet");
        let tcp = TcpPacket::new_checked(ip.payload()).expect("a TCP segment");
        if tcp.dst_port() != src.port() {
            continue;
        }
        let control = if tcp.rst() {
            TcpControl::Rst
        } else if tcp.syn() {
            TcpControl::Syn
        } else {
            TcpControl::None
        };
        break (control, tcp.ack());
    };
    stop.cancel();
    run.await.expect("loop task").expect("loop ends cleanly");
    tasks.close();
    tasks.wait().await;
    answer
}

#[tokio::test(flavor = "current_thread")]
async fn a_held_syn_is_retried_through_the_new_active_proxy_after_a_failover() {
    let p2 = Socks::start().await;
    let router = Arc::new(TestRouter {
        first: route("p1", &dead_proxy()),
        active: route("p2", &p2.url()),
        reports: Mutex::new(Vec::new()),
        reset: watch::channel(0).0,
    });
    let answer = answer_to_syn(router.clone()).await;
    assert_eq!(answer, (TcpControl::Syn, true), "the program gets SYN-ACK: connected through p2");
    assert_eq!(p2.connects(), vec![ORIGIN.to_string()], "p2 was asked for the origin");
    assert_eq!(
        *router.reports.lock().unwrap(),
        vec![("p1".to_string(), false), ("p2".to_string(), true)],
        "p1's failure and p2's success are both reported to the pool"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn without_a_new_active_proxy_the_program_gets_a_reset() {
    let dead = dead_proxy();
    let router = Arc::new(TestRouter {
        first: route("p1", &dead),
        active: route("p1", &dead),
        reports: Mutex::new(Vec::new()),
        reset: watch::channel(0).0,
    });
    let answer = answer_to_syn(router.clone()).await;
    assert_eq!(answer.0, TcpControl::Rst, "refused at once: ECONNREFUSED for the program");
    assert_eq!(*router.reports.lock().unwrap(), vec![("p1".to_string(), false)], "tried once, not retried");
}
