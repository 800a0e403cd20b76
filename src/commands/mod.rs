//! `up`, `down`, `status`, `list`, `rotate`, `check`, `policy check`.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;

pub mod secret;

use crate::config;
use crate::rundir::{self, RunDir};
use crate::{link, netns};

fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("nsproxy {what} needs root: run it with sudo");
    }
    Ok(())
}

pub fn policy_check(policy: &config::Policy) -> ExitCode {
    let files = config::policy_files(&policy.path).map(|f| f.len()).unwrap_or(0);
    match policy.load() {
        Ok(accounts) => {
            let problems: Vec<config::Problem> =
                accounts.iter().flat_map(|a| crate::secrets::check_account(a, false)).collect();
            if problems.is_empty() {
                println!(
                    "OK: {} account(s) in {} file(s): {}",
                    accounts.len(),
                    files,
                    accounts.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
                );
                ExitCode::SUCCESS
            } else {
                for p in &problems {
                    eprintln!("{p}");
                }
                eprintln!("{} problem(s) found", problems.len());
                ExitCode::FAILURE
            }
        }
        Err(problems) => {
            // Also report password-file problems of the accounts that parsed.
            for p in &problems.0 {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s) found", problems.0.len());
            ExitCode::FAILURE
        }
    }
}

/// `policy show`: the accounts as the daemon would see them.
pub fn policy_show(policy: &config::Policy, account: Option<&str>) -> anyhow::Result<()> {
    let accounts = policy.load().map_err(|p| anyhow!("policy {} is invalid:\n{p}", policy.path.display()))?;
    let chosen: Vec<&config::Account> = match account {
        Some(name) => vec![
            accounts
                .iter()
                .find(|a| a.name == name)
                .ok_or_else(|| anyhow!("no account named {name:?} in policy {}", policy.path.display()))?,
        ],
        None => accounts.iter().collect(),
    };
    println!("{}", serde_json::to_string_pretty(&chosen)?);
    Ok(())
}

/// How the daemon started by `up` logs: the `--log-level` and
/// `--log-format` given to `up`.
pub struct DaemonLog<'a> {
    pub level: Option<&'a str>,
    pub json: bool,
}

pub fn up(policy: &config::Policy, account: &str, foreground: bool, daemon_log: DaemonLog<'_>) -> anyhow::Result<()> {
    require_root("up")?;
    let a = policy.load_account(account)?;
    let rd = RunDir::new(account);
    if rd.daemon_alive() && !(netns::exists(&a.namespace) && link::tun_present(&a.namespace)) {
        // A daemon without its TUN is on its way out (or broken): give it
        // a moment to exit, then start afresh.
        let deadline = Instant::now() + Duration::from_secs(5);
        while rd.daemon_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if rd.daemon_alive() {
            bail!(
                "account {account}: daemon pid {} is running but has no TUN; stop it with `nsproxy down {account}`",
                rd.read_pid().unwrap_or(0)
            );
        }
    }
    if rd.daemon_alive() {
        println!(
            "account {account} is already up (namespace {}, daemon pid {})",
            a.namespace,
            rd.read_pid().map(|p| p.to_string()).unwrap_or_else(|| "?".into())
        );
        return Ok(());
    }
    if foreground {
        return crate::daemon::run(account, policy, None);
    }
    rd.create()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(rd.log_path())
        .with_context(|| format!("account {account}: cannot open {}", rd.log_path().display()))?;
    let (mut r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    // The write end goes to the daemon under its own number.
    nix::fcntl::fcntl(w.as_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).context("fcntl")?;
    let wfd = std::os::fd::AsRawFd::as_raw_fd(&w);
    let exe = std::env::current_exe().context("cannot find the nsproxy binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("daemon").arg(account).arg("--policies").arg(&policy.path).arg("--ready-fd").arg(wfd.to_string());
    // The daemon inherits the environment (and its NSPROXY_ overrides);
    // the command-line overrides are handed on as they were given.
    for s in &policy.sets {
        cmd.arg("--set").arg(s);
    }
    if let Some(l) = daemon_log.level {
        cmd.arg("--log-level").arg(l);
    }
    if daemon_log.json {
        cmd.arg("--log-format").arg("json");
    }
    cmd.stdin(Stdio::null()).stdout(log.try_clone().context("log")?).stderr(log).process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("account {account}: cannot start the daemon"))?;
    drop(w);
    // The daemon has its copy of the credential variables; this process
    // keeps none (it stays around until the daemon is ready).
    for var in crate::secrets::env_vars(&a) {
        crate::sys::scrub_env(&var);
    }
    let line = read_ready(&mut r, Duration::from_secs(30));
    match line {
        Some(l) if l.starts_with("READY") => {
            println!("account {account} is up: namespace {}, daemon pid {}", a.namespace, child.id());
            Ok(())
        }
        Some(l) if l.starts_with("ERROR ") => {
            let _ = child.wait();
            Err(anyhow!("{}", l.trim_start_matches("ERROR ").trim_end()))
        }
        _ => {
            let _ = child.kill();
            let status = child.wait().ok();
            let tail = std::fs::read_to_string(rd.log_path()).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect();
            Err(anyhow!(
                "account {account}: the daemon did not become ready ({}); last log lines of {}:\n{}",
                status.map(|s| s.to_string()).unwrap_or_else(|| "timed out".into()),
                rd.log_path().display(),
                tail.join("\n")
            ))
        }
    }
}

fn read_ready(r: &mut std::os::fd::OwnedFd, timeout: Duration) -> Option<String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut f = std::fs::File::from(r.try_clone().ok()?);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
        let mut chunk = [0u8; 4096];
        match f.read(&mut chunk) {
            Ok(0) => return if buf.is_empty() { None } else { Some(String::from_utf8_lossy(&buf).into_owned()) },
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return None,
        }
        if buf.len() > 64 * 1024 {
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
    }
}

