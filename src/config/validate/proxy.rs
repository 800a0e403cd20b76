//! One pool member.

use super::*;

pub(super) const PROXY_KEYS: &[&str] = &[
    "label",
    "url",
    "username",
    "username_file",
    "username_env",
    "username_encrypted",
    "password",
    "password_file",
    "password_env",
    "password_encrypted",
    "priority",
    "enabled",
    "connect_timeout",
    "handshake_timeout",
    "expected_egress_ip",
    "ca_file",
];

pub(super) fn proxy(ctx: &mut Ctx, v: &Value, path: &FieldPath) -> Option<ProxyEntry> {
    let m = ctx.mapping(v, path, PROXY_KEYS)?;
    let label: Option<String> = ctx.require(m, "label", path, "a short name for this proxy");
    let label = label.filter(|l| {
        let ok = !l.is_empty() && l.len() <= 64 && l.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            ctx.problem(&path.key("label"), format!("invalid label {l:?}: use 1-64 of A-Z, a-z, 0-9, '-', '_', '.'"));
        }
        ok
    });
    let url: Option<String> = ctx.require(m, "url", path, "socks5://host:port, http://host:port or https://host:port");
    let parsed = url.and_then(|u| match parse_proxy_url(&u) {
        Ok(p) => Some(p),
        Err(e) => {
            ctx.problem(&path.key("url"), e);
            None
        }
    });
    let username = match ctx.get::<String>(m, "username", path, "a user name") {
        Some(u) if u.is_empty() || u.len() > 255 => {
            ctx.problem(&path.key("username"), "expected 1 to 255 bytes");
            Err(())
        }
        Some(u) => Ok(Some(UserRef::Plain(u))),
        None if m.contains_key("username") => Err(()),
        None => Ok(None),
    };
    if m.contains_key("password") {
        ctx.problem(
            &path.key("password"),
            "inline passwords are not accepted: use password_file (a root-owned 0600 file), password_env (an environment variable of the daemon) or password_encrypted (a Fernet token)",
        );
    }
    let user_secret = secret_ref(ctx, m, path, "username");
    let username = match (username, user_secret) {
        (Ok(Some(_)), Ok(Some(_))) => {
            ctx.problem(
                path,
                "give the user name one way: username, username_file, username_env or username_encrypted",
            );
            Err(())
        }
        (Ok(None), Ok(Some(r))) => Ok(Some(UserRef::Secret(r))),
        (Ok(u), Ok(None)) => Ok(u),
        _ => Err(()),
    };
    let password = secret_ref(ctx, m, path, "password");
    if let (Ok(u), Ok(pw)) = (&username, &password)
        && u.is_some() != pw.is_some()
        && !m.contains_key("password")
    {
        if u.is_some() {
            ctx.problem(path, "a user name is given without password_file, password_env or password_encrypted");
        } else {
            ctx.problem(
                path,
                "a password is given without a user name (username, username_file, username_env or username_encrypted)",
            );
        }
    }
    let (username, password) = (username.ok(), password.ok());
    let priority = ctx.ranged(m, "priority", path, 0, u32::MAX as u64, 100).map(|n| n as u32);
    let enabled =
        if m.contains_key("enabled") { ctx.get::<bool>(m, "enabled", path, "true or false") } else { Some(true) };
    let connect_timeout = ctx.duration(m, "connect_timeout", path, Duration::from_secs(5));
    let handshake_timeout = ctx.duration(m, "handshake_timeout", path, Duration::from_secs(10));
    let expected_egress_ip = match ctx.get::<String>(m, "expected_egress_ip", path, "an IP address") {
        None if m.contains_key("expected_egress_ip") => None,
        None => Some(None),
        Some(s) => match s.parse::<IpAddr>() {
            Ok(ip) => Some(Some(ip)),
            Err(_) => {
                ctx.problem(&path.key("expected_egress_ip"), format!("expected an IP address, got {s:?}"));
                None
            }
        },
    };
    let ca_file = match ctx.get::<String>(m, "ca_file", path, "a path to PEM certificates") {
        None if m.contains_key("ca_file") => None,
        None => Some(None),
        Some(f) if !f.starts_with('/') => {
            ctx.problem(&path.key("ca_file"), format!("expected an absolute path, got {f:?}"));
            None
        }
        Some(_) if parsed.as_ref().is_some_and(|(s, _, _)| *s != Scheme::Https) => {
            ctx.problem(&path.key("ca_file"), "ca_file is only used with https:// proxies (TLS to the proxy)");
            None
        }
        Some(f) => Some(Some(std::path::PathBuf::from(f))),
    };
    let (scheme, host, port) = parsed?;
    Some(ProxyEntry {
        label: label?,
        scheme,
        host,
        port,
        username: username?,
        password: password?,
        priority: priority?,
        enabled: enabled?,
        connect_timeout: connect_timeout?,
        handshake_timeout: handshake_timeout?,
        expected_egress_ip: expected_egress_ip?,
        ca_file: ca_file?,
    })
}
