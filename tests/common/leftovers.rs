//! What a run has made, for when it is cut short. The benchmarks are run by
//! hand and stopped with Ctrl-C or `kill`, which run no destructor: without
//! this their namespaces, links, accounts (with their daemons) and
//! directories stayed behind. Each part of the bed notes here what it makes
//! and forgets it once its own drop has removed it; a benchmark calls
//! `clean_up_on_signals` first, and on SIGINT, SIGTERM or SIGHUP a thread
//! of its own ends the run's child processes (by PID), removes what is
//! left, newest first, and exits 128 + the signal's number.
//! `check_interrupted_run` is how CI checks that: it runs a benchmark,
//! stops it half way and looks for anything left.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{BIN, sh};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    /// A network namespace (with its processes and /etc/netns entry).
    Namespace(String),
    /// A link in the host's namespace.
    Link(String),
    /// An account that may be up: `down --kill` with its policy.
    Account {
        policy: PathBuf,
        name: String,
    },
    Dir(PathBuf),
}

static MADE: Mutex<Vec<Made>> = Mutex::new(Vec::new());
static STOPPING: AtomicBool = AtomicBool::new(false);

fn made() -> std::sync::MutexGuard<'static, Vec<Made>> {
    MADE.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn note(m: Made) {
    made().push(m);
}

/// A signal is stopping this run (see `clean_up_on_signals`).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

fn forget_in(v: &mut Vec<Made>, m: &Made) {
    if let Some(i) = v.iter().rposition(|x| x == m) {
        v.remove(i);
    }
}

/// Left in place on purpose (or removed already): nothing to do for it.
pub fn forget(m: &Made) {
    forget_in(&mut made(), m);
}

/// Runs `f`, which removes `m`, with the record locked, so that it never
/// runs beside a signal's clean-up (two `down`s of one account at once),
/// then forgets `m`. After a signal this waits until the process exits.
pub fn removing<R>(m: &Made, f: impl FnOnce() -> R) -> R {
    let mut v = made();
    let r = f();
    forget_in(&mut v, m);
    r
}

/// `undo`, then forgotten.
pub fn remove(m: &Made) {
    removing(m, || undo(m));
}

/// Notes the things it is given and removes them when dropped (also when
/// a test fails), newest first.
pub struct Removes(Vec<Made>);

impl Removes {
    pub fn new(things: Vec<Made>) -> Removes {
        for m in &things {
            note(m.clone());
        }
        Removes(things)
    }
}

impl Drop for Removes {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            remove(m);
        }
    }
}

/// Removes it; safe to repeat, and for a thing never made.
pub fn undo(m: &Made) {
    match m {
        Made::Namespace(ns) => {
            let _ = sh(&format!("ip netns pids {ns} 2>/dev/null | xargs -r kill -9"));
            let _ = sh(&format!("ip netns del {ns} 2>/dev/null"));
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
        }
        Made::Link(l) => {
            let _ = sh(&format!("ip link del {l} 2>/dev/null"));
        }
        Made::Account { policy, name } => {
            let _ = Command::new(BIN).arg("--policies").arg(policy).args(["down", name, "--kill"]).output();
            let _ = std::fs::remove_dir_all(format!("/var/lib/nsproxy/{name}"));
        }
        Made::Dir(d) => {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The PIDs of `pid`'s children (from /proc; a process that exits while
/// this reads is simply not seen).
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next()?.split_whitespace().nth(1)?.parse::<i32>().ok())
                == Some(pid)
        })
        .collect()
}

/// `pid` and everything under it.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let more = children(all[i]);
        all.extend(more);
        i += 1;
    }
    all
}