/// The namespace of an account: from its state, else from the policy, else
/// the default name.
fn namespace_of(policy: &config::Policy, account: &str, rd: &RunDir) -> String {
    if let Ok(Some(s)) = rd.read_state() {
        return s.namespace;
    }
    policy
        .load()
        .ok()
        .and_then(|v| v.into_iter().find(|a| a.name == account).map(|a| a.namespace))
        .unwrap_or_else(|| format!("nsp-{account}"))
}

fn wait_gone(pids: &[i32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|&p| kill(Pid::from_raw(p), None).is_err()) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn down(policy: &config::Policy, account: &str, kill_programs: bool) -> anyhow::Result<()> {
    require_root("down")?;
    let rd = RunDir::new(account);
    let ns = namespace_of(policy, account, &rd);
    let pids = netns::pids_in(&ns);
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
            let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
        }
        if !wait_gone(&pids, Duration::from_secs(3)) {
            for &p in &pids {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            wait_gone(&pids, Duration::from_secs(3));
        }
    }
    let mut errors = Vec::new();
    if rd.daemon_alive() {
        if let Some(pid) = rd.read_pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while rd.daemon_alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if rd.daemon_alive() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(3);
                while rd.daemon_alive() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if rd.daemon_alive() {
            errors.push(format!("the daemon (pid {:?}) did not stop", rd.read_pid()));
        }
    }
    if let Err(e) = netns::remove(&ns) {
        errors.push(e.to_string());
    }
    if let Err(e) = rundir::remove_etc_netns(&ns) {
        errors.push(format!("remove /etc/netns/{ns}: {e}"));
    }
    if errors.is_empty()
        && let Err(e) = rd.remove()
    {
        errors.push(format!("remove {}: {e}", rd.dir.display()));
    }
    if !errors.is_empty() {
        bail!("account {account}: down left things behind: {}", errors.join("; "));
    }
    println!("account {account} is down");
    Ok(())
}

pub struct RotateArgs {
    pub to: Option<String>,
    pub burn: bool,
    pub burn_for: Option<String>,
    pub reset_flows: bool,
}

