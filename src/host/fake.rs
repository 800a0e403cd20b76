//! A recording host for tests without root: namespaces and TUNs are names
//! in a set (a namespace also leaves a marker file where the real one would
//! be mounted), `/etc/netns` files are written for real under the fake's
//! `Paths`, every call is recorded, and any operation can be made to fail.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use nix::sys::signal::Signal;

use super::{Host, HostError, Paths, TunPlan, rundir};

#[derive(Debug, Default)]
struct World {
    namespaces: BTreeSet<String>,
    tuns: BTreeSet<String>,
    /// Processes said to run in a namespace: (namespace, pid).
    programs: Vec<(String, i32)>,
    calls: Vec<String>,
    fail: BTreeSet<String>,
}

#[derive(Debug)]
pub struct FakeHost {
    paths: Paths,
    world: Mutex<World>,
}

impl FakeHost {
    /// A fake whose roots are under `paths` (created here).
    pub fn new(paths: Paths) -> FakeHost {
        for d in [&paths.run_root, &paths.state_root, &paths.netns_dir, &paths.etc_netns] {
            if let Some(parent) = d.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
        }
        FakeHost { paths, world: Mutex::new(World::default()) }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every later call of `op` (e.g. "tun_create") fail.
    pub fn fail(&self, op: &str) {
        self.world().fail.insert(op.into());
    }

    /// The operations called so far, as `op arg`.
    pub fn calls(&self) -> Vec<String> {
        self.world().calls.clone()
    }

    pub fn namespaces(&self) -> Vec<String> {
        self.world().namespaces.iter().cloned().collect()
    }

    pub fn tuns(&self) -> Vec<String> {
        self.world().tuns.iter().cloned().collect()
    }

    /// Pretends `pid` runs in namespace `ns` (until it gets a signal that
    /// ends it).
    pub fn add_program(&self, ns: &str, pid: i32) {
        self.world().programs.push((ns.into(), pid));
    }

    fn call(&self, op: &str, arg: &str) -> Result<(), HostError> {
        let mut w = self.world();
        w.calls.push(format!("{op} {arg}"));
        if w.fail.contains(op) {
            return Err(HostError::Injected(format!("injected failure: {op} {arg}")));
        }
        Ok(())
    }
}

impl Host for FakeHost {
    fn paths(&self) -> &Paths {
        &self.paths
    }
    fn netns_exists(&self, ns: &str) -> bool {
        self.world().namespaces.contains(ns)
    }
    fn netns_create(&self, ns: &str) -> Result<bool, HostError> {
        self.call("netns_create", ns)?;
        let created = self.world().namespaces.insert(ns.into());
        std::fs::create_dir_all(&self.paths.netns_dir)
            .and_then(|()| std::fs::write(self.paths.netns(ns), b""))
            .map_err(|source| HostError::Io { what: format!("fake namespace {ns}"), source })?;
        Ok(created)
    }
    fn netns_remove(&self, ns: &str) -> Result<(), HostError> {
        self.call("netns_remove", ns)?;
        let mut w = self.world();
        w.namespaces.remove(ns);
        w.tuns.remove(ns);
        w.programs.retain(|(n, _)| n != ns);
        drop(w);
        match std::fs::remove_file(self.paths.netns(ns)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(HostError::Io { what: format!("fake namespace {ns}"), source: e })
            }
            _ => Ok(()),
        }
    }
    fn netns_pids(&self, ns: &str) -> Vec<i32> {
        self.world().programs.iter().filter(|(n, _)| n == ns).map(|(_, p)| *p).collect()
    }
    fn etc_netns_write(&self, ns: &str, dns: Ipv4Addr) -> Result<bool, HostError> {
        self.call("etc_netns_write", ns)?;
        Ok(rundir::write_etc_netns(&self.paths, ns, dns)?)
    }
    fn etc_netns_remove(&self, ns: &str) -> Result<(), HostError> {
        self.call("etc_netns_remove", ns)?;
        rundir::remove_etc_netns(&self.paths, ns)
            .map_err(|source| HostError::Io { what: format!("remove /etc/netns/{ns}"), source })
    }
    fn tun_create(&self, plan: &TunPlan) -> Result<OwnedFd, HostError> {
        self.call("tun_create", &plan.namespace)?;
        if !self.netns_exists(&plan.namespace) {
            return Err(HostError::Injected(format!("network namespace {} does not exist", plan.namespace)));
        }
        let f = std::fs::File::open("/dev/null")
            .map_err(|source| HostError::Io { what: "fake TUN (/dev/null)".into(), source })?;
        self.world().tuns.insert(plan.namespace.clone());
        Ok(OwnedFd::from(f))
    }
    fn tun_present(&self, ns: &str) -> bool {
        self.world().tuns.contains(ns)
    }
    fn signal(&self, pid: i32, sig: Option<Signal>) -> bool {
        let mut w = self.world();
        let alive = w.programs.iter().any(|(_, p)| *p == pid);
        if let Some(s) = sig {
            w.calls.push(format!("signal {pid} {s}"));
            if matches!(s, Signal::SIGTERM | Signal::SIGKILL) {
                w.programs.retain(|(_, p)| *p != pid);
            }
        }
        alive
    }
}
