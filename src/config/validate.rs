//! Turns YAML text into validated accounts, collecting every problem.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::lines::{FieldPath, LineIndex};
use super::model::*;
use super::overrides::{self, Applied, Overrides};
use super::{Problem, Problems, duration};

pub const DEFAULT_MTU: u32 = 65000;

struct Ctx<'a> {
    file: &'a Path,
    lines: LineIndex,
    problems: Vec<Problem>,
    /// Fields set by overrides, and by which (latest last).
    overridden: Vec<(FieldPath, String)>,
}

impl Ctx<'_> {
    fn problem(&mut self, path: &FieldPath, message: impl Into<String>) {
        let via = self.overridden.iter().rev().find(|(f, _)| overrides::concerns(f, path)).map(|(_, s)| s.clone());
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            line: if via.is_some() { None } else { self.lines.locate(path) },
            field: path.to_string(),
            message: message.into(),
            via,
        });
    }

    /// `v` as a mapping whose keys are all in `known`; reports unknown keys.
    fn mapping<'v>(&mut self, v: &'v Value, path: &FieldPath, known: &[&str]) -> Option<&'v Mapping> {
        let Some(m) = v.as_mapping() else {
            self.problem(path, format!("expected a mapping with keys {}", known.join(", ")));
            return None;
        };
        for k in m.keys() {
            match k.as_str() {
                Some(s) if known.contains(&s) => {}
                Some(s) => {
                    let p = path.key(s);
                    self.problem(&p, format!("unknown field {s:?}; expected one of: {}", known.join(", ")));
                }
                None => self.problem(path, "keys must be strings"),
            }
        }
        Some(m)
    }

    fn get<T: DeserializeOwned>(&mut self, m: &Mapping, key: &str, path: &FieldPath, what: &str) -> Option<T> {
        let v = m.get(key)?;
        match serde_yaml::from_value::<T>(v.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.problem(&path.key(key), format!("expected {what}: {e}"));
                None
            }
        }
    }

    fn require<T: DeserializeOwned>(&mut self, m: &Mapping, key: &str, path: &FieldPath, what: &str) -> Option<T> {
        if !m.contains_key(key) {
            self.problem(path, format!("missing field {key:?} ({what})"));
            return None;
        }
        self.get(m, key, path, what)
    }

    fn duration(&mut self, m: &Mapping, key: &str, path: &FieldPath, default: Duration) -> Option<Duration> {
        let Some(v) = m.get(key) else { return Some(default) };
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                self.problem(&path.key(key), "expected a duration such as 500ms, 30s, 5m, 2h or 1d");
                return None;
            }
        };
        match duration::parse(&text) {
            Ok(d) if d.is_zero() => {
                self.problem(&path.key(key), "must be longer than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(&path.key(key), e);
                None
            }
        }
    }

    fn ranged(&mut self, m: &Mapping, key: &str, path: &FieldPath, lo: u64, hi: u64, default: u64) -> Option<u64> {
        let what = format!("a whole number from {lo} to {hi}");
        let Some(n) = self.get::<u64>(m, key, path, &what) else {
            return if m.contains_key(key) { None } else { Some(default) };
        };
        if n < lo || n > hi {
            self.problem(&path.key(key), format!("expected {what}, got {n}"));
            return None;
        }
        Some(n)
    }
}

fn is_name(s: &str, max: usize, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || extra.contains(&c))
        && !s.starts_with('-')
}

/// Parses one policy file's text, checking names are unique within it.
/// `file` is only used in messages.
pub fn parse_str(file: &Path, text: &str) -> Result<Vec<Account>, Problems> {
    parse_str_with(file, text, &Overrides::default())
}

/// `parse_str` with overrides applied (those naming no account here are
/// ignored).
pub fn parse_str_with(file: &Path, text: &str, ov: &Overrides) -> Result<Vec<Account>, Problems> {
    let (accounts, mut problems, _) = parse_one(file, text, ov);
    check_unique(&accounts, &mut problems);
    if problems.is_empty() { Ok(accounts) } else { Err(Problems(problems)) }
}

