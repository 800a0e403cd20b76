//! Proxy pools end to end, with real proxies in namespaces, each with its
//! own egress address as the origin sees it: failover when the active proxy
//! dies, rotate and burn (surviving a restart), --reset-flows on a held
//! WebSocket, a pinned egress IP that does not match, per-destination
//! rules in both DNS modes, and a pool with every proxy down.

mod common;

use std::io::BufRead;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

fn label(i: usize) -> String {
    format!("p{}", i + 1)
}

/// A policy body with every proxy of `topo` (`p1` priority 10, `p2` 20...).
fn pool_body(topo: &Topology, per_proxy: &[&str], extra: &str) -> String {
    let mut b = format!("    exec:\n      users: [{TEST_USER}]\n    proxies:\n");
    for (i, p) in topo.proxies.iter().enumerate() {
        b.push_str(&format!(
            "      - label: {}\n        url: {}\n        username: {}\n        password_file: {{secrets}}/pw{i}\n        priority: {}\n        connect_timeout: 1s\n        handshake_timeout: 2s\n{}",
            label(i),
            p.url(),
            p.user,
            (i + 1) * 10,
            per_proxy.get(i).copied().unwrap_or("")
        ));
    }
    b.push_str(extra);
    b
}

fn pool_account(tag: &str, topo: &Topology, per_proxy: &[&str], extra: &str) -> Account {
    let a = Account::new(tag, &pool_body(topo, per_proxy, extra));
    for (i, p) in topo.proxies.iter().enumerate() {
        a.secret(&format!("pw{i}"), &p.pass);
    }
    a
}

const CHECKS: &str = "    health_check:\n      interval: 1s\n      timeout: 2s\n      target: http://api.exchange.test/\n      failures_before_unhealthy: 2\n    egress_check:\n      url: http://api.exchange.test/\n";

fn pool_state(a: &Account, label: &str) -> String {
    a.member(label)["state"].as_str().unwrap_or("").to_string()
}

/// The address the origin saw for one HTTP request from inside.
fn seen_ip(a: &Account, url: &str) -> Result<String, String> {
    let o = a.run(&format!("curl -sS --max-time 5 {url}"));
    if o.status.success() { Ok(out(&o).trim().to_string()) } else { Err(err(&o)) }
}

fn metrics(a: &Account) -> String {
    let sock = a.dir.join("metrics.sock");
    must(&format!("curl -sS --max-time 5 --unix-socket {} http://x/metrics", sock.display()))
}

fn wall() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

const LOOP_PY: &str = r#"
import socket, sys, time
end = time.time() + float(sys.argv[2])
while time.time() < end:
    t = time.time()
    try:
        s = socket.create_connection((sys.argv[1], 80), timeout=3)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            d = s.recv(4096)
            if not d: break
            data += d
        s.close()
        print("%.3f ok %s" % (t, data.split(b"\r\n\r\n", 1)[1].decode().strip()), flush=True)
    except Exception as e:
        print("%.3f err %s" % (t, type(e).__name__), flush=True)
    time.sleep(0.1)
"#;

