//! SOCKS5 client handshake (RFC 1928, user/password RFC 1929) as a parser
//! fed with the bytes received so far.
//!
//! Pipelined, the greeting, the user/password request and the CONNECT go
//! out in one write and the three replies are read in turn: two round
//! trips fewer. RFC 1928 does not forbid it, but not every server reads
//! past the message it expects (microsocks drops the rest of each read),
//! so a proxy is pipelined to only after `auth_probe` showed that it
//! answered the user/password request that came in the greeting's write.

use super::{Failure, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Method,
    Auth,
    Reply,
}

#[derive(Debug)]
pub struct Handshake<'a> {
    target: Target,
    creds: Option<(&'a str, &'a str)>,
    phase: Phase,
    /// 1 CONNECT, 3 UDP ASSOCIATE; 0: none, the handshake ends after the
    /// user/password reply (`auth_probe`).
    cmd: u8,
    /// Every message was sent in the first flight.
    pipelined: bool,
}

/// What to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Read more bytes.
    Need,
    /// Send these bytes; the first `usize` input bytes are consumed.
    Send(Vec<u8>, usize),
    /// The first `usize` input bytes were a reply; what it asked for went
    /// out in the first flight (pipelined).
    Consumed(usize),
    /// Connected; the first `usize` input bytes were the reply.
    Done(usize),
}

impl<'a> Handshake<'a> {
    pub fn new(target: Target, creds: Option<(&'a str, &'a str)>) -> Self {
        Handshake { target, creds, phase: Phase::Method, cmd: 1, pipelined: false }
    }

    /// A CONNECT whose messages all go in the first flight. Only with
    /// credentials: without them there is no probe that proves the proxy
    /// reads pipelined bytes (`auth_probe`), so `new` is used.
    pub fn pipelined(target: Target, creds: (&'a str, &'a str)) -> Self {
        Handshake { target, creds: Some(creds), phase: Phase::Method, cmd: 1, pipelined: true }
    }

    /// The greeting and the user/password request in one flight, and no
    /// CONNECT: `Done` after the user/password reply shows the proxy read
    /// the second message out of the greeting's write.
    pub fn auth_probe(creds: (&'a str, &'a str)) -> Self {
        Handshake { target: Target::unspecified(), creds: Some(creds), phase: Phase::Method, cmd: 0, pipelined: true }
    }

    /// UDP ASSOCIATE: the client's address is not known in advance (the
    /// datagrams leave from a host socket), so it is sent as 0.0.0.0:0.
    pub fn associate(creds: Option<(&'a str, &'a str)>) -> Self {
        Handshake { target: Target::unspecified(), creds, phase: Phase::Method, cmd: 3, pipelined: false }
    }

    /// Whether the proxy's method reply was read: a stall after it, when
    /// pipelined, is a proxy that dropped the pipelined messages.
    pub fn past_greeting(&self) -> bool {
        self.phase != Phase::Method
    }

    /// What goes out first: the greeting, and when pipelined every other
    /// message too.
    pub fn first_flight(&self) -> Result<Vec<u8>, Failure> {
        let mut v = self.greeting();
        if self.pipelined {
            if let Some((u, p)) = self.creds {
                v.extend_from_slice(&auth_request(u, p)?);
            }
            if self.cmd != 0 {
                v.extend_from_slice(&self.request());
            }
        }
        Ok(v)
    }

    /// The client greeting: offers no-auth, or user/password when we have
    /// credentials (then only that, so a proxy cannot downgrade us).
    pub fn greeting(&self) -> Vec<u8> {
        if self.creds.is_some() { vec![5, 1, 2] } else { vec![5, 1, 0] }
    }

    fn request(&self) -> Vec<u8> {
        let mut v = vec![5, self.cmd, 0];
        match &self.target {
            Target::Ip(a) => {
                match a.ip() {
                    std::net::IpAddr::V4(ip) => {
                        v.push(1);
                        v.extend_from_slice(&ip.octets());
                    }
                    std::net::IpAddr::V6(ip) => {
                        v.push(4);
                        v.extend_from_slice(&ip.octets());
                    }
                }
                v.extend_from_slice(&a.port().to_be_bytes());
            }
            Target::Name(h, p) => {
                v.push(3);
                v.push(h.len().min(255) as u8);
                v.extend_from_slice(&h.as_bytes()[..h.len().min(255)]);
                v.extend_from_slice(&p.to_be_bytes());
            }
        }
        v
    }

