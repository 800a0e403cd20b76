//! Issue 2: every TCP flow and DNS lookup of a program in the account goes
//! through the account's proxy, and fails closed. Real proxies in their own
//! namespaces, a real origin; the host has a route to the origin, so a leak
//! would succeed and be seen (origin client log, host link counter).

mod common;
use common::*;
use std::time::{Duration, Instant};

fn curl(a: &Account, topo: &Topology, url: &str) -> std::process::Output {
    a.run(&format!("curl -sS -m 10 --cacert {}/origin-ca.pem {url}", topo.dir.display()))
}

/// Positive control: the host itself can reach the origin, and it shows.
fn positive_control(topo: &Topology) {
    let before = topo.host_hits();
    let o = sh(&format!("curl -sS -m 5 http://{}/", topo.origin_addr));
    assert_eq!(out(&o).trim(), topo.host_addr.to_string(), "host probe must reach the origin directly");
    wait_until("origin to log the host probe", Duration::from_secs(5), || topo.host_hits() > before);
}

#[test]
fn http_https_and_ip_targets_egress_through_each_proxy() {
    if !root_or_skip("http_https_and_ip_targets_egress_through_each_proxy") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks, Kind::Dante, Kind::Tinyproxy]);
    positive_control(&topo);
    let hits = topo.host_hits();
    for p in &topo.proxies {
        let a = Account::for_proxy("dp", p, "");
        a.up();
        let want = p.egress.to_string();
        for url in
            [format!("http://{HOSTNAME}/"), format!("https://{HOSTNAME}:8443/"), format!("http://{}:80/", p.origin_ip)]
        {
            let o = curl(&a, &topo, &url);
            assert_eq!(
                out(&o).trim(),
                want,
                "{:?} {url}: origin must see the proxy's address; stderr {}",
                p.kind,
                err(&o)
            );
        }
        // SOCKS5 pipelining is learnt from the first connection on: dante
        // reads pipelined messages, microsocks drops them (and keeps the
        // handshake one message at a time); a curl after the verdict works.
        let verdict = match p.kind {
            Kind::Dante => Some("the proxy reads pipelined messages"),
            Kind::Microsocks => Some("the proxy does not read pipelined messages"),
            Kind::Tinyproxy => None,
        };
        if let Some(v) = verdict {
            let t = std::time::Instant::now();
            while !a.log().contains(v) && t.elapsed() < std::time::Duration::from_secs(5) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            assert!(a.log().contains(v), "{:?}: no pipelining verdict {v:?} in the log:\n{}", p.kind, a.log());
            let o = curl(&a, &topo, &format!("http://{HOSTNAME}/"));
            assert_eq!(out(&o).trim(), want, "{:?} after the pipelining verdict: {}", p.kind, err(&o));
        } else {
            assert!(!a.log().contains("SOCKS5 pipelining"), "an HTTP proxy has no SOCKS5 pipelining:\n{}", a.log());
        }
        assert!(!a.log().contains(&p.pass), "the proxy password appeared in the daemon log");
    }
    assert_eq!(topo.host_hits(), hits, "the origin saw the host's address: leak");
}

const WS_CLIENT: &str = r#"
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1]) as ws:
        for i in range(100):
            await ws.send("msg-%d" % i)
            assert await ws.recv() == "msg-%d" % i
        print("ok 100")
asyncio.run(main())
"#;

#[test]
fn websocket_by_hostname() {
    if !root_or_skip("websocket_by_hostname") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks]);
    let a = Account::for_proxy("ws", &topo.proxies[0], "");
    a.up();
    let o = a.python(WS_CLIENT, "ws://ws.exchange.test:8081/");
    assert_eq!(out(&o).trim(), "ok 100", "{}", err(&o));
    assert!(topo.origin_clients().contains(&topo.proxies[0].egress.to_string()));
    assert_eq!(topo.host_hits(), 0);
}

