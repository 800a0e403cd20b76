//! Root-only end-to-end test bed: real namespaces, veth links, real proxies
//! (microsocks, dante, tinyproxy), real servers in an "origin" namespace that
//! stands for the internet. Every name carries a per-run prefix; everything
//! started is stopped by PID and every namespace and link is deleted on
//! drop, also when a test fails.
#![allow(dead_code)]

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_nsproxy");
pub const TEST_USER: &str = "nsptest";
pub const OTHER_USER: &str = "nsptest2";

/// Root-only tests call this first. Not root: in CI that is a failure; on a
/// developer machine the test is skipped, loudly.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: root-only test cannot run: CI must run the suite as root");
    }
    eprintln!("\n!!!!! SKIPPED {test}: needs root (run the suite with sudo) !!!!!\n");
    false
}

/// Starts `cmd` with its stdout piped and waits for its first line to be
/// `listening` (a test server ready for clients); returns it running.
pub fn start_listening(cmd: &mut Command, what: &str) -> Child {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
    let mut line = String::new();
    let out = child.stdout.as_mut().unwrap_or_else(|| panic!("{what}: no stdout"));
    let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
    assert_eq!(line.trim(), "listening", "{what} did not start");
    child
}

/// Where scripts/install-deps.sh unpacks Prometheus' promtool.
pub const PROMTOOL: &str = "/opt/nsproxy-test/bin/promtool";

/// Runs `promtool check metrics` on an exposition and fails on any
/// complaint. Without promtool: a failure in CI, a loud skip elsewhere.
pub fn promtool_check(exposition: &str) {
    if !std::path::Path::new(PROMTOOL).exists() {
        if std::env::var_os("CI").is_some() {
            panic!("{PROMTOOL} is missing: scripts/install-deps.sh installs it");
        }
        eprintln!(
            "\n!!!!! SKIPPED promtool check metrics: {PROMTOOL} is missing (run scripts/install-deps.sh) !!!!!\n"
        );
        return;
    }
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child.stdin.take().expect("stdin").write_all(exposition.as_bytes()).expect("feed promtool");
    let o = child.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{exposition}");
    println!("promtool check metrics: clean ({} lines)", exposition.lines().count());
}

/// One test at a time per binary for the heavy end-to-end tests (the
/// machine has 2 cores; parallel topologies only add noise).
pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique short prefix for this run and this topology/account.
pub fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    format!("{tag}{}{}", std::process::id() % 100_000, n)
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("sh")
}

pub fn must(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(o.status.success(), "command failed: {cmd}\nstdout: {}\nstderr: {}", out(&o), err(&o));
    out(&o)
}

pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Open descriptors of a process (the daemon's, in the resource tests).
pub fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A `kB` field of `/proc/<pid>/status` (VmRSS, VmHWM ...), in KiB.
pub fn status_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS:")
}

pub fn ensure_user(name: &str) {
    if sh(&format!("id -u {name}")).status.success() {
        return;
    }
    must(&format!("useradd -M -s /bin/sh {name}"));
}

/// NSP_TEST_TIME_SCALE (default 1): how many times longer than here
/// things may take (the VM stage runs under software emulation).
pub fn time_scale() -> u32 {
    std::env::var("NSP_TEST_TIME_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1)
}

/// Waits for `f`, up to `timeout` times NSP_TEST_TIME_SCALE (default 1;
/// the VM stage sets it: everything there runs under software emulation).
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout * time_scale();
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process we started; killed by PID on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn spawn_in(ns: &str, name: &str, cmd: &str, log: &Path) -> Proc {
    let logf = std::fs::File::create(log).expect("log file");
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", &format!("exec {cmd}")])
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("log"))
        .stderr(logf)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    Proc { name: name.into(), child }
}

fn wait_port(ns: &str, ip: Ipv4Addr, port: u16) {
    // A listener on the address or on every address (`sh` is dash here:
    // no /dev/tcp to try a connection with).
    wait_until(&format!("{ip}:{port} in {ns}"), Duration::from_secs(10), || {
        sh(&format!(
            "ip netns exec {ns} ss -ltnH 'sport = :{port}' | grep -qE '({ip}|0\\.0\\.0\\.0|\\*|\\[::\\]):{port} '"
        ))
        .status
        .success()
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Microsocks,
    Dante,
    Tinyproxy,
}

mod account;
mod capture;
#[allow(dead_code)]
pub mod containers;
mod leftovers;
mod service;
mod topology;

#[allow(unused_imports)]
pub use account::*;
#[allow(unused_imports)]
pub use capture::*;
#[allow(unused_imports)]
pub use leftovers::*;
#[allow(unused_imports)]
pub use service::*;
#[allow(unused_imports)]
pub use topology::*;
