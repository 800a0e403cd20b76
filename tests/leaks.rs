//! Issue 7, leak probes (test plan cases 1-10): from inside an account,
//! TCP, UDP, ICMP, DNS and IPv6 probes to the origin (the "internet"), a
//! LAN host and the host's own address, in every state: running, active
//! proxy frozen (SIGSTOP), packets to the active proxy dropped, active
//! proxy dead, all proxies dead, daemon killed, daemon restarting, after a
//! rotation. Then inbound probes: from another account, the origin and the
//! host towards an account, which must see nothing. Packets are captured with
//! tcpdump in the origin and LAN namespaces and the host listens on its own
//! address; pass = nothing
//! arrives from any address but a proxy's. Every run starts with a positive
//! control: the same probes from the unprotected host MUST be seen.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::time::Duration;

/// What both probe scripts share: TCP, UDP and command probes that
/// record one result each, and `run`, which starts them all at once and
/// prints one JSON line per probe.
const PROBES_PY: &str = r#"
import json, socket, subprocess, sys, threading
results = []
def tcp(addr, port, family=socket.AF_INET, http=False):
    try:
        s = socket.socket(family, socket.SOCK_STREAM); s.settimeout(2); s.connect((addr, port))
        if http:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                d = s.recv(4096)
                if not d: break
                data += d
            r = "connected, answer " + data.split(b"\r\n\r\n")[-1].decode(errors="replace").strip()
        else:
            r = "connected"
        s.close()
    except Exception as e:
        r = type(e).__name__ + ": " + str(e)
    results.append(("tcp %s:%d" % (addr, port), r))
def udp(addr, port, family=socket.AF_INET):
    try:
        s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(1); s.sendto(b"probe", (addr, port))
        try:
            s.recvfrom(100); r = "answered"
        except socket.timeout:
            r = "sent, no answer"
    except Exception as e:
        r = type(e).__name__ + ": " + str(e)
    results.append(("udp %s:%d" % (addr, port), r))
def cmd(name, argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=8)
        out = (p.stdout.strip() or p.stderr.strip()).replace("\n", " | ")
        r = "exit %d: %s" % (p.returncode, out[:90])
    except Exception as e:
        r = type(e).__name__ + ": " + str(e)
    results.append((name, r))
def run(jobs):
    threads = [threading.Thread(target=f, args=a) for f, a in jobs]
    for t in threads: t.start()
    for t in threads: t.join()
    for n, r in sorted(results):
        print(json.dumps({"probe": n, "result": r}))
"#;

/// The leak probes: every probe at once, from inside the account.
const PROBE_PY: &str = r#"
origin, lan, host, origin6, canary = sys.argv[1:6]
jobs = []
for a in (origin, lan, host):
    for port in (80, 443, 1337):
        jobs.append((tcp, (a, port, socket.AF_INET, port == 80)))
    for port in (53, 443, 1337, 3478):
        jobs.append((udp, (a, port)))
    jobs.append((cmd, ("ping " + a, ["ping", "-n", "-c1", "-W1", a])))
jobs.append((tcp, (origin6, 80, socket.AF_INET6, True)))
jobs.append((udp, (origin6, 53, socket.AF_INET6)))
jobs.append((cmd, ("ping -6 " + origin6, ["ping", "-n", "-6", "-c1", "-W1", origin6])))
jobs.append((cmd, ("dig @" + origin, ["dig", "+short", "+time=2", "+tries=1", "@" + origin, "api.exchange.test"])))
jobs.append((cmd, ("dig +tcp @" + origin, ["dig", "+short", "+tcp", "+time=2", "+tries=1", "@" + origin, "api.exchange.test"])))
jobs.append((cmd, ("getent hosts " + canary, ["getent", "hosts", canary])))
jobs.append((cmd, ("curl http://api.exchange.test/", ["curl", "-sS", "-m", "3", "http://api.exchange.test/"])))
run(jobs)
"#;

/// A probe script: the shared functions, then `body`.
fn probe_script(body: &str) -> String {
    format!("{PROBES_PY}{body}")
}

