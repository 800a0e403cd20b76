//! Burned IPs found without a person, end to end: real proxies (dante,
//! microsocks) with their own egress addresses, the origin standing for
//! the exchange over HTTPS (its own test CA), told per source address to
//! ban (418 + Retry-After, 451), or to answer 503 to everyone.

mod common;

use std::time::Duration;

use common::*;

fn seen_ip(a: &Account) -> Result<String, String> {
    let o = a.run(&format!("curl -sS --max-time 5 http://{HOSTNAME}/"));
    if o.status.success() { Ok(out(&o).trim().to_string()) } else { Err(err(&o)) }
}

/// `p1` (priority 10) and `p2` (20) of `topo`, two https checks against the
/// origin (two "exchanges": one path each), an https egress check.
fn account(tag: &str, topo: &Topology, checks: &str) -> Account {
    let mut b = format!("    exec:\n      users: [{TEST_USER}]\n    proxies:\n");
    for (i, p) in topo.proxies.iter().enumerate() {
        b.push_str(&format!(
            "      - label: p{}\n        url: {}\n        username: {}\n        password_file: {{secrets}}/pw{i}\n        priority: {}\n        connect_timeout: 1s\n        handshake_timeout: 2s\n",
            i + 1,
            p.url(),
            p.user,
            (i + 1) * 10
        ));
    }
    b.push_str(checks);
    b.push_str(&format!(
        "    egress_check:\n      url: https://{HOSTNAME}:8443/\n      ca_file: {{secrets}}/origin-ca.pem\n    metrics:\n      listen: unix:{{secrets}}/metrics.sock\n"
    ));
    let a = Account::new(tag, &b);
    for (i, p) in topo.proxies.iter().enumerate() {
        a.secret(&format!("pw{i}"), &p.pass);
    }
    // The CA is no secret: copied as is (not a canary).
    std::fs::copy(topo.dir.join("origin-ca.pem"), a.dir.join("origin-ca.pem")).expect("the origin's CA");
    a
}

fn two_checks() -> String {
    let mut c = String::from("    health_check:\n");
    for name in ["exchange-a", "exchange-b"] {
        c.push_str(&format!(
            "      - name: {name}\n        target: https://{HOSTNAME}:8443/api/{name}/ping\n        ca_file: {{secrets}}/origin-ca.pem\n        interval: 1s\n        timeout: 3s\n        failures_before_unhealthy: 3\n"
        ));
    }
    c
}

fn ban(topo: &Topology, lines: &str) {
    std::fs::write(topo.dir.join("ban"), lines).expect("write the origin's ban file");
}

#[test]
fn a_ban_is_found_over_https_and_the_proxy_replaced_then_expires_survives_restarts_and_unburns() {
    if !root_or_skip("a_ban_is_found_over_https_and_the_proxy_replaced_then_expires_survives_restarts_and_unburns") {
        return;
    }
    let _g = serial();
    let topo = Topology::new(&[Kind::Dante, Kind::Microsocks]);
    let (e1, e2) = (topo.proxies[0].egress.to_string(), topo.proxies[1].egress.to_string());
    ban(&topo, "");
    let a = account("bn", &topo, &two_checks());
    a.up();
    wait_until("egress of p1 over https", Duration::from_secs(15), || a.status_json()["egress_ip"] == e1.as_str());
    assert_eq!(seen_ip(&a).unwrap(), e1);

    // Exchange B auto-bans p1's IP: 418, Retry-After 6 s.
    ban(&topo, &format!("{e1} 418 6 /api/exchange-b/\n"));
    let t = std::time::Instant::now();
    wait_until("new flows leave through p2", Duration::from_secs(10), || {
        seen_ip(&a).ok().as_deref() == Some(e2.as_str())
    });
    println!("replaced {:?} after the ban", t.elapsed());
    let p1 = a.member("p1");
    assert_eq!(p1["state"], "burned", "{p1}");
    let why = p1["burn_reason"].as_str().unwrap_or_default();
    assert!(why.contains("418") && why.contains("IP banned") && why.contains("check exchange-b"), "{why}");
    let log = a.log();
    assert!(log.contains("BURNED") && log.contains(&e1), "logged once with the egress IP: {log}");
    // The egress check runs right after the switch, as flows move over.
    wait_until("the new egress IP is fetched and logged", Duration::from_secs(10), || {
        a.log().contains(&format!("egress_ip={e2}"))
    });
    let sock = a.dir.join("metrics.sock");
    let m = must(&format!("curl -sS --max-time 5 --unix-socket {} http://x/metrics", sock.display()));
    let want = format!("nsproxy_burns_total{{account=\"{}\",reason=\"status_418\"}} 1", a.name);
    assert!(m.contains(&want), "{want} in:\n{m}");

    // Retry-After 6: a standby again soon after (the ban is lifted too).
    ban(&topo, "");
    wait_until("the burn expires", Duration::from_secs(15), || a.member("p1")["state"] == "standby");
    assert_eq!(seen_ip(&a).unwrap(), e2, "sticky: p2 stays active");

    // Now p2 is banned for a restricted location (451, no Retry-After):
    // burned for burn_for (24 h); back to p1.
    ban(&topo, &format!("{e2} 451\n"));
    wait_until("back to p1", Duration::from_secs(10), || seen_ip(&a).ok().as_deref() == Some(e1.as_str()));
    let p2 = a.member("p2");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let until = p2["burned_until"].as_u64().unwrap_or(0);
    assert!(p2["state"] == "burned" && until > now + 86_000, "24 h: {p2}");

    // The burn survives a restart of the daemon.
    ban(&topo, "");
    let o = a.down();
    assert!(o.status.success(), "down: {}", err(&o));
    assert_eq!(a.member("p2")["state"], "burned", "shown while down");
    a.up();
    wait_until("p1 after restart", Duration::from_secs(15), || a.status_json()["egress_ip"] == e1.as_str());
    assert_eq!(a.member("p2")["state"], "burned");

    // unburn lifts it.
    let o = a.cmd(&["unburn", &a.name, "p2"]);
    assert!(o.status.success() && out(&o).contains("no longer burned"), "{}{}", out(&o), err(&o));
    assert_eq!(a.member("p2")["state"], "standby");
    let o = a.cmd(&["unburn", &a.name, "p2"]);
    assert!(!o.status.success() && err(&o).contains("not burned"), "{}", err(&o));
    // `check` prints each check's classified result.
    let o = a.cmd(&["check", &a.name]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("exchange-a ok in") && out(&o).contains("exchange-b ok in"), "{}", out(&o));
    assert!(!topo.leaked());
}

