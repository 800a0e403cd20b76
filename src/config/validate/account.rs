//! An account: its own fields, DNS, limits and health check.

use super::*;
use crate::config::plan::Addresses;

pub(super) const ACCOUNT_KEYS: &[&str] = &[
    "name",
    "namespace",
    "exec",
    "proxies",
    "dns",
    "ipv6",
    "udp",
    "tun",
    "limits",
    "health_check",
    "pool",
    "egress_check",
    "rules",
    "host_services",
    "metrics",
    "secrets",
    "external_service",
];

/// `default_key`: the file's top-level `secrets` (`Err` if it was invalid).
pub(super) fn account(
    ctx: &mut Ctx,
    v: &Value,
    path: &FieldPath,
    default_key: &Result<Option<KeySource>, ()>,
) -> Option<Account> {
    let m = ctx.mapping(v, path, ACCOUNT_KEYS)?;
    let name: Option<String> = ctx.require(m, "name", path, "the account name");
    let name = name.filter(|n| {
        let ok = is_name(n, 32, &['_']);
        if !ok {
            ctx.problem(&path.key("name"), format!("invalid account name {n:?}: use 1-32 of a-z, 0-9, '-', '_'"));
        }
        ok
    });
    let namespace: Option<String> = match ctx.get::<String>(m, "namespace", path, "a namespace name") {
        Some(ns) if is_name(&ns, 48, &['_', '.']) && ns != "." && ns != ".." => Some(ns),
        Some(ns) => {
            ctx.problem(
                &path.key("namespace"),
                format!("invalid namespace name {ns:?}: use 1-48 of a-z, 0-9, '-', '_', '.'"),
            );
            None
        }
        None if m.contains_key("namespace") => None,
        None => name.as_ref().map(|n| crate::config::plan::default_namespace(n)),
    };

    let exec = match m.get("exec") {
        None => ExecAccess::default(),
        Some(v) => {
            let p = path.key("exec");
            match ctx.mapping(v, &p, &["users", "groups"]) {
                Some(em) => ExecAccess {
                    users: ctx.get(em, "users", &p, "a list of user names").unwrap_or_default(),
                    groups: ctx.get(em, "groups", &p, "a list of group names").unwrap_or_default(),
                },
                None => ExecAccess::default(),
            }
        }
    };

    let external_service = match m.get("external_service") {
        None => Some(None),
        Some(v) => external_service(ctx, v, &path.key("external_service")).map(|s| s.filter(|s| s.enabled)),
    };
    let fleet = matches!(external_service, Some(Some(_)));
    let mut proxies = Vec::new();
    match m.get("proxies") {
        None if fleet => {}
        None => ctx.problem(path, "missing field \"proxies\" (the account's proxy pool)"),
        Some(Value::Sequence(seq)) => {
            if seq.is_empty() && !fleet {
                ctx.problem(&path.key("proxies"), "expected at least one proxy");
            }
            for (i, pv) in seq.iter().enumerate() {
                let pp = path.key("proxies").index(i);
                if let Some(p) = proxy(ctx, pv, &pp) {
                    if proxies.iter().any(|q: &ProxyEntry| q.label == p.label) {
                        ctx.problem(&pp.key("label"), format!("duplicate proxy label {:?} in this account", p.label));
                    }
                    if fleet && p.label == SERVICE_LABEL {
                        ctx.problem(
                            &pp.key("label"),
                            "the label \"service\" is the proxy the external_service hands out; pick another",
                        );
                    }
                    proxies.push(p);
                }
            }
            if !seq.is_empty() && !proxies.is_empty() && !proxies.iter().any(|p| p.enabled) {
                ctx.problem(&path.key("proxies"), "every proxy is disabled: enable at least one");
            }
        }
        Some(_) => ctx.problem(&path.key("proxies"), "expected a list of proxies"),
    }

    let dns = dns(ctx, m, path);
    let ipv6 = ctx.choice(m, "ipv6", path, &[("block", Ipv6Mode::Block), ("proxy", Ipv6Mode::Proxy)], Ipv6Mode::Block);
    let udp = ctx.choice(m, "udp", path, &[("block", UdpMode::Block), ("proxy", UdpMode::Proxy)], UdpMode::Block);
    let mtu = match m.get("tun") {
        None => Some(DEFAULT_MTU),
        Some(v) => {
            let p = path.key("tun");
            ctx.mapping(v, &p, &["mtu"])
                .and_then(|tm| ctx.ranged(tm, "mtu", &p, 1280, 65535, DEFAULT_MTU as u64))
                .map(|n| n as u32)
        }
    };
    let limits = limits(ctx, m, path);
    let health_checks = health_checks(ctx, m.get("health_check"), &path.key("health_check"));
    let pool = match m.get("pool") {
        None => Some(PoolPolicy { failback: false, on_burn: OnBurn::KeepFlows }),
        Some(v) => {
            let p = path.key("pool");
            ctx.mapping(v, &p, &["failback", "on_burn"]).and_then(|pm| {
                let failback = if pm.contains_key("failback") {
                    ctx.get::<bool>(pm, "failback", &p, "true or false")
                } else {
                    Some(false)
                };
                let choices = [("keep-flows", OnBurn::KeepFlows), ("reset-flows", OnBurn::ResetFlows)];
                let on_burn = ctx.choice(pm, "on_burn", &p, &choices, OnBurn::KeepFlows);
                Some(PoolPolicy { failback: failback?, on_burn: on_burn? })
            })
        }
    };
    let egress_check = match m.get("egress_check") {
        None => Some(None),
        Some(v) => egress(ctx, v, &path.key("egress_check")).map(Some),
    };
    // Labels as written, so a proxy with another error still counts here.
    let labels: Vec<String> = match m.get("proxies") {
        Some(Value::Sequence(seq)) => {
            seq.iter().filter_map(|p| p.get("label").and_then(Value::as_str).map(str::to_string)).collect()
        }
        _ => Vec::new(),
    };
    let rules = rules(ctx, m, path, &labels);
    let host_services = host_services(ctx, m, path);
    let metrics = match m.get("metrics") {
        None => Some(None),
        Some(v) => {
            let p = path.key("metrics");
            ctx.mapping(v, &p, &["listen"]).and_then(|mm| {
                let l: Option<String> = ctx.require(mm, "listen", &p, "host:port or unix:/path");
                l.and_then(|l| match parse_metrics_listen(&l) {
                    Ok(x) => Some(Some(x)),
                    Err(e) => {
                        ctx.problem(&p.key("listen"), e);
                        None
                    }
                })
            })
        }
    };

    let secrets_key = match m.get("secrets") {
        Some(v) => key_source(ctx, v, &path.key("secrets")).map(Some),
        None => default_key.clone().ok(),
    };
    if let (Some(None), Some(es)) = (&secrets_key, m.get("external_service"))
        && es.get("token_encrypted").is_some()
    {
        ctx.problem(
            &path.key("external_service").key("token_encrypted"),
            "an encrypted value needs the Fernet key: set secrets.key_file in the account or at the top of the file",
        );
    }
    if let (Some(None), Some(Value::Sequence(seq))) = (&secrets_key, m.get("proxies")) {
        for (i, pv) in seq.iter().enumerate() {
            for k in ["username_encrypted", "password_encrypted"] {
                if pv.get(k).is_some() {
                    ctx.problem(
                        &path.key("proxies").index(i).key(k),
                        "an encrypted value needs the Fernet key: set secrets.key_file in the account or at the top of the file",
                    );
                }
            }
        }
    }

    Some(Account {
        name: name?,
        namespace: namespace?,
        origin: Origin { file: ctx.file.to_path_buf(), line: ctx.lines.locate(path), path: ctx.in_file(path) },
        exec,
        proxies,
        dns: dns?,
        ipv6: ipv6?,
        udp: udp?,
        mtu: mtu?,
        limits: limits?,
        health_checks: health_checks?,
        pool: pool?,
        egress_check: egress_check?,
        rules: rules?,
        host_services: host_services?,
        metrics: metrics?,
        secrets_key: secrets_key?,
        external_service: external_service?,
    })
}