/// Logs every TCP connection and UDP datagram to the host's own address.
const HOST_LISTENER_PY: &str = r#"
import socket, sys, threading
addr, log = sys.argv[1], open(sys.argv[2], "a", buffering=1)
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((addr, 1337)); s.listen(64)
    while True:
        c, peer = s.accept(); log.write("tcp %s\n" % peer[0]); c.close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((addr, 1337))
    while True:
        _, peer = s.recvfrom(100); log.write("udp %s\n" % peer[0])
threading.Thread(target=tcp, daemon=True).start()
udp()
"#;

struct Bed {
    topo: Topology,
    lan_ns: String,
    lan_ip: std::net::Ipv4Addr,
    host_log: std::path::PathBuf,
    _listener: std::process::Child,
    /// Addresses allowed at the origin: the proxies' and the origin's own.
    allowed: BTreeSet<String>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = self._listener.kill();
        let _ = self._listener.wait();
    }
}

impl Bed {
    fn new() -> Bed {
        let mut topo = Topology::new(&[Kind::Microsocks, Kind::Microsocks]);
        let (lan_ns, lan_ip) = topo.add_lan();
        let host_log = topo.dir.join("host-listener.log");
        let script = topo.dir.join("host_listener.py");
        std::fs::write(&script, HOST_LISTENER_PY).expect("script");
        let listener = std::process::Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(topo.host_addr.to_string())
            .arg(&host_log)
            .spawn()
            .expect("host listener");
        wait_until("host listener", Duration::from_secs(5), || {
            sh(&format!("ss -ltnH 'sport = :1337' | grep -q {}", topo.host_addr)).status.success()
        });
        let mut allowed: BTreeSet<String> =
            [topo.origin_addr, topo.origin_addr2()].iter().map(|a| a.to_string()).collect();
        for p in &topo.proxies {
            for a in [p.egress.to_string(), p.origin_ip.to_string(), p.egress6.to_string(), p.origin_ip6.to_string()] {
                allowed.insert(a);
            }
        }
        Bed { topo, lan_ns, lan_ip, host_log, _listener: listener, allowed }
    }

    /// A bed with the probe script in place, after the positive control:
    /// the same probes from the unprotected host must be seen by both
    /// captures and the host's listener (so the captures can fail).
    fn with_positive_control(tag: &str) -> Bed {
        let bed = Bed::new();
        let probe_file = bed.topo.dir.join("probe.py");
        std::fs::write(&probe_file, probe_script(PROBE_PY)).expect("probe");
        must(&format!("chmod 755 {} && chmod 644 {}", bed.topo.dir.display(), probe_file.display()));
        let args = bed.args();
        let control = bed.observe(tag, || out(&sh(&format!("/usr/bin/python3 {} {args}", probe_file.display()))));
        print_probes("positive control (host, unprotected)", &control.0);
        println!(
            "  seen: {} packet(s) at the origin from the host, {} at the LAN host, {} on the host's address",
            control.1.len(),
            control.2.len(),
            control.3.len()
        );
        assert!(
            control.1.iter().any(|l| l.contains(&bed.topo.host_addr.to_string())),
            "the origin capture must see the host"
        );
        assert!(!control.2.is_empty(), "the LAN capture must see the host's probes");
        assert!(
            control.3.iter().any(|h| h.starts_with("tcp")) && control.3.iter().any(|h| h.starts_with("udp")),
            "{:?}",
            control.3
        );
        bed
    }

    /// Where root in the namespace sends ICMP echo requests.
    fn icmp_targets(&self) -> Vec<String> {
        let t = &self.topo;
        [
            t.origin_addr.to_string(),
            self.lan_ip.to_string(),
            t.host_addr.to_string(),
            t.proxies[0].origin_ip6.to_string(),
        ]
        .to_vec()
    }

    fn host_hits(&self) -> Vec<String> {
        std::fs::read_to_string(&self.host_log).unwrap_or_default().lines().map(str::to_string).collect()
    }

    fn args(&self) -> String {
        format!(
            "{} {} {} {} canary-{}.test",
            self.topo.origin_addr, self.lan_ip, self.topo.host_addr, self.topo.proxies[0].origin_ip6, self.topo.prefix
        )
    }