/// Parses one policy file's text without the uniqueness check: the accounts
/// that are valid, every problem found, and which overrides reached an
/// account of this file.
pub fn parse_one(file: &Path, text: &str, ov: &Overrides) -> (Vec<Account>, Vec<Problem>, Vec<bool>) {
    let mut ctx = Ctx { file, lines: LineIndex::build(text), problems: Vec::new(), overridden: Vec::new() };
    let mut reached = vec![false; ov.items.len()];
    let mut root: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let line = e.location().map(|l| l.line());
            let p = Problem {
                file: file.to_path_buf(),
                line,
                field: String::new(),
                message: format!("not valid YAML: {e}"),
                via: None,
            };
            return (Vec::new(), vec![p], reached);
        }
    };
    for (i, o) in ov.items.iter().enumerate() {
        match overrides::apply(&mut root, o) {
            Ok(Applied::Changed(at)) => {
                reached[i] = true;
                ctx.overridden.push((at, o.source.clone()));
            }
            Ok(Applied::NotHere) => {}
            Err(e) => {
                reached[i] = true;
                ctx.problems.push(Problem {
                    file: file.to_path_buf(),
                    line: None,
                    field: String::new(),
                    message: e,
                    via: Some(o.source.clone()),
                });
            }
        }
    }
    let top = FieldPath::default();
    let mut accounts = Vec::new();
    if let Some(m) = ctx.mapping(&root, &top, &["accounts", "secrets"]) {
        let default_key = match m.get("secrets") {
            None => Ok(None),
            Some(v) => key_source(&mut ctx, v, &top.key("secrets")).map(Some).ok_or(()),
        };
        match m.get("accounts") {
            None => ctx.problem(&top, "missing field \"accounts\" (a list of accounts)"),
            Some(Value::Sequence(seq)) => {
                if seq.is_empty() {
                    ctx.problem(&top.key("accounts"), "expected at least one account");
                }
                for (i, v) in seq.iter().enumerate() {
                    if let Some(a) = account(&mut ctx, v, &top.key("accounts").index(i), &default_key) {
                        accounts.push(a);
                    }
                }
            }
            Some(_) => ctx.problem(&top.key("accounts"), "expected a list of accounts"),
        }
    }
    (accounts, ctx.problems, reached)
}

const ACCOUNT_KEYS: &[&str] = &[
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
    "metrics",
    "secrets",
    "external_service",
];