    pub fn feed(&mut self, buf: &[u8]) -> Result<Step, Failure> {
        match self.phase {
            Phase::Method => {
                if buf.len() < 2 {
                    return Ok(Step::Need);
                }
                if buf[0] != 5 {
                    return Err(Failure::Protocol(format!("not a SOCKS5 server (version byte {})", buf[0])));
                }
                match (buf[1], self.creds) {
                    (0, None) => {
                        self.phase = Phase::Reply;
                        if self.pipelined { Ok(Step::Consumed(2)) } else { Ok(Step::Send(self.request(), 2)) }
                    }
                    (2, Some((u, p))) => {
                        self.phase = Phase::Auth;
                        if self.pipelined { Ok(Step::Consumed(2)) } else { Ok(Step::Send(auth_request(u, p)?, 2)) }
                    }
                    (0xff, Some(_)) => {
                        Err(Failure::Auth(": the proxy accepts none of our methods (user/password)".into()))
                    }
                    (0xff, None) => Err(Failure::Auth(
                        ": the proxy requires authentication but no credentials are configured".into(),
                    )),
                    (m, _) => Err(Failure::Protocol(format!("proxy chose method {m} that we did not offer"))),
                }
            }
            Phase::Auth => {
                if buf.len() < 2 {
                    return Ok(Step::Need);
                }
                if buf[0] != 1 {
                    return Err(Failure::Protocol(format!("bad user/password reply version {}", buf[0])));
                }
                if buf[1] != 0 {
                    return Err(Failure::Auth(format!(" (status {})", buf[1])));
                }
                if self.cmd == 0 {
                    return Ok(Step::Done(2));
                }
                self.phase = Phase::Reply;
                if self.pipelined { Ok(Step::Consumed(2)) } else { Ok(Step::Send(self.request(), 2)) }
            }
            Phase::Reply => {
                if buf.len() < 5 {
                    return Ok(Step::Need);
                }
                if buf[0] != 5 {
                    return Err(Failure::Protocol(format!("bad reply version {}", buf[0])));
                }
                if buf[1] != 0 {
                    return Err(reply_failure(buf[1]));
                }
                if buf[2] != 0 {
                    return Err(Failure::Protocol(format!("reserved byte is {}, not 0", buf[2])));
                }
                let addr_len = match buf[3] {
                    1 => 4,
                    4 => 16,
                    3 => 1 + buf[4] as usize,
                    t => return Err(Failure::Protocol(format!("unknown address type {t} in reply"))),
                };
                let total = 4 + addr_len + 2;
                if buf.len() < total { Ok(Step::Need) } else { Ok(Step::Done(total)) }
            }
        }
    }
}

/// The RFC 1929 user/password request.
fn auth_request(u: &str, p: &str) -> Result<Vec<u8>, Failure> {
    if u.len() > 255 || p.len() > 255 {
        return Err(Failure::Auth(": username or password longer than 255 bytes".into()));
    }
    let mut v = vec![1, u.len() as u8];
    v.extend_from_slice(u.as_bytes());
    v.push(p.len() as u8);
    v.extend_from_slice(p.as_bytes());
    Ok(v)
}

/// The address in a reply (BND.ADDR:BND.PORT): for UDP ASSOCIATE, the
/// relay. A name (ATYP 3) is not an address and gives None.
pub fn bound(reply: &[u8]) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let port = |at: usize| reply.get(at..at + 2).map(|p| u16::from_be_bytes([p[0], p[1]]));
    match reply.get(3)? {
        1 => {
            let a: [u8; 4] = reply.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port(8)?))
        }
        4 => {
            let a: [u8; 16] = reply.get(4..20)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port(20)?))
        }
        _ => None,
    }
}