    /// Runs `probe` with both captures on; returns (probe output, packets
    /// at the origin from an address that is not a proxy's or the
    /// origin's, packets at the LAN host, new hits on the host's address).
    fn observe(&self, tag: &str, probe: impl FnOnce() -> String) -> (String, Vec<String>, Vec<String>, Vec<String>) {
        let dir = &self.topo.dir;
        let before = self.host_hits().len();
        let origin = Capture::start(&self.topo.origin_ns, dir.join(format!("origin-{tag}.pcap")));
        let lan = Capture::start(&self.lan_ns, dir.join(format!("lan-{tag}.pcap")));
        let text = probe();
        std::thread::sleep(Duration::from_millis(500));
        let at_origin: Vec<String> = origin
            .stop()
            .into_iter()
            .filter(|(src, _)| !self.allowed.contains(src) && !src.starts_with("fe80"))
            .map(|(_, l)| l)
            .collect();
        let lan_ip = self.lan_ip.to_string();
        let at_lan: Vec<String> = lan
            .stop()
            .into_iter()
            .filter(|(src, _)| *src != lan_ip && !src.starts_with("fe80"))
            .map(|(_, l)| l)
            .collect();
        let host = self.host_hits()[before..].to_vec();
        (text, at_origin, at_lan, host)
    }
}

fn print_probes(state: &str, text: &str) {
    println!("---- {state}: what was tried, what it saw");
    for l in text.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
            println!("  {:<34} {}", v["probe"].as_str().unwrap_or(""), v["result"].as_str().unwrap_or(""));
        }
    }
}

fn assert_no_leak(state: &str, seen: &(String, Vec<String>, Vec<String>, Vec<String>)) {
    let (text, origin, lan, host) = seen;
    print_probes(state, text);
    println!(
        "  leaks: {} packet(s) at the origin from a non-proxy address, {} at the LAN host, {} on the host's address",
        origin.len(),
        lan.len(),
        host.len()
    );
    assert!(origin.is_empty(), "{state}: LEAK at the origin:\n{}", origin.join("\n"));
    assert!(lan.is_empty(), "{state}: LEAK at the LAN host:\n{}", lan.join("\n"));
    assert!(host.is_empty(), "{state}: LEAK to the host's own address: {host:?}");
}

fn probe_inside(a: &Account, bed: &Bed) -> String {
    let o = a.python(&probe_script(PROBE_PY), &bed.args());
    out(&o) + &root_icmp(&a.namespace, &bed.icmp_targets())
}

/// A program cannot send ICMP at all (`nsproxy exec` leaves it no
/// CAP_NET_RAW, and ping's file capability is void under no_new_privs), so
/// ICMP is also sent by root in the namespace: echo requests really go
/// into the TUN. One JSON line per address, like the probe script.
fn root_icmp(ns: &str, addrs: &[String]) -> String {
    std::thread::scope(|s| {
        let pings: Vec<_> = addrs
            .iter()
            .map(|x| {
                s.spawn(move || {
                    let o = sh(&format!("ip netns exec {ns} ping -n -c1 -W1 {x} 2>&1"));
                    let last = out(&o).lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").to_string();
                    let result = format!("exit {}: {last}", o.status.code().unwrap_or(-1));
                    serde_json::json!({"probe": format!("ping as root {x}"), "result": result}).to_string() + "\n"
                })
            })
            .collect();
        pings.into_iter().map(|p| p.join().unwrap_or_default()).collect()
    })
}

/// Runs the probes in the account's namespace without `nsproxy exec`
/// (which refuses while the daemon is down), as the test user: a program
/// that was already running there.
fn probe_in_namespace(a: &Account, bed: &Bed) -> String {
    let script = bed.topo.dir.join("probe.py");
    out(&sh(&format!(
        "ip netns exec {} runuser -u {TEST_USER} -- /usr/bin/python3 {} {}",
        a.namespace,
        script.display(),
        bed.args()
    ))) + &root_icmp(&a.namespace, &bed.icmp_targets())
}

