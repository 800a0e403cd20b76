//! SOCKS5 pipelining, learnt per proxy: after the first successful
//! connection to a SOCKS5 proxy with credentials, a probe in the background
//! sends the greeting and the user/password request in one write
//! (`socks5::Handshake::auth_probe`). A proxy that answers both gets every
//! later handshake in one write (two round trips fewer per connection); one
//! that answers the greeting and then stalls or hangs up (microsocks) keeps
//! the message-at-a-time handshake. A pipelined handshake that stalls or
//! breaks off puts the proxy back to Unknown, and the next successful
//! connection probes again.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{Scheme, Upstream, read_more, socks5};

/// How long the probe waits for the login's answer once the greeting's
/// came, beyond four times what the greeting's took: a proxy checking the
/// password slower than that is taken as not pipelining (the handshake one
/// message at a time is always right, only slower).
const STALL: Duration = Duration::from_secs(1);

/// What is known of a SOCKS5 proxy with credentials and pipelining
/// (`socks5::Handshake::pipelined`): nothing yet (the next successful
/// connection starts a probe), a probe running, it does (connections send
/// their three messages in one write), it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipelining {
    Unknown = 0,
    Probing = 1,
    Yes = 2,
    No = 3,
}

impl Pipelining {
    fn from_u8(v: u8) -> Pipelining {
        match v {
            1 => Pipelining::Probing,
            2 => Pipelining::Yes,
            3 => Pipelining::No,
            _ => Pipelining::Unknown,
        }
    }
}

impl Upstream {
    /// What is known of this proxy and pipelining.
    pub fn pipelining(&self) -> Pipelining {
        Pipelining::from_u8(self.pipelining.load(Ordering::Relaxed))
    }

    pub(super) fn set_pipelining(&self, p: Pipelining) {
        self.pipelining.store(p as u8, Ordering::Relaxed);
    }

    /// The credentials to pipeline with: a SOCKS5 proxy with credentials
    /// that was seen to read pipelined messages.
    pub(super) fn pipeline_creds(&self) -> Option<(&str, &str)> {
        let c = self.creds.as_ref().filter(|_| self.entry.scheme == Scheme::Socks5)?;
        (self.pipelining() == Pipelining::Yes).then(|| (c.user.expose(), c.pass.expose()))
    }

    /// After a successful connection: the first to a SOCKS5 proxy with
    /// credentials starts the probe (in the background: no connection
    /// waits for it).
    pub(super) fn maybe_probe_pipelining(&self) {
        if self.entry.scheme != Scheme::Socks5 || self.creds.is_none() {
            return;
        }
        let (unknown, probing) = (Pipelining::Unknown as u8, Pipelining::Probing as u8);
        if self.pipelining.compare_exchange(unknown, probing, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        let up = self.clone();
        tokio::spawn(async move {
            let found = up.probe_pipelining().await;
            up.set_pipelining(found);
            match found {
                Pipelining::Yes => {
                    tracing::info!(proxy = %up.name(), "SOCKS5 pipelining: the proxy reads pipelined messages; new connections send greeting, login and CONNECT in one write")
                }
                Pipelining::No => {
                    tracing::info!(proxy = %up.name(), "SOCKS5 pipelining: the proxy does not read pipelined messages; new connections send them one at a time")
                }
                _ => {}
            }
        });
    }

    /// The greeting and the user/password request in one write: Yes when
    /// both are answered; No when the proxy answers the greeting and then
    /// stalls (`STALL` plus four times what the greeting's answer took),
    /// hangs up or answers wrongly (it dropped or misread the login);
    /// Unknown when the probe says nothing (the proxy unreachable or not
    /// answering the greeting: a later connection probes again).
    async fn probe_pipelining(&self) -> Pipelining {
        let Some(c) = &self.creds else { return Pipelining::No };
        let started = tokio::time::Instant::now();
        let Ok(mut s) = self.open().await else { return Pipelining::Unknown };
        let _ = s.set_nodelay(true);
        let mut hs = socks5::Handshake::auth_probe((c.user.expose(), c.pass.expose()));
        let Ok(flight) = hs.first_flight() else { return Pipelining::No };
        if s.write_all(&flight).await.is_err() {
            return Pipelining::Unknown;
        }
        let gave_up = |hs: &socks5::Handshake| if hs.past_greeting() { Pipelining::No } else { Pipelining::Unknown };
        let mut deadline = started + self.entry.handshake_timeout;
        let mut buf = Vec::with_capacity(16);
        loop {
            match hs.feed(&buf) {
                Ok(socks5::Step::Done(_)) => return Pipelining::Yes,
                Ok(socks5::Step::Consumed(used) | socks5::Step::Send(_, used)) => {
                    buf.drain(..used);
                    deadline = deadline.min(tokio::time::Instant::now() + STALL + started.elapsed() * 4);
                    continue;
                }
                Ok(socks5::Step::Need) => {}
                Err(_) => return gave_up(&hs),
            }
            match tokio::time::timeout_at(deadline, read_more(&mut s, &mut buf, 64)).await {
                Ok(Ok(())) => {}
                _ => return gave_up(&hs),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    use super::*;
    use crate::proxy::{ProxyError, Target};
    use crate::secrets::{Creds, Secret};

    /// How a fake SOCKS5 server reads: keeping what follows the message it
    /// expects (dante), dropping the rest of each read (microsocks), or
    /// keeping it for a login probe but dropping a pipelined CONNECT (a
    /// proxy that lies to the probe).
    #[derive(Clone, Copy, PartialEq)]
    enum Reads {
        Buffered,
        PerRead,
        Liar,
    }

    /// Serves SOCKS5 with user/password `u`/`p`; sends the size of each
    /// connection's first read.
    async fn fake(reads: Reads, first: mpsc::UnboundedSender<usize>) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(session(s, reads, first.clone()));
            }
        });
        addr
    }