const BULK: &str = r#"
import hashlib, os, socket, sys
host, n = sys.argv[1], int(sys.argv[2])
# Download: the origin's /bytes/N stream, generated as the server does.
seed = hashlib.sha256(str(n).encode()).digest(); block = (seed * 2048)[:65536]
want = hashlib.sha256(); left = n
while left:
    c = block[:min(left, len(block))]; want.update(c); left -= len(c)
s = socket.create_connection((host, 80))
s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
buf = b""
while b"\r\n\r\n" not in buf: buf += s.recv(65536)
head, body = buf.split(b"\r\n\r\n", 1)
got = hashlib.sha256(body); total = len(body)
while total < n:
    d = s.recv(1 << 20)
    if not d: break
    got.update(d); total += len(d)
print("down", total == n and got.hexdigest() == want.hexdigest())
# Upload: the origin answers with the sha256 of what it received.
data = os.urandom(n)
s.sendall(b"POST /sha256 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % n)
mv = memoryview(data)
for i in range(0, n, 1 << 20): s.sendall(mv[i:i + (1 << 20)])
buf = b""
while not buf.endswith(b"\r\n\r\n") or b"Content-Length" not in buf:
    buf += s.recv(4096)
    if b"\r\n\r\n" in buf: break
head, body = buf.split(b"\r\n\r\n", 1)
clen = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
while len(body) < clen: body += s.recv(4096)
print("up", body.decode() == hashlib.sha256(data).hexdigest())
"#;

#[test]
fn fifty_megabytes_each_way_intact() {
    if !root_or_skip("fifty_megabytes_each_way_intact") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Dante]);
    let a = Account::for_proxy("bk", &topo.proxies[0], "");
    a.up();
    let t = Instant::now();
    let o = a.python(BULK, &format!("{HOSTNAME} 50000000"));
    assert_eq!(out(&o), "down True\nup True\n", "{}", err(&o));
    eprintln!("50 MB each way in {:?}", t.elapsed());
}

const HALF_CLOSE: &str = r#"
import socket, sys
# Program half-closes first: the echo still arrives, then EOF.
s = socket.create_connection((sys.argv[1], 8082))
s.sendall(b"x" * 100000); s.shutdown(socket.SHUT_WR)
got = b""
while True:
    d = s.recv(65536)
    if not d: break
    got += d
print("program-first", len(got) == 100000)
# Program resets: SO_LINGER 0 then close.
import struct, time
s = socket.create_connection((sys.argv[1], 8082))
s.sendall(b"y"); s.recv(1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); s.close()
print("reset-sent", True)
"#;

#[test]
fn half_close_and_reset_from_the_program() {
    if !root_or_skip("half_close_and_reset_from_the_program") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    // microsocks closes both directions on the first EOF; dante passes
    // half-closes on.
    let topo = Topology::new(&[Kind::Dante]);
    let a = Account::for_proxy("hc", &topo.proxies[0], "");
    a.up();
    let o = a.python(HALF_CLOSE, HOSTNAME);
    assert_eq!(out(&o), "program-first True\nreset-sent True\n", "{}", err(&o));
    // Both flows end and are reaped.
    wait_until("flows reaped", Duration::from_secs(10), || a.stats()["flows_active"] == 0);
}

