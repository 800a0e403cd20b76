//! Who answers the program's DNS queries: the fake-IP table (with its
//! append-only log under the run directory) or the forwarder through the
//! proxy (DNS mode `tcp`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use super::fakeip::FakeIpTable;
use super::forward::Forwarder;

/// Fake-IP table and its append-only log.
pub struct FakeDns {
    pub table: FakeIpTable,
    log: Option<std::fs::File>,
    /// `NAME.host.nsproxy`: answered with the host service's address.
    hosts: super::HostNames,
}

impl FakeDns {
    /// Loads the table from `path` (corrupt lines skipped and logged),
    /// compacts the file, and appends new entries to it from now on.
    pub fn open(path: &Path, account: &str, range: &crate::config::plan::Addresses) -> FakeDns {
        let (table, bad) = match std::fs::read_to_string(path) {
            Ok(text) => FakeIpTable::of(range).restore(&text),
            Err(_) => (FakeIpTable::of(range), 0),
        };
        if bad > 0 {
            tracing::warn!(account, file = %path.display(), bad, range = %range, "skipped lines of the fake-IP table: corrupt, or from before dns.fake_ip_range moved");
        }
        // Compact: rewrite what was loaded, then append new entries.
        let _ = crate::host::rundir::write_volatile(path, table.to_text().as_bytes(), 0o600);
        let log = OpenOptions::new().append(true).open(path).ok();
        if !table.is_empty() {
            tracing::info!(account, entries = table.len(), "fake-IP table restored");
        }
        FakeDns { table, log, hosts: Default::default() }
    }

    /// The account's host services, answered by name.
    pub fn with_hosts(mut self, hosts: super::HostNames) -> FakeDns {
        self.hosts = hosts;
        self
    }

    /// An in-memory table with no log.
    pub fn in_memory() -> FakeDns {
        FakeDns { table: FakeIpTable::default(), log: None, hosts: Default::default() }
    }

    pub fn answer(&mut self, msg: &[u8]) -> Option<Vec<u8>> {
        if let Some(r) = super::host_answer(&self.hosts, msg) {
            return Some(r);
        }
        let a = super::answer_fake_ip(&mut self.table, msg)?;
        if let (Some((ip, name)), Some(log)) = (&a.new_entry, self.log.as_mut()) {
            let _ = log.write_all(format!("{ip} {name}\n").as_bytes());
        }
        Some(a.reply)
    }
}

/// Who answers the program's DNS queries.
pub enum DnsServer {
    FakeIp(Mutex<FakeDns>),
    /// The forwarder, and the host services' names it answers itself.
    Forward(Forwarder, super::HostNames),
}

impl DnsServer {
    /// The fake-IP table, when in fake-ip mode.
    pub fn fake(&self) -> Option<MutexGuard<'_, FakeDns>> {
        match self {
            DnsServer::FakeIp(m) => Some(m.lock().unwrap_or_else(|e| e.into_inner())),
            DnsServer::Forward(..) => None,
        }
    }

    /// The answer to a DNS message (None: nothing to answer). Over UDP a
    /// forwarded answer larger than the client accepts is truncated (TC),
    /// so the client retries over TCP; fake-IP answers always fit.
    pub async fn answer(&self, msg: &[u8], udp: bool) -> Option<Vec<u8>> {
        use super::message::{fit_udp, udp_limit};
        match self {
            DnsServer::FakeIp(m) => m.lock().unwrap_or_else(|e| e.into_inner()).answer(msg),
            DnsServer::Forward(f, hosts) => {
                // Host services' names: answered here, never forwarded.
                if let Some(r) = super::host_answer(hosts, msg) {
                    return Some(r);
                }
                match super::query_or_error(msg) {
                    Ok(q) if udp => {
                        let r = f.resolve(q.clone(), msg).await;
                        Some(fit_udp(&r, &q, udp_limit(msg)))
                    }
                    Ok(q) => Some(f.resolve(q, msg).await),
                    Err(reply) => reply,
                }
            }
        }
    }
}
