//! The HTTPS client of the proxy service (rustls, HTTP/1.1 through hyper as
//! in `proxy::fetch`, one request per connection, chunked answers read).
//! Endpoints are tried in order, and each endpoint's addresses in turn;
//! every call is bounded by the policy's timeout and every answer by
//! `MAX_ANSWER`.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::protocol::{self, AllocRequest, Allocation, Feedback, MAX_ANSWER};
use crate::config::{Account, ExternalService, Header, HttpUrl, ServiceAuth, ServiceEndpoint};
use crate::proxy::fetch::{self, FetchError, Method, Request, Tls};
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
enum Auth {
    None,
    Bearer(Secret),
    ApiKey(Secret),
}

pub struct ServiceClient {
    cfg: ExternalService,
    tls: Tls,
    header: Auth,
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
                (c, Auth::None)
            }
            ServiceAuth::BearerToken(r) => {
                (builder.with_no_client_auth(), Auth::Bearer(crate::secrets::resolve_service_token(a, r)?))
            }
            ServiceAuth::ApiKey(r) => {
                (builder.with_no_client_auth(), Auth::ApiKey(crate::secrets::resolve_service_token(a, r)?))
            }
        };
        let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "host".into());
        Ok(ServiceClient {
            cfg: svc.clone(),
            tls: Tls::from_config(Arc::new(config)),
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
        // Every address the name resolves to, in order, until one connects.
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", ep.host))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{} has no address", ep.host));
        }
        let mut last = None;
        let mut tcp = None;
        for a in &addrs {
            match tokio::net::TcpStream::connect(a).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(format!("cannot connect to {a}: {e}")),
            }
        }
        let Some(tcp) = tcp else { return Err(last.unwrap_or_else(|| "cannot connect".into())) };
        let url = HttpUrl { tls: true, host: ep.host.clone(), port: ep.port, path: format!("{}{path}", ep.base) };
        let headers: Vec<Header> = match &self.header {
            Auth::None => Vec::new(),
            Auth::Bearer(t) => vec![Header { name: "Authorization".into(), value: format!("Bearer {}", t.expose()) }],
            Auth::ApiKey(k) => vec![Header { name: "X-API-Key".into(), value: k.expose().to_string() }],
        };
        let req =
            Request { method: Method::Post, url: &url, headers: &headers, body: Some(("application/json", body)) };
        match fetch::over(tcp.into(), &req, Some(&self.tls), MAX_ANSWER).await {
            Ok(a) => Ok((a.status, a.body)),
            Err(FetchError::Tls { reason, .. }) => Err(format!("TLS: {reason}")),
            Err(FetchError::TooLarge(_)) => Err(format!("answer larger than {MAX_ANSWER} bytes")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// How long an allocation is used before asking again: its own TTL, at
/// most the policy's cache TTL.
pub fn cache_for(a: &Allocation, cache_ttl: Duration) -> Duration {
    Duration::from_secs(a.ttl_seconds).min(cache_ttl)
}