#[test]
fn failover_when_the_active_proxy_dies() {
    if !root_or_skip("failover_when_the_active_proxy_dies") {
        return;
    }
    let _g = serial();
    let mut topo = Topology::new(&[Kind::Dante, Kind::Microsocks]);
    let (e1, e2) = (topo.proxies[0].egress.to_string(), topo.proxies[1].egress.to_string());
    let extra = format!("{CHECKS}    metrics:\n      listen: unix:{{secrets}}/metrics.sock\n");
    let a = pool_account("fo", &topo, &[], &extra);
    a.up();
    wait_until("egress IP of p1 recorded", Duration::from_secs(10), || a.status_json()["egress_ip"] == e1.as_str());
    assert_eq!(seen_ip(&a, &format!("http://{HOSTNAME}/")).unwrap(), e1);

    // A steady request loop (new connection each time) across the failure.
    let looping = a.python_spawn(LOOP_PY, &[HOSTNAME, "12"]);
    std::thread::sleep(Duration::from_secs(3));
    let killed_at = wall();
    topo.stop_proxy(0);
    let o = looping.wait_with_output().expect("loop output");
    let lines: Vec<(f64, String, String)> = out(&o)
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            Some((it.next()?.parse().ok()?, it.next()?.to_string(), it.next().unwrap_or("").to_string()))
        })
        .collect();
    println!("request loop: {} requests; killed p1 at {killed_at:.3}", lines.len());
    for (t, r, v) in &lines {
        if *t > killed_at - 0.5 && *t < killed_at + 6.0 {
            println!("  {:+.3} {r} {v}", t - killed_at);
        }
    }
    assert!(lines.iter().any(|(t, r, v)| *t < killed_at && r == "ok" && *v == e1), "p1 carried flows before");
    let first_p2 = lines
        .iter()
        .find(|(t, r, v)| *t > killed_at && r == "ok" && *v == e2)
        .map(|(t, ..)| t - killed_at)
        .expect("flows moved to p2");
    println!("first request through p2: {first_p2:.3} s after p1 died");
    assert!(first_p2 < 5.0, "failover took {first_p2:.3} s");
    let after: Vec<_> = lines.iter().filter(|(t, ..)| *t > killed_at + first_p2).collect();
    assert!(after.iter().all(|(_, r, v)| r == "ok" && *v == e2), "after failover every request via p2: {after:?}");
    for (_, r, v) in &lines {
        assert!(r != "ok" || *v == e1 || *v == e2, "unexpected egress {v}");
    }
    assert!(!topo.leaked(), "the origin saw the host's address");

    let log = a.log();
    assert!(log.contains("failover") && log.contains("p2"), "failover event logged:\n{log}");
    assert!(
        log.contains(&format!("egress_ip={e2}")) || log.contains(&format!("egress_ip: {e2}")),
        "new egress IP logged:\n{log}"
    );
    let s = a.status_json();
    assert_eq!(s["active_proxy"], "p2");
    assert_eq!(s["egress_ip"], e2.as_str());
    assert_eq!(pool_state(&a, "p1"), "unhealthy");
    let m = metrics(&a);
    assert!(m.contains(&format!("nsproxy_failovers_total{{account=\"{}\"}} 1", a.name)), "{m}");
    assert!(
        m.contains(&format!("nsproxy_active_proxy_info{{account=\"{}\",proxy=\"p2\",egress_ip=\"{e2}\"}} 1", a.name)),
        "{m}"
    );
    assert!(m.contains(&format!("proxy=\"p2\",endpoint=\"{}\"}} 1", topo.proxies[1].url())), "{m}");
    // Flows through p2 were timed: its connect and handshake histograms
    // count them.
    for family in ["proxy_connect_duration_seconds", "proxy_handshake_duration_seconds"] {
        let head = format!("nsproxy_{family}_count{{account=\"{}\",proxy=\"p2\"}} ", a.name);
        let n: u64 = m.lines().find_map(|l| l.strip_prefix(&head)).and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!(n > 0, "{family} counted no flow through p2:\n{m}");
    }
    // The exposition of a live daemon passes Prometheus' own linter.
    common::promtool_check(&m);
    assert!(m.contains("state=\"unhealthy\"} 1"), "{m}");
}

const WS_PY: &str = r#"
import asyncio, sys, websockets
async def ask(ws):
    await ws.send("ip?")
    return await ws.recv()
async def main():
    ws = await websockets.connect("ws://ws.exchange.test:8081/")
    print("first", await ask(ws), flush=True)
    try:
        await asyncio.wait_for(ws.recv(), 60)
        print("no-reset", flush=True)
    except Exception as e:
        print("closed", type(e).__name__, flush=True)
    ws = await websockets.connect("ws://ws.exchange.test:8081/")
    print("again", await ask(ws), flush=True)
asyncio.run(main())
"#;

const MANY_PY: &str = r#"
import collections, socket, sys
seen = collections.Counter()
for i in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 80), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        d = s.recv(4096)
        if not d: break
        data += d
    s.close()
    seen[data.split(b"\r\n\r\n", 1)[1].decode().strip()] += 1
for ip, n in seen.items():
    print(ip, n)
"#;

