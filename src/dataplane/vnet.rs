//! The virtio-net header in front of every packet on the TUN (IFF_VNET_HDR
//! with TUN_F_CSUM): it lets checksums go unmade on both sides. The kernel
//! hands us segments whose TCP/UDP checksum it left "partial" (only the
//! pseudo-header sum) and we hand it ours the same way; neither side sums
//! the payload, because both ends of the TUN are one host's memory. A
//! packet that leaves through a real device is completed by the kernel
//! there. Pure: bytes in, bytes out.

use smoltcp::wire::checksum;
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet};

/// `struct virtio_net_hdr` (no merged buffers): flags, gso_type, hdr_len,
/// gso_size, csum_start, csum_offset.
pub const HDR_LEN: usize = 10;
const F_NEEDS_CSUM: u8 = 1;
const F_DATA_VALID: u8 = 2;
const GSO_NONE: u8 = 0;

/// The header of a packet whose checksums are complete.
pub const PLAIN: [u8; HDR_LEN] = [0; HDR_LEN];

/// What a frame read from the TUN holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The packet; `trusted`: the kernel vouches for its transport
    /// checksum (partial or already verified), so it is not summed again.
    Packet { pkt: &'a [u8], trusted: bool },
    /// Too short for the header, or a GSO super-packet (never asked for).
    Bad(&'static str),
}

pub fn parse(frame: &[u8]) -> Frame<'_> {
    let Some((hdr, pkt)) = frame.split_first_chunk::<HDR_LEN>() else { return Frame::Bad("short virtio-net header") };
    if hdr[1] != GSO_NONE {
        return Frame::Bad("GSO packet (not enabled)");
    }
    Frame::Packet { pkt, trusted: hdr[0] & (F_NEEDS_CSUM | F_DATA_VALID) != 0 }
}

/// `frame` = [header space][a packet from the stack whose TCP checksum was
/// left zero]. Writes the pseudo-header sum into the checksum field and
/// the header that tells the kernel where the checksum is; any other
/// packet (ICMP, or one this cannot parse) gets the plain header and must
/// already be complete.
pub fn offload_tcp(frame: &mut [u8]) {
    let Some((hdr, pkt)) = frame.split_first_chunk_mut::<HDR_LEN>() else { return };
    *hdr = PLAIN;
    let Some((start, sum)) = tcp_pseudo(pkt) else { return };
    let field = start + 16;
    let Some(c) = pkt.get_mut(field..field + 2) else { return };
    c.copy_from_slice(&sum.to_be_bytes());
    hdr[0] = F_NEEDS_CSUM;
    hdr[6..8].copy_from_slice(&(start as u16).to_ne_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_ne_bytes());
}

/// (offset of the TCP header, pseudo-header sum) of an IPv4 or IPv6 TCP
/// packet with no IPv6 extension header (the stack emits none).
fn tcp_pseudo(pkt: &[u8]) -> Option<(usize, u16)> {
    match pkt.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(pkt).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let start = ip.header_len() as usize;
            let len = (ip.total_len() as usize).checked_sub(start)?;
            let (s, d) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()));
            Some((start, checksum::pseudo_header(&s, &d, IpProtocol::Tcp, len as u32)))
        }
        6 => {
            let ip = Ipv6Packet::new_checked(pkt).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let (s, d) = (IpAddress::Ipv6(ip.src_addr()), IpAddress::Ipv6(ip.dst_addr()));
            Some((40, checksum::pseudo_header(&s, &d, IpProtocol::Tcp, u32::from(ip.payload_len()))))
        }
        _ => None,
    }
}

/// What the kernel does with a partial checksum before a packet leaves
/// through a device that cannot: sums from `csum_start` and stores the
/// complement at `csum_offset`. For tests (here and in the stack's), which
/// check the result with smoltcp's own verification.
#[cfg(test)]
pub fn complete(frame: &[u8]) -> Vec<u8> {
    let mut pkt = frame[HDR_LEN..].to_vec();
    if frame[0] & F_NEEDS_CSUM != 0 {
        let start = u16::from_ne_bytes([frame[6], frame[7]]) as usize;
        let field = start + u16::from_ne_bytes([frame[8], frame[9]]) as usize;
        let sum = !checksum::data(&pkt[start..]);
        pkt[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    }
    pkt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::packet::tcp_segment;
    use smoltcp::wire::{TcpControl, TcpPacket};
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn segment(payload: &[u8]) -> Vec<u8> {
        let a = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000);
        let b = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 443);
        tcp_segment(a, b, TcpControl::Psh, 7, Some(9), payload)
    }

    fn frame_of(pkt: &[u8]) -> Vec<u8> {
        let mut f = PLAIN.to_vec();
        f.extend_from_slice(pkt);
        f
    }

    fn tcp_ok(pkt: &[u8]) -> bool {
        let ip = Ipv4Packet::new_checked(pkt).expect("ipv4");
        let t = TcpPacket::new_checked(ip.payload()).expect("tcp");
        t.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into())
    }

    #[test]
    fn an_offloaded_segment_completes_to_the_full_checksum() {
        for payload in [&b""[..], b"x", b"odd length payload", &[0xffu8; 1461][..]] {
            let full = segment(payload);
            assert!(tcp_ok(&full));
            // As the stack emits it with TCP checksums off: field zero.
            let mut zeroed = full.clone();
            zeroed[20 + 16..20 + 18].copy_from_slice(&[0, 0]);
            let mut frame = frame_of(&zeroed);
            offload_tcp(&mut frame);
            assert_eq!(frame[0], F_NEEDS_CSUM);
            assert_eq!(u16::from_ne_bytes([frame[6], frame[7]]), 20, "csum_start");
            assert_eq!(u16::from_ne_bytes([frame[8], frame[9]]), 16, "csum_offset");
            assert_ne!(&frame[HDR_LEN..], &full[..], "partial, not complete");
            assert_eq!(complete(&frame), full, "completed like the kernel would: {payload:?}");
        }
    }

    #[test]
    fn non_tcp_and_garbage_get_the_plain_header_untouched() {
        let udp = crate::dataplane::packet::udp_v4(
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 53),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 5000),
            b"answer",
        );
        for pkt in [udp, vec![0x45, 0, 0], vec![0x60; 8], Vec::new()] {
            let mut frame = frame_of(&pkt);
            let before = frame.clone();
            frame[0] = 0xff;
            offload_tcp(&mut frame);
            assert_eq!(frame, before, "{pkt:?}");
        }
        let mut short = vec![1u8; 4];
        offload_tcp(&mut short);
        assert_eq!(short, vec![1u8; 4]);
    }

    #[test]
    fn frames_from_the_kernel() {
        let pkt = segment(b"hi");
        let mut f = frame_of(&pkt);
        assert_eq!(parse(&f), Frame::Packet { pkt: &pkt, trusted: false });
        f[0] = F_NEEDS_CSUM;
        assert_eq!(parse(&f), Frame::Packet { pkt: &pkt, trusted: true });
        f[0] = F_DATA_VALID;
        assert_eq!(parse(&f), Frame::Packet { pkt: &pkt, trusted: true });
        f[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
        assert_eq!(parse(&f), Frame::Bad("GSO packet (not enabled)"));
        assert_eq!(parse(&f[..9]), Frame::Bad("short virtio-net header"));
    }
}
