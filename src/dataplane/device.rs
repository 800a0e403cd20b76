//! The smoltcp device over the TUN: received packets are queued by the loop
//! (after classification); transmitted packets are written straight to the
//! non-blocking TUN fd (dropped on EAGAIN; TCP retransmits), each behind
//! its virtio-net header (vnet.rs): the stack leaves TCP checksums to it.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::vnet;

/// Where transmitted packets go: the TUN in the daemon, a queue in tests.
/// A frame is the virtio-net header, then the packet.
pub trait Sink {
    fn send(&mut self, frame: &[u8]);
}

/// Writes to a TUN fd; a frame the TUN refuses (its queue full) is
/// counted in `dropped` (the stats' `tun_writes_dropped`).
pub struct FdSink<F: AsFd> {
    pub fd: F,
    pub dropped: Arc<AtomicU64>,
}

impl<F: AsFd> Sink for FdSink<F> {
    fn send(&mut self, frame: &[u8]) {
        let fd: BorrowedFd<'_> = self.fd.as_fd();
        if nix::unistd::write(fd, frame).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes a packet whose checksums are complete (built by hand: DNS
/// answers, UDP replies, ICMP) to the TUN, behind the plain header; a
/// packet the TUN refuses is counted in `dropped`.
pub fn write_plain(fd: BorrowedFd<'_>, pkt: &[u8], dropped: &AtomicU64) {
    let iov = [std::io::IoSlice::new(&vnet::PLAIN), std::io::IoSlice::new(pkt)];
    if nix::sys::uio::writev(fd, &iov).is_err() {
        dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Received packets are copied into buffers kept here and reused, so the
/// hot path does not allocate per packet.
const POOL_MAX: usize = 32;

/// A packet read from the TUN at least this long is not copied: the read
/// buffer itself is queued and the loop reads on into a spare one (an
/// upload's segments are up to the MTU long; copying each cost a memcpy
/// of the whole stream). A shorter one is copied, so that an ACK does not
/// hold a whole read buffer.
const QUEUE_IN_PLACE: usize = 4096;

/// Spare read buffers kept for the loop (each the loop's read size).
const SPARE_MAX: usize = 8;

/// A queued packet: `buf[start..end]`; `read`: `buf` is a read buffer
/// (`push_read`), which goes back to the spares.
struct Queued {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    read: bool,
}

pub struct TunDevice<S: Sink> {
    rx: VecDeque<Queued>,
    pub rx_limit: usize,
    pub sink: S,
    pub mtu: usize,
    tx_buf: Vec<u8>,
    pool: Vec<Vec<u8>>,
    /// Read buffers handed back by the stack, for `push_read`.
    spare: Vec<Vec<u8>>,
}

impl<S: Sink> TunDevice<S> {
    pub fn new(sink: S, mtu: usize, rx_limit: usize) -> Self {
        TunDevice {
            rx: VecDeque::new(),
            rx_limit,
            sink,
            mtu,
            tx_buf: Vec::with_capacity(vnet::HDR_LEN + mtu),
            pool: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Queues a packet for the stack; false (dropped) when the queue is full.
    pub fn push(&mut self, pkt: Vec<u8>) -> bool {
        if self.rx.len() >= self.rx_limit {
            return false;
        }
        let end = pkt.len();
        self.rx.push_back(Queued { buf: pkt, start: 0, end, read: false });
        true
    }

    /// Queues a copy of `pkt` in a recycled buffer.
    pub fn push_copy(&mut self, pkt: &[u8]) -> bool {
        if self.rx.len() >= self.rx_limit {
            return false;
        }
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(pkt);
        self.push(buf)
    }

    /// Queues the packet `frame[start..end]` that the loop read into
    /// `frame`: a short one copied (`push_copy`); a long one in place,
    /// `frame` itself going to the queue and replaced by a spare buffer of
    /// the same length (one the stack is done with, or a new one). False
    /// (dropped, and `frame` left as it was) when the queue is full or the
    /// range is not in `frame`.
    pub fn push_read(&mut self, frame: &mut Vec<u8>, start: usize, end: usize) -> bool {
        let Some(pkt) = frame.get(start..end) else { return false };
        if pkt.len() < QUEUE_IN_PLACE {
            return self.push_copy(pkt);
        }
        if self.rx.len() >= self.rx_limit {
            return false;
        }
        let len = frame.len();
        let spare = match self.spare.pop() {
            Some(b) if b.len() == len => b,
            _ => vec![0u8; len],
        };
        let buf = std::mem::replace(frame, spare);
        self.rx.push_back(Queued { buf, start, end, read: true });
        true
    }
}

pub struct RxToken<'a> {
    q: Queued,
    pool: &'a mut Vec<Vec<u8>>,
    spare: &'a mut Vec<Vec<u8>>,
}

pub struct TxToken<'a, S: Sink> {
    sink: &'a mut S,
    buf: &'a mut Vec<u8>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let Queued { buf, start, end, read } = self.q;
        let r = f(buf.get(start..end).unwrap_or_default());
        if read {
            if self.spare.len() < SPARE_MAX {
                self.spare.push(buf);
            }
        } else if self.pool.len() < POOL_MAX {
            self.pool.push(buf);
        }
        r
    }
}

impl<S: Sink> phy::TxToken for TxToken<'_, S> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // The buffer only grows: smoltcp writes every byte of the `len`
        // it asks for (headers, options and their padding, payload), and
        // `offload_tcp` the whole header, so nothing is cleared between
        // packets (zero-filling each one was ~1% of a bulk download).
        let total = vnet::HDR_LEN + len;
        if self.buf.len() < total {
            self.buf.resize(total, 0);
        }
        let frame = &mut self.buf[..total];
        let r = f(&mut frame[vnet::HDR_LEN..]);
        vnet::offload_tcp(frame);
        self.sink.send(frame);
        r
    }
}

impl<S: Sink> phy::Device for TunDevice<S> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, S>
    where
        Self: 'a;

    fn receive(&mut self, _t: Instant) -> Option<(RxToken<'_>, TxToken<'_, S>)> {
        let q = self.rx.pop_front()?;
        let rx = RxToken { q, pool: &mut self.pool, spare: &mut self.spare };
        Some((rx, TxToken { sink: &mut self.sink, buf: &mut self.tx_buf }))
    }

    fn transmit(&mut self, _t: Instant) -> Option<TxToken<'_, S>> {
        Some(TxToken { sink: &mut self.sink, buf: &mut self.tx_buf })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c.max_burst_size = None;
        // TCP checksums are neither made nor verified by the stack: the
        // kernel completes ours only if a packet ever leaves through a
        // device, and every segment the stack receives was classified
        // first (verified there unless the kernel vouched for it). The
        // same for UDP, which reaches the stack only to be answered with
        // ICMP port unreachable (the stack has no UDP socket, so it never
        // emits UDP).
        c.checksum.tcp = Checksum::None;
        c.checksum.udp = Checksum::None;
        c
    }
}

