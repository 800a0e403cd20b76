//! The URL and address forms a policy accepts: proxy URLs, the proxy
//! service's URL, http:// check URLs, metrics listen addresses. Pure.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::model::*;

/// `socks5://host:port`, `http://host:port` or `https://host:port` (HTTP
/// CONNECT over TLS); no credentials, path or query.
pub fn parse_proxy_url(u: &str) -> Result<(Scheme, String, u16), String> {
    let expected = "expected socks5://host:port, http://host:port or https://host:port";
    let (scheme, rest) = u.split_once("://").ok_or_else(|| format!("{expected}, got {u:?}"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "socks5" | "socks5h" => Scheme::Socks5,
        "http" => Scheme::Http,
        "https" => Scheme::Https,
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

/// `host:port` (IPv6 in brackets); `default` when the port is omitted.
pub(crate) fn host_port(s: &str, default: Option<u16>) -> Result<(String, u16), String> {
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

/// `http://host[:port][/path]` or `https://host[:port][/path]`.
pub fn parse_http_url(u: &str) -> Result<HttpUrl, String> {
    let (tls, rest) = if let Some(r) = u.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = u.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("expected an http:// or https:// URL, got {u:?}"));
    };
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
    let (host, port) = host_port(authority, Some(if tls { 443 } else { 80 })).map_err(|e| format!("{u:?}: {e}"))?;
    Ok(HttpUrl { tls, host, port, path: path.to_string() })
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
