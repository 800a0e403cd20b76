//! `/run/nsproxy/<account>/stats.json`: the daemon's counters (flows,
//! bytes, DNS, refusals and the proxy service's state), as `status` and the
//! metrics read them.

use serde::Serialize;

#[derive(Debug, Serialize, PartialEq, Eq, Clone, serde::Deserialize, Default)]
pub struct Snapshot {
    pub flows_active: u64,
    pub flows_pending: u64,
    pub flows_opened: u64,
    pub flows_refused_proxy: u64,
    pub flows_refused_limit: u64,
    pub flows_refused_unknown_fake_ip: u64,
    #[serde(default)]
    pub flows_refused_rule: u64,
    #[serde(default)]
    pub flows_refused_no_proxy: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub dns_queries: u64,
    #[serde(default)]
    pub dns_noerror: u64,
    #[serde(default)]
    pub dns_nxdomain: u64,
    #[serde(default)]
    pub dns_servfail: u64,
    #[serde(default)]
    pub dns_other: u64,
    pub packets_dropped: u64,
    #[serde(default)]
    pub tun_writes_dropped: u64,
    pub udp_refused: u64,
    #[serde(default)]
    pub udp_associations: u64,
    #[serde(default)]
    pub udp_datagrams_up: u64,
    #[serde(default)]
    pub udp_datagrams_down: u64,
    #[serde(default)]
    pub udp_bytes_up: u64,
    #[serde(default)]
    pub udp_bytes_down: u64,
    #[serde(default)]
    pub udp_dropped: u64,
    #[serde(default)]
    pub udp_fragments_dropped: u64,
    /// Fleet mode: the proxy service's state.
    #[serde(default)]
    pub service: Option<crate::published::service::ServiceStatus>,
}
