use super::*;

pub(super) fn parse(text: &str) -> Result<Vec<Account>, Vec<String>> {
    parse_str(Path::new("p.yaml"), text).map_err(|p| p.0.iter().map(|x| x.to_string()).collect())
}

const GOOD: &str = "\
accounts:
  - name: account-a
    exec:
      users: [alice]
    proxies:
      - label: res-1
        url: socks5://127.0.0.1:1080
        username: u1
        password_file: /etc/nsproxy/secrets/res-1
        priority: 10
      - label: dc-1
        url: http://[::1]:3128
        priority: 5
        enabled: false
";

#[test]
fn parses_a_good_policy_with_defaults() {
    let a = &parse(GOOD).unwrap()[0];
    assert_eq!(a.name, "account-a");
    assert_eq!(a.namespace, "nsp-account-a");
    assert_eq!(a.exec.users, vec!["alice".to_string()]);
    assert_eq!(a.dns.mode, DnsMode::FakeIp);
    assert_eq!(a.ipv6, Ipv6Mode::Block);
    assert_eq!(a.mtu, 65000);
    assert_eq!(a.limits.idle_timeout, Duration::from_secs(7200));
    assert_eq!(a.proxies[0].endpoint(), "socks5://127.0.0.1:1080");
    assert_eq!(a.proxies[1].endpoint(), "http://[::1]:3128");
    assert_eq!(a.proxies[0].password, Some(SecretRef::File("/etc/nsproxy/secrets/res-1".into())));
    // The disabled proxy is not usable even with a better priority.
    let usable: Vec<&str> = a.usable_proxies().iter().map(|p| p.label.as_str()).collect();
    assert_eq!(usable, vec!["res-1"]);
}

#[test]
fn reports_every_problem_at_once_with_lines() {
    let text = "\
accounts:
  - name: Bad Name
    colour: blue
    proxies:
      - label: x
        url: ftp://h:1
      - label: x
        url: socks5://h:70000
";
    let errs = parse(text).unwrap_err();
    let all = errs.join("\n");
    assert!(all.contains("p.yaml:2: accounts[0].name: invalid account name"), "{all}");
    assert!(all.contains("p.yaml:3: accounts[0].colour: unknown field \"colour\""), "{all}");
    assert!(all.contains("p.yaml:6: accounts[0].proxies[0].url: unsupported proxy scheme \"ftp\""), "{all}");
    assert!(all.contains("p.yaml:8: accounts[0].proxies[1].url: invalid port \"70000\""), "{all}");
    assert_eq!(errs.len(), 4, "{all}");
}

#[test]
fn duplicate_labels_and_accounts() {
    let text = "\
accounts:
  - name: a
    proxies:
      - {label: p, url: 'socks5://h:1'}
      - {label: p, url: 'socks5://h:2'}
  - name: a
    proxies:
      - {label: q, url: 'socks5://h:1'}
";
    let all = parse(text).unwrap_err().join("\n");
    assert!(all.contains("duplicate proxy label \"p\""), "{all}");
    assert!(all.contains("p.yaml:6: name: duplicate account name \"a\" (first defined at p.yaml:2)"), "{all}");
}

#[test]
fn inline_password_and_credentials_in_url_are_refused() {
    let text = "\
accounts:
  - name: a
    proxies:
      - label: p
        url: socks5://user:secret@h:1
        username: u
        password: hunter2
";
    let all = parse(text).unwrap_err().join("\n");
    assert!(all.contains("inline passwords are not accepted"), "{all}");
    assert!(all.contains("credentials in the URL are not accepted"), "{all}");
    assert!(!all.contains("hunter2") && !all.contains("secret"), "a secret leaked into: {all}");
}

#[test]
fn udp_proxy_and_the_other_modes_parse_and_a_bad_mode_is_named() {
    let text = "\
accounts:
  - name: a
    proxies: [{label: p, url: 'socks5://h:1'}]
    ipv6: proxy
    udp: proxy
    dns: {mode: tcp, resolver: 9.9.9.9}
    health_check: {target: 'tcp://h:1'}
    limits: {max_udp_flows: 10, udp_idle_timeout: 5m}
";
    let accounts = parse(text).expect("valid");
    assert_eq!(accounts[0].udp, UdpMode::Proxy);
    assert_eq!(accounts[0].limits.max_udp_flows, 10);
    assert_eq!(accounts[0].limits.udp_idle_timeout, std::time::Duration::from_secs(300));
    let errs = parse(&text.replace("udp: proxy", "udp: tunnel")).unwrap_err();
    assert!(errs.iter().any(|e| e.contains("udp") && e.contains("tunnel")), "{errs:#?}");
}