fn result_of(text: &str, probe: &str) -> String {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["probe"] == probe)
        .and_then(|v| v["result"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn no_probe_leaves_the_account_in_any_state() {
    if !root_or_skip("leak_probe_matrix") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let mut bed = Bed::with_positive_control("control");

    let topo = &bed.topo;
    let (e1, e2) = (topo.proxies[0].egress.to_string(), topo.proxies[1].egress.to_string());
    // With a host service listed (the one opt-in way to the host): the
    // matrix holds with it, and only its port is reachable.
    let db = std::net::TcpListener::bind("127.0.0.1:0").expect("db listener");
    let body = format!(
        "    exec:\n      users: [{TEST_USER}]\n    ipv6: proxy\n    proxies:\n      - label: p1\n        url: {}\n        username: {}\n        password_file: {{secrets}}/pw0\n        priority: 10\n        connect_timeout: 1s\n        handshake_timeout: 2s\n      - label: p2\n        url: {}\n        username: {}\n        password_file: {{secrets}}/pw1\n        priority: 20\n        connect_timeout: 1s\n        handshake_timeout: 2s\n    health_check:\n      interval: 1s\n      timeout: 1s\n      target: tcp://api.exchange.test:80\n      failures_before_unhealthy: 1\n    host_services:\n      - {{name: db, listen: \"127.0.0.1:{}\"}}\n",
        topo.proxies[0].url(),
        topo.proxies[0].user,
        topo.proxies[1].url(),
        topo.proxies[1].user,
        db.local_addr().expect("addr").port()
    );
    let a = Account::new("lk", &body);
    a.secret("pw0", &topo.proxies[0].pass);
    a.secret("pw1", &topo.proxies[1].pass);
    a.up();

    // 1. Running.
    let seen = bed.observe("running", || probe_inside(&a, &bed));
    assert_no_leak("running", &seen);
    let ask = |host: &str, port: u16| {
        let o = a.run(&format!("timeout 5 /usr/bin/python3 -c \"import socket; socket.create_connection(('{host}', {port}), timeout=3); print('connected')\" 2>&1 | tail -1"));
        out(&o).trim().to_string()
    };
    let port = db.local_addr().expect("addr").port();
    assert_eq!(ask("db.host.nsproxy", port), "connected", "the listed host service");
    for (host, p) in [("db.host.nsproxy", 1337), ("198.18.0.17", port), ("127.0.0.1", port)] {
        let got = ask(host, p);
        assert!(got != "connected", "{host}:{p} must be refused with host services on: {got}");
    }
    let r = result_of(&seen.0, &format!("tcp {}:80", bed.topo.origin_addr));
    assert!(r.contains(&format!("answer {e1}")), "TCP to the origin arrives from p1's address: {r}");

    // 2. Active proxy frozen (SIGSTOP: accepts nothing, answers nothing).
    let p1 = bed.topo.proxies[0].proc.as_ref().expect("p1 runs").pid();
    must(&format!("kill -STOP {p1}"));
    let seen = bed.observe("active-proxy-frozen", || probe_inside(&a, &bed));
    assert_no_leak("active proxy frozen (SIGSTOP)", &seen);
    wait_until("failover to p2", Duration::from_secs(15), || {
        out(&a.run("curl -sS -m 4 http://api.exchange.test/")).trim() == e2
    });
    must(&format!("kill -CONT {p1}"));

    // 3. Packets to the active proxy silently dropped (no RST, no ICMP):
    //    probes race the failover to the other one.
    let egress = [e1.clone(), e2.clone()];
    let active = |a: &Account| {
        let e = out(&a.run("curl -sS -m 4 http://api.exchange.test/")).trim().to_string();
        egress.iter().position(|x| *x == e)
    };
    let mut on = None;
    wait_until("an active proxy", Duration::from_secs(15), || {
        on = active(&a);
        on.is_some()
    });
    let dropped = on.unwrap_or(0);
    let other = 1 - dropped;
    bed.topo.drop_packets_to_proxy(dropped, true);
    let t = std::time::Instant::now();
    let seen = bed.observe("packets-dropped", || probe_inside(&a, &bed));
    assert_no_leak(&format!("packets to the active proxy p{} dropped", dropped + 1), &seen);
    wait_until("failover away from the black hole", Duration::from_secs(20), || active(&a) == Some(other));
    println!(
        "  via p{} again {:.1} s after its packets to p{} began to vanish",
        other + 1,
        t.elapsed().as_secs_f64(),
        dropped + 1
    );
    bed.topo.drop_packets_to_proxy(dropped, false);

    // 4. Active proxy dead: probes race the failover back.
    bed.topo.stop_proxy(other);
    let seen = bed.observe("active-proxy-dead", || probe_inside(&a, &bed));
    assert_no_leak("active proxy dead", &seen);
    wait_until("failover back", Duration::from_secs(15), || active(&a) == Some(dropped));

    // 5. All proxies dead.
    bed.topo.stop_proxy(dropped);
    let seen = bed.observe("all-proxies-dead", || probe_inside(&a, &bed));
    assert_no_leak("all proxies dead", &seen);
    bed.topo.start_proxy(0);
    bed.topo.start_proxy(1);

    // 6. Daemon killed (SIGKILL): the TUN goes with it, nothing can leave.
    let pid = a.daemon_pid().expect("daemon pid");
    must(&format!("kill -9 {pid}"));
    wait_until("daemon gone", Duration::from_secs(5), || !std::path::Path::new(&format!("/proc/{pid}")).exists());
    let seen = bed.observe("daemon-killed", || probe_in_namespace(&a, &bed));
    assert_no_leak("daemon killed", &seen);

    // 7. Daemon restarting: probes while `up` runs.
    let seen = bed.observe("daemon-restarting", || {
        let up =
            std::process::Command::new(BIN).arg("--policies").arg(&a.policy).args(["up", &a.name]).spawn().expect("up");
        let text = probe_in_namespace(&a, &bed);
        let _ = up.wait_with_output();
        text
    });
    assert_no_leak("daemon restarting", &seen);

    // 8. After a rotation.
    wait_until("account up again", Duration::from_secs(20), || a.cmd(&["check", &a.name]).status.success());
    let o = a.cmd(&["rotate", &a.name, "--burn"]);
    assert!(o.status.success(), "{}", err(&o));
    let seen = bed.observe("after-rotation", || probe_inside(&a, &bed));
    assert_no_leak("after rotation", &seen);
    let r = result_of(&seen.0, "curl http://api.exchange.test/");
    assert!(r.ends_with(&e2) || r.ends_with(&e1), "{r}");
    let _ = &mut bed;
}

/// `n` new connections to `host`: prints each answer (the origin's view of
/// the client address) with its count.
const TAGGED_PY: &str = r#"
import collections, socket, sys
host, n = sys.argv[1], int(sys.argv[2])
seen = collections.Counter()
for i in range(n):
    s = socket.create_connection((host, 80), timeout=5)
    s.sendall(b"GET /?tag=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % i)
    data = b""
    while True:
        d = s.recv(4096)
        if not d: break
        data += d
    seen[data.split(b"\r\n\r\n")[-1].decode().strip()] += 1
for ip, c in sorted(seen.items()):
    print(ip, c)
"#;

#[test]
fn two_accounts_never_share_an_egress() {
    if !root_or_skip("cross_account_isolation") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks, Kind::Dante]);
    let a = Account::for_proxy("ia", &topo.proxies[0], "");
    let b = Account::for_proxy("ib", &topo.proxies[1], "");
    a.up();
    b.up();
    let (e1, e2) = (topo.proxies[0].egress.to_string(), topo.proxies[1].egress.to_string());
    let n = 300;
    let mut ca = a.python_spawn(TAGGED_PY, &[HOSTNAME, &n.to_string()]);
    let mut cb = b.python_spawn(TAGGED_PY, &[HOSTNAME, &n.to_string()]);
    let read = |c: &mut std::process::Child| {
        let mut s = String::new();
        std::io::Read::read_to_string(c.stdout.as_mut().expect("stdout"), &mut s).expect("read");
        let _ = c.wait();
        s
    };
    let (ra, rb) = (read(&mut ca), read(&mut cb));
    println!("account A ({n} connections at once with B): {}", ra.trim().replace('\n', ", "));
    println!("account B ({n} connections at once with A): {}", rb.trim().replace('\n', ", "));
    assert_eq!(ra.trim(), format!("{e1} {n}"), "every A connection via A's proxy");
    assert_eq!(rb.trim(), format!("{e2} {n}"), "every B connection via B's proxy");
    assert!(!topo.leaked());
}

/// The account's own address in its namespace (the TUN's).
const TUN_ADDR: &str = "198.18.0.1";

/// A program's own listener: TCP and UDP on ports 8080 and 1337 of every
/// address; prints "ready", then one line per connection or datagram.
const LISTEN_PY: &str = r#"
import socket, sys, threading
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, peer = s.accept(); print("tcp %d from %s" % (port, peer[0]), flush=True); c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        _, peer = s.recvfrom(100); print("udp %d from %s" % (port, peer[0]), flush=True)
for port in (8080, 1337):
    threading.Thread(target=tcp, args=(port,), daemon=True).start()
    threading.Thread(target=udp, args=(port,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// TCP (22, 80, 1080, 1337, 8080), UDP (53, 1337, 8080) and ICMP to each
/// address.
const INBOUND_PY: &str = r#"
jobs = []
for a in sys.argv[1:]:
    jobs += [(tcp, (a, p)) for p in (22, 80, 1080, 1337, 8080)] + [(udp, (a, p)) for p in (53, 1337, 8080)]
    jobs.append((cmd, ("ping " + a, ["ping", "-n", "-c1", "-W1", a])))
run(jobs)
"#;

/// Test plan case 9, inbound: nothing from another account, the origin
/// (the "internet", which can reach the proxies' egress addresses) or the
/// host reaches a program listening inside an account.
#[test]
fn inbound_probes_reach_no_account() {
    if !root_or_skip("inbound_probes") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks, Kind::Microsocks]);
    let a = Account::for_proxy("ina", &topo.proxies[0], "");
    let b = Account::for_proxy("inb", &topo.proxies[1], "");
    a.up();
    b.up();
    let fake =
        out(&a.run(&format!("getent hosts {HOSTNAME}"))).split_whitespace().next().unwrap_or_default().to_string();
    assert!(fake.starts_with("198.1"), "A resolves {HOSTNAME} to a fake IP: {fake:?}");

    // A program in A listening on every address; its lines are collected.
    let mut listener = a.python_spawn(LISTEN_PY, &[]);
    let hits = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut lines = BufReader::new(listener.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
    let collected = hits.clone();
    let reader = std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            collected.lock().unwrap_or_else(|e| e.into_inner()).push(l);
        }
    });
    let seen = || hits.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let script = topo.dir.join("inbound.py");
    std::fs::write(&script, probe_script(INBOUND_PY)).expect("inbound.py");
    must(&format!("chmod 644 {}", script.display()));

    // Positive control: A's own program reaches its listener (over lo), and
    // the capture in A's namespace sees it.
    let cap = Capture::start(&a.namespace, topo.dir.join("inbound-control.pcap"));
    let control = a.python(&probe_script(INBOUND_PY), &format!("127.0.0.1 {}", TUN_ADDR));
    let packets = cap.stop();
    wait_until("the listener saw A's own probes", Duration::from_secs(5), || seen().len() >= 8);
    print_probes("positive control (A to itself)", &out(&control));
    println!("  listener: {:?}; capture in A: {} packet(s)", seen(), packets.len());
    assert!(!packets.is_empty(), "the capture in A's namespace must see A's own probes");
    let before = seen().len();

    // The probes: from B (a program in B aims at A's addresses and A's fake
    // IP: they are B's own addresses, or unknown to B's daemon), from the
    // origin (at the proxies' egress addresses, the only addresses of the
    // accounts it can see, and at the account addresses), and the daemons'
    // listening sockets on the host.
    let cap = Capture::start(&a.namespace, topo.dir.join("inbound.pcap"));
    let from_b = out(&b.python(&probe_script(INBOUND_PY), &format!("{} 198.18.0.2 {fake}", TUN_ADDR)))
        + &root_icmp(&b.namespace, &["198.18.0.2".to_string(), fake.clone()]);
    let targets = format!("{} {} {} {}", topo.proxies[0].egress, topo.proxies[1].egress, TUN_ADDR, fake);
    let from_origin = sh(&format!("ip netns exec {} /usr/bin/python3 {} {targets}", topo.origin_ns, script.display()));
    std::thread::sleep(Duration::from_millis(500));
    let packets: Vec<(String, String)> = cap.stop().into_iter().filter(|(src, _)| !src.starts_with("fe80")).collect();
    print_probes("from account B at A's addresses", &from_b);
    print_probes("from the origin at the proxies' egress and the account addresses", &out(&from_origin));
    let daemons: Vec<String> =
        [a.daemon_pid(), b.daemon_pid()].into_iter().flatten().map(|pid| format!("pid={pid},")).collect();
    let listening: Vec<String> = out(&sh("ss -Hlnptu"))
        .lines()
        .filter(|l| daemons.iter().any(|d| l.contains(d.as_str())))
        .map(str::to_string)
        .collect();
    let new_hits = seen()[before..].to_vec();
    println!(
        "  inbound: {} hit(s) on A's listener, {} packet(s) into A's namespace, {} network port(s) open by the daemons",
        new_hits.len(),
        packets.len(),
        listening.len()
    );
    let _ = listener.kill();
    let _ = listener.wait();
    let _ = reader.join();
    assert!(new_hits.is_empty(), "something reached A's listener: {new_hits:?}");
    assert!(packets.is_empty(), "packets entered A's namespace:\n{packets:?}");
    assert!(listening.is_empty(), "the daemons listen on a network port: {listening:?}");
    assert!(!topo.leaked());
}

