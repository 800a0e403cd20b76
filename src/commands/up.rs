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
use crate::published::pool::Summary;

/// How the daemon started by `up` logs: the `--log-level` and
/// `--log-format` given to `up`.
pub struct DaemonLog<'a> {
    pub level: Option<&'a str>,
    pub json: bool,
}

pub fn up(policy: &config::Policy, account: &str, foreground: bool, daemon_log: DaemonLog<'_>) -> anyhow::Result<()> {
    up_to(policy, account, foreground, daemon_log, &mut std::io::stdout())
}

/// `up`, telling `out` how it goes (the CNI plugin: stderr, since its
/// stdout is the runtime's).
pub fn up_to(
    policy: &config::Policy,
    account: &str,
    foreground: bool,
    daemon_log: DaemonLog<'_>,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
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
        let _ = writeln!(
            out,
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
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
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
    let mut lines = Lines::new(r);
    let not_ready = |child: &mut std::process::Child, why: &str| {
        let _ = child.kill();
        let status = child.wait().ok();
        let tail = std::fs::read_to_string(rd.log_path()).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect();
        anyhow!(
            "account {account}: the daemon did not become ready ({why}; {}); last log lines of {}:\n{}",
            status.map(|s| s.to_string()).unwrap_or_else(|| "still running".into()),
            rd.log_path().display(),
            tail.join("\n")
        )
    };
    // READY: the namespace's only way out is the proxy (what systemd hears
    // too); then the pool's first choice, within the bound the daemon gives.
    let first = lines.next(Instant::now() + READY_WITHIN);
    let (bound, waiting_for) = match first.as_deref().map(parse_ready) {
        Some(FirstLine::Ready { bound, waiting_for }) => (bound, waiting_for),
        Some(FirstLine::Error(e)) => {
            let rest = lines.rest(Instant::now() + Duration::from_secs(2));
            let status = child.wait().ok();
            let msg = if rest.is_empty() { e } else { format!("{e}\n{rest}") };
            let msg = msg.trim_end();
            // The daemon's exit status says what kind of failure it was.
            return Err(match status.and_then(|s| s.code()) {
                Some(c) if c == i32::from(crate::cli::exit::POLICY) => anyhow::Error::new(config::Invalid(msg.into())),
                _ => anyhow!("{msg}"),
            });
        }
        Some(FirstLine::Other(l)) => return Err(not_ready(&mut child, &format!("it said {l:?}"))),
        None => return Err(not_ready(&mut child, "no READY within 30 s or the daemon exited")),
    };
    let _ = writeln!(
        out,
        "account {account}: namespace {} is in place; its only way out is the account's proxy (daemon pid {})",
        a.namespace,
        child.id()
    );
    let _ = writeln!(out, "account {account}: waiting up to {} s for {waiting_for}", bound.as_secs());
    let _ = out.flush();
    let chosen = lines.next(Instant::now() + bound + CHOICE_SLACK);
    let (summary, in_time) = match chosen.as_deref().map(parse_pool) {
        Some(Ok(x)) => x,
        Some(Err(e)) => {
            bail!("account {account}: the daemon's pool report is unreadable ({e}); see `nsproxy status {account}`")
        }
        None => bail!(
            "account {account}: the daemon is up but did not report its pool's first choice within {} s; see `nsproxy status {account}` and {}",
            (bound + CHOICE_SLACK).as_secs(),
            rd.log_path().display()
        ),
    };
    match &summary.active {
        Some(_) => {
            let _ = writeln!(out, "account {account} is up: {}", summary.line());
            Ok(())
        }
        None => Err(anyhow::Error::new(NoUsableProxy(format!(
            "account {account} is up but has NO USABLE PROXY{}: {}; the daemon keeps checking and new connections are refused until a proxy passes (nothing leaves directly); pool: {}",
            if in_time { "" } else { " (the first checks are still running)" },
            if summary.problems.is_empty() {
                "every proxy is disabled or still unchecked".to_string()
            } else {
                summary.problems.join("; ")
            },
            summary.counts()
        )))),
    }
}

/// How long the daemon may take to say READY (namespace and TUN in place).
const READY_WITHIN: Duration = Duration::from_secs(30);
/// What the first choice may take beyond the daemon's bound.
const CHOICE_SLACK: Duration = Duration::from_secs(10);

/// `up` brought the account up, but no proxy can carry traffic yet: the
/// daemon keeps checking (exit status `cli::exit::NO_PROXY`).
#[derive(Debug)]
pub struct NoUsableProxy(pub String);

impl std::fmt::Display for NoUsableProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoUsableProxy {}

/// The daemon's first line on the ready pipe.
#[derive(Debug, PartialEq)]
enum FirstLine {
    Ready { bound: Duration, waiting_for: String },
    Error(String),
    Other(String),
}

fn parse_ready(line: &str) -> FirstLine {
    let line = line.trim_end_matches('\n');
    if let Some(e) = line.strip_prefix("ERROR ") {
        return FirstLine::Error(e.to_string());
    }
    let Some(rest) = line.strip_prefix("READY ") else { return FirstLine::Other(line.to_string()) };
    let (secs, what) = rest.split_once(' ').unwrap_or((rest, "the pool's first choice"));
    match secs.parse::<u64>() {
        Ok(s) => FirstLine::Ready { bound: Duration::from_secs(s), waiting_for: what.to_string() },
        Err(_) => FirstLine::Other(line.to_string()),
    }
}

/// The daemon's second line: `POOL <summary>` (or `POOL-LATE`: the bound
/// passed before the first choice).
fn parse_pool(line: &str) -> Result<(Summary, bool), String> {
    let line = line.trim_end_matches('\n');
    let (in_time, json) = if let Some(j) = line.strip_prefix("POOL ") {
        (true, j)
    } else if let Some(j) = line.strip_prefix("POOL-LATE ") {
        (false, j)
    } else {
        return Err(format!("expected POOL, got {:?}", line.chars().take(80).collect::<String>()));
    };
    serde_json::from_str(json).map(|s| (s, in_time)).map_err(|e| e.to_string())
}

/// Lines from the daemon's ready pipe, each awaited until a deadline.
struct Lines {
    f: std::fs::File,
    buf: Vec<u8>,
    eof: bool,
}

impl Lines {
    fn new(r: std::os::fd::OwnedFd) -> Lines {
        Lines { f: std::fs::File::from(r), buf: Vec::new(), eof: false }
    }

    /// Reads more; false at the deadline, at the end or on an error.
    fn fill(&mut self, deadline: Instant) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.eof || self.buf.len() > 64 * 1024 {
                return false;
            }
            let mut fds = [PollFd::new(self.f.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return false,
            }
            let mut chunk = [0u8; 4096];
            match self.f.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return false;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }

    /// The next whole line, or None at the deadline or the end.
    fn next(&mut self, deadline: Instant) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// Whatever is left until the end (an error's further lines).
    fn rest(&mut self, deadline: Instant) -> String {
        while self.fill(deadline) {}
        String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_pipe_lines_are_read_as_the_daemon_writes_them() {
        assert_eq!(
            parse_ready("READY 17 the health checks (ex) of up to 2 proxies\n"),
            FirstLine::Ready {
                bound: Duration::from_secs(17),
                waiting_for: "the health checks (ex) of up to 2 proxies".into()
            }
        );
        assert_eq!(parse_ready("ERROR account a: no\n"), FirstLine::Error("account a: no".into()));
        assert_eq!(parse_ready("READY soon\n"), FirstLine::Other("READY soon".into()));
        assert_eq!(parse_ready("garbage"), FirstLine::Other("garbage".into()));
        let s = Summary::of(&[], |_| String::new());
        let json = serde_json::to_string(&s).expect("json");
        assert_eq!(parse_pool(&format!("POOL {json}\n")), Ok((s.clone(), true)));
        assert_eq!(parse_pool(&format!("POOL-LATE {json}")), Ok((s, false)));
        assert!(parse_pool("POOL {").is_err());
        assert!(parse_pool("READY 1 x").expect_err("not a pool line").contains("expected POOL"));
    }

    #[test]
    fn lines_come_one_at_a_time_and_a_silent_daemon_times_out() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let mut w = std::fs::File::from(w);
        std::io::Write::write_all(&mut w, b"READY 3 x\nPOOL {}").expect("write");
        let mut lines = Lines::new(r);
        let soon = || Instant::now() + Duration::from_millis(200);
        assert_eq!(lines.next(soon()).as_deref(), Some("READY 3 x\n"));
        assert_eq!(lines.next(soon()), None, "an unfinished line is not a line");
        std::io::Write::write_all(&mut w, b"\nERROR a\n  b").expect("write");
        drop(w);
        assert_eq!(lines.next(soon()).as_deref(), Some("POOL {}\n"));
        assert_eq!(lines.next(soon()).as_deref(), Some("ERROR a\n"));
        assert_eq!(lines.rest(soon()), "  b");
    }
}
