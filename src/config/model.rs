//! The validated policy: what every other module reads. Nothing here holds a
//! secret; passwords are only *references* (a file or an environment
//! variable), resolved by `crate::secrets` when a daemon starts.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Socks5,
    Http,
    /// HTTP CONNECT inside TLS with the proxy.
    Https,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Socks5 => "socks5",
            Scheme::Http => "http",
            Scheme::Https => "https",
        })
    }
}

/// Where a proxy credential comes from. Never the value itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretRef {
    /// A root-owned 0600/0400 file.
    File(PathBuf),
    /// An environment variable of the daemon.
    Env(String),
    /// A Fernet token, decrypted with the account's key file.
    Encrypted(Token),
}

impl SecretRef {
    /// The field suffix of this source: `file`, `env` or `encrypted`
    /// (`password_file`, `token_env` ...).
    pub fn kind(&self) -> &'static str {
        match self {
            SecretRef::File(_) => "file",
            SecretRef::Env(_) => "env",
            SecretRef::Encrypted(_) => "encrypted",
        }
    }
}

/// A Fernet token as written in the policy. Ciphertext, but still shown
/// only by its first characters and length.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head: String = self.0.chars().take(8).collect();
        write!(f, "Token({head}..., {} chars)", self.0.len())
    }
}

impl Serialize for Token {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<fernet token>")
    }
}

/// A proxy user name: written in the policy, or kept like a password.
/// Provider user names often carry session ids, so `Debug` and `Serialize`
/// never show a plain one either.
#[derive(Clone, PartialEq, Eq)]
pub enum UserRef {
    Plain(String),
    Secret(SecretRef),
}

impl fmt::Debug for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserRef::Plain(_) => f.write_str("Plain(***)"),
            UserRef::Secret(r) => write!(f, "Secret({r:?})"),
        }
    }
}

impl Serialize for UserRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UserRef::Plain(_) => s.serialize_str("<plain>"),
            UserRef::Secret(r) => r.serialize(s),
        }
    }
}

/// The Fernet key that decrypts the account's `*_encrypted` values: a file
/// holding the key alone, or a `.env` file with the key under `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeySource {
    pub file: PathBuf,
    pub name: Option<String>,
}

