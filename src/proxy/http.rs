//! HTTP CONNECT client handshake: the request, and a response parser that
//! leaves any bytes after the header for the relay.

use base64::Engine;

use super::{Failure, Target};

/// Largest response head we accept from a proxy.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

pub fn request(target: &Target, creds: Option<(&str, &str)>) -> Vec<u8> {
    let authority = match target {
        Target::Ip(a) => a.to_string(),
        Target::Name(h, p) => format!("{h}:{p}"),
    };
    let mut s = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some((u, p)) = creds {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        s.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// `Ok(None)`: incomplete; `Ok(Some(n))`: a 2xx response whose head is the
/// first `n` bytes.
pub fn parse_response(buf: &[u8]) -> Result<Option<usize>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let used = match resp.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
            return Err(Failure::Protocol(format!("response head longer than {MAX_RESPONSE_HEAD} bytes")));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return Err(Failure::Protocol("more than 64 response headers".into())),
        Err(e) => return Err(Failure::Protocol(format!("not an HTTP response: {e}"))),
    };
    let code = resp.code.unwrap_or(0);
    let reason = resp.reason.unwrap_or("").chars().take(80).collect::<String>();
    match code {
        200..=299 => Ok(Some(used)),
        // 407 is the standard answer; some proxies (tinyproxy) send 401.
        401 | 407 => Err(Failure::Auth(format!(" (HTTP {code} {reason})"))),
        // 502/504: the proxy could not reach the destination.
        502 | 504 => Err(Failure::Refused { reason: format!("HTTP {code} {reason}"), destination: true }),
        _ => Err(Failure::Refused { reason: format!("HTTP {code} {reason}"), destination: false }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_auth_header() {
        let r = String::from_utf8(request(&Target::Name("h.test".into(), 443), Some(("u", "p")))).unwrap();
        assert_eq!(r, "CONNECT h.test:443 HTTP/1.1\r\nHost: h.test:443\r\nProxy-Authorization: Basic dTpw\r\n\r\n");
        let r = String::from_utf8(request(&Target::Ip("[::1]:80".parse().unwrap()), None)).unwrap();
        assert!(r.starts_with("CONNECT [::1]:80 HTTP/1.1\r\n"));
    }

    #[test]
    fn keeps_bytes_after_the_head() {
        let buf = b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\nSSH-2.0-banner";
        let n = parse_response(buf).unwrap().unwrap();
        assert_eq!(&buf[n..], b"SSH-2.0-banner");
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), Ok(None));
    }

    #[test]
    fn error_statuses() {
        assert!(matches!(parse_response(b"HTTP/1.1 407 Proxy Auth\r\n\r\n"), Err(Failure::Auth(_))));
        assert!(matches!(parse_response(b"HTTP/1.0 401 Unauthorized\r\n\r\n"), Err(Failure::Auth(_))));
        assert!(matches!(
            parse_response(b"HTTP/1.1 403 Forbidden\r\n\r\n"),
            Err(Failure::Refused { destination: false, .. })
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.0 502 Bad Gateway\r\n\r\n"),
            Err(Failure::Refused { destination: true, .. })
        ));
        assert!(matches!(parse_response(b"HTTP/1.1 503 Busy\r\n\r\n"), Err(Failure::Refused { .. })));
        assert!(matches!(parse_response(b"\x05\x00garbage\r\n\r\n"), Err(Failure::Protocol(_))));
        let huge = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &vec![b'a'; MAX_RESPONSE_HEAD]].concat();
        assert!(matches!(parse_response(&huge), Err(Failure::Protocol(_))));
        let many: String = std::iter::once("HTTP/1.1 200 OK\r\n".to_string())
            .chain((0..70).map(|i| format!("X{i}: y\r\n")))
            .chain(std::iter::once("\r\n".to_string()))
            .collect();
        assert!(matches!(parse_response(many.as_bytes()), Err(Failure::Protocol(_))));
    }
}