/// `default_key`: the file's top-level `secrets` (`Err` if it was invalid).
fn account(ctx: &mut Ctx, v: &Value, path: &FieldPath, default_key: &Result<Option<KeySource>, ()>) -> Option<Account> {
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
        None => name.as_ref().map(|n| format!("nsp-{n}")),
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
    let ipv6 = match ctx.get::<String>(m, "ipv6", path, "block or proxy").as_deref() {
        None | Some("block") => Some(Ipv6Mode::Block),
        Some("proxy") => Some(Ipv6Mode::Proxy),
        Some(o) => {
            ctx.problem(&path.key("ipv6"), format!("expected block or proxy, got {o:?}"));
            None
        }
    };
    let udp = match ctx.get::<String>(m, "udp", path, "block").as_deref() {
        None | Some("block") => Some(UdpMode::Block),
        Some("proxy") => {
            ctx.problem(&path.key("udp"), "udp: proxy (SOCKS5 UDP ASSOCIATE) is not supported yet; use block");
            None
        }
        Some(o) => {
            ctx.problem(&path.key("udp"), format!("expected block, got {o:?}"));
            None
        }
    };
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
    let health_check = match m.get("health_check") {
        None => Some(None),
        Some(v) => health(ctx, v, &path.key("health_check")).map(Some),
    };
    let pool = match m.get("pool") {
        None => Some(PoolPolicy { failback: false }),
        Some(v) => {
            let p = path.key("pool");
            ctx.mapping(v, &p, &["failback"]).and_then(|pm| {
                let failback = if pm.contains_key("failback") {
                    ctx.get::<bool>(pm, "failback", &p, "true or false")
                } else {
                    Some(false)
                };
                failback.map(|failback| PoolPolicy { failback })
            })
        }
    };
    let egress_check = match m.get("egress_check") {
        None => Some(None),
        Some(v) => {
            let p = path.key("egress_check");
            ctx.mapping(v, &p, &["url", "timeout"]).and_then(|em| {
                let url: Option<String> = ctx.require(em, "url", &p, "an http:// URL that answers with your IP");
                let url = url.and_then(|u| match parse_http_url(&u) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        ctx.problem(&p.key("url"), e);
                        None
                    }
                });
                let timeout = ctx.duration(em, "timeout", &p, Duration::from_secs(10));
                Some(Some(EgressCheck { url: url?, timeout: timeout? }))
            })
        }
    };
    // Labels as written, so a proxy with another error still counts here.
    let labels: Vec<String> = match m.get("proxies") {
        Some(Value::Sequence(seq)) => {
            seq.iter().filter_map(|p| p.get("label").and_then(Value::as_str).map(str::to_string)).collect()
        }
        _ => Vec::new(),
    };
    let rules = rules(ctx, m, path, &labels);
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
        origin: Origin { file: ctx.file.to_path_buf(), line: ctx.lines.locate(path) },
        exec,
        proxies,
        dns: dns?,
        ipv6: ipv6?,
        udp: udp?,
        mtu: mtu?,
        limits: limits?,
        health_check: health_check?,
        pool: pool?,
        egress_check: egress_check?,
        rules: rules?,
        metrics: metrics?,
        secrets_key: secrets_key?,
        external_service: external_service?,
    })
}

const SERVICE_KEYS: &[&str] = &[
    "enabled",
    "endpoints",
    "auth_method",
    "token_file",
    "token_env",
    "token_encrypted",
    "client_cert_file",
    "client_key_file",
    "ca_file",
    "timeout_seconds",
    "cache_ttl_seconds",
    "circuit_breaker",
    "breaker_failures",
    "breaker_cooldown_seconds",
    "fallback_to_embedded",
    "client_id",
    "connection_type",
    "region",
    "exchange_id",
];

/// `https://host[:port][/base]`.
pub fn parse_service_url(u: &str) -> Result<ServiceEndpoint, String> {
    let expected = "expected https://host[:port][/path]";
    let rest = match u.split_once("://") {
        Some((s, r)) if s.eq_ignore_ascii_case("https") => r,
        Some((s, _)) => return Err(format!("unsupported scheme {s:?}: the proxy service is reached over https only")),
        None => return Err(format!("{expected}, got {u:?}")),
    };
    let (hostport, base) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if hostport.contains('@') || base.contains(['?', '#']) {
        return Err(format!("{expected} (no credentials, query or fragment)"));
    }
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h.split_once(']').ok_or_else(|| format!("{expected}, got {u:?}"))?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("{expected}, got {u:?}"));
    }
    let port = match port {
        None => 443,
        Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| format!("invalid port {p:?}"))?,
    };
    Ok(ServiceEndpoint { host, port, base: base.to_string() })
}

fn short_text(ctx: &mut Ctx, m: &Mapping, key: &str, path: &FieldPath, max: usize) -> Option<Option<String>> {
    match ctx.get::<String>(m, key, path, "a short text") {
        Some(s) if s.is_empty() || s.len() > max || !s.chars().all(|c| c.is_ascii_graphic()) => {
            ctx.problem(&path.key(key), format!("expected 1 to {max} printable characters without spaces"));
            None
        }
        Some(s) => Some(Some(s)),
        None if m.contains_key(key) => None,
        None => Some(None),
    }
}