    async fn session(mut s: TcpStream, reads: Reads, first: mpsc::UnboundedSender<usize>) -> Option<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        let n = s.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        let _ = first.send(n);
        buf.extend_from_slice(&chunk[..n]);
        // greeting, login (1, 1, u, 1, p), CONNECT to an IPv4 address
        let sizes = [3usize, 5, 10];
        let full: usize = sizes.iter().sum();
        for (i, size) in sizes.into_iter().enumerate() {
            while buf.len() < size {
                let n = s.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            let reply: &[u8] = match i {
                0 => &[5, 2],
                1 if buf[..size] == [1, 1, b'u', 1, b'p'] => &[1, 0],
                1 => &[1, 1],
                _ => &[5, 0, 0, 1, 127, 0, 0, 1, 0, 80],
            };
            let drop_rest = reads == Reads::PerRead || (reads == Reads::Liar && i == 0 && n == full);
            buf = if drop_rest { Vec::new() } else { buf.split_off(size) };
            s.write_all(reply).await.ok()?;
        }
        s.write_all(b"hi").await.ok()
    }

    fn upstream(addr: std::net::SocketAddr) -> Upstream {
        let entry = crate::config::ProxyEntry {
            label: "fake".into(),
            host: addr.ip().to_string(),
            port: addr.port(),
            scheme: Scheme::Socks5,
            username: None,
            password: None,
            priority: 0,
            enabled: true,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_millis(300),
            expected_egress_ip: None,
            ca_file: None,
        };
        let creds = Creds { user: Secret::new("u".into()), pass: Secret::new("p".into()) };
        Upstream::new(entry, Some(creds))
    }

    async fn settled(up: &Upstream) -> Pipelining {
        for _ in 0..200 {
            match up.pipelining() {
                Pipelining::Probing | Pipelining::Unknown => tokio::time::sleep(Duration::from_millis(10)).await,
                p => return p,
            }
        }
        up.pipelining()
    }

    fn target() -> Target {
        Target::Ip("10.1.2.3:443".parse().unwrap())
    }

    #[tokio::test]
    async fn a_proxy_that_reads_pipelined_messages_gets_one_write() {
        let (tx, mut first) = mpsc::unbounded_channel();
        let up = upstream(fake(Reads::Buffered, tx).await);
        assert_eq!(up.pipelining(), Pipelining::Unknown);
        up.connect(&target()).await.unwrap();
        assert_eq!(first.recv().await, Some(3), "the first connection goes one message at a time");
        assert_eq!(settled(&up).await, Pipelining::Yes);
        assert_eq!(first.recv().await, Some(8), "the probe: greeting and login in one write");
        up.connect(&target()).await.unwrap();
        assert_eq!(first.recv().await, Some(18), "greeting, login and CONNECT in one write");
    }

    #[tokio::test]
    async fn a_proxy_that_drops_them_keeps_one_message_at_a_time() {
        let (tx, mut first) = mpsc::unbounded_channel();
        let up = upstream(fake(Reads::PerRead, tx).await);
        up.connect(&target()).await.unwrap();
        assert_eq!(settled(&up).await, Pipelining::No);
        for _ in 0..3 {
            up.connect(&target()).await.unwrap();
        }
        let sizes: Vec<usize> = std::iter::from_fn(|| first.try_recv().ok()).collect();
        assert_eq!(sizes, [3, 8, 3, 3, 3]);
    }

    #[tokio::test]
    async fn a_pipelined_handshake_that_stalls_sends_the_proxy_back_to_the_probe() {
        let (tx, mut first) = mpsc::unbounded_channel();
        let up = upstream(fake(Reads::Liar, tx).await);
        up.connect(&target()).await.unwrap();
        assert_eq!(settled(&up).await, Pipelining::Yes, "the liar passes the probe");
        let e = up.connect(&target()).await.err().expect("the pipelined CONNECT was dropped");
        assert!(matches!(e, ProxyError::HandshakeTimeout { .. }), "{e}");
        assert_eq!(up.pipelining(), Pipelining::Unknown);
        up.connect(&target()).await.unwrap();
        let sizes: Vec<usize> = std::iter::from_fn(|| first.try_recv().ok()).collect();
        assert_eq!(&sizes[..4], [3, 8, 18, 3], "after the stall: one message at a time again");
    }
}
