//! One HTTP/1.1 request through a proxy, with hyper's client connection
//! over the proxied stream: for `https://`, the TLS session (rustls, SNI =
//! the URL's host) runs inside the proxied connection, so the exchange sees
//! the proxy's address for TLS and HTTP alike. Body size is capped; the
//! caller bounds the time.

use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{ProxyError, Target, Upstream};
use crate::config::{Header, HttpUrl};

/// The trust for https checks: the system's roots plus an optional
/// `ca_file`. Built once per check, when the daemon starts.
#[derive(Clone)]
pub struct Tls(tokio_rustls::TlsConnector);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

/// The system's trust store, read once per process however many https
/// checks the account has.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

impl Tls {
    /// A client configuration built elsewhere (the proxy service's, with
    /// its own CA and client certificate).
    pub fn from_config(c: Arc<rustls::ClientConfig>) -> Tls {
        Tls(tokio_rustls::TlsConnector::from(c))
    }

    pub(crate) fn connector(&self) -> &tokio_rustls::TlsConnector {
        &self.0
    }

    /// The system's trust store (`/etc/ssl/certs` and the like) and the
    /// certificates of `ca_file`, if given. A missing system store is only
    /// an error when no `ca_file` is given either.
    pub fn new(ca_file: Option<&Path>) -> Result<Tls, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in system_roots() {
            let _ = roots.add(c.clone());
        }
        if let Some(f) = ca_file {
            let certs = CertificateDer::pem_file_iter(f)
                .map_err(|e| format!("ca_file {}: {e}", f.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("ca_file {}: {e}", f.display()))?;
            if certs.is_empty() {
                return Err(format!("ca_file {}: holds no PEM certificate", f.display()));
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("ca_file {}: {e}", f.display()))?;
            }
        }
        if roots.is_empty() {
            return Err("no trusted CA certificates: the system has none; give a ca_file".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls(tokio_rustls::TlsConnector::from(Arc::new(config))))
    }
}

/// An answer: status, the `Retry-After` header, and the body (up to the
/// cap given; HEAD and 204 have none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("TLS with {host}: {reason}")]
    Tls { host: String, reason: String },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
}

/// What to send.
pub struct Request<'a> {
    pub method: Method,
    pub url: &'a HttpUrl,
    pub headers: &'a [Header],
    /// With POST: the content type and the body.
    pub body: Option<(&'a str, &'a [u8])>,
}

/// An error and its sources, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}

/// A TLS failure after the handshake (an alert: a refused client
/// certificate, say) reaches hyper as an I/O error of kind InvalidData.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData) {
            return true;
        }
        src = s.source();
    }
    false
}

/// `req` through `up`: connect through the proxy to the URL's host, TLS
/// when the URL is https (`tls` must then be given), one HTTP/1.1 request.
pub async fn fetch(up: &Upstream, req: &Request<'_>, tls: Option<&Tls>, max: usize) -> Result<Answer, FetchError> {
    let url = req.url;
    let conn = up.connect(&Target::Name(url.host.clone(), url.port)).await?;
    if !conn.leftover.is_empty() {
        return Err(FetchError::Http("the proxy sent data before the request".into()));
    }
    over(conn.stream, req, tls, max).await
}

/// `req` over `stream`, a connection to the URL's host: TLS first when the
/// URL is https.
pub async fn over(
    stream: super::ProxyStream,
    req: &Request<'_>,
    tls: Option<&Tls>,
    max: usize,
) -> Result<Answer, FetchError> {
    let url = req.url;
    if !url.tls {
        return request(stream, req, max).await;
    }
    let Some(Tls(connector)) = tls else {
        return Err(FetchError::Tls { host: url.host.clone(), reason: "no TLS configuration".into() });
    };
    let name = ServerName::try_from(url.host.clone())
        .map_err(|e| FetchError::Tls { host: url.host.clone(), reason: e.to_string() })?;
    let stream = connector
        .connect(name, stream)
        .await
        .map_err(|e| FetchError::Tls { host: url.host.clone(), reason: e.to_string() })?;
    request(stream, req, max).await
}