fn external_service(ctx: &mut Ctx, v: &Value, path: &FieldPath) -> Option<Option<ExternalService>> {
    let m = ctx.mapping(v, path, SERVICE_KEYS)?;
    let flag = |ctx: &mut Ctx, key: &str, default: bool| {
        if m.contains_key(key) { ctx.get::<bool>(m, key, path, "true or false") } else { Some(default) }
    };
    let enabled = flag(ctx, "enabled", true);
    let circuit_breaker = flag(ctx, "circuit_breaker", true);
    let fallback = flag(ctx, "fallback_to_embedded", true);
    let endpoints: Option<Vec<String>> = ctx.require(m, "endpoints", path, "a list of https:// URLs, tried in order");
    let endpoints = endpoints.and_then(|list| {
        if list.is_empty() {
            ctx.problem(&path.key("endpoints"), "expected at least one https:// URL");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, u) in list.iter().enumerate() {
            match parse_service_url(u) {
                Ok(e) => out.push(e),
                Err(e) => {
                    ctx.problem(&path.key("endpoints").index(i), e);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    });
    let method: Option<String> = ctx.require(m, "auth_method", path, "bearer_token, api_key or mutual_tls");
    let token = secret_ref(ctx, m, path, "token");
    let cert: Option<PathBuf> = ctx.get(m, "client_cert_file", path, "an absolute file path");
    let key: Option<PathBuf> = ctx.get(m, "client_key_file", path, "an absolute file path");
    let auth = match (method.as_deref(), token) {
        (Some(meth @ ("bearer_token" | "api_key")), Ok(Some(t))) => {
            if cert.is_some() || key.is_some() {
                ctx.problem(
                    path,
                    format!("client_cert_file and client_key_file belong to auth_method mutual_tls, not {meth}"),
                );
                None
            } else if meth == "api_key" {
                Some(ServiceAuth::ApiKey(t))
            } else {
                Some(ServiceAuth::BearerToken(t))
            }
        }
        (Some("bearer_token" | "api_key"), Ok(None)) => {
            ctx.problem(path, "this auth_method needs token_file, token_env or token_encrypted");
            None
        }
        (Some("mutual_tls"), Ok(t)) => {
            if t.is_some() {
                ctx.problem(path, "auth_method mutual_tls takes client_cert_file and client_key_file, not a token");
            }
            match (cert, key) {
                (Some(c), Some(k)) if c.is_absolute() && k.is_absolute() && t.is_none() => {
                    Some(ServiceAuth::MutualTls { cert_file: c, key_file: k })
                }
                (Some(_), Some(_)) if t.is_some() => None,
                (Some(_), Some(_)) => {
                    ctx.problem(path, "client_cert_file and client_key_file must be absolute paths");
                    None
                }
                _ => {
                    ctx.problem(path, "auth_method mutual_tls needs client_cert_file and client_key_file");
                    None
                }
            }
        }
        (Some(o), _) => {
            ctx.problem(&path.key("auth_method"), format!("expected bearer_token, api_key or mutual_tls, got {o:?}"));
            None
        }
        (None, _) => None,
    };
    let ca_file: Option<PathBuf> =
        ctx.require(m, "ca_file", path, "the PEM file of the CA that signed the service's certificate");
    let ca_file = ca_file.filter(|c| {
        let ok = c.is_absolute();
        if !ok {
            ctx.problem(&path.key("ca_file"), "expected an absolute path");
        }
        ok
    });
    let timeout = ctx.ranged(m, "timeout_seconds", path, 1, 60, 5);
    let cache_ttl = ctx.ranged(m, "cache_ttl_seconds", path, 60, 3600, 300);
    let breaker_failures = ctx.ranged(m, "breaker_failures", path, 1, 20, 3);
    let breaker_cooldown = ctx.ranged(m, "breaker_cooldown_seconds", path, 1, 3600, 30);
    let client_id = short_text(ctx, m, "client_id", path, 128);
    let connection_type = short_text(ctx, m, "connection_type", path, 32);
    let region = short_text(ctx, m, "region", path, 64);
    let exchange_id = short_text(ctx, m, "exchange_id", path, 64);
    Some(Some(ExternalService {
        enabled: enabled?,
        endpoints: endpoints?,
        auth: auth?,
        ca_file: ca_file?,
        timeout: Duration::from_secs(timeout?),
        cache_ttl: Duration::from_secs(cache_ttl?),
        circuit_breaker: circuit_breaker?,
        breaker_failures: breaker_failures? as u32,
        breaker_cooldown: Duration::from_secs(breaker_cooldown?),
        fallback_to_embedded: fallback?,
        client_id: client_id?,
        connection_type: connection_type?.unwrap_or_else(|| "all".into()),
        region: region?,
        exchange_id: exchange_id?,
    }))
}

const PROXY_KEYS: &[&str] = &[
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
];

fn proxy(ctx: &mut Ctx, v: &Value, path: &FieldPath) -> Option<ProxyEntry> {
    let m = ctx.mapping(v, path, PROXY_KEYS)?;
    let label: Option<String> = ctx.require(m, "label", path, "a short name for this proxy");
    let label = label.filter(|l| {
        let ok = !l.is_empty() && l.len() <= 64 && l.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            ctx.problem(&path.key("label"), format!("invalid label {l:?}: use 1-64 of A-Z, a-z, 0-9, '-', '_', '.'"));
        }
        ok
    });
    let url: Option<String> = ctx.require(m, "url", path, "socks5://host:port or http://host:port");
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
    })
}

