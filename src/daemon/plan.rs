//! One account's plan: everything the account owns on the host (run
//! directory with its lock, pid, state and sockets; the namespace; the
//! `/etc/netns/<ns>` files; the TUN), built once from the policy. The daemon
//! claims and applies it with rollback; `down` tears it down with the same
//! `release`, which keeps going past errors and treats "already gone" as
//! success, so it is safe to repeat.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::fcntl::Flock;
use nix::sys::signal::Signal;

use crate::config::{self, Account, plan};
use crate::host::rundir::RunDir;
use crate::host::{Host, Paths, TunPlan};

/// Something an account owns on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `/run/nsproxy/<account>/daemon.pid`.
    PidFile,
    /// `/run/nsproxy/<account>/ctl.sock`.
    ControlSocket,
    /// `/run/netns/<ns>`.
    Namespace,
    /// `/etc/netns/<ns>/`.
    EtcNetns,
    /// `/run/nsproxy/<account>/` and all in it.
    RunDir,
}

#[derive(Debug, Clone)]
pub struct AccountPlan {
    pub account: String,
    pub namespace: String,
    pub run: RunDir,
    pub tun: TunPlan,
    /// The stack's DNS address, written to the namespace's resolv.conf.
    pub dns: Ipv4Addr,
}

/// The account claimed by this daemon: its lock, and what it created so
/// far (undone in reverse on failure).
pub struct Claim {
    _lock: Flock<File>,
    pub created: Vec<Resource>,
}

impl AccountPlan {
    pub fn new(paths: &Paths, a: &Account) -> AccountPlan {
        AccountPlan {
            account: a.name.clone(),
            namespace: a.namespace.clone(),
            run: RunDir::new(paths, &a.name),
            tun: TunPlan {
                namespace: a.namespace.clone(),
                path: None,
                ifname: plan::TUN_NAME.into(),
                address: a.dns.fake_ip_range.tun_v4(),
                mtu: a.mtu,
                txqueuelen: a.limits.tun_queue_len(),
                ipv6: a.ipv6 == config::Ipv6Mode::Proxy,
            },
            dns: a.dns.fake_ip_range.dns_v4(),
        }
    }

    /// The plan of an account known only by name (`down`, `status`): the
    /// namespace from the running daemon's state, else from the policy,
    /// else the default name.
    pub fn known(paths: &Paths, account: &str, from_policy: impl FnOnce() -> Option<String>) -> AccountPlan {
        let run = RunDir::new(paths, account);
        let from_state = run.read_state().ok().flatten().map(|s| s.namespace);
        let namespace = plan::namespace_of(account, from_state, from_policy);
        AccountPlan {
            account: account.into(),
            tun: TunPlan {
                namespace: namespace.clone(),
                path: None,
                ifname: plan::TUN_NAME.into(),
                address: plan::Addresses::DEFAULT.tun_v4(),
                mtu: 0,
                txqueuelen: 0,
                ipv6: false,
            },
            namespace,
            run,
            dns: plan::Addresses::DEFAULT.dns_v4(),
        }
    }

    /// Run directory, the daemon lock (retried for a second: a daemon on
    /// its way out), the pid file.
    pub fn claim(&self) -> anyhow::Result<Claim> {
        let name = &self.account;
        self.run.create().with_context(|| format!("account {name}"))?;
        let lock = self.run.lock_daemon(20).with_context(|| format!("account {name}"))?.ok_or_else(|| {
            anyhow!("account {name}: a daemon is already running (pid {})", self.run.read_pid().unwrap_or(0))
        })?;
        self.run.write_pid(std::process::id())?;
        Ok(Claim { _lock: lock, created: vec![Resource::PidFile] })
    }

    /// Namespace, /etc/netns files, TUN. What this call creates is recorded
    /// in `claim`; on failure the caller rolls back.
    pub fn apply(&self, host: &dyn Host, claim: &mut Claim) -> anyhow::Result<OwnedFd> {
        let (a, ns) = (&self.account, &self.namespace);
        let created = host.netns_create(ns).with_context(|| format!("account {a}"))?;
        if created {
            claim.created.push(Resource::Namespace);
            tracing::info!(account = %a, namespace = %ns, "namespace created");
        } else {
            // Left by this account's last daemon, or another account's
            // running one (policy files load one account at a time, so a
            // namespace named twice is caught here).
            for other in crate::host::rundir::accounts_with_rundir(host.paths()) {
                let rd = RunDir::new(host.paths(), &other);
                if other != *a
                    && rd.read_state().ok().flatten().is_some_and(|s| s.namespace == *ns)
                    && rd.daemon_alive()
                {
                    bail!(
                        "account {a}: namespace {ns} belongs to account {other}, which is running: give each account its own namespace"
                    );
                }
            }
            tracing::info!(account = %a, namespace = %ns, "namespace reused");
        }
        if host.etc_netns_write(ns, self.dns).with_context(|| format!("account {a}"))? {
            claim.created.push(Resource::EtcNetns);
        }
        host.tun_create(&self.tun).with_context(|| format!("account {a}"))
    }