#[test]
fn an_exchange_outage_burns_nothing_and_a_wrong_ca_or_name_is_a_tls_error() {
    if !root_or_skip("an_exchange_outage_burns_nothing_and_a_wrong_ca_or_name_is_a_tls_error") {
        return;
    }
    let _g = serial();
    let topo = Topology::new(&[Kind::Microsocks, Kind::Microsocks]);
    let e1 = topo.proxies[0].egress.to_string();
    ban(&topo, "");
    let a = account("ou", &topo, &two_checks());
    a.up();
    wait_until("egress of p1", Duration::from_secs(15), || a.status_json()["egress_ip"] == e1.as_str());

    // 503 to everyone for several intervals: no burn, no switch.
    ban(&topo, "* 503\n");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(seen_ip(&a).unwrap(), e1, "no switch during an exchange outage");
    assert_eq!(a.member("p1")["state"], "active");
    assert_eq!(a.member("p2")["state"], "standby");
    let log = a.log();
    assert!(log.contains("the exchange is down; nothing burned or switched"), "{log}");
    assert!(!log.contains("BURNED") && !log.contains("failover"), "{log}");
    ban(&topo, "");
    a.down();

    // A check that does not trust the origin's CA, and one with the right
    // CA but a certificate for another name than asked for (the origin's
    // address): TLS errors naming the check, counted as failures, no burn.
    let untrusted = format!("https://{HOSTNAME}:8443/api/x/ping");
    let e = tls_failure(&topo, "ca", "untrusted", &untrusted, "");
    assert!(e.contains("TLS with api.exchange.test: "), "{e}");
    assert!(e.contains("UnknownIssuer") || e.contains("certificate"), "{e}");
    let by_address = format!("https://{}:8443/api/x/ping", topo.proxies[0].origin_ip);
    let e = tls_failure(&topo, "nm", "wrong-name", &by_address, "      ca_file: {secrets}/origin-ca.pem\n");
    assert!(e.to_ascii_lowercase().contains("not valid for name"), "{e}");
    assert!(!topo.leaked());
}

/// An account whose one check (`name`, `target`) cannot make its TLS
/// session: waits for the failure and returns p1's last error, after
/// checking it names the check and nothing was burned.
fn tls_failure(topo: &Topology, tag: &str, name: &str, target: &str, extra: &str) -> String {
    let checks = format!(
        "    health_check:\n      name: {name}\n      target: {target}\n      interval: 1s\n      timeout: 3s\n{extra}"
    );
    let a = account(tag, topo, &checks);
    // No proxy can pass: up says so, naming the check (exit 4).
    let said = a.up_without_proxy();
    assert!(said.contains(&format!("health check {name}")) && said.contains("TLS"), "{said}");
    wait_until("checks failed", Duration::from_secs(15), || {
        a.member("p1")["last_error"].as_str().is_some_and(|e| e.contains("TLS"))
    });
    let p1 = a.member("p1");
    let e = p1["last_error"].as_str().unwrap_or_default().to_string();
    assert!(e.contains(&format!("health check {name}")), "{e}");
    assert_ne!(p1["state"], "burned");
    assert!(!a.log().contains("BURNED"));
    a.down();
    e
}