fn env_name_ok(e: &str) -> bool {
    !e.is_empty()
        && e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !e.starts_with(|c: char| c.is_ascii_digit())
}

/// `<what>_file`, `<what>_env` or `<what>_encrypted`: at most one. `Err`
/// when a problem was reported.
fn secret_ref(ctx: &mut Ctx, m: &Mapping, path: &FieldPath, what: &str) -> Result<Option<SecretRef>, ()> {
    let (kf, ke, kx) = (format!("{what}_file"), format!("{what}_env"), format!("{what}_encrypted"));
    let given: Vec<&String> = [&kf, &ke, &kx].into_iter().filter(|k| m.contains_key(k.as_str())).collect();
    if given.len() > 1 {
        let names: Vec<&str> = given.iter().map(|s| s.as_str()).collect();
        ctx.problem(path, format!("give one of {kf}, {ke} or {kx}, not {}", names.join(" and ")));
        return Err(());
    }
    if m.contains_key(kf.as_str()) {
        let f: PathBuf = ctx.get(m, &kf, path, "an absolute file path").ok_or(())?;
        if !f.is_absolute() {
            ctx.problem(&path.key(&kf), format!("expected an absolute path, got {:?}", f.display()));
            return Err(());
        }
        return Ok(Some(SecretRef::File(f)));
    }
    if m.contains_key(ke.as_str()) {
        let e: String = ctx.get(m, &ke, path, "an environment variable name").ok_or(())?;
        if !env_name_ok(&e) {
            ctx.problem(&path.key(&ke), format!("invalid environment variable name {e:?}"));
            return Err(());
        }
        if e.starts_with("NSPROXY_") {
            ctx.problem(&path.key(&ke), format!("{e}: NSPROXY_ variables are policy overrides; pick another name"));
            return Err(());
        }
        return Ok(Some(SecretRef::Env(e)));
    }
    if m.contains_key(kx.as_str()) {
        let t: String = ctx.get(m, &kx, path, "a Fernet token (gAAAAA...)").ok_or(())?;
        let t = t.trim().to_string();
        if let Err(e) = crate::secrets::fernet::token_shape(&t) {
            ctx.problem(&path.key(&kx), format!("not a Fernet token: {e}"));
            return Err(());
        }
        return Ok(Some(SecretRef::Encrypted(Token(t))));
    }
    Ok(None)
}