#[test]
fn dns_is_answered_inside_and_never_leaves() {
    if !root_or_skip("dns_is_answered_inside_and_never_leaves") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks]);
    // Positive control: a query from the host reaches the origin's dnsmasq.
    let o = sh(&format!("dig +short +time=2 +tries=1 @{} control.test", topo.origin_addr));
    assert_eq!(out(&o).trim(), topo.origin_addr.to_string());
    wait_until("dnsmasq to log the control query", Duration::from_secs(5), || topo.dns_log().contains("control.test"));
    let a = Account::for_proxy("dn", &topo.proxies[0], "");
    a.up();
    let script = format!(
        "dig +short +time=2 +tries=1 {HOSTNAME}; dig +short +tcp +time=2 +tries=1 {HOSTNAME}; \
         dig +short +time=2 +tries=1 @{o} leak-udp.test; dig +short +tcp +time=2 +tries=1 @{o} leak-tcp.test; \
         dig +short +time=2 +tries=1 @9.9.9.9 leak-public.test; dig +short +time=2 +tries=1 AAAA {HOSTNAME} | wc -l; \
         getent hosts {HOSTNAME}",
        o = topo.origin_addr
    );
    let o = a.run(&script);
    let lines: Vec<String> = out(&o).lines().map(|l| l.to_string()).collect();
    assert_eq!(lines.len(), 7, "{}{}", out(&o), err(&o));
    let fake = &lines[0];
    assert!(fake.starts_with("198.18.") || fake.starts_with("198.19."), "fake IP expected: {fake}");
    assert_eq!(&lines[1], fake, "UDP and TCP answers agree");
    for l in &lines[2..5] {
        assert!(l.starts_with("198.1"), "queries to any server are answered by nsproxy: {l}");
    }
    assert_eq!(lines[5], "0", "AAAA is empty");
    assert!(lines[6].starts_with(fake.as_str()) && lines[6].ends_with(HOSTNAME), "getent: {}", lines[6]);
    std::thread::sleep(Duration::from_millis(300));
    let log = topo.dns_log();
    assert!(!log.contains("leak-"), "a DNS query left the namespace: {log}");
    assert!(!log.contains(HOSTNAME), "a DNS query left the namespace: {log}");
    // The fake-IP table survives a daemon restart.
    let pid = a.daemon_pid().expect("pid");
    must(&format!("kill {pid}"));
    wait_until("daemon gone", Duration::from_secs(5), || {
        !out(&sh(&format!("ip -n {} -o link", a.namespace))).contains("tun0")
    });
    a.up();
    let o = curl(&a, &topo, &format!("http://{fake}/"));
    assert_eq!(out(&o).trim(), topo.proxies[0].egress.to_string(), "old fake IP still maps: {}", err(&o));
}

#[test]
fn wrong_password_fails_fast_and_names_the_proxy() {
    if !root_or_skip("wrong_password_fails_fast_and_names_the_proxy") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks, Kind::Tinyproxy]);
    for p in &topo.proxies {
        let a = Account::for_proxy("pw", p, "");
        let canary = format!("CANARY-{}", a.name);
        a.secret("pw", &canary);
        a.up();
        let t = Instant::now();
        let o = curl(&a, &topo, &format!("http://{HOSTNAME}/"));
        let took = t.elapsed();
        assert_eq!(o.status.code(), Some(7), "{:?}: curl must fail to connect: {}", p.kind, err(&o));
        assert!(took < Duration::from_secs(2), "{:?}: refusal took {took:?}", p.kind);
        let log = a.log();
        assert!(log.contains("authentication failed"), "{log}");
        assert!(log.contains(&p.url()), "the log names the proxy: {log}");
        assert!(!log.contains(&canary), "the password reached the log");
        assert!(!err(&o).contains(&canary));
    }
    assert_eq!(topo.host_hits(), 0);
}

#[test]
fn dead_proxy_or_dead_daemon_refuses_and_nothing_leaks() {
    if !root_or_skip("dead_proxy_or_dead_daemon_refuses_and_nothing_leaks") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let mut topo = Topology::new(&[Kind::Microsocks]);
    positive_control(&topo);
    let hits = topo.host_hits();
    let a = Account::for_proxy("dd", &topo.proxies[0], "");
    a.up();
    assert_eq!(out(&curl(&a, &topo, &format!("http://{HOSTNAME}/"))).trim(), topo.proxies[0].egress.to_string());
    // Proxy stopped: new connections refused within a second.
    if let Some(mut p) = topo.proxies[0].proc.take() {
        p.stop();
    }
    let tx = topo.host_tx_packets();
    let t = Instant::now();
    let o = a.run(&format!("curl -sS -m 5 http://{}/", topo.origin_addr));
    assert_eq!(o.status.code(), Some(7), "{}", err(&o));
    assert!(t.elapsed() < Duration::from_secs(1), "refusal took {:?}", t.elapsed());
    // Daemon killed: nothing leaves at all.
    let pid = a.daemon_pid().expect("pid");
    must(&format!("kill -9 {pid}"));
    wait_until("TUN gone", Duration::from_secs(5), || {
        !out(&sh(&format!("ip -n {} -o link", a.namespace))).contains("tun0")
    });
    let o = sh(&format!("ip netns exec {} curl -sS -m 3 http://{}/", a.namespace, topo.origin_addr));
    assert!(!o.status.success());
    assert!(err(&o).contains("Couldn't connect") || err(&o).contains("unreachable"), "{}", err(&o));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(topo.host_tx_packets(), tx, "the host sent packets towards the origin");
    assert_eq!(topo.host_hits(), hits, "the origin saw the host's address");
}

