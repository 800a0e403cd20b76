//! Issue 7, load and resource faults (test plan cases 17, 18, 25): many
//! held flows on two accounts at once with RSS and fd counts over time, a
//! program killed while holding flows, and a daemon under a low
//! RLIMIT_NOFILE. Root. The bounded CI version holds 2,000 flows per
//! account for 60 s; the soak (`scripts/soak.sh`) sets NSP_TEST_LOAD_FLOWS
//! and NSP_TEST_LOAD_SECS (10,000 flows for 30 minutes).

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

/// Opens `n` connections to the origin's TCP echo, reports "open N", then
/// every `period` seconds sends one line on every connection and checks
/// the echo, reporting "round R ok N"; runs `secs` seconds, closes all,
/// reports "done".
const HOLD_PY: &str = r#"
import resource, selectors, socket, sys, time
host, n, secs, period = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for i in range(n):
    s = socket.create_connection((host, 8082), timeout=20)
    socks.append(s)
print("open", len(socks), flush=True)
end = time.time() + secs; r = 0
while time.time() < end:
    r += 1; ok = 0
    for i, s in enumerate(socks):
        m = b"r%d c%d\n" % (r, i)
        s.sendall(m)
    for i, s in enumerate(socks):
        m = b"r%d c%d\n" % (r, i); got = b""
        while len(got) < len(m):
            d = s.recv(len(m) - len(got))
            if not d: break
            got += d
        ok += got == m
    print("round", r, "ok", ok, flush=True)
    if ok != n: sys.exit(1)
    time.sleep(max(0.0, min(period, end - time.time())))