/// `secrets: {key_file, key_name}`: where the Fernet key is.
fn key_source(ctx: &mut Ctx, v: &Value, path: &FieldPath) -> Option<KeySource> {
    let m = ctx.mapping(v, path, &["key_file", "key_name"])?;
    let file: PathBuf = ctx.require(m, "key_file", path, "the absolute path of the Fernet key file")?;
    if !file.is_absolute() {
        ctx.problem(&path.key("key_file"), format!("expected an absolute path, got {:?}", file.display()));
        return None;
    }
    let name: Option<String> = match ctx.get::<String>(m, "key_name", path, "a variable name in the key file") {
        Some(n) if !env_name_ok(&n) => {
            ctx.problem(&path.key("key_name"), format!("invalid variable name {n:?}"));
            return None;
        }
        Some(n) => Some(n),
        None if m.contains_key("key_name") => return None,
        None => None,
    };
    Some(KeySource { file, name })
}

/// `socks5://host:port` or `http://host:port`; no credentials, path or query.
pub fn parse_proxy_url(u: &str) -> Result<(Scheme, String, u16), String> {
    let expected = "expected socks5://host:port or http://host:port";
    let (scheme, rest) = u.split_once("://").ok_or_else(|| format!("{expected}, got {u:?}"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "socks5" | "socks5h" => Scheme::Socks5,
        "http" => Scheme::Http,
        s => return Err(format!("unsupported proxy scheme {s:?}: {expected}")),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err("credentials in the URL are not accepted: use username and password_file, password_env or password_encrypted".into());
    }
    if rest.contains(['/', '?', '#']) {
        return Err(format!("{expected} (no path or query), got {u:?}"));
    }
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let (h, p) = r.split_once(']').ok_or_else(|| format!("unclosed '[' in {u:?}"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("invalid IPv6 address {h:?} in {u:?}"));
        }
        (h.to_string(), p.strip_prefix(':').ok_or_else(|| format!("missing port in {u:?}: {expected}"))?)
    } else {
        let (h, p) = rest.rsplit_once(':').ok_or_else(|| format!("missing port in {u:?}: {expected}"))?;
        (h.to_string(), p)
    };
    if host.is_empty() {
        return Err(format!("missing host in {u:?}"));
    }
    if !host.contains(':') && !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_') {
        return Err(format!("invalid host {host:?} in {u:?}"));
    }
    let port: u16 = match port.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => n as u16,
        _ => return Err(format!("invalid port {port:?} in {u:?}: expected 1-65535")),
    };
    Ok((scheme, host, port))
}

fn dns(ctx: &mut Ctx, m: &Mapping, path: &FieldPath) -> Option<Dns> {
    let Some(v) = m.get("dns") else { return Some(Dns { mode: DnsMode::FakeIp, resolver: None }) };
    let p = path.key("dns");
    let dm = ctx.mapping(v, &p, &["mode", "resolver"])?;
    let mode = match ctx.get::<String>(dm, "mode", &p, "fake-ip or tcp").as_deref() {
        None if dm.contains_key("mode") => None,
        None | Some("fake-ip") => Some(DnsMode::FakeIp),
        Some("tcp") => Some(DnsMode::Tcp),
        Some(o) => {
            ctx.problem(&p.key("mode"), format!("expected fake-ip or tcp, got {o:?}"));
            None
        }
    };
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
        mode => Some(Dns { mode, resolver }),
    }
}

fn limits(ctx: &mut Ctx, m: &Mapping, path: &FieldPath) -> Option<Limits> {
    let defaults = Limits {
        max_flows: 4096,
        max_half_open: 1024,
        idle_timeout: Duration::from_secs(2 * 3600),
        socket_buffer: 512 * 1024,
    };
    let Some(v) = m.get("limits") else { return Some(defaults) };
    let p = path.key("limits");
    let lm = ctx.mapping(v, &p, &["max_flows", "max_half_open", "idle_timeout", "socket_buffer"])?;
    let max_flows = ctx.ranged(lm, "max_flows", &p, 1, 65536, defaults.max_flows as u64);
    let max_half_open = ctx.ranged(lm, "max_half_open", &p, 1, 65536, defaults.max_half_open as u64);
    let idle_timeout = ctx.duration(lm, "idle_timeout", &p, defaults.idle_timeout);
    let socket_buffer = ctx.ranged(lm, "socket_buffer", &p, 16 * 1024, 64 << 20, defaults.socket_buffer as u64);
    Some(Limits {
        max_flows: max_flows? as u32,
        max_half_open: max_half_open? as u32,
        idle_timeout: idle_timeout?,
        socket_buffer: socket_buffer? as u32,
    })
}