const UDP_V6: &str = r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.connect(("10.1.2.3", 443)); s.send(b"quic?")
t = time.time()
try:
    s.recv(100); print("udp answered?!")
except ConnectionRefusedError:
    print("udp refused", time.time() - t < 1)
"#;

#[test]
fn udp_is_refused_and_ipv6_is_unreachable() {
    if !root_or_skip("udp_is_refused_and_ipv6_is_unreachable") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks]);
    let a = Account::for_proxy("ud", &topo.proxies[0], "");
    a.up();
    let o = a.python(UDP_V6, "");
    assert_eq!(out(&o).trim(), "udp refused True", "{}", err(&o));
    let t = Instant::now();
    let o = a.run("curl -6 -sS -m 5 'http://[2001:db8::1]/'");
    assert!(!o.status.success());
    assert!(t.elapsed() < Duration::from_secs(1), "curl -6 must fail at once, took {:?}", t.elapsed());
    assert!(err(&o).contains("Couldn't connect") || err(&o).contains("unreachable"), "{}", err(&o));
}

const MANY: &str = r#"
import socket, sys, threading
host, seq, par, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def get():
    s = socket.create_connection((host, 80), timeout=limit)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    d = b""
    while True:
        c = s.recv(4096)
        if not c: break
        d += c
    s.close()
    return d.endswith(b"\n") and b"200 OK" in d
ok = sum(1 for _ in range(seq) if get())
print("sequential", ok)
res = []
barrier = threading.Barrier(par)
def worker():
    barrier.wait()
    try: res.append(get())
    except Exception as e: res.append(type(e).__name__)
ts = [threading.Thread(target=worker) for _ in range(par)]
[t.start() for t in ts]; [t.join() for t in ts]
print("parallel", sum(1 for r in res if r is True))
bad = sorted(set(str(r) for r in res if r is not True))
if bad: print("failures:", ", ".join("%s x%d" % (b, sum(1 for r in res if str(r) == b)) for b in bad), file=sys.stderr)
"#;

#[test]
fn thousand_sequential_and_five_hundred_parallel_connections() {
    if !root_or_skip("thousand_sequential_and_five_hundred_parallel_connections") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Dante]);
    // Under emulation (the VM, time scale 4) dante itself cannot answer
    // 500 simultaneous greetings within even 40 s (measured: 70 handshakes
    // timed out, the breaker opened and refused the rest, as designed).
    // There the parallel burst is 500 / scale and the proxy timeouts follow
    // the scale; on the host (scale 1) it is 500 with the default timeouts.
    let scale = time_scale();
    let par = 500 / scale;
    let (c, h) = (5 * scale, 10 * scale);
    let extra = format!("        connect_timeout: {c}s\n        handshake_timeout: {h}s\n");
    let a = Account::for_proxy("mn", &topo.proxies[0], &extra);
    a.up();
    let t = Instant::now();
    let o = a.python(MANY, &format!("{HOSTNAME} 1000 {par} {}", 20 * scale));
    assert_eq!(out(&o), format!("sequential 1000\nparallel {par}\n"), "{}", err(&o));
    eprintln!("1000 sequential + {par} parallel in {:?}", t.elapsed());
    // The counters, asked of the daemon: the last flows are reaped shortly.
    wait_until("every flow counted and reaped", Duration::from_secs(15), || {
        let s = a.stats();
        s["flows_opened"] == 1000 + par as u64 && s["flows_active"] == 0 && s["flows_pending"] == 0
    });
}

