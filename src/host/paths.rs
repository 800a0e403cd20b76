//! Where nsproxy keeps things on the host. `Paths::system()` is the real
//! layout; tests point every root at a temporary directory.

use std::path::{Path, PathBuf};

/// The roots nsproxy reads and writes under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Per-account run directories: lock, pid, state, stats, sockets, log.
    pub run_root: PathBuf,
    /// Per-account persistent state: the pool file (burns survive).
    pub state_root: PathBuf,
    /// Named network namespaces (`ip netns` looks here).
    pub netns_dir: PathBuf,
    /// Per-namespace files bound over `/etc` inside the namespace.
    pub etc_netns: PathBuf,
    /// The host's nsswitch.conf, the model of the namespace's.
    pub host_nsswitch: PathBuf,
}

impl Paths {
    pub fn system() -> Paths {
        Paths {
            run_root: "/run/nsproxy".into(),
            state_root: "/var/lib/nsproxy".into(),
            netns_dir: "/run/netns".into(),
            etc_netns: "/etc/netns".into(),
            host_nsswitch: "/etc/nsswitch.conf".into(),
        }
    }

    /// Every root under `dir` (for tests without root).
    pub fn under(dir: &Path) -> Paths {
        Paths {
            run_root: dir.join("run/nsproxy"),
            state_root: dir.join("var/lib/nsproxy"),
            netns_dir: dir.join("run/netns"),
            etc_netns: dir.join("etc/netns"),
            host_nsswitch: dir.join("etc/nsswitch.conf"),
        }
    }

    pub fn run_dir(&self, account: &str) -> PathBuf {
        self.run_root.join(account)
    }

    pub fn state_dir(&self, account: &str) -> PathBuf {
        self.state_root.join(account)
    }

    pub fn netns(&self, namespace: &str) -> PathBuf {
        self.netns_dir.join(namespace)
    }

    pub fn etc_netns_dir(&self, namespace: &str) -> PathBuf {
        self.etc_netns.join(namespace)
    }

    /// Containers attached by the CNI plugin: one record per container,
    /// and the plugin's locks.
    pub fn cni_dir(&self) -> PathBuf {
        self.run_root.join(".cni")
    }

    /// Serialises namespace creation and removal between nsproxy processes.
    pub fn netns_lock(&self) -> PathBuf {
        self.run_root.join(".netns.lock")
    }
}
