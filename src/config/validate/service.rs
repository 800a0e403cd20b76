//! `external_service` (fleet mode).

use super::*;

pub(super) const SERVICE_KEYS: &[&str] = &[
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

pub(super) fn short_text(
    ctx: &mut Ctx,
    m: &Mapping,
    key: &str,
    path: &FieldPath,
    max: usize,
) -> Option<Option<String>> {
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

pub(super) fn external_service(ctx: &mut Ctx, v: &Value, path: &FieldPath) -> Option<Option<ExternalService>> {
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