/// The probes from inside a podman container on an nsproxy CNI network
/// (the host's `/usr` bound in, for Python), as root in the container.
fn probe_in_container(pm: &containers::Podman, id: &str, bed: &Bed) -> String {
    let script = bed.topo.dir.join("probe.py");
    let script = script.to_str().expect("utf-8");
    let args = bed.args();
    let mut argv = vec!["/usr/bin/python3", script];
    argv.extend(args.split_whitespace());
    let mut text = out(&pm.exec(id, &argv));
    for x in bed.icmp_targets() {
        let o = pm.exec(id, &["ping", "-n", "-c1", "-W1", &x]);
        let last = format!("{}{}", out(&o), err(&o)).lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").to_string();
        let result = format!("exit {}: {last}", o.status.code().unwrap_or(-1));
        text += &(serde_json::json!({"probe": format!("ping as root {x}"), "result": result}).to_string() + "\n");
    }
    text
}

#[test]
fn no_probe_leaves_a_container_in_any_state() {
    if !root_or_skip("leak_probe_container") || !containers::tools_or_skip("leak_probe_container", &["podman", "runc"])
    {
        return;
    }
    let _g = serial();
    let mut bed = Bed::with_positive_control("c-control");

    let topo = &bed.topo;
    let e1 = topo.proxies[0].egress.to_string();
    let a = Account::for_proxy("lc", &topo.proxies[0], "    ipv6: proxy\n");
    let pm = containers::Podman::new("leak");
    pm.network("nsp-leak", &a);
    let id = pm.start("nsp-leak", &bed.topo.dir);
    // 1. Running.
    let seen = bed.observe("c-running", || probe_in_container(&pm, &id, &bed));
    assert_no_leak("container, running", &seen);
    let r = result_of(&seen.0, &format!("tcp {}:80", bed.topo.origin_addr));
    assert!(r.contains(&format!("answer {e1}")), "TCP from the container arrives from the proxy's address: {r}");
    // 2. The account's proxy dead.
    bed.topo.stop_proxy(0);
    let seen = bed.observe("c-proxy-dead", || probe_in_container(&pm, &id, &bed));
    assert_no_leak("container, proxy dead", &seen);
    bed.topo.start_proxy(0);
    // 3. The engine (the account's daemon) killed: the TUN goes with it.
    let pid = a.daemon_pid().expect("daemon pid");
    must(&format!("kill -9 {pid}"));
    wait_until("daemon gone", Duration::from_secs(5), || !std::path::Path::new(&format!("/proc/{pid}")).exists());
    let seen = bed.observe("c-engine-killed", || probe_in_container(&pm, &id, &bed));
    assert_no_leak("container, engine killed", &seen);
    let links = out(&pm.exec(&id, &["ip", "-o", "link", "show"]));
    assert!(!links.contains("eth0"), "the TUN went with the daemon: {links}");
    // Up again: the container is attached again and egresses as before.
    a.up();
    wait_until("the container attached again", Duration::from_secs(15), || {
        out(&pm.exec(&id, &["curl", "-sS", "-m", "5", "http://api.exchange.test/"])).trim() == e1
    });
    assert!(pm.remove(&id).status.success());
    wait_until("the container's record gone", Duration::from_secs(10), || {
        a.status_json()["containers"].as_array().is_none_or(|c| c.is_empty())
    });
    let _ = &mut bed;
}
