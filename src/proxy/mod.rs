//! Upstream connections through the account's proxy: SOCKS5 (RFC 1928/1929)
//! and HTTP CONNECT, in clear or (`https://` proxies) inside TLS with the
//! proxy. The handshakes are byte-level parsers with no I/O (`socks5`,
//! `http`); `connect` drives them over the stream with the proxy's connect
//! and handshake timeouts (the TLS handshake counts in the latter).

pub mod fetch;
pub mod http;
pub mod pipeline;
pub mod probe;
pub mod route;
pub mod socks5;
pub mod stream;
pub mod udp;
pub mod verdict;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub use pipeline::Pipelining;
pub use stream::ProxyStream;

use crate::config::{ProxyEntry, Scheme};
use crate::secrets::Creds;

/// Where the program wanted to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ip(SocketAddr),
    Name(String, u16),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(a) => write!(f, "{a}"),
            Target::Name(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

impl Target {
    /// 0.0.0.0:0: the destination of a message that has none (UDP
    /// ASSOCIATE, the pipelining probe).
    pub fn unspecified() -> Self {
        Target::Ip(SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

/// Why a proxied connection could not be opened. `Display` names the proxy
/// by label and `scheme://host:port`, never its credentials.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy {proxy}: cannot connect: {source}")]
    Connect { proxy: String, source: std::io::Error },
    /// This host ran out of something (descriptors, buffers, memory): not
    /// the proxy's fault, so it never counts against the proxy.
    #[error("proxy {proxy}: cannot connect, this host is out of resources: {source}")]
    Local { proxy: String, source: std::io::Error },
    #[error("proxy {proxy}: connect timed out after {timeout:?}")]
    ConnectTimeout { proxy: String, timeout: Duration },
    #[error("proxy {proxy}: handshake timed out after {timeout:?}")]
    HandshakeTimeout { proxy: String, timeout: Duration },
    #[error("proxy {proxy}: authentication failed{detail}")]
    AuthFailed { proxy: String, detail: String },
    #[error("proxy {proxy}: refused {target}: {reason}")]
    Refused { proxy: String, target: String, reason: String, destination_error: bool },
    #[error("proxy {proxy}: protocol error: {reason}")]
    Protocol { proxy: String, reason: String },
    #[error("proxy {proxy}: TLS: {reason}")]
    Tls { proxy: String, reason: String },
    #[error("proxy {proxy}: connection lost during handshake: {source}")]
    Io { proxy: String, source: std::io::Error },
}

impl ProxyError {
    /// Whether the proxy itself failed (counts towards failover), as
    /// opposed to the proxy reporting that one destination is unreachable.
    pub fn is_proxy_level(&self) -> bool {
        !matches!(self, ProxyError::Refused { destination_error: true, .. } | ProxyError::Local { .. })
    }

    /// A shortage of this host's resources, not a fault of the proxy.
    pub fn is_local(&self) -> bool {
        matches!(self, ProxyError::Local { .. })
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: the local end, not the network.
fn is_resource_shortage(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// A proxy with its resolved credentials and, for an `https://` proxy,
/// the TLS trust it is checked against (or why that could not be built).
#[derive(Debug, Clone)]
pub struct Upstream {
    pub entry: ProxyEntry,
    pub creds: Option<Creds>,
    tls: Option<Result<fetch::Tls, String>>,
    /// Whether this SOCKS5 proxy reads pipelined messages (`Pipelining`),
    /// shared by the clones that probe it.
    pipelining: Arc<AtomicU8>,
}

/// The TLS trust of an `https://` proxy: the system's roots plus its
/// `ca_file`. None for other schemes; Err names the file and the fault.
pub fn proxy_tls(entry: &ProxyEntry) -> Option<Result<fetch::Tls, String>> {
    (entry.scheme == Scheme::Https).then(|| fetch::Tls::new(entry.ca_file.as_deref()))
}

/// A connected, handshaken stream, plus bytes that arrived after the
/// proxy's reply (they belong to the relay).
pub struct Connected {
    pub stream: ProxyStream,
    pub leftover: Vec<u8>,
    /// How long the TCP connect to the proxy took, then its handshake.
    pub connect_time: std::time::Duration,
    pub handshake_time: std::time::Duration,
}

/// A SOCKS5 UDP association: it lasts while `control` is open.
pub struct Associated {
    pub control: TcpStream,
    /// Connected to `relay`.
    pub socket: tokio::net::UdpSocket,
    pub relay: SocketAddr,
}

impl Upstream {
    pub fn new(entry: ProxyEntry, creds: Option<Creds>) -> Upstream {
        let tls = proxy_tls(&entry);
        Upstream { entry, creds, tls, pipelining: Arc::new(AtomicU8::new(Pipelining::Unknown as u8)) }
    }

    pub fn name(&self) -> String {
        self.entry.display_name()
    }

    /// A TCP connection to the proxy itself (no proxy handshake; for an
    /// `https://` proxy, the TLS session too: its certificate is checked),
    /// then closed.
    pub async fn reach(&self) -> Result<(), ProxyError> {
        let stream = self.open().await?;
        let Some(tls) = &self.tls else { return Ok(()) };
        let proxy = self.name();
        let tls = tls.as_ref().map_err(|reason| ProxyError::Tls { proxy: proxy.clone(), reason: reason.clone() })?;
        let timeout = self.entry.handshake_timeout;
        match tokio::time::timeout(timeout, self.tls_session(tls, stream)).await {
            Err(_) => Err(ProxyError::HandshakeTimeout { proxy, timeout }),
            Ok(r) => r.map(drop),
        }
    }

    async fn open(&self) -> Result<TcpStream, ProxyError> {
        let proxy = self.name();
        let e = &self.entry;
        // Port 0: the proxy service's member before the service has handed
        // out a proxy (`pool::service::placeholder_entry`).
        if e.port == 0 {
            return Err(ProxyError::Connect {
                proxy,
                source: std::io::Error::other("the proxy service has not handed out a proxy (yet)"),
            });
        }
        let connect = async {
            match e.host.parse::<IpAddr>() {
                Ok(ip) => TcpStream::connect(SocketAddr::new(ip, e.port)).await,
                Err(_) => TcpStream::connect((e.host.as_str(), e.port)).await,
            }
        };
        let stream = match tokio::time::timeout(e.connect_timeout, connect).await {
            Err(_) => return Err(ProxyError::ConnectTimeout { proxy, timeout: e.connect_timeout }),
            Ok(Err(source)) if is_resource_shortage(&source) => return Err(ProxyError::Local { proxy, source }),
            Ok(Err(source)) => return Err(ProxyError::Connect { proxy, source }),
            Ok(Ok(s)) => s,
        };
        Ok(stream)
    }

    pub async fn connect(&self, target: &Target) -> Result<Connected, ProxyError> {
        let proxy = self.name();
        let e = &self.entry;
        let started = std::time::Instant::now();
        let stream = self.open().await?;
        let connected = std::time::Instant::now();
        let _ = stream.set_nodelay(true);
        let sock = socket2_ref(&stream);
        let _ = sock.set_keepalive(true);
        // Decided once: the demotion below must know what the handshake did.
        let pipeline = self.pipeline_creds();
        let pipelined = pipeline.is_some();
        let handshake = async {
            match &self.tls {
                None => {
                    self.handshake(stream, target, pipeline).await.map(|(s, leftover)| (ProxyStream::Tcp(s), leftover))
                }
                Some(tls) => {
                    let tls = tls
                        .as_ref()
                        .map_err(|reason| ProxyError::Tls { proxy: proxy.clone(), reason: reason.clone() })?;
                    let s = self.tls_session(tls, stream).await?;
                    self.handshake(s, target, None).await.map(|(s, leftover)| (ProxyStream::Tls(Box::new(s)), leftover))
                }
            }
        };
        let r = match tokio::time::timeout(e.handshake_timeout, handshake).await {
            Err(_) => Err(ProxyError::HandshakeTimeout { proxy, timeout: e.handshake_timeout }),
            Ok(r) => r.map(|(stream, leftover)| Connected {
                stream,
                leftover,
                connect_time: connected - started,
                handshake_time: connected.elapsed(),
            }),
        };
        match &r {
            Ok(_) => self.maybe_probe_pipelining(),
            // A pipelined handshake that stalled or broke off: this proxy
            // may no longer read pipelined messages (a new server behind
            // the same address); connections go one message at a time
            // until a probe says again.
            Err(ProxyError::HandshakeTimeout { .. } | ProxyError::Io { .. } | ProxyError::Protocol { .. })
                if pipelined =>
            {
                self.set_pipelining(Pipelining::Unknown)
            }
            Err(_) => {}
        }
        r
    }

    /// The TLS session with an `https://` proxy, its certificate checked
    /// for the proxy's host name or address as the URL gives it.
    async fn tls_session(
        &self,
        tls: &fetch::Tls,
        stream: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
        let proxy = self.name();
        let name = rustls_pki_types::ServerName::try_from(self.entry.host.clone())
            .map_err(|e| ProxyError::Tls { proxy: proxy.clone(), reason: format!("{}: {e}", self.entry.host) })?;
        tls.connector().connect(name, stream).await.map_err(|e| {
            let reason = match e.get_ref() {
                Some(inner) => inner.to_string(),
                None => e.to_string(),
            };
            ProxyError::Tls { proxy, reason }
        })
    }

    /// SOCKS5 UDP ASSOCIATE: the control connection (the association
    /// lives while it is open) and a host UDP socket connected to the
    /// relay the proxy named. An HTTP proxy cannot carry UDP.
    pub async fn associate(&self) -> Result<Associated, ProxyError> {
        let proxy = self.name();
        let e = &self.entry;
        if e.scheme != Scheme::Socks5 {
            return Err(ProxyError::Refused {
                proxy,
                target: "UDP".into(),
                reason: "an HTTP CONNECT proxy cannot carry UDP".into(),
                destination_error: false,
            });
        }
        let mut s = self.open().await?;
        let proxy_ip =
            s.peer_addr().map(|a| a.ip()).map_err(|source| ProxyError::Io { proxy: proxy.clone(), source })?;
        let io = |source| ProxyError::Io { proxy: proxy.clone(), source };
        let creds = self.creds.as_ref().map(|c| (c.user.expose(), c.pass.expose()));
        let any = Target::unspecified();
        let reply = tokio::time::timeout(e.handshake_timeout, async {
            let mut hs = socks5::Handshake::associate(creds);
            let mut buf = Vec::with_capacity(64);
            let used = socks5_exchange(&mut s, &mut hs, &mut buf, &proxy, &any).await?;
            Ok::<_, ProxyError>(buf[..used].to_vec())
        })
        .await
        .map_err(|_| ProxyError::HandshakeTimeout { proxy: proxy.clone(), timeout: e.handshake_timeout })??;
        let bound = socks5::bound(&reply).ok_or_else(|| ProxyError::Protocol {
            proxy: proxy.clone(),
            reason: "UDP ASSOCIATE reply names no relay address".into(),
        })?;
        let relay = udp::relay(bound, proxy_ip);
        let local: SocketAddr =
            if relay.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
        let socket = tokio::net::UdpSocket::bind(local).await.map_err(io)?;
        socket.connect(relay).await.map_err(io)?;
        Ok(Associated { control: s, socket, relay })
    }

    /// The proxy's handshake over `s`; SOCKS5 pipelined with `pipeline`
    /// (`pipeline_creds`), else one message at a time.
    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut s: S,
        target: &Target,
        pipeline: Option<(&str, &str)>,
    ) -> Result<(S, Vec<u8>), ProxyError> {
        let proxy = self.name();
        let io = |source| ProxyError::Io { proxy: proxy.clone(), source };
        let creds = self.creds.as_ref().map(|c| (c.user.expose(), c.pass.expose()));
        let mut buf = Vec::with_capacity(512);
        match self.entry.scheme {
            Scheme::Socks5 => {
                let mut hs = match pipeline {
                    Some(c) => socks5::Handshake::pipelined(target.clone(), c),
                    None => socks5::Handshake::new(target.clone(), creds),
                };
                let used = socks5_exchange(&mut s, &mut hs, &mut buf, &proxy, target).await?;
                buf.drain(..used);
                Ok((s, buf))
            }
            Scheme::Http | Scheme::Https => {
                s.write_all(&http::request(target, creds)).await.map_err(io)?;
                s.flush().await.map_err(io)?;
                loop {
                    read_more(&mut s, &mut buf, http::MAX_RESPONSE_HEAD).await.map_err(io)?;
                    if let Some(used) = http::parse_response(&buf).map_err(|f| f.into_error(&proxy, target))? {
                        buf.drain(..used);
                        return Ok((s, buf));
                    }
                }
            }
        }
    }
}

/// Drives a SOCKS5 handshake over `s`: its first flight, then what each
/// reply asks for. Returns the length of the final reply, at the start of
/// `buf` (what follows it belongs to the relay).
async fn socks5_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    hs: &mut socks5::Handshake<'_>,
    buf: &mut Vec<u8>,
    proxy: &str,
    target: &Target,
) -> Result<usize, ProxyError> {
    let io = |source| ProxyError::Io { proxy: proxy.to_string(), source };
    let flight = hs.first_flight().map_err(|f| f.into_error(proxy, target))?;
    s.write_all(&flight).await.map_err(io)?;
    loop {
        match hs.feed(buf).map_err(|f| f.into_error(proxy, target))? {
            socks5::Step::Need => read_more(s, buf, 1024).await.map_err(io)?,
            socks5::Step::Send(out, used) => {
                buf.drain(..used);
                s.write_all(&out).await.map_err(io)?;
            }
            socks5::Step::Consumed(used) => {
                buf.drain(..used);
            }
            socks5::Step::Done(used) => return Ok(used),
        }
    }
}

/// Reads at least one more byte into `buf`; EOF is an error here.
async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, max: usize) -> std::io::Result<()> {
    if buf.len() >= max {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "reply too long"));
    }
    let mut chunk = [0u8; 1024];
    let want = chunk.len().min(max - buf.len());
    let n = s.read(&mut chunk[..want]).await?;
    if n == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "proxy closed the connection"));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn socket2_ref(s: &TcpStream) -> socket2::SockRef<'_> {
    socket2::SockRef::from(s)
}

/// A handshake failure found by a parser, before the proxy's name is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Auth(String),
    /// The proxy refused this target (`destination` = the target, not the
    /// proxy, is at fault: unreachable host, refused port...).
    Refused {
        reason: String,
        destination: bool,
    },
    Protocol(String),
}

impl Failure {
    pub fn into_error(self, proxy: &str, target: &Target) -> ProxyError {
        match self {
            Failure::Auth(detail) => ProxyError::AuthFailed { proxy: proxy.into(), detail },
            Failure::Refused { reason, destination } => ProxyError::Refused {
                proxy: proxy.into(),
                target: target.to_string(),
                reason,
                destination_error: destination,
            },
            Failure::Protocol(reason) => ProxyError::Protocol { proxy: proxy.into(), reason },
        }
    }
}

#[cfg(test)]
mod local_error_tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_is_not_the_proxys_fault() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_resource_shortage(&emfile));
        let e = ProxyError::Local { proxy: "p".into(), source: emfile };
        assert!(!e.is_proxy_level() && e.is_local());
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert!(!is_resource_shortage(&refused));
        assert!(ProxyError::Connect { proxy: "p".into(), source: refused }.is_proxy_level());
    }
}
