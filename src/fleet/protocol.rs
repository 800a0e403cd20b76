//! The proxy service's JSON protocol: allocation request and answer,
//! feedback. Pure. Answers are parsed strictly (unknown fields refused,
//! size capped) and errors never echo a value: an answer carries proxy
//! credentials.

use serde::{Deserialize, Serialize};

use crate::config::Scheme;
use crate::secrets::Secret;

/// Largest answer accepted from the service.
pub const MAX_ANSWER: usize = 64 * 1024;

pub const REQUEST_PATH: &str = "/api/v1/proxy/request";
pub const FEEDBACK_PATH: &str = "/api/v1/proxy/feedback";

#[derive(Debug, Serialize)]
pub struct AllocRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange_id: Option<&'a str>,
    pub account: &'a str,
    pub connection_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<&'a str>,
    pub client_id: &'a str,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackPolicy {
    /// Refused by nsproxy (it would leak the host's address): treated as `Fail`.
    DirectConnection,
    EmbeddedFallback,
    Fail,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnswer {
    proxy_url: String,
    strategy: String,
    ttl_seconds: u64,
    fallback_policy: FallbackPolicy,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: serde_json::Value,
}

/// A proxy handed out by the service.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub username: Option<Secret>,
    pub password: Option<Secret>,
    pub strategy: String,
    pub ttl_seconds: u64,
    /// As the service asked, `DirectConnection` already turned into `Fail`.
    pub fallback_policy: FallbackPolicy,
    /// The service asked for `direct_connection`, which was refused.
    pub refused_direct: bool,
}

impl Allocation {
    /// `scheme://host:port`, without credentials: how it is shown and
    /// reported back.
    pub fn endpoint(&self) -> String {
        crate::config::endpoint(self.scheme, &self.host, self.port)
    }

    /// The same proxy as before (credentials included)?
    pub fn same_proxy(&self, other: &Allocation) -> bool {
        self.scheme == other.scheme
            && self.host == other.host
            && self.port == other.port
            && self.username == other.username
            && self.password == other.password
    }
}

/// A serde error without the values it may quote.
fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!("line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Syntax | Category::Eof => format!("not valid JSON ({at})"),
        Category::Io => "unreadable".into(),
        Category::Data => {
            let m = e.to_string();
            if m.starts_with("unknown field") || m.starts_with("missing field") || m.starts_with("unknown variant") {
                m
            } else {
                format!("a field has the wrong type or value ({at})")
            }
        }
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let v = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("bad %-escape in the credentials")?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "credentials are not UTF-8".to_string())
}

/// Parses `scheme://[user[:pass]@]host:port` as the service sends it.
type ParsedUrl = (Scheme, String, u16, Option<Secret>, Option<Secret>);

fn parse_proxy_url(u: &str) -> Result<ParsedUrl, String> {
    let (scheme, rest) = u.split_once("://").ok_or("proxy_url is not scheme://host:port")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "socks5" | "socks5h" => Scheme::Socks5,
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err("proxy_url: unsupported scheme (socks5, http or https)".into()),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (user, pass) = match userinfo {
        None => (None, None),
        Some(ui) => {
            let (u, p) = ui.split_once(':').map(|(u, p)| (u, Some(p))).unwrap_or((ui, None));
            let u = percent_decode(u)?;
            let p = p.map(percent_decode).transpose()?;
            if u.is_empty() || u.len() > 255 || p.as_ref().is_some_and(|p| p.len() > 255) {
                return Err("proxy_url: user name and password must be 1 to 255 bytes".into());
            }
            (Some(Secret::new(u)), p.map(Secret::new))
        }
    };
    // Validate host:port with the policy's own parser (no credentials, path).
    let plain = format!("{scheme}://{hostport}");
    let (_, host, port) =
        crate::config::parse_proxy_url(&plain).map_err(|_| "proxy_url: bad host or port".to_string())?;
    Ok((scheme, host, port, user, pass))
}

/// Parses an allocation answer.
pub fn parse_answer(body: &[u8]) -> Result<Allocation, String> {
    if body.len() > MAX_ANSWER {
        return Err(format!("answer larger than {MAX_ANSWER} bytes"));
    }
    let raw: RawAnswer = serde_json::from_slice(body).map_err(|e| json_error(&e))?;
    let (scheme, host, port, username, password) = parse_proxy_url(raw.proxy_url.trim())?;
    if username.is_some() != password.is_some() {
        return Err("proxy_url: give both user name and password, or neither".into());
    }
    if raw.ttl_seconds == 0 || raw.ttl_seconds > 86_400 {
        return Err(format!("ttl_seconds {} out of range (1 to 86400)", raw.ttl_seconds));
    }
    if raw.strategy.len() > 64 {
        return Err("strategy longer than 64 bytes".into());
    }
    let refused_direct = raw.fallback_policy == FallbackPolicy::DirectConnection;
    Ok(Allocation {
        scheme,
        host,
        port,
        username,
        password,
        strategy: raw.strategy,
        ttl_seconds: raw.ttl_seconds,
        fallback_policy: if refused_direct { FallbackPolicy::Fail } else { raw.fallback_policy },
        refused_direct,
    })
}

