//! Issue 7, bad input into a live daemon (test plan cases 23 and 24):
//! malformed packets written straight into the account's TUN while a
//! legitimate flow keeps working, and a SYN flood from inside while another
//! account is unaffected. Root.

mod common;
use common::*;
use std::time::Duration;

/// Writes malformed packets into tun0 with a packet socket (no kernel
/// validation on the way): prints one line per category and the count.
const INJECT_PY: &str = r#"
import os, random, socket, struct, sys
origin = socket.inet_aton(sys.argv[1]); rounds = int(sys.argv[2])
me = socket.inet_aton("198.18.0.1")
random.seed(7)
s4 = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s6 = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x86DD))
def csum(b):
    if len(b) % 2: b += b"\0"
    x = sum(struct.unpack("!%dH" % (len(b) // 2), b)); x = (x >> 16) + (x & 0xffff); x += x >> 16
    return (~x) & 0xffff
def ip4(payload, proto=6, tot=None, ihl=5, frag=0x4000, good_sum=True, opts=b""):
    h = struct.pack("!BBHHHBBH4s4s", (4 << 4) | ihl, 0, tot if tot is not None else 20 + len(opts) + len(payload),
                    random.randrange(65536), frag, 64, proto, 0, me, origin) + opts
    c = csum(h) if good_sum else 0x1234
    return h[:10] + struct.pack("!H", c) + h[12:] + payload
def tcp(flags, sport=None, dport=80, good_sum=True, extra=b""):
    sport = sport or random.randrange(20000, 60000)
    t = struct.pack("!HHIIBBHHH", sport, dport, random.randrange(1 << 32), 0, 5 << 4, flags, 65535, 0, 0) + extra
    pseudo = me + origin + struct.pack("!BBH", 0, 6, len(t))
    c = csum(pseudo + t) if good_sum else 0xbeef
    return t[:16] + struct.pack("!H", c) + t[18:]
def ip6(payload, nh, plen=None):
    return struct.pack("!IHBB16s16s", 0x60000000, plen if plen is not None else len(payload), nh, 64,
                       bytes(15) + b"\x01", bytes(15) + b"\x02") + payload
def ext_chain(n):
    # hop-by-hop, routing, destination options, fragment ... n deep, then TCP.
    kinds = [0, 43, 60, 44]
    b = b""; nexts = [kinds[i % 4] for i in range(1, n)] + [6]
    for i in range(n):
        b += bytes([nexts[i], 0]) + bytes(6)
    return ip6(b + tcp(0x02), 0)
cats = {
    "truncated (0-19 bytes)": lambda: os.urandom(random.randrange(0, 20)),
    "ipv4 total length too big": lambda: ip4(tcp(0x02), tot=1500),
    "ipv4 total length too small": lambda: ip4(tcp(0x02), tot=12),
    "ipv4 header length < 5": lambda: ip4(tcp(0x02), ihl=3),
    "ipv4 header length > packet": lambda: ip4(b"", ihl=15),
    "ipv4 bad checksum": lambda: ip4(tcp(0x02), good_sum=False),
    "tcp bad checksum": lambda: ip4(tcp(0x02, good_sum=False)),
    "fragment (MF)": lambda: ip4(tcp(0x02), frag=0x2000),
    "fragment (offset)": lambda: ip4(os.urandom(24), frag=0x0010),
    "syn+fin": lambda: ip4(tcp(0x03)),
    "syn+rst": lambda: ip4(tcp(0x06)),
    "xmas (all flags)": lambda: ip4(tcp(0x3f)),
    "no flags": lambda: ip4(tcp(0x00)),
    "tcp data offset beyond segment": lambda: ip4(tcp(0x02)[:12] + bytes([15 << 4, 0x02]) + tcp(0x02)[14:]),
    "ipv4 options garbage": lambda: ip4(tcp(0x02), ihl=7, opts=os.urandom(8)),
    "unknown protocol 253": lambda: ip4(os.urandom(30), proto=253),
    "icmp garbage": lambda: ip4(os.urandom(30), proto=1),
    "udp short header": lambda: ip4(os.urandom(4), proto=17),
    "ipv6 extension chain x20": lambda: ext_chain(20),
    "ipv6 payload length too big": lambda: ip6(tcp(0x02), 6, plen=60000),
    "ipv6 truncated": lambda: ip6(tcp(0x02), 6)[:30],
    "oversize (65535, above the MTU)": lambda: ip4(os.urandom(65535 - 40), tot=65535),
    "random bytes": lambda: os.urandom(random.randrange(20, 1500)),
    "random version nibble": lambda: bytes([random.randrange(256)]) + os.urandom(59),
}
total = 0
for name, make in cats.items():
    sent = errs = 0
    for _ in range(rounds):
        pkt = make()
        v6 = bool(pkt[:1]) and pkt[0] >> 4 == 6
        try:
            (s6 if v6 else s4).sendto(pkt, ("tun0", 0x86DD if v6 else 0x0800)); sent += 1
        except OSError:
            errs += 1
    total += sent
    print("%-34s %6d sent %5d refused by the kernel" % (name, sent, errs))
print("total", total)
"#;

/// A held TCP echo connection: one message every 20 ms for `secs` seconds;
/// prints `ok N` or where it broke.
const ECHO_PY: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], 8082), timeout=5)
end = time.time() + float(sys.argv[2]); n = 0
while time.time() < end:
    m = b"message %d\n" % n
    s.sendall(m)
    got = b""
    while len(got) < len(m):
        d = s.recv(len(m) - len(got))
        if not d: print("closed at", n); sys.exit(1)
        got += d
    if got != m: print("corrupt at", n); sys.exit(1)
    n += 1; time.sleep(0.02)