fn health(ctx: &mut Ctx, v: &Value, p: &FieldPath) -> Option<HealthCheck> {
    let hm = ctx.mapping(v, p, &["interval", "timeout", "target", "failures_before_unhealthy"])?;
    let interval = ctx.duration(hm, "interval", p, Duration::from_secs(30));
    let timeout = ctx.duration(hm, "timeout", p, Duration::from_secs(5));
    let target: Option<String> = ctx.require(hm, "target", p, "tcp://host:port or http://host/path");
    let target = target.and_then(|t| {
        let parsed = if let Some(rest) = t.strip_prefix("tcp://") {
            match host_port(rest, None) {
                Ok((host, port)) => Ok(HealthTarget::Tcp { host, port }),
                Err(e) => Err(format!("expected tcp://host:port, got {t:?}: {e}")),
            }
        } else {
            parse_http_url(&t).map(HealthTarget::Http)
        };
        parsed.map_err(|e| ctx.problem(&p.key("target"), e)).ok()
    });
    let failures = ctx.ranged(hm, "failures_before_unhealthy", p, 1, 100, 3);
    Some(HealthCheck {
        interval: interval?,
        timeout: timeout?,
        target: target?,
        failures_before_unhealthy: failures? as u32,
    })
}

/// `host:port` (IPv6 in brackets); `default` when the port is omitted.
fn host_port(s: &str, default: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = if let Some(r) = s.strip_prefix('[') {
        let (h, rest) = r.split_once(']').ok_or("unclosed '['")?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| format!("invalid IPv6 address {h:?}"))?;
        (h, rest.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || (!host.contains(':') && !host.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)))
    {
        return Err(format!("invalid host {host:?}"));
    }
    let port = match (port, default) {
        (Some(p), _) => p.parse::<u16>().ok().filter(|n| *n > 0).ok_or(format!("invalid port {p:?}"))?,
        (None, Some(d)) => d,
        (None, None) => return Err("missing port".into()),
    };
    Ok((host.to_string(), port))
}

/// `http://host[:port][/path]`. HTTPS is not fetched (no TLS client yet).
pub fn parse_http_url(u: &str) -> Result<HttpUrl, String> {
    if u.starts_with("https://") {
        return Err(format!("{u:?}: https is not supported here yet; use an http:// URL"));
    }
    let rest = u.strip_prefix("http://").ok_or_else(|| format!("expected an http:// URL, got {u:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(format!("{u:?}: credentials in the URL are not accepted"));
    }
    if path.chars().any(|c| c.is_ascii_control() || c == ' ') || path.contains('#') {
        return Err(format!("{u:?}: invalid path"));
    }
    let (host, port) = host_port(authority, Some(80)).map_err(|e| format!("{u:?}: {e}"))?;
    Ok(HttpUrl { host, port, path: path.to_string() })
}

/// `host:port` (TCP) or `unix:/absolute/path`.
pub fn parse_metrics_listen(s: &str) -> Result<MetricsListen, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        let p = PathBuf::from(p);
        if !p.is_absolute() {
            return Err(format!("expected unix:/absolute/path, got {s:?}"));
        }
        return Ok(MetricsListen::Unix(p));
    }
    s.parse::<SocketAddr>()
        .map(MetricsListen::Tcp)
        .map_err(|_| format!("expected ip:port (e.g. 127.0.0.1:9464) or unix:/path, got {s:?}"))
}

