//! `udp: proxy`: UDP through SOCKS5 UDP ASSOCIATE with real proxies (dante
//! with udpassociate allowed; microsocks, which refuses it; tinyproxy, an
//! HTTP proxy), against the origin's UDP echo (port 8083), which logs the
//! source address of every new sender.

mod common;

use std::time::Duration;

use common::*;

/// Sends `n` datagrams (sequence number + a payload of varying size) to
/// HOST:8083 in windows of 32, each window's echoes awaited (one resend of
/// a window that timed out); prints "sent N echoed M intact K resent R
/// sha256 S" where S covers every payload sent.
const ECHO_PY: &str = r#"
import hashlib, socket, struct, sys
host, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, 8083))
s.settimeout(2)
sent = {}; echoed = intact = resent = 0; h = hashlib.sha256()
i = 0
while i < n:
    window = list(range(i, min(i + 32, n)))
    for k in window:
        sent[k] = struct.pack("!I", k) + hashlib.sha256(str(k).encode()).digest() * (1 + k % 37)
        h.update(sent[k]); s.send(sent[k])
    got = set()
    for attempt in range(3):
        try:
            while len(got) < len(window):
                d = s.recv(65536)
                k = struct.unpack("!I", d[:4])[0]
                if k in window and k not in got:
                    got.add(k); echoed += 1; intact += d == sent[k]
        except socket.timeout:
            for k in window:
                if k not in got:
                    s.send(sent[k]); resent += 1
            continue
        break
    i += 32
print("sent %d echoed %d intact %d resent %d sha256 %s" % (len(sent), echoed, intact, resent, h.hexdigest()))
"#;

/// One datagram; how the socket answers within 5 s: "echo", "refused"
/// (ICMP port unreachable) or "timeout", with the time it took.
const ONE_PY: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 8083)); s.settimeout(5)
t = time.time()
try:
    s.send(b"ping"); s.recv(100); r = "echo"
except ConnectionRefusedError: r = "refused"
except socket.timeout: r = "timeout"
print("%s %.3f" % (r, time.time() - t))
"#;

fn udp_account(tag: &str, p: &ProxyInfo) -> Account {
    Account::for_proxy(tag, p, "    udp: proxy\n")
}

#[test]
fn ten_thousand_datagrams_through_dante_arrive_intact_from_the_proxys_address() {
    if !root_or_skip("udp_dante") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Dante]);
    let a = udp_account("ud", &topo.proxies[0]);
    a.up();
    let t = std::time::Instant::now();
    let o = a.python(ECHO_PY, &format!("{HOSTNAME} 10000"));
    let line = out(&o);
    println!("10,000 datagrams in {:?}: {line} {}", t.elapsed(), err(&o));
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"sent"), "{line} {}", err(&o));
    assert_eq!((f[1], f[3], f[5]), ("10000", "10000", "10000"), "every datagram echoed intact: {line}");
    let clients = topo.udp_clients();
    assert!(!clients.is_empty(), "the origin's UDP echo saw nobody");
    assert!(clients.iter().all(|c| *c == topo.proxies[0].egress.to_string()), "only the proxy's egress: {clients:?}");
    assert!(!topo.leaked(), "the origin saw the host");
    // stats.json is refreshed every 0.5 s.
    wait_until("the counters", Duration::from_secs(5), || {
        a.status_json()["stats"]["udp_datagrams_down"].as_u64().unwrap_or(0) >= 10000
    });
    let st = a.status_json()["stats"].clone();
    println!("stats: {st}");
    assert!(st["udp_associations"].as_u64().unwrap_or(0) >= 1, "{st}");
    assert!(st["udp_datagrams_up"].as_u64().unwrap_or(0) >= 10000, "{st}");
    assert!(st["udp_datagrams_down"].as_u64().unwrap_or(0) >= 10000, "{st}");

    // The proxy dies mid-association: datagrams stop; nothing reaches the
    // origin another way (its UDP log sees no new sender).
    let before = topo.udp_clients().len();
    let mut topo = topo;
    topo.stop_proxy(0);
    let o = a.python(ONE_PY, HOSTNAME);
    println!("proxy dead: {}", out(&o));
    assert!(!out(&o).starts_with("echo"), "no echo without the proxy: {}", out(&o));
    assert_eq!(topo.udp_clients().len(), before, "a datagram reached the origin without the proxy");
    assert!(!topo.leaked());
}

#[test]
fn udp_through_a_proxy_that_cannot_carry_it_is_refused_at_once() {
    if !root_or_skip("udp_refused") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks, Kind::Tinyproxy]);
    for (p, why) in
        [(&topo.proxies[0], "refuses UDP ASSOCIATE"), (&topo.proxies[1], "HTTP CONNECT proxy cannot carry UDP")]
    {
        let a = udp_account("ur", p);
        a.up();
        for round in 0..3 {
            let o = a.python(ONE_PY, HOSTNAME);
            let line = out(&o);
            println!("{:?} round {round}: {line}", p.kind);
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.first(), Some(&"refused"), "{:?}: fail closed with ICMP: {line} {}", p.kind, err(&o));
            let secs: f64 = f.get(1).and_then(|s| s.parse().ok()).unwrap_or(99.0);
            assert!(secs < 3.0, "{:?}: refused at once, not after a timeout: {secs}", p.kind);
        }
        assert!(a.log().contains(why), "{:?}: the log says why: {}", p.kind, a.log());
        assert!(a.log().matches(why).count() <= 2, "{:?}: logged once, not per datagram: {}", p.kind, a.log());
        // TCP through the same proxy is unaffected.
        let o = a.run(&format!("curl -sS -m 5 http://{HOSTNAME}/"));
        assert_eq!(out(&o).trim(), p.egress.to_string(), "{:?}: TCP still works: {}", p.kind, err(&o));
        assert!(a.down().status.success());
    }
    assert!(topo.udp_clients().is_empty(), "no datagram reached the origin: {:?}", topo.udp_clients());
    assert!(!topo.leaked());
}