    /// Undoes what `claim` created, newest first.
    pub fn rollback(&self, host: &dyn Host, claim: Claim) {
        let mut created = claim.created.clone();
        created.reverse();
        for e in self.release(host, &created) {
            tracing::error!(account = %self.account, error = %e, "rollback step failed");
        }
    }

    /// Removes `what`, in the order given; every step runs, already gone is
    /// success. Returns what could not be removed.
    pub fn release(&self, host: &dyn Host, what: &[Resource]) -> Vec<String> {
        let mut errors = Vec::new();
        for r in what {
            let res = match r {
                Resource::PidFile => remove_file(&self.run.pid_path()),
                Resource::ControlSocket => remove_file(&self.run.ctl_path()),
                Resource::Namespace => host.netns_remove(&self.namespace).map_err(|e| e.to_string()),
                Resource::EtcNetns => host.etc_netns_remove(&self.namespace).map_err(|e| e.to_string()),
                Resource::RunDir => self.run.remove().map_err(|e| format!("remove {}: {e}", self.run.dir.display())),
            };
            if let Err(e) = res {
                errors.push(e);
            }
        }
        errors
    }

    /// `down`: the programs (refused unless `kill_programs`), the daemon,
    /// then the namespace, the `/etc/netns` files and, when all that went
    /// well, the run directory. Safe to repeat.
    pub fn teardown(&self, host: &dyn Host, kill_programs: bool) -> anyhow::Result<()> {
        let (account, ns) = (&self.account, &self.namespace);
        let pids = host.netns_pids(ns);
        if !pids.is_empty() {
            if !kill_programs {
                let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
                bail!(
                    "account {account}: {} program(s) still run in namespace {ns} (pids {}): stop them, or use `nsproxy down {account} --kill`",
                    pids.len(),
                    list.join(" ")
                );
            }
            for &p in &pids {
                host.signal(p, Some(Signal::SIGTERM));
            }
            if !wait_gone(host, &pids, Duration::from_secs(3)) {
                for &p in &pids {
                    host.signal(p, Some(Signal::SIGKILL));
                }
                wait_gone(host, &pids, Duration::from_secs(3));
            }
        }
        let mut errors = Vec::new();
        if let Err(e) = self.stop_daemon(host) {
            errors.push(e);
        }
        errors.extend(self.release(host, &[Resource::Namespace, Resource::EtcNetns]));
        if errors.is_empty() {
            errors.extend(self.release(host, &[Resource::RunDir]));
        }
        if !errors.is_empty() {
            bail!("account {account}: down left things behind: {}", errors.join("; "));
        }
        Ok(())
    }

    /// SIGTERM, 5 s, SIGKILL, 3 s. The daemon is gone when its lock is
    /// free; looked at every millisecond at first (an idle daemon stops in
    /// a few), backing off to every 20 ms.
    fn stop_daemon(&self, host: &dyn Host) -> Result<(), String> {
        let rd = &self.run;
        if !rd.daemon_alive() {
            return Ok(());
        }
        let wait = |limit: Duration| {
            let deadline = Instant::now() + limit;
            let mut step = Duration::from_millis(1);
            while rd.daemon_alive() && Instant::now() < deadline {
                std::thread::sleep(step);
                step = (step * 2).min(Duration::from_millis(20));
            }
        };
        if let Some(pid) = rd.read_pid() {
            host.signal(pid, Some(Signal::SIGTERM));
            wait(Duration::from_secs(5));
            if rd.daemon_alive() {
                host.signal(pid, Some(Signal::SIGKILL));
                wait(Duration::from_secs(3));
            }
        }
        if rd.daemon_alive() {
            return Err(format!("the daemon (pid {:?}) did not stop", rd.read_pid()));
        }
        Ok(())
    }
}

fn remove_file(path: &std::path::Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("remove {}: {e}", path.display())),
        _ => Ok(()),
    }
}

fn wait_gone(host: &dyn Host, pids: &[i32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|&p| !host.signal(p, None)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