fn rules(ctx: &mut Ctx, m: &Mapping, path: &FieldPath, labels: &[String]) -> Option<Vec<crate::rules::Rule>> {
    use crate::rules::{Action, Cidr, DomainPattern, Rule, parse_ports};
    let Some(v) = m.get("rules") else { return Some(Vec::new()) };
    let p = path.key("rules");
    let Some(seq) = v.as_sequence() else {
        ctx.problem(&p, "expected a list of rules");
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, rv) in seq.iter().enumerate() {
        let rp = p.index(i);
        let Some(rm) = ctx.mapping(rv, &rp, &["domain", "cidr", "port", "via", "block"]) else {
            ok = false;
            continue;
        };
        let mut parse = |key: &str, f: &dyn Fn(&str) -> Result<(), String>| -> Option<Option<String>> {
            let v = rm.get(key)?;
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => {
                    ctx.problem(&rp.key(key), "expected a string");
                    return Some(None);
                }
            };
            match f(&s) {
                Ok(()) => Some(Some(s)),
                Err(e) => {
                    ctx.problem(&rp.key(key), e);
                    Some(None)
                }
            }
        };
        let domain = parse("domain", &|s| DomainPattern::parse(s).map(|_| ()));
        let cidr = parse("cidr", &|s| Cidr::parse(s).map(|_| ()));
        let port = parse("port", &|s| parse_ports(s).map(|_| ()));
        let via: Option<String> = ctx.get(rm, "via", &rp, "a proxy label of this account");
        let block: Option<bool> = ctx.get(rm, "block", &rp, "true");
        if domain.is_none() && cidr.is_none() && port.is_none() {
            ctx.problem(&rp, "a rule needs at least one of domain, cidr, port");
            ok = false;
            continue;
        }
        let action = match (via, block) {
            (Some(l), None) => {
                if !labels.contains(&l) {
                    ctx.problem(
                        &rp.key("via"),
                        format!("no proxy labelled {l:?} in this account ({})", labels.join(", ")),
                    );
                    None
                } else {
                    Some(Action::Via(l))
                }
            }
            (None, Some(true)) => Some(Action::Block),
            (None, Some(false)) => {
                ctx.problem(&rp.key("block"), "block: false means nothing; give via: LABEL instead");
                None
            }
            (Some(_), Some(_)) => {
                ctx.problem(&rp, "give either via or block, not both");
                None
            }
            (None, None) if rm.contains_key("via") || rm.contains_key("block") => None,
            (None, None) => {
                ctx.problem(&rp, "missing via: LABEL or block: true");
                None
            }
        };
        let (Some(domain), Some(cidr), Some(port), Some(action)) = (
            domain.map_or(Some(None), |d| d.map(Some)),
            cidr.map_or(Some(None), |c| c.map(Some)),
            port.map_or(Some(None), |x| x.map(Some)),
            action,
        ) else {
            ok = false;
            continue;
        };
        out.push(Rule {
            domain: domain.and_then(|d| DomainPattern::parse(&d).ok()),
            cidr: cidr.and_then(|c| Cidr::parse(&c).ok()),
            ports: port.and_then(|x| parse_ports(&x).ok()),
            action,
        });
    }
    ok.then_some(out)
}

/// Account names and namespaces must be unique across every file loaded.
pub fn check_unique(accounts: &[Account], problems: &mut Vec<Problem>) {
    for (i, a) in accounts.iter().enumerate() {
        for b in &accounts[..i] {
            if a.name == b.name {
                problems.push(Problem {
                    file: a.origin.file.clone(),
                    line: a.origin.line,
                    field: "name".into(),
                    message: format!("duplicate account name {:?} (first defined at {})", a.name, b.origin),
                    via: None,
                });
            } else if a.namespace == b.namespace {
                problems.push(Problem {
                    file: a.origin.file.clone(),
                    line: a.origin.line,
                    field: "namespace".into(),
                    message: format!("namespace {:?} is also used by account {:?} ({})", a.namespace, b.name, b.origin),
                    via: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