/// Sends a control request to the account's running daemon.
fn control(account: &str, req: &crate::control::Request, json: bool) -> anyhow::Result<()> {
    require_root("rotate/check")?;
    let rd = RunDir::new(account);
    if !rd.daemon_alive() {
        bail!("account {account} is not up (no daemon running): run `nsproxy up {account}` first");
    }
    // Long enough for every candidate's checks.
    let resp = crate::control::call(&rd.ctl_path(), req, Duration::from_secs(180))
        .map_err(|e| anyhow!("account {account}: {e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else if resp.ok {
        println!("{}", resp.message);
    }
    if !resp.ok {
        bail!("{}", resp.message);
    }
    Ok(())
}

pub fn rotate(account: &str, a: RotateArgs, json: bool) -> anyhow::Result<()> {
    let burn_for_secs = match &a.burn_for {
        None => None,
        Some(d) => Some(config::duration::parse(d).map_err(|e| anyhow!("--for {d:?}: {e}"))?.as_secs().max(1)),
    };
    let req = crate::control::Request::Rotate { to: a.to, burn: a.burn, burn_for_secs, reset_flows: a.reset_flows };
    control(account, &req, json)
}

pub fn check(account: &str, json: bool) -> anyhow::Result<()> {
    control(account, &crate::control::Request::Check, json)
}

/// One pool member as `status` shows it.
#[derive(Debug, Serialize)]
pub struct ProxyStatus {
    pub label: String,
    pub endpoint: String,
    pub priority: u32,
    pub enabled: bool,
    #[serde(flatten)]
    pub record: crate::pool::Record,
}

/// The pool as saved by the daemon (also shown while the account is down:
/// burns persist), joined with the policy's members.
fn pool_status(account: &str, from_policy: Option<&config::Account>) -> (Vec<ProxyStatus>, Option<String>) {
    let records = match crate::pool::store::Store::new(account).load() {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Some(e.to_string())),
    };
    let Some(a) = from_policy else {
        let v = records
            .into_iter()
            .map(|r| ProxyStatus {
                label: r.label.clone(),
                endpoint: String::new(),
                priority: 0,
                enabled: true,
                record: r,
            })
            .collect();
        return (v, None);
    };
    let v = a
        .proxies
        .iter()
        .map(|p| ProxyStatus {
            label: p.label.clone(),
            endpoint: p.endpoint(),
            priority: p.priority,
            enabled: p.enabled,
            record: records
                .iter()
                .find(|r| r.label == p.label)
                .cloned()
                .unwrap_or_else(|| crate::pool::Record::new(&p.label)),
        })
        .collect();
    (v, None)
}

#[derive(Debug, Serialize)]
pub struct AccountStatus {
    pub account: String,
    pub namespace: String,
    /// up: daemon running with its TUN; down: nothing; degraded: partly there.
    pub state: &'static str,
    pub daemon_pid: Option<i32>,
    pub daemon_running: bool,
    pub namespace_exists: bool,
    pub tun_present: bool,
    pub programs: usize,
    pub proxy: Option<String>,
    pub policy: Option<String>,
    /// The daemon's counters (flows, bytes, DNS), when it is running.
    pub stats: Option<crate::engine::stats::Snapshot>,
    /// The active proxy's label and its last egress IP.
    pub active_proxy: Option<String>,
    pub egress_ip: Option<std::net::IpAddr>,
    pub pool: Vec<ProxyStatus>,
    /// The pool state file could not be read.
    pub pool_error: Option<String>,
}

fn account_status(account: &str, from_policy: Option<&config::Account>) -> AccountStatus {
    let rd = RunDir::new(account);
    let state = rd.read_state().ok().flatten();
    let namespace = state
        .as_ref()
        .map(|s| s.namespace.clone())
        .or_else(|| from_policy.map(|a| a.namespace.clone()))
        .unwrap_or_else(|| format!("nsp-{account}"));
    let running = rd.daemon_alive();
    let ns_exists = netns::exists(&namespace);
    let tun = ns_exists && link::tun_present(&namespace);
    let st = match (running, ns_exists, tun) {
        (true, true, true) => "up",
        (false, false, _) => "down",
        _ => "degraded",
    };
    let (pool, pool_error) = pool_status(account, from_policy);
    let active = pool.iter().find(|p| p.record.state == crate::pool::State::Active);
    AccountStatus {
        active_proxy: active.map(|p| p.label.clone()),
        egress_ip: active.and_then(|p| p.record.last_egress_ip),
        account: account.into(),
        state: st,
        daemon_pid: if running { rd.read_pid() } else { None },
        daemon_running: running,
        namespace_exists: ns_exists,
        tun_present: tun,
        programs: if ns_exists { netns::pids_in(&namespace).len() } else { 0 },
        proxy: active
            .map(|p| format!("{} ({})", p.label, p.endpoint))
            .or_else(|| state.as_ref().map(|s| s.proxy.clone()).filter(|p| !p.is_empty())),
        policy: state
            .as_ref()
            .map(|s| s.policy.display().to_string())
            .or_else(|| from_policy.map(|a| a.origin.file.display().to_string())),
        stats: if running {
            std::fs::read(rd.stats_path()).ok().and_then(|b| serde_json::from_slice(&b).ok())
        } else {
            None
        },
        namespace,
        pool,
        pool_error,
    }
}

