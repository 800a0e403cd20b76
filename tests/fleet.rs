//! Issue 6: fleet mode against a real HTTPS proxy service of the tests
//! (`SERVICE_PY`, in its own namespace): allocation, cache, fallback or
//! fail-closed when the service is down, slow and garbage answers, the
//! circuit breaker, feedback, and bearer / API key / mutual TLS. Root.

mod common;
use common::*;
use std::time::{Duration, Instant};

/// Where p2 (the proxy the service hands out) is, with its credentials.
fn answer_for(topo: &Topology, ttl: u64) -> serde_json::Value {
    let p = &topo.proxies[1];
    serde_json::json!({
        "proxy_url": format!("socks5://{}:{}@{}:{}", p.user, p.pass, p.listen, p.port),
        "strategy": "sticky",
        "ttl_seconds": ttl,
        "fallback_policy": "embedded_fallback",
        "metadata": {"pool": "test"},
    })
}

/// An account with p1 as its own proxy and the service in front.
fn fleet_account(tag: &str, topo: &Topology, service: &str) -> Account {
    let p = &topo.proxies[0];
    let a = Account::new(
        tag,
        &format!(
            "    exec:\n      users: [{TEST_USER}]\n    external_service:\n{service}    proxies:\n      - label: own\n        url: {}\n        username: {}\n        password_file: {{secrets}}/pw\n    health_check:\n      interval: 1s\n      timeout: 2s\n      target: tcp://api.exchange.test:80\n",
            p.url(),
            p.user
        ),
    );
    a.secret("pw", &p.pass);
    // The allocated proxy's password is a canary too.
    a.canary(&topo.proxies[1].pass);
    a
}

fn service_bearer(svc: &Service, extra: &str) -> String {
    format!(
        "      endpoints: [{}]\n      auth_method: bearer_token\n      token_file: {{secrets}}/token\n      ca_file: {}\n{extra}",
        svc.url,
        svc.ca().display()
    )
}

fn seen_ip(a: &Account) -> Result<String, String> {
    let o = a.run(&format!("curl -sS --max-time 5 http://{HOSTNAME}/"));
    if o.status.success() { Ok(out(&o).trim().to_string()) } else { Err(err(&o)) }
}

