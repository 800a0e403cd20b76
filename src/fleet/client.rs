//! The HTTPS client of the proxy service (rustls, HTTP/1.1, one request
//! per connection). Endpoints are tried in order; every call is bounded by
//! the policy's timeout and every answer by `MAX_ANSWER`.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::protocol::{self, AllocRequest, Allocation, Feedback, MAX_ANSWER};
use crate::config::{Account, ExternalService, ServiceAuth, ServiceEndpoint};
use crate::secrets::Secret;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("proxy service: {what} {path}: {reason}")]
    Setup { what: &'static str, path: String, reason: String },
    #[error("proxy service: {0}")]
    Credential(#[from] crate::secrets::SecretError),
    #[error("proxy service {endpoint}: {reason}")]
    Call { endpoint: String, reason: String },
}

/// How a request is authenticated (header name and value).
enum Header {
    None,
    Bearer(Secret),
    ApiKey(Secret),
}

pub struct ServiceClient {
    cfg: ExternalService,
    tls: tokio_rustls::TlsConnector,
    header: Header,
    pub client_id: String,
    pub account: String,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ep: Vec<String> = self.cfg.endpoints.iter().map(|e| e.to_string()).collect();
        write!(f, "ServiceClient({}, {})", self.account, ep.join(", "))
    }
}

fn setup(what: &'static str, path: &std::path::Path, reason: impl ToString) -> FleetError {
    FleetError::Setup { what, path: path.display().to_string(), reason: reason.to_string() }
}

