//! The per-account daemon: claims the account and applies its plan
//! (namespace, `/etc/netns` files, TUN; rolled back on failure), publishes
//! its state, then supervises the services and the data plane on the TUN
//! until told to stop. Lives in the host namespace.

pub mod containers;
pub mod control;
pub mod notify;
pub mod plan;
mod publish;
mod supervise;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use anyhow::{Context, anyhow};

use crate::config::{self, Account, plan as addr};
use crate::fleet::client::ServiceClient;
use crate::host::{Host, Linux};
use crate::pool::PoolHandle;
use crate::pool::manager::ManagerConfig;
use crate::published::state::State;
use crate::secrets::{self, Creds};
use plan::{AccountPlan, Claim, Resource};

/// Writes one line of the start's progress to `up` (if it listens).
fn say(ready: &mut Option<std::fs::File>, line: &str) {
    if let Some(f) = ready.as_mut()
        && f.write_all(line.as_bytes()).is_err()
    {
        // `up` is gone (interrupted): nobody to tell.
        *ready = None;
    }
}

pub fn run(account_name: &str, policy: &config::Policy, ready_fd: Option<OwnedFd>) -> anyhow::Result<()> {
    let mut ready = ready_fd.map(std::fs::File::from);
    let host = Linux::system();
    match start(&host, account_name, policy) {
        Ok(started) => {
            let namespace = started.account.namespace.clone();
            supervise::serve(&host, started, move |p| match p {
                // READY once the namespace's only way out is the account's
                // proxy; the pool's state follows separately.
                supervise::Progress::Ready { bound, waiting_for } => {
                    say(&mut ready, &format!("READY {} {waiting_for}\n", bound.as_secs()));
                    // Under systemd (`Type=notify`, `up --foreground`).
                    let pid = std::process::id();
                    let status = format!(
                        "STATUS=account {account_name}: namespace {namespace} in place (fail-closed); waiting for {waiting_for}"
                    );
                    if let Err(e) = notify::notify(&format!("READY=1\nMAINPID={pid}\n{status}")) {
                        tracing::error!(account = account_name, error = %e, "cannot notify systemd of readiness");
                    }
                }
                supervise::Progress::Chosen { summary, in_time } => {
                    let line = serde_json::to_string(&summary).unwrap_or_default();
                    let tag = if in_time { "POOL" } else { "POOL-LATE" };
                    say(&mut ready, &format!("{tag} {line}\n"));
                    ready = None;
                }
            })
        }
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!(account = account_name, error = %msg, "daemon failed to start");
            say(&mut ready, &format!("ERROR {}\n", msg.replace('\n', "\n      ")));
            Err(e)
        }
    }
}

/// An account whose plan is applied, ready to be served.
pub struct Started {
    pub account: Account,
    pub plan: AccountPlan,
    pub pool: Arc<PoolHandle>,
    pub fleet: Option<Arc<ServiceClient>>,
    pub tun: OwnedFd,
    pub claim: Claim,
    /// The pool manager's checks, ready to run.
    pub checks: ManagerConfig,
    /// The host's roots (the containers' records are under them).
    pub paths: crate::host::Paths,
}

/// Loads the account and its credentials, claims it, opens the pool and
/// applies the plan; on failure everything this call created is removed.
pub fn start(host: &dyn Host, name: &str, policy: &config::Policy) -> anyhow::Result<Started> {
    let account = policy.load_account(name)?;
    let creds = secrets::resolve_account(&account).with_context(|| format!("account {name}"))?;
    // The credential variables are read: wiped from this process's memory
    // and /proc/<pid>/environ, so no program started later sees them.
    for var in secrets::env_vars(&account) {
        crate::host::sys::scrub_env(&var);
    }
    start_with(host, account, creds, policy)
}

/// `start` after the policy and credentials are read.
pub fn start_with(
    host: &dyn Host,
    account: Account,
    creds: Vec<Option<Creds>>,
    policy: &config::Policy,
) -> anyhow::Result<Started> {
    // The checks' TLS trust (a bad ca_file keeps the account down).
    let checks = ManagerConfig::new(&account)
        .map_err(|e| anyhow::Error::new(config::Invalid(format!("account {}: {e}", account.name))))?;
    // The same for https:// proxies: the trust their certificates are
    // checked against.
    for (i, p) in account.proxies.iter().enumerate() {
        if let Some(Err(e)) = crate::proxy::proxy_tls(p) {
            let at = format!("account {}: proxies[{i}] {}: {e}", account.name, p.display_name());
            return Err(anyhow::Error::new(config::Invalid(at)));
        }
    }
    let plan = AccountPlan::new(host.paths(), &account);
    let mut claim = plan.claim()?;
    // The saved pool state (burns): a corrupt file stops the start here.
    // Fleet mode: the service's client (CA, certificate, token: a problem
    // keeps the account down) and the pool's `service` member, first in
    // priority; without fallback it is the only member.
    let opened = open_pool(host, &account, creds);
    let (pool, fleet) = match opened {
        Ok(x) => x,
        Err(e) => {
            plan.rollback(host, claim);
            return Err(e);
        }
    };
    let applied = plan.apply(host, &mut claim).and_then(|tun| {
        let state = State {
            account: account.name.clone(),
            namespace: account.namespace.clone(),
            pid: std::process::id(),
            policy: policy.path.canonicalize().unwrap_or_else(|_| policy.path.clone()),
            tun: addr::TUN_NAME.into(),
            dns: plan.dns.to_string(),
            proxy: pool.active().map(|r| r.upstream.name()).unwrap_or_default(),
            exec_users: account.exec.users.clone(),
            exec_groups: account.exec.groups.clone(),
            secret_env: secrets::env_vars(&account),
            started_at_unix: crate::pool::unix_now(),
        };
        plan.run.write_state(&state)?;
        Ok(tun)
    });
    match applied {
        Ok(tun) => Ok(Started { account, plan, pool, fleet, tun, claim, checks, paths: host.paths().clone() }),
        Err(e) => {
            plan.rollback(host, claim);
            Err(e)
        }
    }
}

type Opened = (Arc<PoolHandle>, Option<Arc<ServiceClient>>);

fn open_pool(host: &dyn Host, account: &Account, creds: Vec<Option<Creds>>) -> anyhow::Result<Opened> {
    let name = &account.name;
    let (fleet, pool_account, creds) = match &account.external_service {
        None => (None, account.clone(), creds),
        Some(svc) => {
            let client = ServiceClient::new(account, svc).with_context(|| format!("account {name}"))?;
            let mut a = account.clone();
            let entry = crate::pool::service::placeholder_entry();
            let (proxies, creds) = if svc.fallback_to_embedded {
                (std::iter::once(entry).chain(a.proxies).collect(), std::iter::once(None).chain(creds).collect())
            } else {
                if !a.proxies.is_empty() {
                    tracing::info!(account = %name, "fallback_to_embedded is false: the account's own proxies are not used");
                }
                (vec![entry], vec![None])
            };
            a.proxies = proxies;
            (Some(Arc::new(client)), a, creds)
        }
    };
    let pool = PoolHandle::open(host.paths(), &pool_account, creds).map_err(|e| anyhow!("account {name}: {e}"))?;
    Ok((pool, fleet))
}

/// What the daemon removes itself when it stops: the socket and the pid
/// file (the namespace stays, with no route out, for `up` to reuse).
const ON_EXIT: &[Resource] = &[Resource::ControlSocket, Resource::PidFile];