#[cfg(test)]
mod tests {
    use smoltcp::phy::{Device, TxToken};

    use super::*;

    struct Frames(Vec<Vec<u8>>);

    impl Sink for Frames {
        fn send(&mut self, frame: &[u8]) {
            self.0.push(frame.to_vec());
        }
    }

    #[test]
    fn a_read_buffer_is_queued_in_place_and_comes_back_as_a_spare() {
        use smoltcp::phy::RxToken;
        let mut dev = TunDevice::new(Frames(Vec::new()), 1500, 1);
        let end = 10 + QUEUE_IN_PLACE;
        let mut frame = vec![7u8; end + 100];
        frame[10..14].copy_from_slice(b"segm");
        let queued_at = frame.as_ptr();
        assert!(dev.push_read(&mut frame, 10, end));
        assert_eq!(frame.len(), end + 100, "the loop reads on into a buffer of the same length");
        assert_ne!(frame.as_ptr(), queued_at);
        // The queue holds one: the next packet is refused, the frame kept.
        let kept = frame.as_ptr();
        assert!(!dev.push_read(&mut frame, 10, end));
        assert!(!dev.push_read(&mut frame, 10, 14));
        assert!(!dev.push_copy(b"x"));
        assert_eq!(frame.as_ptr(), kept);
        let (rx, _) = dev.receive(Instant::from_millis(0)).expect("queued");
        let got = rx.consume(|p| p.to_vec());
        assert_eq!(got.len(), QUEUE_IN_PLACE);
        assert_eq!(got[..4], *b"segm");
        // The stack is done with it: the next read buffer is that one.
        assert!(dev.push_read(&mut frame, 10, end + 10));
        assert_eq!(frame.as_ptr(), queued_at);
        let (rx, _) = dev.receive(Instant::from_millis(0)).expect("queued");
        rx.consume(|_| ());
        // A short packet is copied: the loop keeps its buffer.
        let kept = frame.as_ptr();
        frame[10..14].copy_from_slice(b"ack!");
        assert!(dev.push_read(&mut frame, 10, 14));
        assert_eq!(frame.as_ptr(), kept);
        let (rx, _) = dev.receive(Instant::from_millis(0)).expect("queued");
        assert_eq!(rx.consume(|p| p.to_vec()), b"ack!");
        // A range outside the frame is refused.
        assert!(!dev.push_read(&mut frame, 10, end + 101));
        assert!(!dev.push_read(&mut frame, 12, 11));
    }

    #[test]
    fn each_frame_is_the_length_asked_for_after_a_longer_one() {
        let mut dev = TunDevice::new(Frames(Vec::new()), 1500, 8);
        for (len, byte) in [(1200, 0xaa), (40, 0x45), (600, 0x60)] {
            let tx = dev.transmit(Instant::from_millis(0)).expect("token");
            tx.consume(len, |b| b.fill(byte));
        }
        let f = &dev.sink.0;
        assert_eq!(f.iter().map(Vec::len).collect::<Vec<_>>(), [1210, 50, 610]);
        // Not TCP: the plain header, then exactly what the stack wrote.
        for (frame, byte) in f.iter().zip([0xaa, 0x45, 0x60]) {
            assert_eq!(frame[..vnet::HDR_LEN], vnet::PLAIN);
            assert!(frame[vnet::HDR_LEN..].iter().all(|&b| b == byte));
        }
    }
}
