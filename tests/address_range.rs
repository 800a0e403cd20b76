//! `dns.fake_ip_range`: the namespace's addresses and fake IPs move with
//! it, a real server on a 198.18.x.x address (the benchmarking range that
//! nsproxy keeps by default) becomes reachable through the proxy, and
//! every address of the account's range that nsproxy did not hand out is
//! refused, never proxied. Real dante, a real origin, real namespaces.

mod common;

use common::*;

/// The "LAN" server on a 198.18.x.x address: the origin answers on it.
const LAN_198: &str = "198.18.77.7";

#[test]
fn a_moved_range_moves_every_address_and_frees_198_18_for_real_servers() {
    if !root_or_skip("fake_ip_range") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Dante]);
    let proxy = &topo.proxies[0];
    // A real server at 198.18.77.7: the origin has it on its loopback, and
    // the proxy routes it to the origin (nothing on the host does).
    must(&format!("ip -n {} addr add {LAN_198}/32 dev lo", topo.origin_ns));
    must(&format!("ip -n {} route add {LAN_198}/32 via {}", proxy.ns, proxy.origin_ip));
    let curl = |a: &Account, url: &str| {
        let o = a.run(&format!("curl -sS -m 5 {url}"));
        (o.status.success(), out(&o).trim().to_string(), err(&o))
    };

    // The default range: 198.18.77.7 is nsproxy's, refused at once.
    let plain = Account::for_proxy("rd", proxy, "");
    plain.up();
    let started = std::time::Instant::now();
    let (ok, body, e) = curl(&plain, &format!("http://{LAN_198}/"));
    println!("default range, {LAN_198}: ok={ok} {body} {e} in {:?}", started.elapsed());
    assert!(!ok && started.elapsed() < std::time::Duration::from_secs(3), "refused, not proxied nor hung: {body}");
    let log = plain.log();
    assert!(
        log.contains("reserved range (dns.fake_ip_range)") && log.contains("198.18.0.0/15"),
        "the log says why and names the range:\n{log}"
    );
    assert!(plain.down().status.success());

    // Moved to 100.80.0.0/16, in both DNS modes.
    for (tag, dns) in [
        ("rf", "    dns: {fake_ip_range: 100.80.0.0/16}\n".to_string()),
        ("rt", format!("    dns: {{mode: tcp, resolver: {}, fake_ip_range: 100.80.0.0/16}}\n", topo.origin_addr)),
    ] {
        let a = Account::for_proxy(tag, proxy, &dns);
        a.up();
        let resolv = out(&a.run("cat /etc/resolv.conf"));
        assert!(resolv.lines().any(|l| l.trim() == "nameserver 100.80.0.2"), "{tag}: {resolv}");
        let addr = out(&a.run("ip -4 -o addr show dev tun0"));
        assert!(addr.contains("inet 100.80.0.1/32"), "{tag}: the TUN's address: {addr}");
        let resolved = out(&a.run(&format!("getent hosts {HOSTNAME}"))).trim().to_string();
        println!("{tag}: {HOSTNAME} -> {resolved}");
        if tag == "rf" {
            assert!(resolved.starts_with("100.80.1."), "{tag}: a fake IP of the moved pool: {resolved}");
        } else {
            assert!(resolved.starts_with(&topo.origin_addr.to_string()), "{tag}: the real answer: {resolved}");
        }
        let (ok, body, e) = curl(&a, &format!("http://{HOSTNAME}/"));
        assert!(ok && body == proxy.egress.to_string(), "{tag}: by name through the proxy: {body} {e}");
        let (ok, body, e) = curl(&a, &format!("http://{LAN_198}/"));
        println!("{tag}: {LAN_198} -> ok={ok} {body} {e}");
        assert!(ok && body == proxy.egress.to_string(), "{tag}: 198.18.77.7 through the proxy now: {body} {e}");
        for reserved in ["100.80.0.200", "100.80.1.250", "100.80.255.255"] {
            let (ok, body, _) = curl(&a, &format!("http://{reserved}/"));
            assert!(!ok, "{tag}: {reserved} is the account's own range: refused, got {body}");
        }
        assert!(a.log().contains("100.80.0.0/16"), "{tag}: the refusal names the moved range");
        a.assert_no_canary("fake_ip_range");
        assert!(a.down().status.success());
    }
    assert!(!topo.leaked(), "nothing left the host directly");
}