/// RFC 1928 reply codes. Codes 3-5 are about the destination, not the proxy.
fn reply_failure(code: u8) -> Failure {
    let (reason, destination) = match code {
        1 => ("general SOCKS server failure", false),
        2 => ("connection not allowed by ruleset", false),
        3 => ("network unreachable", true),
        4 => ("host unreachable", true),
        5 => ("connection refused by destination", true),
        6 => ("TTL expired", true),
        7 => ("command not supported", false),
        8 => ("address type not supported", false),
        _ => ("unknown reply code", false),
    };
    Failure::Refused { reason: format!("{reason} (SOCKS5 reply {code})"), destination }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn ip_target() -> Target {
        Target::Ip("10.1.2.3:443".parse::<SocketAddr>().unwrap())
    }

    #[test]
    fn udp_associate_asks_with_cmd_3_and_reads_the_relay() {
        let mut h = Handshake::associate(None);
        assert_eq!(h.feed(&[5, 0]), Ok(Step::Send(vec![5, 3, 0, 1, 0, 0, 0, 0, 0, 0], 2)));
        let reply = [5, 0, 0, 1, 10, 0, 0, 5, 0x9c, 0x40];
        assert_eq!(h.feed(&reply), Ok(Step::Done(10)));
        assert_eq!(bound(&reply), Some("10.0.0.5:40000".parse().unwrap()));
        assert_eq!(bound(&[5, 0, 0, 3, 1, b'x', 0, 1]), None);
        let mut h = Handshake::associate(None);
        let _ = h.feed(&[5, 0]);
        assert!(matches!(h.feed(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]), Err(Failure::Refused { destination: false, .. })));
    }

    #[test]
    fn no_auth_flow() {
        let mut h = Handshake::new(ip_target(), None);
        assert_eq!(h.greeting(), vec![5, 1, 0]);
        assert_eq!(h.feed(&[5]), Ok(Step::Need));
        assert_eq!(h.feed(&[5, 0]), Ok(Step::Send(vec![5, 1, 0, 1, 10, 1, 2, 3, 1, 187], 2)));
        assert_eq!(h.feed(&[5, 0, 0, 1, 1, 2, 3]), Ok(Step::Need));
        // Bytes after the reply (a server banner) are not consumed.
        assert_eq!(h.feed(&[5, 0, 0, 1, 1, 2, 3, 4, 0, 80, b'h', b'i']), Ok(Step::Done(10)));
    }

    #[test]
    fn user_password_flow_and_domain_target() {
        let mut h = Handshake::new(Target::Name("api.exchange.test".into(), 443), Some(("u1", "p1")));
        assert_eq!(h.greeting(), vec![5, 1, 2]);
        assert_eq!(h.feed(&[5, 2]), Ok(Step::Send(vec![1, 2, b'u', b'1', 2, b'p', b'1'], 2)));
        let Ok(Step::Send(req, 2)) = h.feed(&[1, 0]) else { panic!() };
        assert_eq!(&req[..5], &[5, 1, 0, 3, 17]);
        assert_eq!(&req[5..22], b"api.exchange.test");
        assert_eq!(&req[22..], &[1, 187]);
        // Domain-typed reply.
        assert_eq!(h.feed(&[5, 0, 0, 3, 3, b'a', b'b']), Ok(Step::Need));
        assert_eq!(h.feed(&[5, 0, 0, 3, 3, b'a', b'b', b'c', 0, 1]), Ok(Step::Done(10)));
    }

    #[test]
    fn auth_failures() {
        let mut h = Handshake::new(ip_target(), Some(("u", "p")));
        h.feed(&[5, 2]).unwrap();
        assert!(matches!(h.feed(&[1, 1]), Err(Failure::Auth(_))));
        let mut h = Handshake::new(ip_target(), Some(("u", "p")));
        assert!(matches!(h.feed(&[5, 0xff]), Err(Failure::Auth(_))));
        let mut h = Handshake::new(ip_target(), None);
        assert!(matches!(h.feed(&[5, 0xff]), Err(Failure::Auth(_))));
        // A proxy that picks no-auth when we insist on user/password.
        let mut h = Handshake::new(ip_target(), Some(("u", "p")));
        assert!(matches!(h.feed(&[5, 0]), Err(Failure::Protocol(_))));
        let long = "x".repeat(256);
        let mut h = Handshake::new(ip_target(), Some(("u", long.as_str())));
        assert!(matches!(h.feed(&[5, 2]), Err(Failure::Auth(_))));
    }

    #[test]
    fn pipelined_flow_sends_everything_first_and_reads_three_replies() {
        let target = Target::Name("api.exchange.test".into(), 443);
        let mut h = Handshake::pipelined(target.clone(), ("u1", "p1"));
        let mut seq = Handshake::new(target, Some(("u1", "p1")));
        let flight = h.first_flight().unwrap();
        // The same bytes as the sequential handshake's three messages.
        let mut expect = seq.first_flight().unwrap();
        let Ok(Step::Send(auth, 2)) = seq.feed(&[5, 2]) else { panic!() };
        let Ok(Step::Send(req, 2)) = seq.feed(&[1, 0]) else { panic!() };
        expect.extend(auth);
        expect.extend(req);
        assert_eq!(flight, expect);
        assert!(!h.past_greeting());
        assert_eq!(h.feed(&[5]), Ok(Step::Need));
        assert_eq!(h.feed(&[5, 2, 1]), Ok(Step::Consumed(2)));
        assert!(h.past_greeting());
        assert_eq!(h.feed(&[1]), Ok(Step::Need));
        assert_eq!(h.feed(&[1, 0, 5, 0]), Ok(Step::Consumed(2)));
        assert_eq!(h.feed(&[5, 0, 0, 1, 1, 2, 3, 4, 0, 80, b'x']), Ok(Step::Done(10)));
        // The replies' faults are the sequential ones.
        let mut h = Handshake::pipelined(ip_target(), ("u", "p"));
        assert!(matches!(h.feed(&[5, 0xff]), Err(Failure::Auth(_))));
        let mut h = Handshake::pipelined(ip_target(), ("u", "p"));
        h.feed(&[5, 2]).unwrap();
        assert!(matches!(h.feed(&[1, 1]), Err(Failure::Auth(_))));
        let long = "x".repeat(256);
        assert!(matches!(Handshake::pipelined(ip_target(), ("u", &long)).first_flight(), Err(Failure::Auth(_))));
    }

    #[test]
    fn auth_probe_ends_at_the_user_password_reply() {
        let h = Handshake::auth_probe(("u1", "p1"));
        assert_eq!(h.first_flight().unwrap(), vec![5, 1, 2, 1, 2, b'u', b'1', 2, b'p', b'1']);
        let mut h = Handshake::auth_probe(("u1", "p1"));
        assert_eq!(h.feed(&[5, 2]), Ok(Step::Consumed(2)));
        assert_eq!(h.feed(&[1, 0]), Ok(Step::Done(2)));
        let mut h = Handshake::auth_probe(("u1", "p1"));
        h.feed(&[5, 2]).unwrap();
        assert!(matches!(h.feed(&[1, 1]), Err(Failure::Auth(_))));
        // Not pipelined: the greeting alone.
        assert_eq!(Handshake::new(ip_target(), Some(("u", "p"))).first_flight().unwrap(), vec![5, 1, 2]);
    }

    #[test]
    fn every_reply_code_maps() {
        for code in 1..=9u8 {
            let mut h = Handshake::new(ip_target(), None);
            h.feed(&[5, 0]).unwrap();
            match h.feed(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]) {
                Err(Failure::Refused { reason, destination }) => {
                    assert!(reason.contains(&format!("reply {code}")));
                    assert_eq!(destination, (3..=6).contains(&code), "code {code}");
                }
                other => panic!("code {code}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_replies() {
        let bad: &[&[u8]] = &[&[4, 0, 0, 1, 0], &[5, 0, 1, 1, 0], &[5, 0, 0, 9, 0]];
        for b in bad {
            let mut h = Handshake::new(ip_target(), None);
            h.feed(&[5, 0]).unwrap();
            assert!(matches!(h.feed(b), Err(Failure::Protocol(_))), "{b:?}");
        }
        let mut h = Handshake::new(ip_target(), None);
        assert!(matches!(h.feed(b"HTTP/1.1 400"), Err(Failure::Protocol(_))));
        let mut h = Handshake::new(ip_target(), None);
        assert!(matches!(h.feed(&[5, 1]), Err(Failure::Protocol(_))));
        let mut h = Handshake::new(ip_target(), Some(("u", "p")));
        h.feed(&[5, 2]).unwrap();
        assert!(matches!(h.feed(&[5, 0]), Err(Failure::Protocol(_))));
    }
}
