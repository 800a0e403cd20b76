//! The CNI plugin (`nsproxy-cni`: the nsproxy binary under that name, in the
//! runtime's plugin directory). ADD makes sure the account's daemon runs
//! (starting it as `up` would), records the container and asks the daemon
//! to attach it: a TUN in the container's namespace with the only default
//! route, served with the account's pool. DEL detaches and forgets it, and
//! succeeds when there is nothing to do. CHECK proves the TUN is there and
//! held. VERSION, STATUS and GC as the spec says. One lock per container
//! (the runtime calls in parallel) and one per account while its daemon
//! starts. Output on stdout is only CNI JSON; what happens goes to stderr.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

use super::{control, host, up};
use crate::cni::{self, CniError, Command, Env, NetConf, code};
use crate::config::{self, plan};
use crate::host::rundir::{self, RunDir};
use crate::host::{Host, Paths, TunPlan};
use crate::published::containers::Attachment;
use crate::published::control::Request;

/// The plugin's entry: reads the runtime's environment and stdin, prints
/// the answer, and exits non-zero with a CNI error on failure.
pub fn plugin() -> ExitCode {
    let mut input = Vec::new();
    let read = std::io::stdin().lock().take(1 << 20).read_to_end(&mut input);
    let version = serde_json::from_slice::<Value>(&input)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
        .filter(|v| cni::SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| "1.0.0".into());
    let outcome = match read {
        Err(e) => Err(CniError::new(code::IO, format!("cannot read the network configuration from stdin: {e}"))),
        Ok(_) => cni::parse_env(|k| std::env::var(k).ok()).and_then(|env| run(&env, &input)),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nsproxy-cni: {}", e.msg);
            let _ = writeln!(out, "{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

fn run(env: &Env, input: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        let asked = cni::parse_conf(input).map(|c| c.cni_version).unwrap_or_else(|_| "1.0.0".into());
        return Ok(Some(cni::version_answer(&asked)));
    }
    let conf = cni::parse_conf(input)?;
    let level = conf.log_level.clone().unwrap_or_else(|| "warn".into());
    let filter =
        tracing_subscriber::EnvFilter::try_new(&level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    if !nix::unistd::geteuid().is_root() {
        return Err(CniError::new(code::INVALID_ENV, "nsproxy-cni needs root (the runtime runs CNI plugins as root)"));
    }
    let h = host();
    let paths = h.paths().clone();
    let policy = config::Policy::plain(&conf.policies.clone().unwrap_or_else(config_default));
    match env.command {
        Command::Add => add(&paths, env, &conf, &policy).map(Some),
        Command::Del => del(&paths, env).map(|()| None),
        Command::Check => check(&paths, env, &conf).map(|()| None),
        Command::Status => status(&conf, &policy).map(|()| None),
        Command::Gc => gc(&paths, &conf).map(|()| None),
        Command::Version => Ok(None),
    }
}

fn config_default() -> PathBuf {
    PathBuf::from(crate::cli::DEFAULT_POLICIES)
}

fn io(what: &str) -> impl Fn(String) -> CniError + '_ {
    move |e| CniError::new(code::IO, format!("{what}: {e}"))
}

/// An exclusive lock on `/run/nsproxy/.cni/<name>.lock`, held until dropped.
struct Lock {
    path: PathBuf,
    _held: Flock<std::fs::File>,
}

impl Lock {
    /// Drops the lock and its file (a container's, after DEL: one file per
    /// container ever seen piled up in /run). Removed while held: a process
    /// that waited on this file finds it gone and locks a new one.
    fn release_and_remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock(paths: &Paths, name: &str) -> Result<Lock, CniError> {
    use std::os::unix::fs::MetadataExt;
    rundir::ensure_run_root(paths).map_err(|e| CniError::new(code::IO, e.to_string()))?;
    rundir::ensure_dir(&paths.cni_dir(), 0o700).map_err(|e| CniError::new(code::IO, e.to_string()))?;
    let path = paths.cni_dir().join(format!("{name}.lock"));
    loop {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CniError::new(code::IO, format!("cannot open lock {}: {e}", path.display())))?;
        let held = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| CniError::new(code::IO, format!("cannot lock {}: {e}", path.display())))?;
        // Still the file at `path` (not one a DEL removed while this waited)?
        let here = held.metadata().map_err(|e| CniError::new(code::IO, format!("{}: {e}", path.display())))?;
        match std::fs::metadata(&path) {
            Ok(m) if (m.dev(), m.ino()) == (here.dev(), here.ino()) => return Ok(Lock { path, _held: held }),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CniError::new(code::IO, format!("{}: {e}", path.display()))),
        }
    }
}