/// `scheme://host:port`, IPv6 hosts in brackets: how a proxy is shown.
pub fn endpoint(scheme: Scheme, host: &str, port: u16) -> String {
    if host.contains(':') { format!("{scheme}://[{host}]:{port}") } else { format!("{scheme}://{host}:{port}") }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyEntry {
    pub label: String,
    pub scheme: Scheme,
    /// Host name or IP literal, as written (without brackets).
    pub host: String,
    pub port: u16,
    pub username: Option<UserRef>,
    pub password: Option<SecretRef>,
    /// Lower number = preferred.
    pub priority: u32,
    pub enabled: bool,
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    #[serde(with = "secs")]
    pub handshake_timeout: Duration,
    /// The egress address this proxy must show; a mismatch marks it unhealthy.
    pub expected_egress_ip: Option<IpAddr>,
    /// `https://` proxies: PEM certificates trusted besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl ProxyEntry {
    /// `scheme://host:port`: the only way a proxy is ever shown.
    pub fn endpoint(&self) -> String {
        endpoint(self.scheme, &self.host, self.port)
    }
    /// `label (scheme://host:port)` for logs and errors.
    pub fn display_name(&self) -> String {
        format!("{} ({})", self.label, self.endpoint())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DnsMode {
    FakeIp,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dns {
    pub mode: DnsMode,
    /// Required for `tcp`: the resolver reached through the proxy.
    pub resolver: Option<SocketAddr>,
    /// `fake_ip_range`: the IPv4 range the namespace's own addresses and
    /// the fake IPs come from (in both modes).
    pub fake_ip_range: super::plan::Addresses,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ipv6Mode {
    Block,
    Proxy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UdpMode {
    Block,
    /// Through the active proxy with SOCKS5 UDP ASSOCIATE (HTTP CONNECT
    /// proxies cannot: with one active, UDP stays refused).
    Proxy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub max_flows: u32,
    pub max_half_open: u32,
    #[serde(with = "secs")]
    pub idle_timeout: Duration,
    /// The stack's receive buffer per flow: the window the program's
    /// uploads see.
    pub socket_buffer: u32,
    /// The stack's send buffer per flow: what waits for the program's ACK.
    pub send_buffer: u32,
    /// `udp: proxy`: UDP flows (one association each) at once.
    pub max_udp_flows: u32,
    /// `udp: proxy`: an association with no datagram either way for this
    /// long is closed.
    #[serde(with = "secs")]
    pub udp_idle_timeout: Duration,
}

impl Limits {
    /// Packets the TUN device queues for the daemon (its txqueuelen): one
    /// per flow and per half-open connection, so that a program writing on
    /// every flow at once (a request on each of 5,000 WebSockets) is not
    /// dropped at the device while the daemon works through the burst. At
    /// the default 1,000 such a burst lost a third of its segments and the
    /// program's TCP backed off further each round (docs/reliability.md,
    /// case 18). The ring holds pointers; packets queue only while the
    /// daemon is behind, each flow no more than its receive window.
    pub fn tun_queue_len(&self) -> u32 {
        self.max_flows.saturating_add(self.max_half_open).clamp(1000, 131_072)
    }
}

/// An `http://` or `https://host[:port]/path` URL, fetched through a
/// proxy (for https, the TLS session runs inside the proxied connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl HttpUrl {
    pub fn default_port(&self) -> u16 {
        if self.tls { 443 } else { 80 }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let scheme = if self.tls { "https" } else { "http" };
        if self.port == self.default_port() {
            write!(f, "{scheme}://{host}{}", self.path)
        } else {
            write!(f, "{scheme}://{host}:{}{}", self.port, self.path)
        }
    }
}

/// The request method of an HTTP check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckMethod {
    Get,
    Head,
}

/// Which answers of an HTTP check mean the exchange refuses the IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BurnOn {
    pub status: Vec<u16>,
    /// Substrings, or `/regex/`.
    pub body: Vec<String>,
}

/// An extra request header of a check. Only its name is ever shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: <hidden>", self.name)
    }
}

impl Serialize for Header {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}: <hidden>", self.name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthTarget {
    /// A TCP connection through the proxy to host:port.
    Tcp { host: String, port: u16 },
    /// An HTTP GET through the proxy, expecting a 2xx status.
    Http(HttpUrl),
}

impl fmt::Display for HealthTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthTarget::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            HealthTarget::Http(u) => write!(f, "{u}"),
        }
    }
}

/// How the pool picks and keeps its active proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolPolicy {
    /// Switch back to a recovered proxy of better priority (default: stay
    /// on the current one, trading sessions dislike IP changes).
    pub failback: bool,
    /// What a burn found by a check does to the flows already open.
    pub on_burn: OnBurn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnBurn {
    /// Open flows stay on the burned proxy until they end.
    KeepFlows,
    /// Open flows are reset, so programs reconnect through the new proxy.
    ResetFlows,
}

/// Where the visible egress address is fetched from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressCheck {
    pub url: HttpUrl,
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// Extra trusted CA certificates for an https URL (PEM).
    pub ca_file: Option<PathBuf>,
}

/// How nsproxy proves itself to the proxy service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceAuth {
    /// `Authorization: Bearer <token>`.
    BearerToken(SecretRef),
    /// `X-API-Key: <key>`.
    ApiKey(SecretRef),
    /// A client certificate (PEM) and its key (a root-owned 0600 file).
    MutualTls { cert_file: PathBuf, key_file: PathBuf },
}

/// `https://host[:port][/base]` of the proxy service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceEndpoint {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for none).
    pub base: String,
}

impl fmt::Display for ServiceEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "https://{host}:{}{}", self.port, self.base)
    }
}

/// Fleet mode: proxies allocated by an external service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExternalService {
    pub enabled: bool,
    /// Tried in order.
    pub endpoints: Vec<ServiceEndpoint>,
    pub auth: ServiceAuth,
    /// PEM certificates the service's certificate must chain to.
    pub ca_file: PathBuf,
    #[serde(with = "secs")]
    pub timeout: Duration,
    #[serde(with = "secs")]
    pub cache_ttl: Duration,
    pub circuit_breaker: bool,
    pub breaker_failures: u32,
    #[serde(with = "secs")]
    pub breaker_cooldown: Duration,
    /// Use the account's own proxies while the service is unavailable;
    /// false: the account's own proxies are never used (fail closed).
    pub fallback_to_embedded: bool,
    /// Default `nsproxy-<host>-<pid>`.
    pub client_id: Option<String>,
    pub connection_type: String,
    pub region: Option<String>,
    pub exchange_id: Option<String>,
}