pub(super) fn dns(ctx: &mut Ctx, m: &Mapping, path: &FieldPath) -> Option<Dns> {
    let Some(v) = m.get("dns") else {
        return Some(Dns { mode: DnsMode::FakeIp, resolver: None, fake_ip_range: Addresses::DEFAULT });
    };
    let p = path.key("dns");
    let dm = ctx.mapping(v, &p, &["mode", "resolver", "fake_ip_range"])?;
    let fake_ip_range = match ctx.get::<String>(dm, "fake_ip_range", &p, "an IPv4 range such as 198.18.0.0/15") {
        None => Some(Addresses::DEFAULT),
        Some(r) => match Addresses::parse(&r) {
            Ok(a) => Some(a),
            Err(e) => {
                ctx.problem(&p.key("fake_ip_range"), e);
                None
            }
        },
    };
    let mode = ctx.choice(dm, "mode", &p, &[("fake-ip", DnsMode::FakeIp), ("tcp", DnsMode::Tcp)], DnsMode::FakeIp);
    let resolver = match ctx.get::<String>(dm, "resolver", &p, "an IP address with optional :port") {
        None => None,
        Some(r) => {
            let parsed =
                r.parse::<SocketAddr>().ok().or_else(|| r.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
            if parsed.is_none() {
                ctx.problem(&p.key("resolver"), format!("expected an IP address with optional :port, got {r:?}"));
            }
            parsed
        }
    };
    match mode? {
        DnsMode::Tcp if resolver.is_none() && !dm.contains_key("resolver") => {
            ctx.problem(&p, "dns mode tcp needs a resolver (e.g. resolver: 9.9.9.9:53)");
            None
        }
        DnsMode::FakeIp if dm.contains_key("resolver") => {
            ctx.problem(&p.key("resolver"), "resolver is only used with mode: tcp");
            None
        }
        mode => Some(Dns { mode, resolver, fake_ip_range: fake_ip_range? }),
    }
}

/// The stack's buffer per flow and direction unless the policy says
/// otherwise (`send_buffer` follows `socket_buffer`).
const SOCKET_BUFFER: u32 = 256 * 1024;

pub(super) fn limits(ctx: &mut Ctx, m: &Mapping, path: &FieldPath) -> Option<Limits> {
    let defaults = Limits {
        max_flows: 4096,
        max_half_open: 1024,
        idle_timeout: Duration::from_secs(2 * 3600),
        socket_buffer: SOCKET_BUFFER,
        // The ring the program's downloads wait in for its ACKs: the
        // receive window's size. 128 KiB capped a single download where the
        // daemon's wake-ups are slow (docs/performance.md, "A send buffer
        // of 256 KiB again"); a bulk flow touches all of it.
        send_buffer: SOCKET_BUFFER,
        max_udp_flows: 1024,
        udp_idle_timeout: Duration::from_secs(60),
    };
    let Some(v) = m.get("limits") else { return Some(defaults) };
    let p = path.key("limits");
    let lm = ctx.mapping(
        v,
        &p,
        &[
            "max_flows",
            "max_half_open",
            "idle_timeout",
            "socket_buffer",
            "send_buffer",
            "max_udp_flows",
            "udp_idle_timeout",
        ],
    )?;
    let max_flows = ctx.ranged(lm, "max_flows", &p, 1, 65536, defaults.max_flows as u64);
    let max_half_open = ctx.ranged(lm, "max_half_open", &p, 1, 65536, defaults.max_half_open as u64);
    let idle_timeout = ctx.duration(lm, "idle_timeout", &p, defaults.idle_timeout);
    let socket_buffer = ctx.ranged(lm, "socket_buffer", &p, 16 * 1024, 64 << 20, defaults.socket_buffer as u64);
    // `socket_buffer` alone sizes both directions, as it always did.
    let send_default = socket_buffer.unwrap_or(defaults.send_buffer as u64);
    let send_buffer = ctx.ranged(lm, "send_buffer", &p, 16 * 1024, 64 << 20, send_default);
    let max_udp_flows = ctx.ranged(lm, "max_udp_flows", &p, 1, 65536, defaults.max_udp_flows as u64);
    let udp_idle_timeout = ctx.duration(lm, "udp_idle_timeout", &p, defaults.udp_idle_timeout);
    Some(Limits {
        max_flows: max_flows? as u32,
        max_half_open: max_half_open? as u32,
        idle_timeout: idle_timeout?,
        socket_buffer: socket_buffer? as u32,
        send_buffer: send_buffer? as u32,
        max_udp_flows: max_udp_flows? as u32,
        udp_idle_timeout: udp_idle_timeout?,
    })
}

/// `host_services`: loopback TCP services of the host, by name. Anything
/// else is refused: a host service is reached without the proxy.
pub(super) fn host_services(ctx: &mut Ctx, m: &Mapping, path: &FieldPath) -> Option<Vec<HostService>> {
    let Some(v) = m.get("host_services") else { return Some(Vec::new()) };
    let p = path.key("host_services");
    let Some(list) = v.as_sequence() else {
        ctx.problem(&p, "expected a list of {name, listen}");
        return None;
    };
    if list.len() > crate::config::plan::HOST_SERVICES_MAX {
        ctx.problem(&p, format!("at most {} host services", crate::config::plan::HOST_SERVICES_MAX));
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in list.iter().enumerate() {
        let ip = p.index(i);
        let Some(sm) = ctx.mapping(item, &ip, &["name", "listen"]) else {
            ok = false;
            continue;
        };
        let name = ctx.require::<String>(sm, "name", &ip, "a DNS label");
        let listen = ctx.require::<String>(sm, "listen", &ip, "a loopback address with its port, e.g. 127.0.0.1:5432");
        let (Some(name), Some(listen)) = (name, listen) else {
            ok = false;
            continue;
        };
        let label = !name.is_empty()
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-');
        if !label {
            ctx.problem(&ip.key("name"), format!("{name:?} is not a DNS label (a-z, 0-9, -)"));
            ok = false;
        } else if out.iter().any(|s: &HostService| s.name == name) {
            ctx.problem(&ip.key("name"), format!("host service {name} is listed twice"));
            ok = false;
        }
        match listen.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_loopback() && a.port() != 0 => out.push(HostService { name, listen: a }),
            Ok(a) => {
                ctx.problem(
                    &ip.key("listen"),
                    format!("{a} is not a loopback address and port: only services on the host's loopback may be listed (a host service is reached without the proxy)"),
                );
                ok = false;
            }
            Err(_) => {
                ctx.problem(
                    &ip.key("listen"),
                    format!("{listen:?} is not an address with a port, e.g. 127.0.0.1:5432"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    /// (receive, send) buffer sizes of the one account, or the problems.
    fn buffers(limits: &str) -> Result<(u32, u32), String> {
        let text = format!("accounts:\n  - name: a\n    proxies: [{{label: p, url: 'socks5://h:1'}}]\n{limits}");
        super::super::tests::parse(&text)
            .map(|a| (a[0].limits.socket_buffer, a[0].limits.send_buffer))
            .map_err(|problems| problems.join("\n"))
    }

    #[test]
    fn socket_buffers_default_to_256_kib_each_and_socket_buffer_alone_sizes_both() {
        assert_eq!(buffers(""), Ok((256 * 1024, 256 * 1024)));
        assert_eq!(buffers("    limits: {max_flows: 10}\n"), Ok((256 * 1024, 256 * 1024)));
        assert_eq!(buffers("    limits: {socket_buffer: 1048576}\n"), Ok((1 << 20, 1 << 20)));
        assert_eq!(buffers("    limits: {send_buffer: 65536}\n"), Ok((256 * 1024, 64 * 1024)));
        assert_eq!(buffers("    limits: {socket_buffer: 65536, send_buffer: 32768}\n"), Ok((64 * 1024, 32 * 1024)));
        let errs = buffers("    limits: {send_buffer: 1000}\n").expect_err("out of range");
        assert!(errs.contains("limits.send_buffer") && errs.contains("1000"), "{errs}");
    }
}
