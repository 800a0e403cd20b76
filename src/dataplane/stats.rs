//! Counters of one account's data plane; `snapshot` turns them into the
//! published `stats.json` schema.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::published::stats::Snapshot;

#[derive(Debug, Default)]
pub struct Stats {
    pub flows_opened: AtomicU64,
    pub flows_refused_proxy: AtomicU64,
    pub flows_refused_limit: AtomicU64,
    pub flows_refused_unknown_fake_ip: AtomicU64,
    pub flows_refused_rule: AtomicU64,
    pub flows_refused_no_proxy: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub dns_queries: AtomicU64,
    /// Answers by result: NOERROR, NXDOMAIN, SERVFAIL, anything else.
    pub dns_noerror: AtomicU64,
    pub dns_nxdomain: AtomicU64,
    pub dns_servfail: AtomicU64,
    pub dns_other: AtomicU64,
    pub packets_dropped: AtomicU64,
    /// Packets to the program that the TUN refused (its queue full): TCP
    /// sends them again; a DNS answer or UDP datagram is lost. Shared
    /// with the device's sink.
    pub tun_writes_dropped: Arc<AtomicU64>,
    pub udp_refused: AtomicU64,
    /// `udp: proxy`: associations opened, datagrams and payload bytes each
    /// way, datagrams dropped (queue full, bad header), fragments dropped.
    pub udp_associations: AtomicU64,
    pub udp_datagrams_up: AtomicU64,
    pub udp_datagrams_down: AtomicU64,
    pub udp_bytes_up: AtomicU64,
    pub udp_bytes_down: AtomicU64,
    pub udp_dropped: AtomicU64,
    pub udp_fragments_dropped: AtomicU64,
}

impl Stats {
    /// Counts a DNS answer by its result code.
    pub fn dns_reply(&self, reply: &[u8]) {
        let c = match reply.get(3).map(|b| b & 0x0f) {
            Some(0) => &self.dns_noerror,
            Some(3) => &self.dns_nxdomain,
            Some(2) => &self.dns_servfail,
            _ => &self.dns_other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self, active: usize, pending: usize) -> Snapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            flows_active: active as u64,
            flows_pending: pending as u64,
            flows_opened: g(&self.flows_opened),
            flows_refused_proxy: g(&self.flows_refused_proxy),
            flows_refused_limit: g(&self.flows_refused_limit),
            flows_refused_unknown_fake_ip: g(&self.flows_refused_unknown_fake_ip),
            flows_refused_rule: g(&self.flows_refused_rule),
            flows_refused_no_proxy: g(&self.flows_refused_no_proxy),
            bytes_up: g(&self.bytes_up),
            bytes_down: g(&self.bytes_down),
            dns_queries: g(&self.dns_queries),
            dns_noerror: g(&self.dns_noerror),
            dns_nxdomain: g(&self.dns_nxdomain),
            dns_servfail: g(&self.dns_servfail),
            dns_other: g(&self.dns_other),
            packets_dropped: g(&self.packets_dropped),
            tun_writes_dropped: g(&self.tun_writes_dropped),
            udp_refused: g(&self.udp_refused),
            udp_associations: g(&self.udp_associations),
            udp_datagrams_up: g(&self.udp_datagrams_up),
            udp_datagrams_down: g(&self.udp_datagrams_down),
            udp_bytes_up: g(&self.udp_bytes_up),
            udp_bytes_down: g(&self.udp_bytes_down),
            udp_dropped: g(&self.udp_dropped),
            udp_fragments_dropped: g(&self.udp_fragments_dropped),
            service: None,
        }
    }
}