fn service_status(a: &Account) -> serde_json::Value {
    let o = a.cmd(&["status", &a.name, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap_or_default();
    v[0]["stats"]["service"].clone()
}

/// The service's state once the daemon has published its first answer.
fn settled_status(a: &Account) -> serde_json::Value {
    wait_until("service state published", Duration::from_secs(10), || {
        let s = service_status(a);
        s["state"] != "starting" && !s.is_null()
    });
    service_status(a)
}

#[test]
fn the_services_proxy_carries_flows_the_answer_is_cached_and_feedback_arrives() {
    if !root_or_skip("fleet_allocation") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let mut topo = Topology::new(&[Kind::Microsocks, Kind::Microsocks]);
    let svc = topo.add_service();
    let token = format!("tok-{}-canary", topo.prefix);
    svc.expect_auth(&format!("bearer:{token}"));
    svc.set_answer(&answer_for(&topo, 300));
    let a = fleet_account("fa", &topo, &service_bearer(&svc, "      connection_type: websocket\n      region: eu\n"));
    a.secret("token", &token);
    a.up();
    let (e1, e2) = (topo.proxies[0].egress.to_string(), topo.proxies[1].egress.to_string());
    assert_eq!(seen_ip(&a).as_deref(), Ok(e2.as_str()), "flows go through the service's proxy");

    let allocs = svc.allocations();
    assert_eq!(allocs.len(), 1, "{allocs:?}");
    let body = &allocs[0]["body"];
    println!("allocation request: {body}");
    assert_eq!(body["account"], a.name.as_str());
    assert_eq!(body["connection_type"], "websocket");
    assert_eq!(body["region"], "eu");
    assert!(body["client_id"].as_str().unwrap_or("").starts_with("nsproxy-"), "{body}");
    assert_eq!(allocs[0]["auth"], format!("Bearer {token}").as_str());

    // 20 more flows: the cached answer (TTL 300 s) is used, no new request.
    for _ in 0..20 {
        assert_eq!(seen_ip(&a).as_deref(), Ok(e2.as_str()));
    }
    assert_eq!(svc.allocations().len(), 1, "the answer is cached for its TTL");
    wait_until("feedback for 21 flows", Duration::from_secs(10), || {
        svc.feedback().iter().filter(|f| f["body"]["success"] == true).count() >= 21
    });
    let fb = svc.feedback();
    let f = &fb[0]["body"];
    println!("feedback: {f}");
    assert_eq!(f["proxy_url"], format!("socks5://{}:{}", topo.proxies[1].listen, topo.proxies[1].port).as_str());
    assert_eq!(f["account"], a.name.as_str());
    assert!(f["latency_ms"].is_u64() && f["timestamp"].is_u64(), "{f}");

    let st = settled_status(&a);
    println!("service status: {st}");
    assert_eq!(st["state"], "allocated");
    assert_eq!(st["breaker"], "closed");
    assert_eq!(st["allocations"], 1);

    let text = out(&a.cmd(&["status", &a.name]));
    assert!(text.contains("service:   allocated, breaker closed"), "{text}");
    // The service's proxy is a pool member like the others: rotate away and back.
    let o = a.cmd(&["rotate", &a.name, "--to", "own"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(seen_ip(&a).as_deref(), Ok(e1.as_str()));
    let o = a.cmd(&["rotate", &a.name, "--to", "service"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(seen_ip(&a).as_deref(), Ok(e2.as_str()));

    // The service's proxy dies: flows fail, are reported as failures, and
    // the pool falls back to the account's own proxy.
    topo.stop_proxy(1);
    wait_until("failover to the own proxy", Duration::from_secs(20), || seen_ip(&a).as_deref() == Ok(e1.as_str()));
    wait_until("failure feedback", Duration::from_secs(10), || {
        svc.feedback().iter().any(|f| f["body"]["success"] == false)
    });
    assert!(!topo.leaked());
}

#[test]
fn a_short_ttl_is_refreshed_and_a_changed_answer_moves_the_pool() {
    if !root_or_skip("fleet_refresh") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let mut topo = Topology::new(&[Kind::Microsocks, Kind::Microsocks]);
    let svc = topo.add_service();
    svc.expect_auth("bearer:t0k3n");
    svc.set_answer(&answer_for(&topo, 2));
    let a = fleet_account("fr", &topo, &service_bearer(&svc, ""));
    a.secret("token", "t0k3n");
    a.up();
    let e2 = topo.proxies[1].egress.to_string();
    assert_eq!(seen_ip(&a).as_deref(), Ok(e2.as_str()));
    wait_until("refreshed after its 2 s TTL", Duration::from_secs(10), || svc.allocations().len() >= 3);
    // Now the service hands out p1 (with p1's credentials): the pool moves.
    let p = &topo.proxies[0];
    svc.set_answer(&serde_json::json!({
        "proxy_url": format!("socks5://{}:{}@{}:{}", p.user, p.pass, p.listen, p.port),
        "strategy": "rotating", "ttl_seconds": 300, "fallback_policy": "direct_connection",
    }));
    let e1 = p.egress.to_string();
    wait_until("the new allocation carries flows", Duration::from_secs(10), || {
        seen_ip(&a).as_deref() == Ok(e1.as_str())
    });
    assert!(a.log().contains("direct_connection: refused"), "a direct fallback is refused, loudly");
    let _ = &mut topo;
}

#[test]
fn service_down_falls_back_to_the_own_pool_or_fails_closed() {
    if !root_or_skip("fleet_down") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let mut topo = Topology::new(&[Kind::Microsocks, Kind::Microsocks]);
    let mut svc = topo.add_service();
    svc.expect_auth("bearer:tok-secret-1");
    svc.set_answer(&answer_for(&topo, 300));
    svc.stop();
    let (e1, e2) = (topo.proxies[0].egress.to_string(), topo.proxies[1].egress.to_string());

    // Fallback on: the account's own proxy carries the flows.
    let a = fleet_account("fd", &topo, &service_bearer(&svc, ""));
    a.secret("token", "tok-secret-1");
    a.up();
    assert_eq!(seen_ip(&a).as_deref(), Ok(e1.as_str()), "fallback to the embedded pool");
    let st = settled_status(&a);
    println!("service down, fallback: {st}");
    assert_eq!(st["state"], "unavailable");
    assert!(st["last_error"].as_str().unwrap_or("").contains("cannot connect"), "{st}");
    drop(a);

    // Fallback off: nothing leaves; the service coming back heals it.
    let b = fleet_account("fc", &topo, &service_bearer(&svc, "      fallback_to_embedded: false\n"));
    b.secret("token", "tok-secret-1");
    let said = b.up_without_proxy();
    println!("up without the service and without fallback: {said}");
    assert!(said.contains("waiting up to") && said.contains("the proxy service's answer"), "{said}");
    let t = Instant::now();
    let r = seen_ip(&b);
    println!("service down, fail closed: {r:?} after {:?}", t.elapsed());
    assert!(r.is_err(), "fail closed: {r:?}");
    assert!(b.log().contains("fallback_to_embedded is false: flows are refused"), "{}", b.log());
    let hits_before = topo.origin_clients().len();
    svc.start();
    wait_until("the service's proxy once the service is back", Duration::from_secs(15), || {
        seen_ip(&b).as_deref() == Ok(e2.as_str())
    });
    assert!(topo.origin_clients()[hits_before..].iter().all(|c| *c == e2), "only p2 reached the origin");
    assert!(!topo.leaked());
}

#[test]
fn slow_and_garbage_answers_open_the_breaker_which_half_opens() {
    if !root_or_skip("fleet_breaker") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let mut topo = Topology::new(&[Kind::Microsocks, Kind::Microsocks]);
    let svc = topo.add_service();
    svc.expect_auth("bearer:tok-secret-1");
    svc.set_answer(&answer_for(&topo, 300));
    svc.set_mode("slow");
    let extra = "      timeout_seconds: 1\n      breaker_failures: 3\n      breaker_cooldown_seconds: 4\n";
    let a = fleet_account("fb", &topo, &service_bearer(&svc, extra));
    a.secret("token", "tok-secret-1");
    a.up();
    assert!(a.log().contains("no answer within 1s (timeout_seconds)"), "{}", a.log());
    // Garbage: a clear error, then the breaker opens after 3 failures.
    svc.set_mode("garbage");
    wait_until("breaker open", Duration::from_secs(15), || a.log().contains("circuit breaker open"));
    assert!(a.log().contains("bad answer: not valid JSON"), "{}", a.log());
    let opened_at = Instant::now();
    let n = svc.allocations().len();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(svc.allocations().len(), n, "no call while the breaker is open");
    assert_eq!(service_status(&a)["breaker"], "open");
    // The service heals; the half-open probe after the cool-down succeeds.
    svc.set_mode("ok");
    let e2 = topo.proxies[1].egress.to_string();
    wait_until("probe after the cool-down", Duration::from_secs(15), || service_status(&a)["state"] == "allocated");
    println!("breaker closed again {:?} after it opened", opened_at.elapsed());
    assert!(opened_at.elapsed() >= Duration::from_secs(3), "not before the cool-down");
    assert_eq!(service_status(&a)["breaker"], "closed");
    assert_eq!(seen_ip(&a).as_deref(), Ok(e2.as_str()));
    let _ = &mut topo;
}

#[test]
fn bearer_api_key_and_mutual_tls_are_accepted_and_wrong_credentials_refused() {
    if !root_or_skip("fleet_auth") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let mut topo = Topology::new(&[Kind::Microsocks, Kind::Microsocks]);
    let svc = topo.add_service();
    svc.set_answer(&answer_for(&topo, 300));
    let e2 = topo.proxies[1].egress.to_string();
    let e1 = topo.proxies[0].egress.to_string();
    let ca = svc.ca().display().to_string();
    let d = svc.dir.display().to_string();
    must(&format!("chown root:root {d}/client.key && chmod 600 {d}/client.key"));

    let cases: Vec<(&str, String, &str, String, bool)> = vec![
        ("bearer", "bearer:good-token".into(), "good-token", service_bearer(&svc, ""), true),
        ("bearer, wrong token", "bearer:good-token".into(), "bad-token", service_bearer(&svc, ""), false),
        (
            "api key",
            "apikey:k3y-secret".into(),
            "k3y-secret",
            format!(
                "      endpoints: [{}]\n      auth_method: api_key\n      token_file: {{secrets}}/token\n      ca_file: {ca}\n",
                svc.url
            ),
            true,
        ),
        (
            "api key, wrong key",
            "apikey:k3y-secret".into(),
            "nope-secret",
            format!(
                "      endpoints: [{}]\n      auth_method: api_key\n      token_file: {{secrets}}/token\n      ca_file: {ca}\n",
                svc.url
            ),
            false,
        ),
        (
            "mutual TLS",
            "mtls".into(),
            "-",
            format!(
                "      endpoints: [{}]\n      auth_method: mutual_tls\n      client_cert_file: {d}/client.pem\n      client_key_file: {d}/client.key\n      ca_file: {ca}\n",
                svc.mtls_url
            ),
            true,
        ),
        (
            "no client certificate where one is required",
            "mtls".into(),
            "some-token",
            format!(
                "      endpoints: [{}]\n      auth_method: bearer_token\n      token_file: {{secrets}}/token\n      ca_file: {ca}\n",
                svc.mtls_url
            ),
            false,
        ),
    ];
    for (what, expect, token, service, accepted) in cases {
        svc.expect_auth(&expect);
        let a = fleet_account("fx", &topo, &service);
        if token != "-" {
            a.secret("token", token);
        }
        a.up();
        let st = settled_status(&a);
        let ip = seen_ip(&a);
        println!("{what}: state {}, error {}, flows via {ip:?}", st["state"], st["last_error"]);
        if accepted {
            assert_eq!(st["state"], "allocated", "{what}: {st}");
            assert_eq!(ip.as_deref(), Ok(e2.as_str()), "{what}");
        } else {
            assert_eq!(st["state"], "unavailable", "{what}: {st}");
            assert_eq!(ip.as_deref(), Ok(e1.as_str()), "{what}: falls back");
        }
        if what.starts_with("bearer, wrong") || what.starts_with("api key, wrong") {
            assert!(st["last_error"].as_str().unwrap_or("").contains("HTTP status 401"), "{what}: {st}");
        }
        if what.starts_with("no client") {
            assert!(st["last_error"].as_str().unwrap_or("").contains("TLS"), "{what}: {st}");
        }
    }
    // A service whose certificate the CA does not vouch for is refused.
    let other_ca = svc.dir.join("other-ca.pem");
    must(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=other -keyout {d}/other.key -out {} 2>/dev/null",
        other_ca.display()
    ));
    svc.expect_auth("bearer:good-token");
    let service = service_bearer(&svc, "").replace(&ca, &other_ca.display().to_string());
    let a = fleet_account("fw", &topo, &service);
    a.secret("token", "good-token");
    a.up();
    let st = settled_status(&a);
    println!("unknown CA: {st}");
    assert!(st["last_error"].as_str().unwrap_or("").contains("invalid peer certificate"), "{st}");
    let _ = &mut topo;
}
