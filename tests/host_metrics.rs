//! `nsproxy metrics`: every running account's metrics in one exposition
//! (printed once, or served on one address), asked of the daemons over
//! their control sockets: valid for promtool, each family announced once,
//! each account's series present; a daemon that does not answer shows as
//! `nsproxy_account_scraped 0` within the deadline instead of hanging the
//! scrape. Real daemons, a real microsocks.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn scrape(policy: &std::path::Path) -> (String, Duration) {
    let t = Instant::now();
    let o = std::process::Command::new(BIN).arg("--policies").arg(policy).arg("metrics").output().expect("nsproxy");
    assert!(o.status.success(), "nsproxy metrics: {}", err(&o));
    (out(&o), t.elapsed())
}

#[test]
fn one_exposition_holds_every_account_and_a_silent_daemon_is_marked() {
    if !root_or_skip("host_metrics") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks]);
    let a = Account::for_proxy("ma", &topo.proxies[0], "");
    let b = Account::for_proxy("mb", &topo.proxies[0], "");
    a.up();
    b.up();
    assert_eq!(out(&a.run(&format!("curl -sS -m 5 http://{HOSTNAME}/"))).trim(), topo.proxies[0].egress.to_string());
    let (text, took) = scrape(&a.policy);
    println!("scrape of every account in {took:?}, {} lines", text.lines().count());
    promtool_check(&text);
    assert_eq!(text.matches("# TYPE nsproxy_flows_opened_total counter").count(), 1, "one family, once");
    for (acct, flows) in [(&a, 1), (&b, 0)] {
        let want = format!("nsproxy_flows_opened_total{{account=\"{}\"}} {flows}", acct.name);
        assert!(text.contains(&want), "missing {want}");
        assert!(text.contains(&format!("nsproxy_account_scraped{{account=\"{}\"}} 1", acct.name)));
    }

    // Served on one address: the same families, every account.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut server = std::process::Command::new(BIN)
        .arg("--policies")
        .arg(&a.policy)
        .args(["metrics", "--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nsproxy metrics --listen");
    let url = format!("http://127.0.0.1:{port}/metrics");
    wait_until("the metrics endpoint", Duration::from_secs(10), || {
        sh(&format!("curl -sf -m 2 {url}")).status.success()
    });
    let served = out(&sh(&format!("curl -sS -m 5 {url}")));
    promtool_check(&served);
    assert!(served.contains(&format!("nsproxy_flows_opened_total{{account=\"{}\"}} 1", a.name)), "{served}");
    assert!(served.contains(&format!("nsproxy_flows_opened_total{{account=\"{}\"}} 0", b.name)));

    // A daemon that stops answering: marked 0 after the deadline, the
    // other account still there.
    let pid = b.daemon_pid().expect("pid");
    must(&format!("kill -STOP {pid}"));
    let (text, took) = scrape(&a.policy);
    must(&format!("kill -CONT {pid}"));
    println!("scrape with one daemon stopped: {took:?}");
    assert!(took < Duration::from_secs(5), "the deadline bounds the scrape: {took:?}");
    assert!(text.contains(&format!("nsproxy_account_scraped{{account=\"{}\"}} 0", b.name)), "{text}");
    assert!(text.contains(&format!("nsproxy_flows_opened_total{{account=\"{}\"}} 1", a.name)));
    promtool_check(&text);
    let _ = server.kill();
    let _ = server.wait();
    a.assert_no_canary("host metrics");
    assert!(a.down().status.success() && b.down().status.success());
}