fn read_record(paths: &Paths, container: &str) -> Option<Attachment> {
    std::fs::read(rundir::attachment_path(paths, container)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

fn add(paths: &Paths, env: &Env, conf: &NetConf, policy: &config::Policy) -> Result<Value, CniError> {
    let account = cni::account_of(conf, env)?;
    let a = policy
        .load_account(&account)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("account {account}: {e:#}")))?;
    let _container = lock(paths, &env.container)?;
    if let Some(r) = read_record(paths, &env.container)
        && (r.account != account || r.ifname != env.ifname || r.netns != Path::new(&env.netns))
    {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "container {} is already attached to account {} as {} in {}: nsproxy must be its only network",
                env.container,
                r.account,
                r.ifname,
                r.netns.display()
            ),
        ));
    }
    let rd = RunDir::new(paths, &account);
    {
        let _starting = lock(paths, &format!("account-{account}"))?;
        if !rd.daemon_alive() {
            let log = up::DaemonLog { level: conf.log_level.as_deref(), json: false };
            match up::up_to(policy, &account, false, log, &mut std::io::stderr()) {
                Ok(()) => {}
                // Up and fail-closed; the container attaches and waits for a proxy.
                Err(e) if e.chain().any(|c| c.is::<up::NoUsableProxy>()) => {
                    tracing::warn!(account = %account, error = %format!("{e:#}"), "the container's account has no usable proxy yet");
                }
                Err(e) => {
                    let c = if super::exit_status(&e) == crate::cli::exit::POLICY {
                        code::INVALID_CONFIG
                    } else {
                        code::TRY_AGAIN
                    };
                    return Err(CniError::new(c, format!("account {account}: cannot start its daemon: {e:#}")));
                }
            }
        }
    }
    same_policy(&rd, &account, policy)?;
    let record = Attachment {
        container: env.container.clone(),
        account: account.clone(),
        netns: PathBuf::from(&env.netns),
        ifname: env.ifname.clone(),
        network: conf.name.clone(),
        attached_at_unix: crate::pool::unix_now(),
    };
    let path = rundir::attachment_path(paths, &env.container);
    let json = serde_json::to_vec_pretty(&record).map_err(|e| CniError::new(code::IO, e.to_string()))?;
    rundir::write_volatile(&path, &json, 0o600).map_err(|e| CniError::new(code::IO, e.to_string()))?;
    let req =
        Request::Attach { container: env.container.clone(), netns: env.netns.clone(), ifname: env.ifname.clone() };
    let resp = control::call(&rd.ctl_path(), &req, Duration::from_secs(60));
    // The daemon says which addresses the container's TUN got (its
    // account's dns.fake_ip_range).
    let answered = |r: &crate::published::control::Response, key: &str| {
        r.data.get(key).and_then(|v| v.as_str()).and_then(|s| s.parse::<std::net::Ipv4Addr>().ok())
    };
    let (address, dns) = match resp {
        Ok(r) if r.ok => match (answered(&r, "address"), answered(&r, "dns")) {
            (Some(a), Some(d)) => (a, d),
            _ => {
                let _ = std::fs::remove_file(&path);
                return Err(CniError::new(
                    code::ATTACH,
                    format!("account {account}: its daemon attached the container but named no addresses: {}", r.data),
                ));
            }
        },
        Ok(r) => {
            let _ = std::fs::remove_file(&path);
            return Err(CniError::new(code::ATTACH, r.message));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(CniError::new(code::TRY_AGAIN, format!("account {account}: {e}")));
        }
    };
    tracing::info!(account = %account, container = %env.container, namespace = %a.namespace, "container attached");
    Ok(cni::result(&conf.cni_version, &env.ifname, &env.netns, address, dns))
}

