//! Classification of packets read from the TUN, and hand-built UDP replies.
//! Pure: bytes in, verdict out. Checksums are verified before anything is
//! allocated for a packet.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    UdpPacket, UdpRepr,
};

#[derive(Debug, PartialEq, Eq)]
pub enum Class<'a> {
    /// A connection attempt (SYN without ACK), checksum verified.
    TcpSyn { src: SocketAddr, dst: SocketAddr },
    /// Any other TCP segment: for the stack.
    Tcp,
    /// A DNS query over UDP to any address.
    Dns { src: SocketAddr, dst: SocketAddr, payload: &'a [u8] },
    /// Other UDP: proxied (`udp: proxy`), or the stack answers ICMP port
    /// unreachable.
    Udp { src: SocketAddr, dst: SocketAddr, payload: &'a [u8] },
    /// Dropped, with the reason (counted).
    Drop(&'static str),
}

/// Classifies one packet. IPv6 is dropped unless `ipv6` (policy `ipv6:
/// proxy`). `trusted`: the kernel vouched for the transport checksum (see
/// vnet.rs), which is then partial and not verified here.
pub fn classify(pkt: &[u8], ipv6: bool, trusted: bool) -> Class<'_> {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => classify_v4(pkt, trusted),
        Some(6) if ipv6 => classify_v6(pkt, trusted),
        Some(6) => Class::Drop("ipv6 (blocked)"),
        _ => Class::Drop("not an IP packet"),
    }
}

fn classify_v4(pkt: &[u8], trusted: bool) -> Class<'_> {
    let Ok(ip) = Ipv4Packet::new_checked(pkt) else { return Class::Drop("bad IPv4 header") };
    if !ip.verify_checksum() {
        return Class::Drop("bad IPv4 checksum");
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Class::Drop("IPv4 fragment");
    }
    match ip.next_header() {
        IpProtocol::Icmp => Class::Drop("ICMP (not proxied)"),
        p => transport(p, ip.payload(), IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()), trusted),
    }
}

fn classify_v6(pkt: &[u8], trusted: bool) -> Class<'_> {
    let Ok(ip) = Ipv6Packet::new_checked(pkt) else { return Class::Drop("bad IPv6 header") };
    match ip.next_header() {
        IpProtocol::Icmpv6 => Class::Drop("ICMPv6 (not proxied)"),
        p @ (IpProtocol::Tcp | IpProtocol::Udp) => {
            transport(p, ip.payload(), IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()), trusted)
        }
        _ => Class::Drop("IPv6 extension header or unsupported protocol"),
    }
}

fn transport(proto: IpProtocol, payload: &[u8], src: IpAddr, dst: IpAddr, trusted: bool) -> Class<'_> {
    let (s, d) = (IpAddress::from(src), IpAddress::from(dst));
    match proto {
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(payload) else { return Class::Drop("bad TCP header") };
            if !trusted && !tcp.verify_checksum(&s, &d) {
                return Class::Drop("bad TCP checksum");
            }
            if tcp.syn() && !tcp.ack() {
                if tcp.fin() || tcp.rst() {
                    return Class::Drop("SYN with FIN or RST");
                }
                return Class::TcpSyn {
                    src: SocketAddr::new(src, tcp.src_port()),
                    dst: SocketAddr::new(dst, tcp.dst_port()),
                };
            }
            Class::Tcp
        }
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(payload) else { return Class::Drop("bad UDP header") };
            // A zero checksum means "none" in IPv4 only.
            let unchecked = udp.checksum() == 0 && src.is_ipv4();
            if !trusted && !unchecked && !udp.verify_checksum(&s, &d) {
                return Class::Drop("bad UDP checksum");
            }
            let len = (udp.len() as usize).saturating_sub(8).min(udp.payload().len());
            let (src, dst) = (SocketAddr::new(src, udp.src_port()), SocketAddr::new(dst, udp.dst_port()));
            if udp.dst_port() == 53 {
                return Class::Dns { src, dst, payload: &udp.payload()[..len] };
            }
            Class::Udp { src, dst, payload: &udp.payload()[..len] }
        }
        _ => Class::Drop("unsupported IP protocol"),
    }
}

/// A UDP reply from `src` to `dst` (same family) carrying `payload`.
pub fn udp_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => Some(udp_v4(s, d, payload)),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            let udp = UdpRepr { src_port: s.port(), dst_port: d.port() };
            let ip = Ipv6Repr {
                src_addr: *s.ip(),
                dst_addr: *d.ip(),
                next_header: IpProtocol::Udp,
                payload_len: udp.header_len() + payload.len(),
                hop_limit: 64,
            };
            let mut buf = vec![0u8; ip.buffer_len() + ip.payload_len];
            let caps = ChecksumCapabilities::default();
            let mut pkt = Ipv6Packet::new_unchecked(&mut buf[..]);
            ip.emit(&mut pkt);
            let mut u = UdpPacket::new_unchecked(pkt.payload_mut());
            udp.emit(
                &mut u,
                &(*s.ip()).into(),
                &(*d.ip()).into(),
                payload.len(),
                |b| b.copy_from_slice(payload),
                &caps,
            );
            Some(buf)
        }
        _ => None,
    }
}