#[test]
fn dns_mode_tcp_forwards_through_the_proxy_and_caches() {
    if !root_or_skip("dns_mode_tcp_forwards_through_the_proxy_and_caches") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks]);
    let px = &topo.proxies[0];
    // Positive control: the host's own query shows in the resolver's log.
    let o = sh(&format!("dig +short +time=2 +tries=1 @{} control.test", topo.origin_addr));
    assert_eq!(out(&o).trim(), topo.origin_addr.to_string());
    wait_until("control query logged", Duration::from_secs(5), || topo.dns_log().contains("control.test"));
    let host_queries = topo.dns_log().matches(&format!("from {}", topo.host_addr)).count();
    let a = Account::for_proxy("dt", px, &format!("    dns:\n      mode: tcp\n      resolver: {}\n", topo.origin_addr));
    a.up();
    let o = a.run(&format!(
        "dig +short +time=3 +tries=1 {HOSTNAME}; dig +short +tcp +time=3 +tries=1 {HOSTNAME}; \
         dig +short +time=3 +tries=1 @10.99.99.99 other.exchange.test; getent hosts {HOSTNAME}"
    ));
    let lines: Vec<String> = out(&o).lines().map(|l| l.to_string()).collect();
    let real = topo.origin_addr.to_string();
    assert_eq!(lines.len(), 4, "{}{}", out(&o), err(&o));
    assert_eq!(lines[0], real, "real addresses in tcp mode");
    assert_eq!(lines[1], real);
    assert_eq!(lines[2], real, "a query to any server goes to the policy's resolver");
    assert!(lines[3].starts_with(&real) && lines[3].ends_with(HOSTNAME), "{}", lines[3]);
    // Connections to the real address go through the proxy.
    let o = curl(&a, &topo, &format!("http://{HOSTNAME}/"));
    assert_eq!(out(&o).trim(), px.egress.to_string(), "{}", err(&o));
    std::thread::sleep(Duration::from_millis(300));
    let log = topo.dns_log();
    let a_queries = log.lines().filter(|l| l.contains(&format!("query[A] {HOSTNAME} from"))).collect::<Vec<_>>();
    assert_eq!(a_queries.len(), 1, "the second and later lookups come from the cache: {a_queries:?}");
    assert!(a_queries[0].ends_with(&format!("from {}", px.egress)), "the resolver sees the proxy: {a_queries:?}");
    assert_eq!(
        log.matches(&format!("from {}", topo.host_addr)).count(),
        host_queries,
        "a query came from the host: {log}"
    );
}

#[test]
fn ipv6_proxy_mode_routes_ipv6_through_the_proxy() {
    if !root_or_skip("ipv6_proxy_mode_routes_ipv6_through_the_proxy") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Dante]);
    let px = &topo.proxies[0];
    let a = Account::for_proxy("v6", px, "    ipv6: proxy\n");
    a.up();
    let route = must(&format!("ip -n {} -6 route show default", a.namespace));
    assert!(route.starts_with("default dev tun0"), "IPv6 default route via the TUN: {route}");
    let o = a.run(&format!("curl -6 -sS -m 10 'http://[{}]/'", px.origin_ip6));
    assert_eq!(
        out(&o).trim(),
        px.egress6.to_string(),
        "origin must see the proxy's IPv6 address: {}\n{}",
        err(&o),
        a.log()
    );
    let o = curl(&a, &topo, &format!("http://{HOSTNAME}/"));
    assert_eq!(out(&o).trim(), px.egress.to_string(), "IPv4 still proxied: {}", err(&o));
    // DNS over IPv6 transport is answered too.
    let o = a.run(&format!("dig +short +time=2 +tries=1 @fd00:18::2 {HOSTNAME}"));
    assert!(out(&o).trim().starts_with("198.1"), "{}{}", out(&o), err(&o));
}