/// A daemon already running for the account must be using this policy
/// (as `exec` insists): the container gets the account it was promised.
fn same_policy(rd: &RunDir, account: &str, policy: &config::Policy) -> Result<(), CniError> {
    let Ok(Some(state)) = rd.read_state() else { return Ok(()) };
    let given = policy.path.canonicalize().unwrap_or_else(|_| policy.path.clone());
    if state.policy != given {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "account {account} runs with policy {}, but the network configuration names {}: set \"policies\" to the daemon's",
                state.policy.display(),
                given.display()
            ),
        ));
    }
    Ok(())
}

fn del(paths: &Paths, env: &Env) -> Result<(), CniError> {
    let container = lock(paths, &env.container)?;
    let res = detach(paths, env);
    if res.is_ok() {
        container.release_and_remove();
    }
    res
}

/// DEL under the container's lock.
fn detach(paths: &Paths, env: &Env) -> Result<(), CniError> {
    let Some(r) = read_record(paths, &env.container) else {
        return Ok(()); // never added, or already deleted
    };
    let rd = RunDir::new(paths, &r.account);
    if rd.daemon_alive() {
        let req = Request::Detach { container: env.container.clone() };
        match control::call(&rd.ctl_path(), &req, Duration::from_secs(30)) {
            Ok(resp) if resp.ok => {}
            Ok(resp) => {
                tracing::warn!(account = %r.account, container = %env.container, error = %resp.message, "detach refused")
            }
            Err(e) => tracing::warn!(account = %r.account, container = %env.container, error = %e, "detach failed"),
        }
    }
    match std::fs::remove_file(rundir::attachment_path(paths, &env.container)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove the container's record")(e.to_string())),
    }
}

fn check(paths: &Paths, env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let r = read_record(paths, &env.container).ok_or_else(|| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("container {} was never added to network {:?}", env.container, conf.name),
        )
    })?;
    let rd = RunDir::new(paths, &r.account);
    if !rd.daemon_alive() {
        return Err(CniError::new(
            code::TRY_AGAIN,
            format!(
                "account {}: its daemon is not running: container {} has no way out (fail closed)",
                r.account, env.container
            ),
        ));
    }
    let plan = TunPlan {
        namespace: format!("container {}", env.container),
        path: Some(PathBuf::from(&env.netns)),
        ifname: env.ifname.clone(),
        address: plan::Addresses::DEFAULT.tun_v4(),
        mtu: 0,
        txqueuelen: 0,
        ipv6: false,
    };
    if !crate::host::link::tun_present_in(paths, &plan) {
        return Err(CniError::new(
            code::ATTACH,
            format!(
                "account {}: container {} has no {} (the daemon lost it: add the container again)",
                r.account, env.container, env.ifname
            ),
        ));
    }
    Ok(())
}

/// STATUS (1.1): ready when the policy loads (and names the account, if
/// the network fixes one).
fn status(conf: &NetConf, policy: &config::Policy) -> Result<(), CniError> {
    let res = match &conf.account {
        Some(a) => policy.load_account(a).map(drop),
        None => policy.select(None).map(drop),
    };
    res.map_err(|e| CniError::new(50, format!("nsproxy-cni is not available: {e:#}")))
}

/// GC (1.1): containers of this network the runtime no longer knows are
/// detached and forgotten.
fn gc(paths: &Paths, conf: &NetConf) -> Result<(), CniError> {
    let Some(valid) = &conf.valid_attachments else { return Ok(()) };
    for r in rundir::attachments(paths, None).into_iter().filter(|r| r.network == conf.name) {
        if !valid.contains(&r.container) {
            let env = Env {
                command: Command::Del,
                container: r.container.clone(),
                netns: String::new(),
                ifname: r.ifname.clone(),
                args: Default::default(),
            };
            del(paths, &env)?;
            tracing::info!(account = %r.account, container = %r.container, "gc: a container the runtime forgot is detached");
        }
    }
    Ok(())
}

/// Whether this process was started as the CNI plugin (its name).
pub fn invoked_as_plugin() -> bool {
    std::env::args_os().next().and_then(|a| Path::new(&a).file_name().map(|n| n == "nsproxy-cni")).unwrap_or(false)
}