/// The pool member that stands for the service's proxy.
pub const SERVICE_LABEL: &str = "service";

/// Where the Prometheus metrics are served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    #[serde(with = "secs")]
    pub interval: Duration,
    #[serde(with = "secs")]
    pub timeout: Duration,
    pub target: HealthTarget,
    pub failures_before_unhealthy: u32,
    /// Shown in logs and `check` (default: the target's host).
    pub name: String,
    pub method: CheckMethod,
    pub headers: Vec<Header>,
    /// Statuses that pass; empty: any 2xx.
    pub expect_status: Vec<u16>,
    pub burn_on: BurnOn,
    /// How long a burn lasts without `Retry-After`; None: for good.
    #[serde(with = "opt_secs")]
    pub burn_for: Option<Duration>,
    /// Extra trusted CA certificates for https targets (PEM).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ExecAccess {
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

/// Where an account was defined, for messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Where in its file: `accounts[i]` (for the lines of its fields).
    #[serde(skip)]
    pub path: crate::config::lines::FieldPath,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}", self.file.display(), l),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub name: String,
    pub namespace: String,
    pub origin: Origin,
    pub exec: ExecAccess,
    pub proxies: Vec<ProxyEntry>,
    pub dns: Dns,
    pub ipv6: Ipv6Mode,
    pub udp: UdpMode,
    pub mtu: u32,
    pub limits: Limits,
    /// Every check of the active proxy (one per exchange, say); empty: none.
    #[serde(rename = "health_check")]
    pub health_checks: Vec<HealthCheck>,
    pub pool: PoolPolicy,
    pub egress_check: Option<EgressCheck>,
    /// Per-destination overrides, first match wins.
    pub rules: Vec<crate::rules::Rule>,
    /// TCP services on the host's loopback that programs inside may reach
    /// without the proxy, by name (`NAME.host.nsproxy`) or address.
    pub host_services: Vec<HostService>,
    pub metrics: Option<MetricsListen>,
    /// The key for encrypted credentials (`secrets.key_file`).
    pub secrets_key: Option<KeySource>,
    /// Fleet mode (`external_service`), when enabled.
    pub external_service: Option<ExternalService>,
}

impl Account {
    /// Enabled proxies, best priority first (stable for equal priorities).
    pub fn usable_proxies(&self) -> Vec<&ProxyEntry> {
        let mut v: Vec<&ProxyEntry> = self.proxies.iter().filter(|p| p.enabled).collect();
        v.sort_by_key(|p| p.priority);
        v
    }

    /// Consecutive proxy-level failures (flows or health checks) after
    /// which a proxy is unhealthy.
    pub fn failure_threshold(&self) -> u32 {
        self.health_checks.iter().map(|h| h.failures_before_unhealthy).min().unwrap_or(3)
    }
}

/// A TCP service on the host's loopback (`host_services`): inside the
/// namespace `NAME.host.nsproxy` (address `plan::Addresses::host_service_addr`) on
/// the same port; the daemon connects to `listen` in the host namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostService {
    pub name: String,
    pub listen: SocketAddr,
}

/// The DNS suffix of host services inside the namespace.
pub const HOST_SUFFIX: &str = ".host.nsproxy";

mod secs {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

mod opt_secs {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_str("forever"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_flows: u32, max_half_open: u32) -> Limits {
        Limits {
            max_flows,
            max_half_open,
            idle_timeout: Duration::from_secs(60),
            socket_buffer: 1 << 19,
            send_buffer: 1 << 19,
            max_udp_flows: 256,
            udp_idle_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_tun_queue_holds_one_packet_per_flow_and_half_open_connection() {
        assert_eq!(limits(4096, 1024).tun_queue_len(), 5120, "the defaults");
        assert_eq!(limits(10, 10).tun_queue_len(), 1000, "never below the kernel's usual 1,000");
        assert_eq!(limits(65536, 65536).tun_queue_len(), 131_072, "the policy maxima");
        assert_eq!(limits(u32::MAX, u32::MAX).tun_queue_len(), 131_072, "no overflow");
    }
}
