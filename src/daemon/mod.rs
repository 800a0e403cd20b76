//! The per-account daemon: sets up the namespace and its TUN (validate,
//! apply, roll back on failure), publishes its state, then runs the engine
//! on the TUN fd until told to stop. Lives in the host namespace.

use std::io::Write;
use std::os::fd::OwnedFd;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};

use crate::config::{self, Account, plan};
use crate::rundir::{self, RunDir, State};
use crate::{engine, link, netns, secrets};

/// Steps applied so far, undone in reverse if a later one fails.
type Undo = Box<dyn FnOnce() -> Result<(), String>>;

#[derive(Default)]
struct Rollback {
    steps: Vec<(String, Undo)>,
}

impl Rollback {
    fn push(&mut self, what: &str, f: impl FnOnce() -> Result<(), String> + 'static) {
        self.steps.push((what.to_string(), Box::new(f)));
    }
    fn run(self, account: &str) {
        for (what, f) in self.steps.into_iter().rev() {
            if let Err(e) = f() {
                tracing::error!(account, step = %what, error = %e, "rollback step failed");
            }
        }
    }
}

/// Writes the readiness line for `up` (if any) and closes the pipe.
fn report(ready: &mut Option<std::fs::File>, line: &str) {
    if let Some(mut f) = ready.take() {
        let _ = f.write_all(line.as_bytes());
    }
}

pub fn run(account_name: &str, policy: &config::Policy, ready_fd: Option<OwnedFd>) -> anyhow::Result<()> {
    let mut ready = ready_fd.map(std::fs::File::from);
    match start(account_name, policy) {
        Ok(started) => {
            // READY once the pool has made its first choice (a proxy passed
            // its check, or none did and that is logged), so a program
            // started right after `up` finds a proxy.
            let status = format!("STATUS=account {account_name} up, namespace {}", started.account.namespace);
            serve(started, move || {
                report(&mut ready, "READY\n");
                // Under systemd (`Type=notify`, `up --foreground`).
                let pid = std::process::id();
                if let Err(e) = crate::notify::notify(&format!("READY=1\nMAINPID={pid}\n{status}")) {
                    tracing::error!(account = account_name, error = %e, "cannot notify systemd of readiness");
                }
            })
        }
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!(account = account_name, error = %msg, "daemon failed to start");
            report(&mut ready, &format!("ERROR {}\n", msg.replace('\n', "\n      ")));
            Err(e)
        }
    }
}

struct Started {
    account: Account,
    pool: std::sync::Arc<engine::pool::PoolHandle>,
    fleet: Option<std::sync::Arc<crate::fleet::client::ServiceClient>>,
    rundir: RunDir,
    tun: OwnedFd,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

fn start(name: &str, policy: &config::Policy) -> anyhow::Result<Started> {
    let account = policy.load_account(name)?;
    let creds = secrets::resolve_account(&account).with_context(|| format!("account {name}"))?;
    // The credential variables are read: wiped from this process's memory
    // and /proc/<pid>/environ, so no program started later sees them.
    for var in secrets::env_vars(&account) {
        crate::sys::scrub_env(&var);
    }
    let rd = RunDir::new(name);
    rd.create().with_context(|| format!("account {name}"))?;
    let lock = rd
        .lock_daemon(20)
        .with_context(|| format!("account {name}"))?
        .ok_or_else(|| anyhow!("account {name}: a daemon is already running (pid {})", rd.read_pid().unwrap_or(0)))?;
    rd.write_pid(std::process::id())?;
    // The saved pool state (burns): a corrupt file stops the start here.
    // Fleet mode: the service's client (CA, certificate, token: a problem
    // keeps the account down) and the pool's `service` member, first in
    // priority; without fallback it is the only member.
    let (fleet, pool_account, creds) = match &account.external_service {
        None => (None, account.clone(), creds),
        Some(svc) => {
            let client =
                crate::fleet::client::ServiceClient::new(&account, svc).with_context(|| format!("account {name}"))?;
            let mut a = account.clone();
            let entry = engine::pool::fleet::placeholder_entry();
            let (proxies, creds) = if svc.fallback_to_embedded {
                (std::iter::once(entry).chain(a.proxies).collect(), std::iter::once(None).chain(creds).collect())
            } else {
                if !a.proxies.is_empty() {
                    tracing::info!(account = %name, "fallback_to_embedded is false: the account's own proxies are not used");
                }
                (vec![entry], vec![None])
            };
            a.proxies = proxies;
            (Some(std::sync::Arc::new(client)), a, creds)
        }
    };
    let pool = match engine::pool::PoolHandle::open(&pool_account, creds) {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(rd.pid_path());
            return Err(anyhow!("account {name}: {e}"));
        }
    };

