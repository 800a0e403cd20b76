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

pub struct TunDevice<S: Sink> {
    pub rx: VecDeque<Vec<u8>>,
    pub rx_limit: usize,
    pub sink: S,
    pub mtu: usize,
    tx_buf: Vec<u8>,
    pool: Vec<Vec<u8>>,
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
        }
    }

    /// Queues a packet for the stack; false (dropped) when the queue is full.
    pub fn push(&mut self, pkt: Vec<u8>) -> bool {
        if self.rx.len() >= self.rx_limit {
            return false;
        }
        self.rx.push_back(pkt);
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
        self.rx.push_back(buf);
        true
    }
}

pub struct RxToken<'a> {
    buf: Vec<u8>,
    pool: &'a mut Vec<Vec<u8>>,
}

pub struct TxToken<'a, S: Sink> {
    sink: &'a mut S,
    buf: &'a mut Vec<u8>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.buf);
        if self.pool.len() < POOL_MAX {
            self.pool.push(self.buf);
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
        let buf = self.rx.pop_front()?;
        Some((RxToken { buf, pool: &mut self.pool }, TxToken { sink: &mut self.sink, buf: &mut self.tx_buf }))
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