const POOL: &str = "\
accounts:
  - name: a
    proxies:
      - {label: x, url: 'socks5://10.0.0.1:1080', expected_egress_ip: 192.0.2.1}
      - {label: y, url: 'http://10.0.0.2:3128', priority: 5}
    health_check: {interval: 2s, timeout: 1s, target: 'http://ip.echo.test:8080/health', failures_before_unhealthy: 2}
    egress_check: {url: 'http://ip.echo.test/'}
    pool: {failback: true}
    metrics: {listen: '127.0.0.1:9464'}
    rules:
      - {domain: '*.exchange-a.test', via: x}
      - {domain: blocked.test, block: true}
      - {cidr: 10.9.0.0/16, port: 8000-8100, via: y}
";

#[test]
fn pool_health_egress_rules_and_metrics() {
    let a = &parse(POOL).unwrap()[0];
    assert_eq!(a.proxies[0].expected_egress_ip, Some("192.0.2.1".parse().unwrap()));
    let h = &a.health_checks[0];
    assert_eq!(h.interval, Duration::from_secs(2));
    assert_eq!(h.target.to_string(), "http://ip.echo.test:8080/health");
    assert_eq!(a.failure_threshold(), 2);
    assert!(a.pool.failback);
    let e = a.egress_check.as_ref().unwrap();
    assert_eq!((e.url.host.as_str(), e.url.port, e.url.path.as_str()), ("ip.echo.test", 80, "/"));
    assert_eq!(a.metrics, Some(MetricsListen::Tcp("127.0.0.1:9464".parse().unwrap())));
    let rules: Vec<String> = a.rules.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        rules,
        vec![
            "domain *.exchange-a.test -> via x",
            "domain blocked.test -> block",
            "cidr 10.9.0.0/16 ports 8000-8100 -> via y"
        ]
    );
    // Defaults.
    let b = &parse(GOOD).unwrap()[0];
    assert!(!b.pool.failback && b.rules.is_empty() && b.metrics.is_none() && b.egress_check.is_none());
    assert_eq!(b.failure_threshold(), 3);
}