/// One flow's outcome through a proxy the service handed out.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Feedback {
    /// `scheme://host:port`, never the credentials.
    pub proxy_url: String,
    pub account: String,
    pub connection_type: String,
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_details: Option<String>,
    pub timestamp: u64,
    pub client_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(url: &str, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"proxy_url":"{url}","strategy":"sticky","ttl_seconds":300,"fallback_policy":"embedded_fallback","metadata":{{"pool":"eu"}}{extra}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn parses_an_allocation_with_credentials() {
        let a = parse_answer(&answer("socks5://us%40er:p%3Ass@10.0.0.5:1080", "")).unwrap();
        assert_eq!(a.endpoint(), "socks5://10.0.0.5:1080");
        assert_eq!(a.username.as_ref().map(|s| s.expose()), Some("us@er"));
        assert_eq!(a.password.as_ref().map(|s| s.expose()), Some("p:ss"));
        assert_eq!(a.ttl_seconds, 300);
        assert_eq!(a.fallback_policy, FallbackPolicy::EmbeddedFallback);
        assert!(!format!("{a:?}").contains("p:ss"), "Debug hides credentials");
        let b = parse_answer(&answer("http://[fd00::5]:3128", "")).unwrap();
        assert_eq!(b.endpoint(), "http://[fd00::5]:3128");
        assert!(b.username.is_none());
    }

    #[test]
    fn refuses_bad_answers_without_echoing_them() {
        let secret = "socks5://u:SECRETPW@10.0.0.5:1080";
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (answer(secret, r#","extra":1"#), "unknown field `extra`"),
            (b"not json".to_vec(), "not valid JSON"),
            (br#"{"proxy_url":"x"}"#.to_vec(), "missing field"),
            (
                format!(
                    r#"{{"proxy_url":"{secret}","strategy":"s","ttl_seconds":"{secret}","fallback_policy":"fail"}}"#
                )
                .into_bytes(),
                "wrong type",
            ),
            (answer("ftp://u:SECRETPW@h:1", ""), "unsupported scheme"),
            (answer("socks5://u:SECRETPW@h:99999", ""), "bad host or port"),
            (answer("socks5://u:SECRETPW@h:1/path", ""), "bad host or port"),
            (answer("socks5://onlyuser@h:1", ""), "both user name and password"),
            (vec![b' '; MAX_ANSWER + 1], "larger than"),
        ];
        for (body, want) in cases {
            let e = parse_answer(&body).unwrap_err();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
            assert!(!e.contains("SECRETPW"), "error echoes the credentials: {e}");
        }
        let zero = br#"{"proxy_url":"socks5://h:1","strategy":"s","ttl_seconds":0,"fallback_policy":"fail"}"#;
        assert!(parse_answer(zero).unwrap_err().contains("ttl_seconds 0 out of range"));
    }

    #[test]
    fn direct_connection_is_turned_into_fail() {
        let body =
            br#"{"proxy_url":"socks5://h:1","strategy":"s","ttl_seconds":60,"fallback_policy":"direct_connection"}"#;
        let a = parse_answer(body).unwrap();
        assert_eq!(a.fallback_policy, FallbackPolicy::Fail);
        assert!(a.refused_direct);
    }

    #[test]
    fn requests_and_feedback_serialize_as_documented() {
        let r = AllocRequest {
            exchange_id: None,
            account: "account-a",
            connection_type: "all",
            region: Some("eu"),
            client_id: "nsproxy-h-1",
            metadata: serde_json::json!({"nsproxy": "0.1.0"}),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"account":"account-a","connection_type":"all","region":"eu","client_id":"nsproxy-h-1","metadata":{"nsproxy":"0.1.0"}}"#
        );
        let f = Feedback {
            proxy_url: "socks5://h:1".into(),
            account: "a".into(),
            connection_type: "all".into(),
            success: false,
            latency_ms: None,
            error_details: Some("refused".into()),
            timestamp: 5,
            client_id: "c".into(),
        };
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"proxy_url":"socks5://h:1","account":"a","connection_type":"all","success":false,"error_details":"refused","timestamp":5,"client_id":"c"}"#
        );
    }
}