/// An IPv4/UDP packet from `src` to `dst` carrying `payload`.
pub fn udp_v4(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp = UdpRepr { src_port: src.port(), dst_port: dst.port() };
    let ip = Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + ip.payload_len];
    let caps = ChecksumCapabilities::default();
    let mut pkt = Ipv4Packet::new_unchecked(&mut buf[..]);
    ip.emit(&mut pkt, &caps);
    let mut u = UdpPacket::new_unchecked(pkt.payload_mut());
    udp.emit(&mut u, &(*src.ip()).into(), &(*dst.ip()).into(), payload.len(), |b| b.copy_from_slice(payload), &caps);
    buf
}

/// An IPv4 TCP segment (checksums filled), as the program
/// would send it: for tests of the classifier, the stack and the data
/// plane (pure, like `udp_packet`).
pub fn tcp_segment(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale: None,
        max_seg_size: if control == TcpControl::Syn { Some(1460) } else { None },
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload,
    };
    let ip = Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut pkt = Ipv4Packet::new_unchecked(&mut buf[..]);
    ip.emit(&mut pkt, &caps);
    let mut t = TcpPacket::new_unchecked(pkt.payload_mut());
    tcp.emit(&mut t, &IpAddress::Ipv4(*src.ip()), &IpAddress::Ipv4(*dst.ip()), &caps);
    buf
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use smoltcp::wire::TcpControl;

    fn tcp_v4(src: SocketAddrV4, dst: SocketAddrV4, control: TcpControl, ack: bool) -> Vec<u8> {
        tcp_segment(src, dst, control, 1000, ack.then_some(1), &[])
    }

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn syn_and_other_tcp() {
        let syn = tcp_v4(a("198.18.0.1:40000"), a("10.9.9.9:443"), TcpControl::Syn, false);
        assert_eq!(
            classify(&syn, false, false),
            Class::TcpSyn { src: "198.18.0.1:40000".parse().unwrap(), dst: "10.9.9.9:443".parse().unwrap() }
        );
        let synack = tcp_v4(a("198.18.0.1:40000"), a("10.9.9.9:443"), TcpControl::Syn, true);
        assert_eq!(classify(&synack, false, false), Class::Tcp);
        let mut bad = syn.clone();
        let n = bad.len() - 1;
        bad[n] ^= 0xff;
        assert_eq!(classify(&bad, false, false), Class::Drop("bad TCP checksum"));
        // A partial checksum the kernel vouched for is not summed again;
        // the IPv4 header's own checksum still is.
        assert!(matches!(classify(&bad, false, true), Class::TcpSyn { .. }));
        let mut bad_ip = syn.clone();
        bad_ip[10] ^= 0xff;
        assert_eq!(classify(&bad_ip, false, true), Class::Drop("bad IPv4 checksum"));
    }

    #[test]
    fn dns_and_udp() {
        let q = udp_v4(a("198.18.0.1:5353"), a("9.9.9.9:53"), b"query");
        assert_eq!(
            classify(&q, false, false),
            Class::Dns {
                src: "198.18.0.1:5353".parse().unwrap(),
                dst: "9.9.9.9:53".parse().unwrap(),
                payload: b"query"
            }
        );
        let quic = udp_v4(a("198.18.0.1:5353"), a("9.9.9.9:443"), b"x");
        assert_eq!(
            classify(&quic, false, false),
            Class::Udp { src: "198.18.0.1:5353".parse().unwrap(), dst: "9.9.9.9:443".parse().unwrap(), payload: b"x" }
        );
    }

    #[test]
    fn ipv6_dns_reply_round_trips() {
        let (c, s): (SocketAddr, SocketAddr) =
            ("[fd00:18::1]:5353".parse().unwrap(), "[2001:db8::53]:53".parse().unwrap());
        let q = udp_packet(c, s, b"query").unwrap();
        assert_eq!(classify(&q, true, false), Class::Dns { src: c, dst: s, payload: b"query" });
        assert_eq!(classify(&q, false, false), Class::Drop("ipv6 (blocked)"));
        assert!(udp_packet(c, "1.2.3.4:53".parse().unwrap(), b"x").is_none(), "mixed families");
    }

    #[test]
    fn garbage_is_dropped_not_panicking() {
        assert_eq!(classify(&[], true, false), Class::Drop("not an IP packet"));
        assert_eq!(classify(&[0x45, 0, 0], true, false), Class::Drop("bad IPv4 header"));
        assert_eq!(classify(&[0x60; 40], false, false), Class::Drop("ipv6 (blocked)"));
        assert_eq!(classify(&[0x60; 10], true, false), Class::Drop("bad IPv6 header"));
        let mut frag = udp_v4(a("1.1.1.1:1"), a("2.2.2.2:53"), b"x");
        frag[6] = 0x20; // more fragments
        let mut p = Ipv4Packet::new_unchecked(&mut frag[..]);
        p.fill_checksum();
        assert_eq!(classify(&frag, true, false), Class::Drop("IPv4 fragment"));
        // Every truncation of a valid packet is classified without panic.
        let syn = tcp_v4(a("198.18.0.1:1"), a("10.0.0.1:2"), TcpControl::Syn, false);
        for n in 0..syn.len() {
            let _ = classify(&syn[..n], true, false);
            let _ = classify(&syn[..n], true, true);
        }
    }
}