/// One request over `io`, an established connection to the URL's host.
pub async fn request<S>(io: S, req: &Request<'_>, max: usize) -> Result<Answer, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let url = req.url;
    let http = |e: hyper::Error| {
        if is_tls(&e) {
            FetchError::Tls { host: url.host.clone(), reason: chain(&e) }
        } else {
            FetchError::Http(chain(&e))
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(http)?;
    let driver = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(conn));
    let host = if url.host.contains(':') { format!("[{}]", url.host) } else { url.host.clone() };
    let host = if url.port == url.default_port() { host } else { format!("{host}:{}", url.port) };
    let method = match req.method {
        Method::Get => hyper::Method::GET,
        Method::Head => hyper::Method::HEAD,
        Method::Post => hyper::Method::POST,
    };
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(url.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, concat!("nsproxy/", env!("CARGO_PKG_VERSION")))
        .header(hyper::header::ACCEPT, "*/*")
        .header(hyper::header::CONNECTION, "close");
    for h in req.headers {
        b = b.header(h.name.as_str(), h.value.as_str());
    }
    let body = match req.body {
        Some((content_type, data)) => {
            b = b.header(hyper::header::CONTENT_TYPE, content_type);
            Full::new(Bytes::copy_from_slice(data))
        }
        None => Full::new(Bytes::new()),
    };
    let r = b.body(body).map_err(|e| FetchError::Http(e.to_string()))?;
    let resp = sender.send_request(r).await.map_err(http)?;
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get(hyper::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = Limited::new(resp.into_body(), max).collect().await.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            FetchError::TooLarge(max)
        } else if is_tls(e.as_ref()) {
            FetchError::Tls { host: url.host.clone(), reason: chain(e.as_ref()) }
        } else {
            FetchError::Http(chain(e.as_ref()))
        }
    })?;
    drop(driver);
    Ok(Answer { status, retry_after, body: body.to_bytes().to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP server's side of one exchange, scripted: returns the
    /// request it read.
    async fn serve(mut s: tokio::io::DuplexStream, answer: &'static [u8]) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        s.write_all(answer).await.unwrap();
        let _ = s.shutdown().await;
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn url(tls: bool, port: u16) -> HttpUrl {
        HttpUrl { tls, host: "api.exchange.test".into(), port, path: "/api/v3/ping?x=1".into() }
    }

    #[tokio::test]
    async fn a_chunked_ban_answer_with_retry_after() {
        let (c, s) = tokio::io::duplex(4096);
        let server = tokio::spawn(serve(
            s,
            b"HTTP/1.1 418 I'm a teapot\r\nRetry-After: 120\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nbanne\r\n1\r\nd\r\n0\r\n\r\n",
        ));
        let u = url(true, 443);
        let headers = [Header { name: "X-MBX-APIKEY".into(), value: "k".into() }];
        let a =
            request(c, &Request { method: Method::Get, url: &u, headers: &headers, body: None }, 1024).await.unwrap();
        assert_eq!(a, Answer { status: 418, retry_after: Some("120".into()), body: b"banned".to_vec() });
        let sent = server.await.unwrap();
        assert!(sent.starts_with("GET /api/v3/ping?x=1 HTTP/1.1\r\n"), "{sent}");
        let lower = sent.to_ascii_lowercase();
        assert!(lower.contains("host: api.exchange.test\r\n"), "default port not shown: {sent}");
        assert!(lower.contains("x-mbx-apikey: k\r\n") && lower.contains("connection: close\r\n"), "{sent}");
    }

    #[tokio::test]
    async fn head_and_size_cap_and_garbage() {
        let (c, s) = tokio::io::duplex(4096);
        tokio::spawn(serve(s, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"));
        let u = url(false, 8080);
        let a = request(c, &Request { method: Method::Head, url: &u, headers: &[], body: None }, 16).await.unwrap();
        assert_eq!((a.status, a.body.len()), (200, 0), "HEAD has no body");

        let (c, s) = tokio::io::duplex(4096);
        tokio::spawn(serve(
            s,
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789012345678901234567890123456789",
        ));
        let e = request(c, &Request { method: Method::Get, url: &u, headers: &[], body: None }, 16).await.unwrap_err();
        assert!(matches!(e, FetchError::TooLarge(16)), "{e}");

        let (c, s) = tokio::io::duplex(4096);
        tokio::spawn(serve(s, b"SSH-2.0-OpenSSH_9.2\r\n\r\n"));
        let e = request(c, &Request { method: Method::Get, url: &u, headers: &[], body: None }, 16).await.unwrap_err();
        assert!(matches!(e, FetchError::Http(_)), "{e}");
    }
}