impl ServiceClient {
    /// Loads the CA, the client certificate or token: any problem keeps
    /// the account down, like a proxy credential.
    pub fn new(a: &Account, svc: &ExternalService) -> Result<ServiceClient, FleetError> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&svc.ca_file)
            .map_err(|e| setup("ca_file", &svc.ca_file, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| setup("ca_file", &svc.ca_file, e))?;
        if certs.is_empty() {
            return Err(setup("ca_file", &svc.ca_file, "holds no PEM certificate"));
        }
        for c in certs {
            roots.add(c).map_err(|e| setup("ca_file", &svc.ca_file, e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| setup("tls", &svc.ca_file, e))?
            .with_root_certificates(roots);
        let (config, header) = match &svc.auth {
            ServiceAuth::MutualTls { cert_file, key_file } => {
                let chain = CertificateDer::pem_file_iter(cert_file)
                    .map_err(|e| setup("client_cert_file", cert_file, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| setup("client_cert_file", cert_file, e))?;
                let key_pem =
                    crate::secrets::read_checked(key_file).map_err(|r| setup("client_key_file", key_file, r))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                    .map_err(|_| setup("client_key_file", key_file, "holds no PEM private key"))?;
                let c =
                    builder.with_client_auth_cert(chain, key).map_err(|e| setup("client_cert_file", cert_file, e))?;
                (c, Header::None)
            }
            ServiceAuth::BearerToken(r) => {
                (builder.with_no_client_auth(), Header::Bearer(crate::secrets::resolve_service_token(a, r)?))
            }
            ServiceAuth::ApiKey(r) => {
                (builder.with_no_client_auth(), Header::ApiKey(crate::secrets::resolve_service_token(a, r)?))
            }
        };
        let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "host".into());
        Ok(ServiceClient {
            cfg: svc.clone(),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            header,
            client_id: svc.client_id.clone().unwrap_or_else(|| format!("nsproxy-{host}-{}", std::process::id())),
            account: a.name.clone(),
        })
    }

    pub fn connection_type(&self) -> &str {
        &self.cfg.connection_type
    }

    /// Asks for a proxy: each endpoint in order, until one answers well.
    pub async fn allocate(&self) -> Result<Allocation, Vec<FleetError>> {
        let req = AllocRequest {
            exchange_id: self.cfg.exchange_id.as_deref(),
            account: &self.account,
            connection_type: &self.cfg.connection_type,
            region: self.cfg.region.as_deref(),
            client_id: &self.client_id,
            metadata: serde_json::json!({"nsproxy": env!("CARGO_PKG_VERSION")}),
        };
        let body = serde_json::to_vec(&req).unwrap_or_default();
        let mut errors = Vec::new();
        for ep in &self.cfg.endpoints {
            let call = |reason: String| FleetError::Call { endpoint: ep.to_string(), reason };
            match self.post(ep, protocol::REQUEST_PATH, &body).await {
                Ok((200, answer)) => match protocol::parse_answer(&answer) {
                    Ok(a) => return Ok(a),
                    Err(e) => errors.push(call(format!("bad answer: {e}"))),
                },
                Ok((status, _)) => errors.push(call(format!("HTTP status {status}"))),
                Err(e) => errors.push(call(e)),
            }
        }
        Err(errors)
    }

    /// Sends one feedback record to the first endpoint that takes it.
    pub async fn feedback(&self, f: &Feedback) -> Result<(), FleetError> {
        let body = serde_json::to_vec(f).unwrap_or_default();
        let mut last = None;
        for ep in &self.cfg.endpoints {
            match self.post(ep, protocol::FEEDBACK_PATH, &body).await {
                Ok((s, _)) if (200..300).contains(&s) => return Ok(()),
                Ok((s, _)) => {
                    last = Some(FleetError::Call { endpoint: ep.to_string(), reason: format!("HTTP status {s}") })
                }
                Err(e) => last = Some(FleetError::Call { endpoint: ep.to_string(), reason: e }),
            }
        }
        Err(last.unwrap_or(FleetError::Call { endpoint: "-".into(), reason: "no endpoint".into() }))
    }

    async fn post(&self, ep: &ServiceEndpoint, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let t = self.cfg.timeout;
        match tokio::time::timeout(t, self.post_inner(ep, path, body)).await {
            Err(_) => Err(format!("no answer within {}s (timeout_seconds)", t.as_secs())),
            Ok(r) => r,
        }
    }

    async fn post_inner(&self, ep: &ServiceEndpoint, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let addr = tokio::net::lookup_host((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", ep.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", ep.host))?;
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("cannot connect: {e}"))?;
        let name = ServerName::try_from(ep.host.clone()).map_err(|e| format!("bad server name: {e}"))?;
        let mut tls = self.tls.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
        let host = if ep.host.contains(':') { format!("[{}]", ep.host) } else { ep.host.clone() };
        let mut head = format!(
            "POST {}{path} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: nsproxy/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            ep.base,
            ep.port,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        match &self.header {
            Header::None => {}
            Header::Bearer(t) => head.push_str(&format!("Authorization: Bearer {}\r\n", t.expose())),
            Header::ApiKey(k) => head.push_str(&format!("X-API-Key: {}\r\n", k.expose())),
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        tls.write_all(&out).await.map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::new();
        let cap = (MAX_ANSWER + 16 * 1024) as u64;
        match (&mut tls).take(cap + 1).read_to_end(&mut buf).await {
            Ok(_) => {}
            // Many servers close without a TLS close_notify.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            // rustls reports alerts (a refused client certificate) as InvalidData.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(format!("TLS: {e}")),
            Err(e) => return Err(format!("receive: {e}")),
        }
        if buf.len() as u64 > cap {
            return Err(format!("answer larger than {MAX_ANSWER} bytes"));
        }
        parse_http(&buf)
    }
}

/// Status and body of an HTTP/1.1 response (Content-Length or read to the
/// end; chunked is refused).
pub fn parse_http(buf: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("incomplete HTTP answer".into()),
        Err(e) => return Err(format!("not an HTTP answer: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut len = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked answers are not supported".into());
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
        }
    }
    let body = &buf[n..];
    let body = match len {
        Some(l) if l > body.len() => return Err(format!("answer cut short ({} of {l} bytes)", body.len())),
        Some(l) => &body[..l],
        None => body,
    };
    Ok((status, body.to_vec()))
}

/// How long an allocation is used before asking again: its own TTL, at
/// most the policy's cache TTL.
pub fn cache_for(a: &Allocation, cache_ttl: Duration) -> Duration {
    Duration::from_secs(a.ttl_seconds).min(cache_ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}trailing";
        assert_eq!(parse_http(ok), Ok((200, b"{}".to_vec())));
        let close = b"HTTP/1.0 401 Unauthorized\r\n\r\nnope";
        assert_eq!(parse_http(close), Ok((401, b"nope".to_vec())));
        assert!(parse_http(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err().contains("chunked"));
        assert!(parse_http(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").unwrap_err().contains("cut short"));
        assert!(parse_http(b"garbage garbage\r\n\r\n").is_err());
    }
}
