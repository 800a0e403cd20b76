//! Where nsproxy meets the operating system. The privileged operations an
//! account's plan needs (namespace, `/etc/netns` files, TUN, processes) go
//! through the `Host` trait: `Linux` does them for real, `fake::FakeHost`
//! records them and can fail any of them, so `up`'s rollback and `down`'s
//! teardown are tested without root. Roots come from `Paths`. `unsafe`
//! lives in `sys` alone.

pub mod exec;
pub mod fake;
pub mod link;
pub mod netns;
pub mod paths;
pub mod rundir;
pub mod sys;

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use nix::sys::signal::Signal;

pub use link::TunPlan;
pub use paths::Paths;

/// A failed host operation; the message names the namespace or file.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error(transparent)]
    Files(#[from] rundir::RunDirError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// Injected by the fake host.
    #[error("{0}")]
    Injected(String),
}

/// The privileged operations of an account's lifecycle.
pub trait Host {
    fn paths(&self) -> &Paths;
    /// Whether the named namespace is live.
    fn netns_exists(&self, ns: &str) -> bool;
    /// Creates the namespace or reuses a live one; true when created.
    fn netns_create(&self, ns: &str) -> Result<bool, HostError>;
    /// Removes the namespace; already gone is success.
    fn netns_remove(&self, ns: &str) -> Result<(), HostError>;
    /// Processes in the namespace (this process excluded).
    fn netns_pids(&self, ns: &str) -> Vec<i32>;
    /// Writes `/etc/netns/<ns>`; true when the directory was created.
    fn etc_netns_write(&self, ns: &str, dns: Ipv4Addr) -> Result<bool, HostError>;
    /// Removes `/etc/netns/<ns>`; already gone is success.
    fn etc_netns_remove(&self, ns: &str) -> Result<(), HostError>;
    /// Creates and configures the TUN inside the plan's namespace.
    fn tun_create(&self, plan: &TunPlan) -> Result<OwnedFd, HostError>;
    /// Whether the TUN is in the namespace.
    fn tun_present(&self, ns: &str) -> bool;
    /// `netns_pids(ns).len()` for each of many namespaces.
    fn netns_program_counts(&self, namespaces: &[String]) -> Vec<usize> {
        namespaces.iter().map(|n| self.netns_pids(n).len()).collect()
    }
    /// `tun_present` for each of many namespaces.
    fn tuns_present(&self, namespaces: &[String]) -> Vec<bool> {
        namespaces.iter().map(|n| self.tun_present(n)).collect()
    }
    /// Sends `sig` to `pid` (None: only checks that it exists); true when
    /// the process exists.
    fn signal(&self, pid: i32, sig: Option<Signal>) -> bool;
}

/// The real host.
#[derive(Debug, Clone)]
pub struct Linux {
    paths: Paths,
}

impl Linux {
    pub fn new(paths: Paths) -> Linux {
        Linux { paths }
    }

    pub fn system() -> Linux {
        Linux::new(Paths::system())
    }
}

impl Host for Linux {
    fn paths(&self) -> &Paths {
        &self.paths
    }
    fn netns_exists(&self, ns: &str) -> bool {
        netns::exists(&self.paths, ns)
    }
    fn netns_create(&self, ns: &str) -> Result<bool, HostError> {
        Ok(netns::create_or_reuse(&self.paths, ns)?)
    }
    fn netns_remove(&self, ns: &str) -> Result<(), HostError> {
        Ok(netns::remove(&self.paths, ns)?)
    }
    fn netns_pids(&self, ns: &str) -> Vec<i32> {
        netns::pids_in(&self.paths, ns)
    }
    fn etc_netns_write(&self, ns: &str, dns: Ipv4Addr) -> Result<bool, HostError> {
        Ok(rundir::write_etc_netns(&self.paths, ns, dns)?)
    }
    fn etc_netns_remove(&self, ns: &str) -> Result<(), HostError> {
        rundir::remove_etc_netns(&self.paths, ns)
            .map_err(|source| HostError::Io { what: format!("remove /etc/netns/{ns}"), source })
    }
    fn tun_create(&self, plan: &TunPlan) -> Result<OwnedFd, HostError> {
        Ok(link::create_tun(&self.paths, plan)?)
    }
    fn tun_present(&self, ns: &str) -> bool {
        link::tun_present(&self.paths, ns)
    }
    fn netns_program_counts(&self, namespaces: &[String]) -> Vec<usize> {
        netns::program_counts(&self.paths, namespaces)
    }
    fn tuns_present(&self, namespaces: &[String]) -> Vec<bool> {
        link::tuns_present(&self.paths, namespaces)
    }
    fn signal(&self, pid: i32, sig: Option<Signal>) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).is_ok()
    }
}