#[test]
fn rotate_burn_reset_flows_and_restart() {
    if !root_or_skip("rotate_burn_reset_flows_and_restart") {
        return;
    }
    let _g = serial();
    let topo = Topology::new(&[Kind::Microsocks, Kind::Microsocks]);
    let (e1, e2) = (topo.proxies[0].egress.to_string(), topo.proxies[1].egress.to_string());
    let a = pool_account("rb", &topo, &[], CHECKS);
    a.up();
    wait_until("egress of p1", Duration::from_secs(10), || a.status_json()["egress_ip"] == e1.as_str());

    // A WebSocket held open through p1.
    let mut ws = a.python_spawn(WS_PY, &[]);
    let mut lines = std::io::BufReader::new(ws.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("first line").expect("read");
    assert_eq!(first, format!("first {e1}"));

    let t = Instant::now();
    let o = a.cmd(&["rotate", &a.name, "--burn", "--reset-flows"]);
    println!("rotate took {:?}: {}{}", t.elapsed(), out(&o), err(&o));
    assert!(o.status.success(), "rotate failed: {}", err(&o));
    assert!(out(&o).contains("p2") && out(&o).contains(&e2), "rotate names the new proxy and egress: {}", out(&o));

    let closed = lines.next().expect("closed line").expect("read");
    assert!(closed.starts_with("closed"), "the held WebSocket was reset: {closed}");
    let again = lines.next().expect("again line").expect("read");
    assert_eq!(again, format!("again {e2}"), "reconnected through the new proxy");
    let _ = ws.wait();

    // 1,000 new connections afterwards: every one through p2.
    let o = a.python(MANY_PY, &format!("{HOSTNAME} 1000"));
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).trim(), format!("{e2} 1000"), "all 1000 via p2");
    assert_eq!(pool_state(&a, "p1"), "burned");
    assert!(a.log().contains("proxy burned") && a.log().contains("rotation"), "{}", a.log());

    // The burn survives a restart of the daemon.
    let o = a.down();
    assert!(o.status.success(), "down: {}", err(&o));
    a.up();
    wait_until("egress of p2 after restart", Duration::from_secs(10), || a.status_json()["egress_ip"] == e2.as_str());
    assert_eq!(pool_state(&a, "p1"), "burned");
    assert_eq!(seen_ip(&a, &format!("http://{HOSTNAME}/")).unwrap(), e2);
    let o = a.cmd(&["rotate", &a.name, "--to", "p1"]);
    assert!(!o.status.success() && err(&o).contains("burned"), "rotating to a burned proxy is refused: {}", err(&o));
    let o = a.cmd(&["rotate", &a.name]);
    assert!(!o.status.success() && err(&o).contains("no other usable proxy"), "{}", err(&o));
    assert!(!topo.leaked());
}

#[test]
fn pinned_egress_mismatch_marks_the_proxy_unhealthy() {
    if !root_or_skip("pinned_egress_mismatch_marks_the_proxy_unhealthy") {
        return;
    }
    let _g = serial();
    let topo = Topology::new(&[Kind::Microsocks, Kind::Microsocks]);
    let e2 = topo.proxies[1].egress.to_string();
    let a = pool_account("eg", &topo, &["        expected_egress_ip: 192.0.2.123\n"], CHECKS);
    a.up();
    wait_until("p1 unhealthy", Duration::from_secs(10), || pool_state(&a, "p1") == "unhealthy");
    let s = a.status_json();
    let p1 = &s["pool"][0];
    assert!(p1["last_error"].as_str().unwrap_or("").contains("not the pinned 192.0.2.123"), "{p1}");
    assert_eq!(p1["last_egress_ip"], topo.proxies[0].egress.to_string().as_str());
    assert_eq!(s["active_proxy"], "p2");
    assert_eq!(seen_ip(&a, &format!("http://{HOSTNAME}/")).unwrap(), e2);
    let o = a.cmd(&["check", &a.name, "--json"]);
    assert!(o.status.success(), "{}", err(&o));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).expect("json");
    assert_eq!(v["data"]["egress_ip"], e2.as_str());
    assert_eq!(v["data"]["health_ok"], true);

    // Bad control messages get a clear refusal and change nothing.
    let sock = format!("/run/nsproxy/{}/ctl.sock", a.name);
    let ask = |bytes: &[u8]| -> String {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect ctl.sock");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let _ = s.write_all(bytes);
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        r
    };
    let r = ask(b"not json\n");
    assert!(r.contains("\"ok\":false") && r.contains("invalid request"), "{r}");
    let r = ask(b"{\"cmd\":\"rotate\",\"to\":\"p1\",\"sneaky\":1}\n");
    assert!(r.contains("unknown field"), "{r}");
    let r = ask(&vec![b'{'; 70 * 1024]);
    assert!(r.contains("larger than"), "{r}");
    let t = Instant::now();
    let r = ask(b"{\"cmd\":");
    assert!(r.contains("no complete request") && t.elapsed() < Duration::from_secs(8), "slow client cut off: {r}");
    assert_eq!(a.status_json()["active_proxy"], "p2", "nothing changed");
    let mode = must(&format!("stat -c %a {sock}"));
    assert_eq!(mode.trim(), "600");
    assert!(a.cmd(&["check", &a.name]).status.success(), "the daemon still answers");
}