fn all_status(policy: &config::Policy) -> Vec<AccountStatus> {
    let from_policy = policy.load().unwrap_or_default();
    let mut names: Vec<String> = from_policy.iter().map(|a| a.name.clone()).collect();
    for n in rundir::accounts_with_rundir() {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names.sort();
    names.iter().map(|n| account_status(n, from_policy.iter().find(|a| &a.name == n))).collect()
}

pub fn status(policy: &config::Policy, account: Option<&str>, json: bool) -> anyhow::Result<()> {
    require_root("status")?;
    let list = match account {
        Some(a) => {
            let p = policy.load().ok().and_then(|v| v.into_iter().find(|x| x.name == a));
            if p.is_none() && !RunDir::new(a).exists() {
                bail!("unknown account {a:?}: not in policy {} and not up", policy.path.display());
            }
            vec![account_status(a, p.as_ref())]
        }
        None => all_status(policy),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for s in &list {
        println!("account:   {}", s.account);
        println!("  state:     {}", s.state);
        println!("  namespace: {} ({})", s.namespace, if s.namespace_exists { "present" } else { "absent" });
        println!(
            "  daemon:    {}",
            match s.daemon_pid {
                Some(p) => format!("running, pid {p}"),
                None => "not running".into(),
            }
        );
        println!("  tun:       {}", if s.tun_present { "tun0" } else { "absent (no route out)" });
        println!("  programs:  {}", s.programs);
        println!("  proxy:     {}", s.proxy.as_deref().unwrap_or("-"));
        println!("  policy:    {}", s.policy.as_deref().unwrap_or("-"));
        if let Some(st) = &s.stats {
            println!(
                "  flows:     {} active, {} connecting, {} opened, refused: {} by the proxy, {} by limits, {} stale fake IP",
                st.flows_active,
                st.flows_pending,
                st.flows_opened,
                st.flows_refused_proxy,
                st.flows_refused_limit,
                st.flows_refused_unknown_fake_ip
            );
            println!("  bytes:     {} up, {} down; DNS queries: {}", st.bytes_up, st.bytes_down, st.dns_queries);
            if let Some(svc) = &st.service {
                println!(
                    "  service:   {}, breaker {}, proxy {}{}; {} allocation(s), {} failed call(s); feedback {} sent, {} failed, {} dropped{}",
                    svc.state,
                    svc.breaker,
                    svc.proxy.as_deref().unwrap_or("-"),
                    svc.refresh_in_s.map(|s| format!(" (cached {s}s)")).unwrap_or_default(),
                    svc.allocations,
                    svc.failed_calls,
                    svc.feedback_sent,
                    svc.feedback_failed,
                    svc.feedback_dropped,
                    svc.last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default()
                );
            }
            if st.flows_refused_rule + st.flows_refused_no_proxy > 0 {
                println!(
                    "  refused:   {} by rules, {} with no usable proxy",
                    st.flows_refused_rule, st.flows_refused_no_proxy
                );
            }
        }
        println!("  egress IP: {}", s.egress_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()));
        if let Some(e) = &s.pool_error {
            println!("  pool:      ERROR {e}");
        }
        if !s.pool.is_empty() {
            println!("  pool:");
            println!(
                "    {:<16} {:<10} {:>4}  {:<30} {:<16} {:<12} LAST ERROR",
                "LABEL", "STATE", "PRIO", "ENDPOINT", "EGRESS IP", "CHECKED"
            );
            let now = crate::engine::pool::unix_now();
            for p in &s.pool {
                let r = &p.record;
                let state = match (r.state, r.burned_until, p.enabled) {
                    (_, _, false) => "disabled".to_string(),
                    (crate::pool::State::Burned, Some(u), _) => {
                        format!("burned {}", ago(u.saturating_sub(now), "left"))
                    }
                    (st, _, _) => st.to_string(),
                };
                println!(
                    "    {:<16} {:<10} {:>4}  {:<30} {:<16} {:<12} {}",
                    p.label,
                    state,
                    p.priority,
                    p.endpoint,
                    r.last_egress_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                    r.last_checked_at.map(|t| ago(now.saturating_sub(t), "ago")).unwrap_or_else(|| "never".into()),
                    r.last_error.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}

/// `90s ago`, `3h left`.
fn ago(secs: u64, word: &str) -> String {
    match secs {
        s if s < 120 => format!("{s}s {word}"),
        s if s < 7200 => format!("{}m {word}", s / 60),
        s if s < 172_800 => format!("{}h {word}", s / 3600),
        s => format!("{}d {word}", s / 86400),
    }
}

pub fn list(policy: &config::Policy, json: bool) -> anyhow::Result<()> {
    require_root("list")?;
    let list = all_status(policy);
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!("{:<24} {:<9} {:<24} {:>8}  PROXY", "ACCOUNT", "STATE", "NAMESPACE", "PID");
    for s in &list {
        println!(
            "{:<24} {:<9} {:<24} {:>8}  {}",
            s.account,
            s.state,
            s.namespace,
            s.daemon_pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            s.proxy.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
