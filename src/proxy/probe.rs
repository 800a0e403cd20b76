//! Checks through one proxy: a health probe (TCP connect, or HTTP GET
//! expecting 2xx) and the egress-IP fetch. The request builder and the
//! response/body parsers are pure; `check` and `egress_ip` do the I/O.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ProxyError, Target, Upstream};
use crate::config::{HealthTarget, HttpUrl};

/// Largest HTTP response read from a health or egress URL.
pub const MAX_RESPONSE: usize = 64 * 1024;

pub fn get_request(url: &HttpUrl) -> Vec<u8> {
    let host = if url.host.contains(':') { format!("[{}]", url.host) } else { url.host.clone() };
    let host = if url.port == 80 { host } else { format!("{host}:{}", url.port) };
    format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: nsproxy/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        url.path,
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// A complete response: status code and body (Content-Length honoured,
/// else up to EOF; chunked bodies are decoded).
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if eof => return Err("connection closed before the response head".into()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP response: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let body = &buf[head..];
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return match httparse::parse_chunk_size(body) {
            Ok(httparse::Status::Complete((start, size))) => {
                let end = start.checked_add(size as usize).ok_or("chunk too large")?;
                if body.len() >= end {
                    Ok(Some((code, body[start..end].to_vec())))
                } else if eof {
                    Err("connection closed inside a chunk".into())
                } else {
                    Ok(None)
                }
            }
            Ok(httparse::Status::Partial) if !eof => Ok(None),
            _ => Err("bad chunked body".into()),
        };
    }
    match header("content-length").map(|v| v.parse::<usize>()) {
        Some(Ok(n)) if body.len() >= n => Ok(Some((code, body[..n].to_vec()))),
        Some(Ok(_)) if eof => Err("connection closed before the end of the body".into()),
        Some(Ok(_)) => Ok(None),
        Some(Err(_)) => Err("bad Content-Length".into()),
        None if eof => Ok(Some((code, body.to_vec()))),
        None => Ok(None),
    }
}

/// The address in an IP echo service's body: plain text (`203.0.113.7`),
/// or JSON with an `ip` or `origin` field.
pub fn parse_ip_body(body: &[u8]) -> Result<IpAddr, String> {
    let text = String::from_utf8_lossy(body);
    let t = text.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(ip);
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(t) {
        for key in ["ip", "origin", "address"] {
            if let Some(ip) = v.get(key).and_then(|x| x.as_str()).and_then(|s| s.trim().parse().ok()) {
                return Ok(ip);
            }
        }
    }
    let shown: String = t.chars().take(60).filter(|c| !c.is_control()).collect();
    Err(format!("the echo service answered {shown:?}, not an IP address"))
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("{what} timed out after {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("{what}: {reason}")]
    Bad { what: String, reason: String },
}

impl CheckError {
    /// The check failed because this host is out of resources: it says
    /// nothing about the proxy.
    pub fn is_local(&self) -> bool {
        matches!(self, CheckError::Proxy(e) if e.is_local())
    }
}

async fn fetch(up: &Upstream, url: &HttpUrl, what: &str) -> Result<(u16, Vec<u8>), CheckError> {
    let bad = |reason: String| CheckError::Bad { what: what.to_string(), reason };
    let conn = up.connect(&Target::Name(url.host.clone(), url.port)).await?;
    let mut s: TcpStream = conn.stream;
    let mut buf = conn.leftover;
    s.write_all(&get_request(url)).await.map_err(|e| bad(e.to_string()))?;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(r) = parse_response(&buf, false).map_err(bad)? {
            return Ok(r);
        }
        if buf.len() > MAX_RESPONSE {
            return Err(bad(format!("response larger than {MAX_RESPONSE} bytes")));
        }
        let n = s.read(&mut chunk).await.map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            return parse_response(&buf, true).map_err(bad)?.ok_or_else(|| bad("empty response".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One health check through `up`: its latency, or why it failed. Without a
/// target, a TCP connection to the proxy itself.
pub async fn check(up: &Upstream, target: Option<&HealthTarget>, timeout: Duration) -> Result<Duration, CheckError> {
    let start = Instant::now();
    let what = match target {
        Some(t) => format!("health check {t}"),
        None => "health check (connect to the proxy)".into(),
    };
    let work = async {
        match target {
            Some(HealthTarget::Tcp { host, port }) => {
                up.connect(&Target::Name(host.clone(), *port)).await?;
                Ok(())
            }
            Some(HealthTarget::Http(url)) => match fetch(up, url, &what).await? {
                (200..=299, _) => Ok(()),
                (code, _) => Err(CheckError::Bad { what: what.clone(), reason: format!("HTTP status {code}") }),
            },
            None => up.reach().await.map_err(CheckError::from),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => Err(CheckError::Timeout { what, timeout }),
        Ok(r) => r.map(|()| start.elapsed()),
    }
}

/// The egress address seen through `up` from the echo URL.
pub async fn egress_ip(up: &Upstream, url: &HttpUrl, timeout: Duration) -> Result<IpAddr, CheckError> {
    let what = format!("egress check {url}");
    let work = async {
        match fetch(up, url, &what).await? {
            (200..=299, body) => parse_ip_body(&body).map_err(|reason| CheckError::Bad { what: what.clone(), reason }),
            (code, _) => Err(CheckError::Bad { what: what.clone(), reason: format!("HTTP status {code}") }),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(CheckError::Timeout { what: what.clone(), timeout }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_and_host() {
        let u = HttpUrl { host: "ip.echo.test".into(), port: 8080, path: "/ip?x=1".into() };
        let r = String::from_utf8(get_request(&u)).unwrap();
        assert!(r.starts_with("GET /ip?x=1 HTTP/1.1\r\nHost: ip.echo.test:8080\r\n"), "{r}");
        assert!(r.ends_with("Connection: close\r\n\r\n"));
        let u = HttpUrl { host: "::1".into(), port: 80, path: "/".into() };
        assert!(String::from_utf8(get_request(&u)).unwrap().contains("Host: [::1]\r\n"));
    }

    #[test]
    fn responses() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n192.0.2.7extra";
        assert_eq!(parse_response(full, false).unwrap(), Some((200, b"192.0.2.7".to_vec())));
        assert_eq!(parse_response(&full[..30], false).unwrap(), None);
        assert!(parse_response(&full[..45], true).is_err(), "short body at EOF");
        let no_len = b"HTTP/1.0 204 No Content\r\n\r\nabc";
        assert_eq!(parse_response(no_len, false).unwrap(), None);
        assert_eq!(parse_response(no_len, true).unwrap(), Some((204, b"abc".to_vec())));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n::1\n\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked, false).unwrap(), Some((200, b"::1\n".to_vec())));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200", true).is_err());
    }

    #[test]
    fn ip_bodies() {
        assert_eq!(parse_ip_body(b" 203.0.113.7\n").unwrap(), "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(parse_ip_body(br#"{"ip": "2001:db8::1"}"#).unwrap(), "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(parse_ip_body(br#"{"origin":"198.51.100.2"}"#).unwrap(), "198.51.100.2".parse::<IpAddr>().unwrap());
        let e = parse_ip_body(b"<html>blocked</html>").unwrap_err();
        assert!(e.contains("not an IP address") && e.contains("blocked"), "{e}");
        assert!(parse_ip_body(b"").is_err());
    }
}