/// Call first in a benchmark's main. The handlers are tokio's (sigaction,
/// on a thread of their own): unlike a blocked signal mask, which every
/// child would inherit (the daemons, the proxies, the clients), a handler
/// is reset to the default by `exec`. Returns once they are in place.
pub fn clean_up_on_signals() {
    // The main thread sees its children killed and may panic on that:
    // quietly, since the run is being stopped.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !STOPPING.load(Ordering::SeqCst) {
            report(info);
        }
    }));
    let (ready, installed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_io().build() else {
            let _ = ready.send(false);
            return;
        };
        let sig = rt.block_on(async {
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) =
                (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup()))
            else {
                let _ = ready.send(false);
                return None;
            };
            let _ = ready.send(true);
            tokio::select! {
                _ = int.recv() => Some(Signal::SIGINT),
                _ = term.recv() => Some(Signal::SIGTERM),
                _ = hup.recv() => Some(Signal::SIGHUP),
            }
        });
        let Some(sig) = sig else { return };
        STOPPING.store(true, Ordering::SeqCst);
        // Held until exit: nothing new is noted, nor removed beside this.
        let mut v = made();
        eprintln!("\n{sig}: stopping this run's processes and removing the {} thing(s) it made", v.len());
        for p in children(std::process::id() as i32) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        for m in v.drain(..).rev() {
            undo(&m);
        }
        std::process::exit(128 + sig as i32);
    });
    if installed.recv() != Ok(true) {
        eprintln!("warning: no signal handlers: a run stopped by a signal leaves its namespaces behind");
    }
}

/// scripts/host-state.sh, the list test.sh compares around the suite:
/// namespaces, links, account run and state directories, containers' CNI
/// locks, /etc/netns entries and the tests' temporary directories.
fn host_state() -> BTreeSet<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/host-state.sh");
    let o = Command::new(script).output().expect("run scripts/host-state.sh");
    assert!(o.status.success(), "{script}: {}", super::err(&o));
    super::out(&o).lines().map(str::to_string).collect()
}

fn dir_list(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_string())).collect())
        .unwrap_or_default()
}
/// The daemons of accounts that are up now (their PID files).
fn daemon_pids() -> BTreeSet<i32> {
    dir_list("/run/nsproxy")
        .iter()
        .filter_map(|a| std::fs::read_to_string(format!("/run/nsproxy/{a}/daemon.pid")).ok()?.trim().parse().ok())
        .collect()
}

/// Runs this benchmark again with `args`, sends it `sig` once a line of
/// its output contains `when` (plus `delay`), and checks that it exits at
/// once and that nothing it made is left: no new namespace, link, account
/// state, temporary directory, daemon or process of its tree. Run alone
/// (the before/after comparison is host-wide).
pub fn check_interrupted_run(args: &[&str], when: &str, delay: Duration, sig: Signal) {
    let namespaces = |state: &BTreeSet<String>| state.iter().filter(|l| l.starts_with("netns ")).count();
    let before = host_state();
    let daemons_before = daemon_pids();
    let exe = std::env::current_exe().expect("own executable");
    let mut child = Command::new(exe).args(args).stdout(Stdio::piped()).spawn().expect("benchmark");
    let pid = child.id() as i32;
    // Its output, echoed to the end (a closed pipe would fail its prints).
    let lines = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    let when_s = when.to_string();
    std::thread::spawn(move || {
        for l in lines.lines().map_while(Result::ok) {
            println!("  | {l}");
            if l.contains(&when_s) {
                let _ = tx.send(());
            }
        }
    });
    assert!(rx.recv().is_ok(), "the benchmark ended before printing {when:?}");
    std::thread::sleep(delay);
    let tree = descendants(pid);
    let daemons: Vec<i32> = daemon_pids().difference(&daemons_before).copied().collect();
    let during = host_state();
    assert!(namespaces(&during) > namespaces(&before), "the benchmark had made no namespace yet: nothing to check");
    let t = Instant::now();
    kill(Pid::from_raw(pid), sig).expect("signal the benchmark");
    let status = child.wait().expect("wait");
    println!(
        "{sig} after {when:?}: exit {:?} in {:.1} s; {} process(es) in its tree, {} daemon(s), {} namespace(s) of its own then",
        status.code(),
        t.elapsed().as_secs_f64(),
        tree.len(),
        daemons.len(),
        namespaces(&during) - namespaces(&before)
    );
    assert_eq!(status.code(), Some(128 + sig as i32), "the benchmark exits 128 + {sig} when stopped by it");
    let after = host_state();
    let left: Vec<&String> = after.difference(&before).collect();
    assert!(left.is_empty(), "an interrupted benchmark left: {left:?}");
    // Killed ones are reaped by init a moment later: then /proc/<pid> is gone.
    let alive = || -> Vec<i32> {
        tree.iter().chain(&daemons).copied().filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists()).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alive().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(alive().is_empty(), "processes of the interrupted benchmark still run: {:?}", alive());
}
