//! `up`: validates the policy, starts `nsproxy daemon ACCOUNT` in its own
//! process group and waits on a pipe for READY or the daemon's real error
//! (`--foreground` runs the daemon in this process, for systemd).

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use super::{host, require_root};
use crate::config;
use crate::host::Host;
use crate::host::rundir::RunDir;

/// How the daemon started by `up` logs: the `--log-level` and
/// `--log-format` given to `up`.
pub struct DaemonLog<'a> {
    pub level: Option<&'a str>,
    pub json: bool,
}

pub fn up(policy: &config::Policy, account: &str, foreground: bool, daemon_log: DaemonLog<'_>) -> anyhow::Result<()> {
    require_root("up")?;
    let a = policy.load_account(account)?;
    let host = host();
    let rd = RunDir::new(host.paths(), account);
    if rd.daemon_alive() && !(host.netns_exists(&a.namespace) && host.tun_present(&a.namespace)) {
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
        crate::host::sys::scrub_env(&var);
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