print("ok", n)
"#;

/// SYNs from inside to many ports, as fast as a raw packet socket allows.
const SYN_FLOOD_PY: &str = r#"
import random, socket, struct, sys, time
origin = socket.inet_aton(sys.argv[1]); n = int(sys.argv[2]); me = socket.inet_aton("198.18.0.1")
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
def csum(b):
    if len(b) % 2: b += b"\0"
    x = sum(struct.unpack("!%dH" % (len(b) // 2), b)); x = (x >> 16) + (x & 0xffff); x += x >> 16
    return (~x) & 0xffff
t0 = time.time()
for i in range(n):
    t = struct.pack("!HHIIBBHHH", 1024 + i % 60000, 1 + i % 1000, i, 0, 5 << 4, 2, 65535, 0, 0)
    t = t[:16] + struct.pack("!H", csum(me + origin + struct.pack("!BBH", 0, 6, len(t)) + t)) + t[18:]
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xffff, 0x4000, 64, 6, 0, me, origin)
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    s.sendto(h + t, ("tun0", 0x0800))
print("sent %d SYNs in %.2f s" % (n, time.time() - t0))
"#;

fn root_script(a: &Account, name: &str, script: &str, args: &str) -> std::process::Output {
    let path = a.dir.join(name);
    std::fs::write(&path, script).expect("script");
    sh(&format!("ip netns exec {} /usr/bin/python3 {} {args}", a.namespace, path.display()))
}

#[test]
fn malformed_packets_into_the_tun_harm_nothing() {
    if !root_or_skip("malformed_packets") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks]);
    let a = Account::for_proxy("mp", &topo.proxies[0], "    ipv6: proxy\n");
    a.up();
    let pid = a.daemon_pid().expect("pid");
    let rss0 = status_kib(pid, "VmRSS:");
    // The legitimate flow, held for the whole injection.
    let mut echo = a.python_spawn(ECHO_PY, &[&topo.origin_addr.to_string(), "12"]);
    std::thread::sleep(Duration::from_millis(500));
    let o = root_script(&a, "inject.py", INJECT_PY, &format!("{} 400", topo.origin_addr));
    println!("malformed packets written into tun0:\n{}{}", out(&o), err(&o));
    assert!(o.status.success(), "{}", err(&o));
    let mut echo_out = String::new();
    std::io::Read::read_to_string(echo.stdout.as_mut().expect("stdout"), &mut echo_out).expect("read");
    let _ = echo.wait();
    println!("the held flow: {}", echo_out.trim());
    assert!(echo_out.starts_with("ok "), "the legitimate flow survives: {echo_out}");
    assert_eq!(a.daemon_pid(), Some(pid), "the daemon is still the same process");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the daemon is alive");
    let o = a.run("curl -sS -m 5 http://api.exchange.test/");
    assert_eq!(out(&o).trim(), topo.proxies[0].egress.to_string(), "new flows work: {}", err(&o));
    let rss1 = status_kib(pid, "VmRSS:");
    println!("daemon RSS {rss0} KiB before, {rss1} KiB after; stats: {}", a.stats());
    assert!(!topo.leaked(), "nothing reached the origin from the host");
}

#[test]
fn a_syn_flood_from_inside_is_bounded_and_another_account_is_unaffected() {
    if !root_or_skip("syn_flood") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks, Kind::Microsocks]);
    let a = Account::for_proxy("sf", &topo.proxies[0], "    limits:\n      max_half_open: 256\n");
    let b = Account::for_proxy("sg", &topo.proxies[1], "");
    a.up();
    b.up();
    let pid = a.daemon_pid().expect("pid");
    let rss0 = status_kib(pid, "VmRSS:");
    let flood = {
        let path = a.dir.join("flood.py");
        std::fs::write(&path, SYN_FLOOD_PY).expect("script");
        std::process::Command::new("ip")
            .args(["netns", "exec", &a.namespace, "/usr/bin/python3"])
            .arg(&path)
            .args([&topo.origin_addr.to_string(), "30000"])
            .output()
    };
    let flood = flood.expect("flood");
    println!("flood: {}{}", out(&flood).trim(), err(&flood).trim());
    // During the aftermath: the other account, and a legitimate connection here.
    let ob = b.run("curl -sS -m 5 http://api.exchange.test/");
    assert_eq!(out(&ob).trim(), topo.proxies[1].egress.to_string(), "the other account is unaffected: {}", err(&ob));
    wait_until("a legitimate connection opens again", Duration::from_secs(30), || {
        out(&a.run("curl -sS -m 3 http://api.exchange.test/")).trim() == topo.proxies[0].egress.to_string()
    });
    let (rss1, hwm) = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
    // The counters are published every 500 ms.
    let t = std::time::Instant::now();
    wait_until("counters published", Duration::from_secs(15), || {
        a.stats()["flows_refused_limit"].as_u64().unwrap_or(0) > 0
    });
    println!("counters showed the refusals after {:?}", t.elapsed());
    let stats = a.stats();
    println!(
        "daemon RSS {rss0} KiB before, {rss1} KiB after, peak {hwm} KiB; flows refused by limits {}, opened {}",
        stats["flows_refused_limit"], stats["flows_opened"]
    );
    assert!(stats["flows_refused_limit"].as_u64().unwrap_or(0) > 0, "the half-open cap refused the excess: {stats}");
    assert!(hwm < 128 * 1024, "memory stays bounded: peak {hwm} KiB");
    assert!(!topo.leaked());
}