#[test]
fn bad_pool_fields_name_the_field() {
    let text = "\
accounts:
  - name: a
    proxies:
      - {label: x, url: 'socks5://10.0.0.1:1080', expected_egress_ip: 'not-an-ip'}
    health_check: {target: 'gopher://secure.test/'}
    egress_check: {url: 'ftp://x/'}
    pool: {failback: sometimes, sticky: true}
    metrics: {listen: '9464'}
    rules:
      - {domain: '*.a.test', via: nope}
      - {domain: 'bad domain', block: true}
      - {port: 443}
      - {via: x}
      - {cidr: 10.0.0.0/40, block: true, via: x}
";
    let all = parse(text).unwrap_err().join("\n");
    for want in [
        "proxies[0].expected_egress_ip: expected an IP address, got \"not-an-ip\"",
        "health_check.target: expected an http:// or https:// URL, got \"gopher://secure.test/\"",
        "egress_check.url: expected an http:// or https:// URL, got \"ftp://x/\"",
        "pool.failback: expected true or false",
        "pool.sticky: unknown field",
        "metrics.listen: expected ip:port",
        "rules[0].via: no proxy labelled \"nope\" in this account (x)",
        "rules[1].domain: expected a domain",
        "rules[2]: missing via: LABEL or block: true",
        "rules[3]: a rule needs at least one of domain, cidr, port",
        "rules[4].cidr: expected an address block",
        "rules[4]: give either via or block, not both",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

#[test]
fn type_errors_name_what_is_expected() {
    let text = "\
accounts:
  - name: a
    proxies: [{label: p, url: 'socks5://h:1', enabled: maybe, priority: -1}]
    tun: {mtu: 100}
    limits: {idle_timeout: 3 weeks}
";
    let all = parse(text).unwrap_err().join("\n");
    assert!(all.contains("enabled: expected true or false"), "{all}");
    assert!(all.contains("priority: expected a whole number"), "{all}");
    assert!(all.contains("tun.mtu: expected a whole number from 1280 to 65535, got 100"), "{all}");
    assert!(all.contains("unknown duration unit"), "{all}");
}

#[test]
fn yaml_syntax_error_has_a_line() {
    let all = parse("accounts:\n  - name: a\n   bad: [\n").unwrap_err().join("\n");
    assert!(all.starts_with("p.yaml:"), "{all}");
    assert!(all.contains("not valid YAML"), "{all}");
}

#[test]
fn proxy_urls() {
    assert_eq!(parse_proxy_url("socks5h://a.b:1080"), Ok((Scheme::Socks5, "a.b".into(), 1080)));
    assert_eq!(parse_proxy_url("HTTP://10.0.0.1:8080/"), Ok((Scheme::Http, "10.0.0.1".into(), 8080)));
    for bad in
        ["socks5://h", "socks5://h:0", "socks5://:1", "h:1", "socks5://h:1/x", "socks5://[::1:1", "socks5://a b:1"]
    {
        assert!(parse_proxy_url(bad).is_err(), "{bad} accepted");
    }
}

const TOKEN: &str =
    "gAAAAABrBHBA83X4yRW12qUHRD91Dpp7PNF7CpQj1_9eNvPUQlG76gY5KUi4Ug_NxNOYD9buRP5zyqV9ujWHsblvMs3z_k6fcQ==";

#[test]
fn credential_sources() {
    let text = format!(
        "\
secrets:
  key_file: /etc/nsproxy/fernet.key
accounts:
  - name: a
    proxies:
      - label: enc
        url: socks5://h:1
        username_encrypted: {TOKEN}
        password_encrypted: {TOKEN}
      - label: env
        url: socks5://h:2
        username_env: PROXY_USER
        password_env: PROXY_PASS
  - name: b
    secrets:
      key_file: /srv/bot/.env
      key_name: FERNET_KEY
    proxies:
      - label: f
        url: http://h:3
        username_file: /etc/nsproxy/u
        password_encrypted: {TOKEN}
"
    );
    let v = parse(&text).unwrap();
    assert_eq!(v[0].secrets_key, Some(KeySource { file: "/etc/nsproxy/fernet.key".into(), name: None }));
    assert_eq!(v[1].secrets_key.as_ref().and_then(|k| k.name.as_deref()), Some("FERNET_KEY"));
    assert!(matches!(v[0].proxies[0].password, Some(SecretRef::Encrypted(_))));
    assert_eq!(v[0].proxies[1].username, Some(UserRef::Secret(SecretRef::Env("PROXY_USER".into()))));
    assert_eq!(v[1].proxies[0].username, Some(UserRef::Secret(SecretRef::File("/etc/nsproxy/u".into()))));
    // Debug never shows a plain user name or a whole token.
    let dbg = format!("{:?}", v[0]);
    assert!(!dbg.contains(&TOKEN[10..30]), "{dbg}");
}

#[test]
fn credential_errors_name_the_field() {
    let text = format!(
        "\
accounts:
  - name: a
    proxies:
      - label: p1
        url: socks5://h:1
        username: u
        password_encrypted: {TOKEN}
      - label: p2
        url: socks5://h:1
        username: u
        username_env: U
        password_file: /x
      - label: p3
        url: socks5://h:1
        username: u
        password_encrypted: notatoken
      - label: p4
        url: socks5://h:1
        username: u
        password_env: NSPROXY_PW
      - label: p5
        url: socks5://h:1
        username: u
        password_env: P
        password_file: /p
"
    );
    let errs = parse(&text).unwrap_err();
    let all = errs.join("\n");
    assert!(
        all.contains("p.yaml:7: accounts[0].proxies[0].password_encrypted: an encrypted value needs the Fernet key"),
        "{all}"
    );
    assert!(all.contains("p.yaml:8: accounts[0].proxies[1]: give the user name one way"), "{all}");
    assert!(
        all.contains("accounts[0].proxies[2].password_encrypted: not a Fernet token: not URL-safe base64"),
        "{all}"
    );
    assert!(
        all.contains("accounts[0].proxies[3].password_env: NSPROXY_PW: NSPROXY_ variables are policy overrides"),
        "{all}"
    );
    assert!(
        all.contains("accounts[0].proxies[4]: give one of password_file, password_env or password_encrypted, not password_file and password_env"),
        "{all}"
    );
    // p3 also lacks the key.
    assert_eq!(errs.len(), 6, "{all}");
}

fn ov(env: &[(&str, &str)], sets: &[&str]) -> Overrides {
    Overrides::gather(
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    )
}

#[test]
fn overrides_apply_with_precedence_and_are_validated() {
    let o = ov(
        &[
            ("NSPROXY_ACCOUNTS__ACCOUNT_A__DNS__MODE", "tcp"),
            ("NSPROXY_ACCOUNTS__ACCOUNT_A__DNS__RESOLVER", "10.0.0.53:53"),
            ("NSPROXY_ACCOUNTS__ACCOUNT_A__PROXIES__RES_1__PRIORITY", "1"),
            ("NSPROXY_ACCOUNTS__ACCOUNT_A__HEALTH_CHECK__TARGET", "tcp://api.exchange.test:443"),
        ],
        &["accounts.account-a.proxies.res-1.priority=2"],
    );
    let a = &parse_str_with(Path::new("p.yaml"), GOOD, &o).unwrap()[0];
    assert_eq!(a.dns.mode, DnsMode::Tcp);
    assert_eq!(a.dns.resolver, Some("10.0.0.53:53".parse().unwrap()));
    assert_eq!(a.proxies[0].priority, 2, "--set wins over the environment");
    assert_eq!(a.health_checks.first().map(|h| h.target.to_string()).as_deref(), Some("tcp://api.exchange.test:443"));
    // Without the override the file's value stands.
    assert_eq!(parse(GOOD).unwrap()[0].proxies[0].priority, 10);
}

#[test]
fn a_bad_override_is_named_in_the_error() {
    let o = ov(
        &[
            ("NSPROXY_ACCOUNTS__ACCOUNT_A__DNS__MODE", "udp"),
            ("NSPROXY_ACCOUNTS__ACCOUNT_A__PROXIES__RES_1__COLOUR", "x"),
        ],
        &["accounts.account-a.proxies.7.priority=1"],
    );
    let errs: Vec<String> =
        parse_str_with(Path::new("p.yaml"), GOOD, &o).unwrap_err().0.iter().map(|p| p.to_string()).collect();
    let all = errs.join("\n");
    assert!(
        all.contains("NSPROXY_ACCOUNTS__ACCOUNT_A__DNS__MODE: accounts[0].dns.mode in p.yaml: expected fake-ip or tcp"),
        "{all}"
    );
    assert!(
        all.contains("NSPROXY_ACCOUNTS__ACCOUNT_A__PROXIES__RES_1__COLOUR: accounts[0].proxies[0].colour in p.yaml: unknown field"),
        "{all}"
    );
    assert!(
        all.contains(
            "--set accounts.account-a.proxies.7.priority: accounts[0].proxies has 2 entries; there is no index 7"
        ),
        "{all}"
    );
    assert_eq!(errs.len(), 3, "{all}");
}

#[test]
fn external_service_section() {
    let text = "\
accounts:
  - name: fleet
    external_service:
      endpoints: [https://alloc.internal:8443/v2, \"https://10.0.0.9\"]
      auth_method: bearer_token
      token_file: /etc/nsproxy/alloc.token
      ca_file: /etc/nsproxy/alloc-ca.pem
      fallback_to_embedded: false
      cache_ttl_seconds: 120
";
    let a = &parse(text).unwrap()[0];
    let s = a.external_service.as_ref().unwrap();
    assert!(a.proxies.is_empty(), "the service alone may supply the proxy");
    assert_eq!(s.endpoints[0].to_string(), "https://alloc.internal:8443/v2");
    assert_eq!(s.endpoints[1].to_string(), "https://10.0.0.9:443");
    assert_eq!(s.auth, ServiceAuth::BearerToken(SecretRef::File("/etc/nsproxy/alloc.token".into())));
    assert_eq!((s.timeout, s.cache_ttl), (Duration::from_secs(5), Duration::from_secs(120)));
    assert!(s.circuit_breaker && !s.fallback_to_embedded);
    assert_eq!(s.connection_type, "all");

    let bad = "\
accounts:
  - name: fleet
    external_service:
      endpoints: [http://alloc.internal]
      auth_method: mutual_tls
      token_env: T
      timeout_seconds: 90
      cache_ttl_seconds: 10
      ca_file: relative.pem
    proxies:
      - label: service
        url: socks5://h:1
";
    let errs = parse(bad).unwrap_err();
    let all = errs.join("\n");
    for want in [
        "external_service.endpoints[0]: unsupported scheme \"http\": the proxy service is reached over https only",
        "external_service: auth_method mutual_tls takes client_cert_file and client_key_file, not a token",
        "external_service.timeout_seconds: expected a whole number from 1 to 60, got 90",
        "external_service.cache_ttl_seconds: expected a whole number from 60 to 3600, got 10",
        "external_service.ca_file: expected an absolute path",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    // Only when the section is otherwise valid is the reserved label checked.
    let reserved = "\
accounts:
  - name: fleet
    external_service:
      endpoints: [https://a.internal]
      auth_method: api_key
      token_env: ALLOC_KEY
      ca_file: /ca.pem
    proxies:
      - label: service
        url: socks5://h:1
";
    let all = parse(reserved).unwrap_err().join("\n");
    assert!(
        all.contains("proxies[0].label: the label \"service\" is the proxy the external_service hands out"),
        "{all}"
    );
}

#[test]
fn health_checks_as_a_list_with_every_field_and_their_problems() {
    let text = "\
accounts:
  - name: a
    proxies: [{label: p, url: 'socks5://10.0.0.1:1080'}]
    health_check:
      - name: binance
        target: https://api.binance.com/api/v3/ping
        method: head
        headers: {X-MBX-APIKEY: s3cr3t-key-value}
        expect_status: [200]
        burn_on: {status: [418], body: ['IP banned', '/code\":-10[0-9]+/']}
        burn_for: forever
        ca_file: /etc/nsproxy/ca.pem
        interval: 45s
        failures_before_unhealthy: 5
      - target: tcp://api.kraken.com:443
        interval: 10s
    pool: {on_burn: reset-flows}
    egress_check: {url: 'https://api.ipify.org', ca_file: /etc/nsproxy/ca.pem}
";
    let a = &parse(text).unwrap()[0];
    assert_eq!(a.health_checks.len(), 2);
    let b = &a.health_checks[0];
    assert_eq!((b.name.as_str(), b.method, b.burn_for), ("binance", CheckMethod::Head, None));
    assert_eq!(b.target.to_string(), "https://api.binance.com/api/v3/ping");
    assert_eq!((b.expect_status.clone(), b.burn_on.status.clone()), (vec![200], vec![418]));
    assert_eq!(a.health_checks[1].name, "api.kraken.com", "named after the target's host");
    assert_eq!(a.health_checks[1].burn_on.status, vec![403, 418, 451], "the default burn statuses");
    assert_eq!(a.failure_threshold(), 3, "the strictest check's threshold");
    assert_eq!(a.pool.on_burn, OnBurn::ResetFlows);
    assert!(a.egress_check.as_ref().unwrap().url.tls);
    // Header values are never shown: not in Debug, not in `policy show`.
    let shown = format!("{:?} {}", b, serde_json::to_string(a).unwrap());
    assert!(!shown.contains("s3cr3t-key-value") && shown.contains("X-MBX-APIKEY: <hidden>"), "{shown}");

    let bad = "\
accounts:
  - name: a
    proxies: [{label: p, url: 'socks5://10.0.0.1:1080'}]
    health_check:
      - {name: x, target: 'https://a.test/', method: POST, expect_status: [700], burn_on: {body: ['/(/']}, ca_file: rel.pem}
      - {name: x, target: 'tcp://a.test:1', headers: {Host: y}}
    pool: {on_burn: sometimes}
";
    let all = parse(bad).unwrap_err().join("\n");
    for want in [
        "health_check[0].method: expected GET or HEAD, got \"POST\"",
        "health_check[0].expect_status: 700 is not an HTTP status",
        "health_check[0].burn_on.body: \"/(/\": invalid regular expression",
        "health_check[0].ca_file: expected an absolute path",
        "health_check[1].headers: Host is set by nsproxy",
        "health_check[1].headers: applies to http:// and https:// targets only",
        "pool.on_burn: expected keep-flows or reset-flows, got \"sometimes\"",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

#[test]
fn host_services_must_be_loopback_named_once_and_addressed() {
    let good = "\
accounts:
  - name: a
    proxies: [{label: p, url: 'socks5://h:1'}]
    host_services:
      - {name: postgres, listen: '127.0.0.1:5432'}
      - {name: redis, listen: '[::1]:6379'}
";
    let a = parse(good).expect("valid");
    assert_eq!(a[0].host_services.len(), 2);
    assert_eq!(a[0].host_services[1].listen, "[::1]:6379".parse().unwrap());
    let range = a[0].dns.fake_ip_range;
    assert_eq!(range.host_service_addr(1), std::net::Ipv4Addr::new(198, 18, 0, 17));
    for (bad, want) in [
        ("{name: db, listen: '10.0.0.5:5432'}", "not a loopback address"),
        ("{name: db, listen: '0.0.0.0:5432'}", "not a loopback address"),
        ("{name: db, listen: 'localhost:5432'}", "not an address with a port"),
        ("{name: Db_1, listen: '127.0.0.1:5432'}", "not a DNS label"),
        ("{name: db}", "listen"),
    ] {
        let text = good.replace("{name: redis, listen: '[::1]:6379'}", bad);
        let errs = parse(&text).unwrap_err();
        assert!(errs.iter().any(|e| e.contains(want) && e.contains("host_services[1]")), "{bad}: {errs:#?}");
    }
    let twice = good.replace("name: redis", "name: postgres");
    assert!(parse(&twice).unwrap_err().iter().any(|e| e.contains("listed twice")));
}

#[test]
fn fake_ip_range_moves_the_namespace_addresses_and_bad_ones_are_named() {
    let good = "\
accounts:
  - name: a
    proxies: [{label: p, url: 'socks5://h:1'}]
    dns: {mode: tcp, resolver: 9.9.9.9, fake_ip_range: 100.80.0.0/16}
  - name: b
    proxies: [{label: p, url: 'socks5://h:1'}]
";
    let a = parse(good).expect("valid");
    assert_eq!(a[0].dns.fake_ip_range.to_string(), "100.80.0.0/16");
    assert_eq!(a[0].dns.fake_ip_range.dns_v4(), std::net::Ipv4Addr::new(100, 80, 0, 2));
    assert_eq!(a[1].dns.fake_ip_range, crate::config::plan::Addresses::DEFAULT);
    for (bad, want) in [
        ("100.80.0.1/16", "did you mean 100.80.0.0/16"),
        ("100.80.0.0/30", "/30 is not allowed"),
        ("[1]", "expected an IPv4 range"),
    ] {
        let errs = parse(&good.replace("100.80.0.0/16", bad)).unwrap_err();
        assert!(
            errs.iter().any(|e| e.contains(want) && e.contains("accounts[0].dns.fake_ip_range")),
            "{bad}: {errs:#?}"
        );
    }
}

#[test]
fn https_proxies_take_a_ca_file_and_other_schemes_refuse_it() {
    assert_eq!(parse_proxy_url("https://proxy.example:8443"), Ok((Scheme::Https, "proxy.example".into(), 8443)));
    let good = "\
accounts:
  - name: a
    proxies:
      - {label: t, url: 'https://10.0.0.7:8443', ca_file: /etc/nsproxy/proxy-ca.pem}
      - {label: s, url: 'socks5://h:1'}
";
    let a = parse(good).expect("valid");
    assert_eq!(a[0].proxies[0].scheme, Scheme::Https);
    assert_eq!(a[0].proxies[0].endpoint(), "https://10.0.0.7:8443");
    assert_eq!(a[0].proxies[0].ca_file.as_deref(), Some(std::path::Path::new("/etc/nsproxy/proxy-ca.pem")));
    for (bad, want) in [
        ("'https://10.0.0.7:8443', ca_file: rel.pem", "proxies[0].ca_file: expected an absolute path"),
        ("'http://10.0.0.7:8443', ca_file: /ca.pem", "proxies[0].ca_file: ca_file is only used with https:// proxies"),
        ("'ftp://10.0.0.7:8443'", "https://host:port"),
    ] {
        let errs =
            parse(&good.replace("'https://10.0.0.7:8443', ca_file: /etc/nsproxy/proxy-ca.pem", bad)).unwrap_err();
        assert!(errs.iter().any(|e| e.contains(want)), "{bad}: {errs:#?}");
    }
}