for s in socks: s.close()
print("done", flush=True)
"#;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// In an account's namespace: tun0's queue length and its transmit drops
/// (packets the program's stack sent that the daemon never read), and the
/// namespace's TCP segments sent and retransmitted.
fn tun_counters(acc: &Account) -> (u64, u64, u64, u64) {
    let link = must(&format!("ip netns exec {} ip -s -s -o link show tun0", acc.namespace));
    // One line: "... qlen 4200\ ... TX: bytes packets errors dropped ...\ 10 2 0 0 ...".
    let words: Vec<&str> = link.split(|c: char| c.is_whitespace() || c == '\\').filter(|w| !w.is_empty()).collect();
    let qlen = words.iter().position(|w| *w == "qlen").and_then(|i| words.get(i + 1)).and_then(|v| v.parse().ok());
    let tx_dropped = words.iter().position(|w| *w == "TX:").and_then(|i| {
        let labels = words[i + 1..].iter().take_while(|w| w.parse::<u64>().is_err()).count();
        let at = words[i + 1..i + 1 + labels].iter().position(|w| *w == "dropped")?;
        words.get(i + 1 + labels + at)?.parse().ok()
    });
    let nstat = out(&sh(&format!("ip netns exec {} nstat -az TcpOutSegs TcpRetransSegs", acc.namespace)));
    let counter = |name: &str| {
        nstat
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (qlen.unwrap_or(0), tx_dropped.unwrap_or(u64::MAX), counter("TcpOutSegs"), counter("TcpRetransSegs"))
}

/// Established connections to the origin's echo port, seen in its namespace.
fn origin_echo_conns(topo: &Topology) -> usize {
    out(&sh(&format!("ip netns exec {} ss -tnH state established '( sport = :8082 )' | wc -l", topo.origin_ns)))
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn two_accounts_hold_many_flows_with_flat_memory_and_fds() {
    if !root_or_skip("load_two_accounts") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let (n, secs) = (env_num("NSP_TEST_LOAD_FLOWS", 2000), env_num("NSP_TEST_LOAD_SECS", 60));
    let topo = Topology::new(&[Kind::Microsocks, Kind::Microsocks]);
    let limits = format!("    limits:\n      max_flows: {}\n      max_half_open: {}\n", n + 100, n + 100);
    let a = Account::for_proxy("la", &topo.proxies[0], &limits);
    let b = Account::for_proxy("lb", &topo.proxies[1], &limits);
    a.up();
    b.up();
    // The TUN queues one packet per flow and per half-open connection, so
    // a write on every flow at once is never dropped at the device.
    for acc in [&a, &b] {
        assert_eq!(tun_counters(acc).0, 2 * (n + 100), "{}: tun0 qlen", acc.name);
    }
    let (pa, pb) = (a.daemon_pid().expect("pid"), b.daemon_pid().expect("pid"));
    let base = (fds(pa), fds(pb), rss_kib(pa), rss_kib(pb));
    println!("baseline: fds {} / {}, RSS {} / {} KiB", base.0, base.1, base.2, base.3);
    let period = "10";
    let host = topo.origin_addr.to_string();
    let mut ca = a.python_spawn(HOLD_PY, &[&host, &n.to_string(), &secs.to_string(), period]);
    let mut cb = b.python_spawn(HOLD_PY, &[&host, &n.to_string(), &secs.to_string(), period]);
    let mut la = BufReader::new(ca.stdout.take().expect("stdout")).lines();
    let mut lb = BufReader::new(cb.stdout.take().expect("stdout")).lines();
    let t0 = Instant::now();
    let mut peak_rss = (0, 0);
    let last = loop {
        let (x, y) = (la.next(), lb.next());
        let (x, y) = (x.and_then(Result::ok).unwrap_or_default(), y.and_then(Result::ok).unwrap_or_default());
        peak_rss = (peak_rss.0.max(rss_kib(pa)), peak_rss.1.max(rss_kib(pb)));
        println!(
            "t={:>4.0}s  A: {x:<18} B: {y:<18} fds {} / {}  RSS {} / {} KiB  origin sees {} connections",
            t0.elapsed().as_secs_f64(),
            fds(pa),
            fds(pb),
            rss_kib(pa),
            rss_kib(pb),
            origin_echo_conns(&topo)
        );
        if x.is_empty() || y.is_empty() || x == "done" || y == "done" {
            break (x, y);
        }
    };
    // The two programs run their rounds on their own clocks: one may be a
    // round behind when the other is done. Each one's last line counts.
    let finish = |mut line: String, rest: &mut dyn Iterator<Item = std::io::Result<String>>| {
        while line != "done" {
            match rest.next() {
                Some(Ok(l)) => {
                    println!("  then: {l}");
                    line = l;
                }
                _ => break,
            }
        }
        line
    };
    let last = (finish(last.0, &mut la), finish(last.1, &mut lb));
    let (_, _) = (ca.wait(), cb.wait());
    let (ta, tb) = (tun_counters(&a), tun_counters(&b));
    println!(
        "program side: tun0 drops {} / {}, TCP segments out {} / {}, retransmitted {} / {}",
        ta.1, tb.1, ta.2, tb.2, ta.3, tb.3
    );
    assert_eq!(last, ("done".to_string(), "done".to_string()), "both held {n} flows for {secs} s, every echo intact");
    assert_eq!((ta.1, tb.1), (0, 0), "no packet of the programs' bursts dropped at the TUN");
    wait_until("fds back to baseline", Duration::from_secs(20), || fds(pa) <= base.0 + 2 && fds(pb) <= base.1 + 2);
    println!(
        "after: fds {} / {} (baseline {} / {}), peak RSS {} / {} KiB ({:.1} / {:.1} KiB per flow)",
        fds(pa),
        fds(pb),
        base.0,
        base.1,
        peak_rss.0,
        peak_rss.1,
        (peak_rss.0 - base.2) as f64 / n as f64,
        (peak_rss.1 - base.3) as f64 / n as f64
    );
    assert!(!topo.leaked());
}

#[test]
fn a_program_killed_while_holding_flows_leaves_nothing_open() {
    if !root_or_skip("killed_program") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks]);
    let a = Account::for_proxy("kp", &topo.proxies[0], "");
    a.up();
    let pid = a.daemon_pid().expect("pid");
    let base = fds(pid);
    let mut c = a.python_spawn(HOLD_PY, &[&topo.origin_addr.to_string(), "500", "600", "600"]);
    let mut lines = BufReader::new(c.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "open 500");
    wait_until("first round", Duration::from_secs(20), || lines.next().and_then(Result::ok).is_some());
    let (held, at_origin) = (fds(pid), origin_echo_conns(&topo));
    // Kill the program itself: `nsproxy exec` became python (same PID).
    let _ = c.kill();
    let _ = c.wait();
    let t = Instant::now();
    wait_until("daemon fds back to baseline", Duration::from_secs(20), || fds(pid) <= base + 2);
    wait_until("origin connections closed", Duration::from_secs(20), || origin_echo_conns(&topo) == 0);
    println!(
        "500 flows held: daemon fds {base} -> {held}, origin saw {at_origin}; killed: fds back to {} and the origin's connections closed in {:?}",
        fds(pid),
        t.elapsed()
    );
    assert!(held >= base + 500, "the flows were really held");
    let o = a.run("curl -sS -m 5 http://api.exchange.test/");
    assert_eq!(out(&o).trim(), topo.proxies[0].egress.to_string());
}

