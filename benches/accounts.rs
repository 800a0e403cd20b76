//! Many accounts on one host. Run as root:
//!
//!     cargo bench --bench accounts                  # 1,000 accounts, a directory of one file each
//!     cargo bench --bench accounts -- 300 --one-file
//!     cargo test --bench accounts                   # 50 accounts (CI runs it so it does not rot)
//!     cargo test --bench accounts -- --interrupt-check  # stopped by SIGTERM: nothing left (CI)
//!
//! Every account has one SOCKS5 proxy: a microsocks on the host's loopback
//! that this benchmark starts and ends (by PID). The accounts are brought up
//! one after another with `nsproxy up` (each timed, a separate process as
//! an operator runs it), then left idle: the daemons' CPU time, context
//! switches (each is a wake-up) and PSS are read from /proc over a window.
//! Then `status` and `list` of all of them are timed, and each `down`.
//! Figures only: nothing here is a pass/fail on time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nsproxy");

struct Bed {
    dir: PathBuf,
    policies: PathBuf,
    names: Vec<String>,
    up: Vec<String>,
    proxy: Option<Child>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for n in self.up.drain(..) {
            common::remove(&common::Made::Account { policy: self.policies.clone(), name: n });
        }
        if let Some(mut p) = self.proxy.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        common::remove(&common::Made::Dir(self.dir.clone()));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn nsproxy(policies: &Path, args: &[&str]) -> (Duration, std::process::Output) {
    let t = Instant::now();
    let o = Command::new(BIN)
        .arg("--policies")
        .arg(policies)
        .args(["--log-level", "warn"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run nsproxy");
    (t.elapsed(), o)
}

/// (utime + stime in clock ticks, voluntary + involuntary switches, PSS KiB)
fn sample(pid: i32) -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let cpu = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // Every thread's switches: each is a wake-up of that thread.
    let mut switches = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for l in s.lines() {
            if let Some(v) =
                l.strip_prefix("voluntary_ctxt_switches:").or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let pss = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some((cpu, switches, pss))
}

fn main() {
    let under_cargo_bench = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let one_file = args.iter().any(|a| a == "--one-file");
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(if under_cargo_bench { 1000 } else { 50 });
    let idle_secs: u64 = if under_cargo_bench { 10 } else { 3 };
    if !common::root_or_skip("bench_accounts") {
        return;
    }
    // --interrupt-check: a run of 40 accounts, stopped by SIGTERM while
    // they come up; nothing it made may be left.
    if args.iter().any(|a| a == "--interrupt-check") {
        let sig = nix::sys::signal::Signal::SIGTERM;
        common::check_interrupted_run(&["40"], "accounts (", Duration::from_millis(400), sig);
        return;
    }
    // A run stopped by Ctrl-C or kill removes its bed.
    common::clean_up_on_signals();
    assert!(
        common::sh("command -v microsocks").status.success(),
        "microsocks is not installed (scripts/install-deps.sh)"
    );
    let tag = common::unique("ab");
    let dir = std::env::temp_dir().join(format!("nsproxy-bench-{tag}"));
    let policies = dir.join("policies");
    common::note(common::Made::Dir(dir.clone()));
    std::fs::create_dir_all(&policies).expect("dir");
    let port = free_port();
    let proxy = Command::new("microsocks")
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("microsocks");
    let names: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let mut bed =
        Bed { dir: dir.clone(), policies: policies.clone(), names: names.clone(), up: Vec::new(), proxy: Some(proxy) };
    std::thread::sleep(Duration::from_millis(200));
    let account = |name: &str| {
        format!("  - name: {name}\n    proxies:\n      - {{label: p, url: 'socks5://127.0.0.1:{port}'}}\n")
    };
    if one_file {
        let text: String = std::iter::once("accounts:\n".to_string()).chain(names.iter().map(|n| account(n))).collect();
        std::fs::write(policies.join("accounts.yaml"), text).expect("policy");
    } else {
        for name in &names {
            std::fs::write(policies.join(format!("{name}.yaml")), format!("accounts:\n{}", account(name)))
                .expect("policy");
        }
    }
    let layout = if one_file { "one file" } else { "a directory of one file per account" };
    println!("== {n} accounts ({layout}), one microsocks on 127.0.0.1:{port}");

    // Up, one after another.
    let mut ups = Vec::new();
    let started = Instant::now();
    for (i, name) in names.iter().enumerate() {
        common::note(common::Made::Account { policy: policies.clone(), name: name.clone() });
        let (t, o) = nsproxy(&policies, &["up", name]);
        assert!(
            o.status.success(),
            "up {name}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        bed.up.push(name.clone());
        ups.push(ms(t));
        if (i + 1) % 100 == 0 || i + 1 == n {
            let last: Vec<f64> = ups[ups.len().saturating_sub(100)..].to_vec();
            println!("  up {:>5}: median of the last {} {:.1} ms", i + 1, last.len(), pct(&last, 0.5));
        }
    }
    let all_up = started.elapsed();
    let first: Vec<f64> = ups[..ups.len().min(50)].to_vec();
    let last: Vec<f64> = ups[ups.len().saturating_sub(50)..].to_vec();
    println!(
        "up: {n} in {:.1} s; median {:.1} ms, p90 {:.1} ms, max {:.1} ms; first 50 median {:.1} ms, last 50 median {:.1} ms",
        all_up.as_secs_f64(),
        pct(&ups, 0.5),
        pct(&ups, 0.9),
        pct(&ups, 1.0),
        pct(&first, 0.5),
        pct(&last, 0.5)
    );

    // Idle.
    let pids: Vec<i32> = names
        .iter()
        .filter_map(|n| std::fs::read_to_string(format!("/run/nsproxy/{n}/daemon.pid")).ok()?.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), n, "every daemon has a pid file");
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<_> = pids.iter().map(|p| sample(*p)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let after: Vec<_> = pids.iter().map(|p| sample(*p)).collect();
    let window = t0.elapsed().as_secs_f64();
    let tick = 100.0; // USER_HZ
    let (mut cpu, mut sw, mut pss) = (0u64, 0u64, Vec::new());
    for (b, a) in before.iter().zip(&after) {
        if let (Some(b), Some(a)) = (b, a) {
            cpu += a.0.saturating_sub(b.0);
            sw += a.1.saturating_sub(b.1);
            pss.push(a.2 as f64 / 1024.0);
        }
    }
    println!(
        "idle over {window:.1} s: {:.2}% of a core for all {n}; {:.1} wake-ups/s in all ({:.3} per daemon per s); PSS per daemon median {:.2} MiB, max {:.2} MiB, total {:.0} MiB",
        cpu as f64 / tick / window * 100.0,
        sw as f64 / window,
        sw as f64 / window / n as f64,
        pct(&pss, 0.5),
        pct(&pss, 1.0),
        pss.iter().sum::<f64>()
    );

    // status and list of all.
    for args in [&["status", "--json"][..], &["list"][..]] {
        let mut ts = Vec::new();
        for _ in 0..3 {
            let (t, o) = nsproxy(&policies, args);
            assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
            ts.push(ms(t));
        }
        println!("{}: median of 3 {:.0} ms", args.join(" "), pct(&ts, 0.5));
    }

    // Down, one after another.
    let mut downs = Vec::new();
    for name in bed.names.clone() {
        // Never beside a signal's clean-up, which downs it too.
        let made = common::Made::Account { policy: policies.clone(), name: name.clone() };
        let (t, o) = common::removing(&made, || {
            let r = nsproxy(&policies, &["down", &name]);
            // The pool's state (kept by down, as for every account).
            let _ = std::fs::remove_dir_all(format!("/var/lib/nsproxy/{name}"));
            r
        });
        assert!(o.status.success(), "down {name}: {}", String::from_utf8_lossy(&o.stderr));
        bed.up.retain(|n| n != &name);
        downs.push(ms(t));
    }
    println!(
        "down: {n} in {:.1} s; median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        downs.iter().sum::<f64>() / 1000.0,
        pct(&downs, 0.5),
        pct(&downs, 0.9),
        pct(&downs, 1.0)
    );
}
