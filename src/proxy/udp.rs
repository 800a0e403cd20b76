//! SOCKS5 UDP (RFC 1928 section 7): the header every datagram to and from
//! the proxy's relay carries, and where the relay is. Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::Target;

/// Why a datagram from the relay is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bad {
    /// FRAG != 0: fragments are dropped (and counted).
    Fragment(u8),
    /// Too short for its header.
    Short,
    /// RSV not zero.
    Reserved,
    /// An ATYP other than 1, 3, 4.
    AddressType(u8),
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Fragment(n) => write!(f, "fragment {n} (fragmented datagrams are dropped)"),
            Bad::Short => f.write_str("datagram shorter than its SOCKS5 UDP header"),
            Bad::Reserved => f.write_str("SOCKS5 UDP header: reserved bytes are not zero"),
            Bad::AddressType(t) => write!(f, "SOCKS5 UDP header: unknown address type {t}"),
        }
    }
}

/// `payload` for `target`, with the header the relay expects.
pub fn wrap(target: &Target, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 22);
    v.extend_from_slice(&[0, 0, 0]);
    match target {
        Target::Ip(a) => {
            match a.ip() {
                IpAddr::V4(ip) => {
                    v.push(1);
                    v.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    v.push(4);
                    v.extend_from_slice(&ip.octets());
                }
            }
            v.extend_from_slice(&a.port().to_be_bytes());
        }
        Target::Name(h, p) => {
            let n = h.len().min(255);
            v.push(3);
            v.push(n as u8);
            v.extend_from_slice(&h.as_bytes()[..n]);
            v.extend_from_slice(&p.to_be_bytes());
        }
    }
    v.extend_from_slice(payload);
    v
}

/// The sender and the payload of a datagram from the relay.
pub fn unwrap(d: &[u8]) -> Result<(Target, &[u8]), Bad> {
    if d.len() < 4 {
        return Err(Bad::Short);
    }
    if d[0] != 0 || d[1] != 0 {
        return Err(Bad::Reserved);
    }
    if d[2] != 0 {
        return Err(Bad::Fragment(d[2]));
    }
    let rest = &d[4..];
    let (target, used) = match d[3] {
        1 => {
            let a: [u8; 4] = rest.get(..4).and_then(|s| s.try_into().ok()).ok_or(Bad::Short)?;
            let port = port(rest, 4)?;
            (Target::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)), 6)
        }
        4 => {
            let a: [u8; 16] = rest.get(..16).and_then(|s| s.try_into().ok()).ok_or(Bad::Short)?;
            let port = port(rest, 16)?;
            (Target::Ip(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port)), 18)
        }
        3 => {
            let n = *rest.first().ok_or(Bad::Short)? as usize;
            let name = rest.get(1..1 + n).ok_or(Bad::Short)?;
            let port = port(rest, 1 + n)?;
            (Target::Name(String::from_utf8_lossy(name).into_owned(), port), 1 + n + 2)
        }
        t => return Err(Bad::AddressType(t)),
    };
    Ok((target, &rest[used..]))
}

fn port(b: &[u8], at: usize) -> Result<u16, Bad> {
    b.get(at..at + 2).map(|p| u16::from_be_bytes([p[0], p[1]])).ok_or(Bad::Short)
}

/// The relay to send datagrams to: the address the proxy answered, or the
/// proxy's own address when it answered `0.0.0.0` / `::` (RFC 1928 leaves
/// that to mean "the address you reached me at").
pub fn relay(bound: SocketAddr, proxy: IpAddr) -> SocketAddr {
    if bound.ip().is_unspecified() { SocketAddr::new(proxy, bound.port()) } else { bound }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_round_trip_for_every_address_type() {
        for t in [
            Target::Ip("192.0.2.7:4433".parse().unwrap()),
            Target::Ip("[2001:db8::9]:53".parse().unwrap()),
            Target::Name("quic.exchange.test".into(), 443),
        ] {
            let w = wrap(&t, b"hello");
            assert_eq!(&w[..3], &[0, 0, 0]);
            assert_eq!(unwrap(&w), Ok((t.clone(), &b"hello"[..])), "{t:?}");
        }
        let w = wrap(&Target::Ip("192.0.2.7:4433".parse().unwrap()), b"");
        assert_eq!(w, vec![0, 0, 0, 1, 192, 0, 2, 7, 0x11, 0x51]);
    }

    #[test]
    fn fragments_and_malformed_headers_are_refused() {
        let mut w = wrap(&Target::Ip("192.0.2.7:1".parse().unwrap()), b"x");
        w[2] = 1;
        assert_eq!(unwrap(&w), Err(Bad::Fragment(1)));
        assert_eq!(unwrap(&[0, 0, 0]), Err(Bad::Short));
        assert_eq!(unwrap(&[0, 1, 0, 1]), Err(Bad::Reserved));
        assert_eq!(unwrap(&[0, 0, 0, 9, 1, 2]), Err(Bad::AddressType(9)));
        assert_eq!(unwrap(&[0, 0, 0, 1, 1, 2, 3]), Err(Bad::Short));
        assert_eq!(unwrap(&[0, 0, 0, 3, 10, b'a']), Err(Bad::Short));
        assert_eq!(unwrap(&[0, 0, 0, 4, 0, 0]), Err(Bad::Short));
    }

    #[test]
    fn an_unspecified_relay_means_the_proxys_own_address() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(relay("0.0.0.0:40000".parse().unwrap(), proxy), "10.0.0.5:40000".parse().unwrap());
        assert_eq!(relay("[::]:40000".parse().unwrap(), proxy), "10.0.0.5:40000".parse().unwrap());
        assert_eq!(relay("10.0.0.9:40000".parse().unwrap(), proxy), "10.0.0.9:40000".parse().unwrap());
    }
}