#[test]
fn a_low_fd_limit_refuses_the_excess_and_recovers() {
    if !root_or_skip("low_rlimit") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks]);
    let a = Account::for_proxy("fl", &topo.proxies[0], "");
    let o = std::process::Command::new("prlimit")
        .args(["--nofile=256:256", "--"])
        .arg(BIN)
        .arg("--policies")
        .arg(&a.policy)
        .args(["up", &a.name])
        .output()
        .expect("prlimit up");
    assert!(o.status.success(), "{}", err(&o));
    let pid = a.daemon_pid().expect("pid");
    let limit = out(&sh(&format!("prlimit -p {pid} --nofile -o SOFT,HARD --noheadings")));
    println!("daemon fd limit: {}", limit.trim());
    // 1,000 connections at once against a 256-fd daemon.
    const MANY: &str = r#"
import socket, sys
ok = fail = 0; socks = []
for i in range(int(sys.argv[2])):
    try:
        s = socket.create_connection((sys.argv[1], 8082), timeout=5); s.sendall(b"x\n")
        s.settimeout(5)
        if s.recv(2) == b"x\n": ok += 1; socks.append(s)
        else: fail += 1; s.close()
    except OSError:
        fail += 1
print(ok, fail)
"#;
    let o = a.python(MANY, &format!("{} 1000", topo.origin_addr));
    println!("1000 connections under the limit: {} ok / failed; {}", out(&o).trim(), err(&o).trim());
    let nums: Vec<u64> = out(&o).split_whitespace().filter_map(|x| x.parse().ok()).collect();
    assert_eq!(nums.len(), 2, "{}", out(&o));
    assert!(nums[0] > 0 && nums[1] > 0, "some connections work, the excess is refused: {nums:?}");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the daemon survives");
    let t = Instant::now();
    let recovered = (0..20).any(|_| {
        let ok = out(&a.run("curl -sS -m 3 http://api.exchange.test/")).trim() == topo.proxies[0].egress.to_string();
        if !ok {
            std::thread::sleep(Duration::from_secs(1));
        }
        ok
    });
    println!("recovered: {recovered} after {:?}; daemon fds {}", t.elapsed(), fds(pid));
    if !recovered {
        let log = a.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        println!("daemon log tail:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    assert!(recovered, "new connections work again once the program closed its own");
    assert!(a.log().contains("descriptor") || a.log().contains("Too many open files"), "the cause is logged");
}

/// `n` cycles of: connect to the origin's echo, send, half-close, read the
/// echo to EOF, close. Prints "cycles N ok M".
const HALF_CLOSE_PY: &str = r#"
import socket, sys
host, n = sys.argv[1], int(sys.argv[2]); ok = 0
for i in range(n):
    s = socket.create_connection((host, 8082), timeout=10)
    m = b"cycle %d" % i
    s.sendall(m); s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        d = s.recv(4096)
        if not d: break
        got += d
    s.close(); ok += got == m
print("cycles", n, "ok", ok)
"#;

fn count_state(ns: &str, state: &str) -> usize {
    out(&sh(&format!("ip netns exec {ns} ss -tanH state {state} | wc -l"))).trim().parse().unwrap_or(0)
}

#[test]
fn thousands_of_half_close_cycles_and_short_connections_leave_nothing_behind() {
    if !root_or_skip("half_close_cycles_and_churn") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    // dante passes a half-close on (microsocks closes both ways at the
    // first EOF, so the echo after a half-close would be lost there).
    let topo = Topology::new(&[Kind::Dante]);
    let a = Account::for_proxy("hc", &topo.proxies[0], "");
    a.up();
    let pid = a.daemon_pid().expect("pid");
    let base = fds(pid);
    let n = env_num("NSP_TEST_CHURN", 1000);
    let t = Instant::now();
    let o = a.python(HALF_CLOSE_PY, &format!("{} {n}", topo.origin_addr));
    println!("half-close cycles: {} in {:?}", out(&o).trim(), t.elapsed());
    assert_eq!(out(&o).trim(), format!("cycles {n} ok {n}"), "{}", err(&o));
    let t = Instant::now();
    let o = a.python(
        "import socket, sys\nok = 0\nfor i in range(int(sys.argv[2])):\n    s = socket.create_connection((sys.argv[1], 80), timeout=10); s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n    d = b''\n    while True:\n        x = s.recv(4096)\n        if not x: break\n        d += x\n    s.close(); ok += d.startswith(b'HTTP/1.1 200')\nprint(ok)\n",
        &format!("{} {n}", topo.origin_addr),
    );
    println!("churn: {} of {n} short HTTP connections ok in {:?}", out(&o).trim(), t.elapsed());
    assert_eq!(out(&o).trim(), n.to_string(), "{}", err(&o));
    wait_until("flows and fds back to baseline", Duration::from_secs(20), || {
        fds(pid) <= base && a.stats()["flows_active"] == 0
    });
    let (cw_origin, cw_proxy) =
        (count_state(&topo.origin_ns, "close-wait"), count_state(&topo.proxies[0].ns, "close-wait"));
    println!(
        "after {} connections: daemon fds {} (baseline {base}), flows active {}, CLOSE_WAIT at the origin {cw_origin}, at the proxy {cw_proxy}",
        2 * n,
        fds(pid),
        a.stats()["flows_active"]
    );
    assert_eq!((cw_origin, cw_proxy), (0, 0), "no connection left half-closed");
}

#[test]
fn a_slow_reader_costs_buffers_not_the_data_sent() {
    if !root_or_skip("slow_reader") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks]);
    let a = Account::for_proxy("sr", &topo.proxies[0], "");
    a.up();
    let pid = a.daemon_pid().expect("pid");
    let rss0 = rss_kib(pid);
    // The origin would send 500 MB; the program reads 64 KiB every 50 ms
    // (about 1.3 MB/s) for 10 s.
    let script = "import socket, sys, time\ns = socket.create_connection((sys.argv[1], 80), timeout=10)\ns.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)\ns.sendall(b'GET /bytes/500000000 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\ngot = 0; end = time.time() + 10\nwhile time.time() < end:\n    got += len(s.recv(65536)); time.sleep(0.05)\nprint(got)\n";
    let mut c = a.python_spawn(script, &[&topo.origin_addr.to_string()]);
    let mut peak = rss0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(11) {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut got = String::new();
    std::io::Read::read_to_string(c.stdout.as_mut().expect("stdout"), &mut got).expect("read");
    let _ = c.wait();
    let got: u64 = got.trim().parse().unwrap_or(0);
    println!(
        "slow reader took {:.1} MB in 10 s; daemon RSS {rss0} KiB before, peak {peak} KiB (+{} KiB)",
        got as f64 / 1e6,
        peak - rss0
    );
    assert!(got > 1_000_000, "the reader made progress: {got}");
    // One flow's buffers (512 KiB per direction by default) plus slack, not 500 MB.
    assert!(peak - rss0 < 16 * 1024, "memory bounded by buffers: +{} KiB", peak - rss0);
}