    let mut rollback = Rollback::default();
    match apply(&account, &mut rollback) {
        Ok(tun) => {
            let state = State {
                account: account.name.clone(),
                namespace: account.namespace.clone(),
                pid: std::process::id(),
                policy: policy.path.canonicalize().unwrap_or_else(|_| policy.path.clone()),
                tun: plan::TUN_NAME.into(),
                dns: plan::DNS_V4.to_string(),
                proxy: pool.active().map(|r| r.upstream.name()).unwrap_or_default(),
                exec_users: account.exec.users.clone(),
                exec_groups: account.exec.groups.clone(),
                secret_env: secrets::env_vars(&account),
                started_at_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            };
            if let Err(e) = rd.write_state(&state) {
                drop(tun);
                rollback.run(name);
                return Err(e.into());
            }
            Ok(Started { account, pool, fleet, rundir: rd, tun, _lock: lock })
        }
        Err(e) => {
            rollback.run(name);
            let _ = std::fs::remove_file(rd.pid_path());
            Err(e)
        }
    }
}

/// Namespace, /etc/netns files, TUN. Each applied step registers its undo.
fn apply(a: &Account, rollback: &mut Rollback) -> anyhow::Result<OwnedFd> {
    let ns = a.namespace.clone();
    let created = netns::create_or_reuse(&ns).with_context(|| format!("account {}", a.name))?;
    if created {
        let n = ns.clone();
        rollback.push("remove namespace", move || netns::remove(&n).map_err(|e| e.to_string()));
        tracing::info!(account = %a.name, namespace = %ns, "namespace created");
    } else {
        tracing::info!(account = %a.name, namespace = %ns, "namespace reused");
    }
    let etc_created = rundir::write_etc_netns(&ns, plan::DNS_V4).with_context(|| format!("account {}", a.name))?;
    if etc_created {
        let n = ns.clone();
        rollback.push("remove /etc/netns files", move || rundir::remove_etc_netns(&n).map_err(|e| e.to_string()));
    }
    let tun = link::create_tun(&link::TunPlan {
        namespace: ns,
        mtu: a.mtu,
        txqueuelen: a.limits.tun_queue_len(),
        ipv6: a.ipv6 == config::Ipv6Mode::Proxy,
    })
    .with_context(|| format!("account {}", a.name))?;
    Ok(tun)
}

fn serve(s: Started, ready: impl FnOnce()) -> anyhow::Result<()> {
    let name = s.account.name.clone();
    crate::sys::malloc_mmap_threshold(64 * 1024);
    // One thread: the poll loop and the flow tasks hand work to each other
    // on every packet; on one thread that costs no cross-thread wake-up.
    let rt = tokio::runtime::Builder::new_current_thread()
        .thread_name(format!("nsproxy-{name}"))
        .enable_all()
        .build()
        .with_context(|| format!("account {name}: cannot start runtime"))?;
    let res = rt.block_on(async {
        let shutdown = shutdown_signal();
        tracing::info!(account = %name, namespace = %s.account.namespace, pid = std::process::id(), "daemon ready");
        engine::run(s.account.clone(), s.pool.clone(), s.fleet.clone(), s.tun, s.rundir.clone(), shutdown, ready).await
    });
    tracing::info!(account = %name, "daemon stopping; the namespace has no route out until it is up again");
    let _ = crate::notify::notify("STOPPING=1");
    let _ = std::fs::remove_file(s.rundir.pid_path());
    res
}

/// Resolves on SIGTERM, SIGINT or SIGHUP.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = hup.recv() => {}
    }
}