const RULES: &str = "    rules:\n      - domain: blocked.exchange-a.test\n        block: true\n      - domain: \"*.exchange-a.test\"\n        via: p1\n      - domain: \"*.exchange-b.test\"\n        via: p2\n";

fn check_rules(topo: &Topology, a: &Account) {
    let (e1, e2) = (topo.proxies[0].egress.to_string(), topo.proxies[1].egress.to_string());
    for _ in 0..3 {
        assert_eq!(seen_ip(a, "http://api.exchange-a.test/").unwrap(), e1, "exchange-a via p1");
        assert_eq!(seen_ip(a, &format!("http://{NAME_B}/")).unwrap(), e2, "exchange-b via p2");
    }
    let before = topo.origin_clients().len();
    let e = seen_ip(a, "http://blocked.exchange-a.test/").unwrap_err();
    println!("blocked domain: {}", e.trim());
    assert_eq!(topo.origin_clients().len(), before, "the blocked request never reached the origin");
    assert!(a.log().contains("blocked by rule #1"), "refusal logged:\n{}", a.log());
    wait_until("refusal counted in the stats", Duration::from_secs(3), || {
        a.stats()["flows_refused_rule"].as_u64().unwrap_or(0) >= 1
    });
    assert!(!topo.leaked());
}

#[test]
fn rules_route_by_domain_in_both_dns_modes() {
    if !root_or_skip("rules_route_by_domain_in_both_dns_modes") {
        return;
    }
    let _g = serial();
    let topo = Topology::new(&[Kind::Microsocks, Kind::Microsocks]);
    // Both proxies have the same priority order; p1 would carry everything
    // without the rules.
    let a = pool_account("rf", &topo, &[], RULES);
    a.up();
    check_rules(&topo, &a);
    drop(a);
    let dns = format!("    dns:\n      mode: tcp\n      resolver: {}\n", topo.origin_addr);
    let a = pool_account("rt", &topo, &[], &format!("{RULES}{dns}"));
    a.up();
    check_rules(&topo, &a);
}

#[test]
fn all_proxies_down_refuses_fast_and_recovers() {
    if !root_or_skip("all_proxies_down_refuses_fast_and_recovers") {
        return;
    }
    let _g = serial();
    let mut topo = Topology::new(&[Kind::Microsocks]);
    let e1 = topo.proxies[0].egress.to_string();
    let a = pool_account("ad", &topo, &[], CHECKS);
    a.up();
    assert_eq!(seen_ip(&a, &format!("http://{HOSTNAME}/")).unwrap(), e1);
    topo.stop_proxy(0);
    wait_until("p1 unhealthy", Duration::from_secs(10), || pool_state(&a, "p1") == "unhealthy");
    let t = Instant::now();
    let o = a.run(&format!("curl -sS --max-time 10 http://{HOSTNAME}/"));
    let took = t.elapsed();
    println!("with every proxy down, curl failed after {took:?}: {}", err(&o).trim());
    assert!(!o.status.success());
    assert!(took < Duration::from_secs(3), "refused fast, not after a timeout: {took:?}");
    assert!(a.log().contains("EVERY PROXY IS UNUSABLE"), "logged loudly:\n{}", a.log());
    wait_until("refusal counted in the stats", Duration::from_secs(3), || {
        a.stats()["flows_refused_no_proxy"].as_u64().unwrap_or(0) >= 1
    });
    assert!(!topo.leaked());

    topo.start_proxy(0);
    wait_until("p1 active again", Duration::from_secs(10), || pool_state(&a, "p1") == "active");
    assert_eq!(seen_ip(&a, &format!("http://{HOSTNAME}/")).unwrap(), e1);
    assert!(a.log().contains("proxy recovered"));
}

#[test]
fn corrupt_pool_state_keeps_the_account_down() {
    if !root_or_skip("corrupt_pool_state_keeps_the_account_down") {
        return;
    }
    let _g = serial();
    let topo = Topology::new(&[Kind::Microsocks]);
    let a = pool_account("cs", &topo, &[], "");
    let dir = format!("/var/lib/nsproxy/{}", a.name);
    must(&format!("mkdir -p {dir} && chmod 700 {dir} && printf '{{\"version\": 1, \"acc' > {dir}/pool.json"));
    let o = a.cmd(&["up", &a.name]);
    assert!(!o.status.success(), "up must refuse a corrupt pool state");
    assert!(err(&o).contains("pool.json is corrupt") && err(&o).contains("delete it"), "{}", err(&o));
    let s = a.status_json();
    assert_eq!(s["state"], "down");
    assert!(s["pool_error"].as_str().unwrap_or("").contains("corrupt"));
}