#[test]
fn an_idle_websocket_still_delivers_after_a_long_silence() {
    if !root_or_skip("idle_websocket") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let secs = env_num("NSP_TEST_IDLE_WS_SECS", 150);
    // dante, which keeps an idle connection for as long as both ends do;
    // microsocks closes one after 15 minutes of silence, which nsproxy
    // passes on to the program as the proxy's close (proxy_faults.rs,
    // `a_proxy_that_reaps_an_idle_connection_closes_it_for_the_program`).
    let topo = Topology::new(&[Kind::Dante]);
    let a = Account::for_proxy("iw", &topo.proxies[0], "");
    a.up();
    let script = "import asyncio, sys, time, websockets\nasync def main():\n    async with websockets.connect('ws://ws.exchange.test:8081/', ping_interval=None) as ws:\n        await ws.send('ip?'); print('first', await ws.recv(), flush=True)\n        await asyncio.sleep(float(sys.argv[1]))\n        t = time.time(); await ws.send('after the silence'); print('after', await asyncio.wait_for(ws.recv(), 10), round(time.time() - t, 3), flush=True)\nasyncio.run(main())\n";
    let t = Instant::now();
    let o = a.python(script, &secs.to_string());
    println!(
        "idle WebSocket, {secs} s without a byte either way: {} ({:?})",
        out(&o).trim().replace('\n', " | "),
        t.elapsed()
    );
    assert!(out(&o).contains(&format!("first {}", topo.proxies[0].egress)), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("after after the silence"), "the next message is delivered: {}{}", out(&o), err(&o));
}
