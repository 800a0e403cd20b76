use super::*;

fn parse(text: &str) -> Result<Vec<Account>, Vec<String>> {
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
fn unimplemented_features_say_not_supported_yet() {
    let text = "\
accounts:
  - name: a
    proxies: [{label: p, url: 'socks5://h:1'}]
    ipv6: proxy
    udp: proxy
    dns: {mode: tcp, resolver: 9.9.9.9}
    health_check: {target: 'tcp://h:1'}
";
    let errs = parse(text).unwrap_err();
    assert_eq!(errs.iter().filter(|e| e.contains("not supported yet")).count(), 2, "{errs:#?}");
    assert!(!errs.iter().any(|e| e.contains("dns")), "dns mode tcp is supported: {errs:#?}");
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
