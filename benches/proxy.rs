//! nsproxy against the proxy itself. Run as root:
//!
//!     cargo bench --bench proxy                # 3 rounds, 10 s per figure
//!     cargo bench --bench proxy -- --smoke     # 1 round, 1 s
//!     cargo test --bench proxy                 # the same smoke run (CI runs it)
//!     cargo bench --bench proxy -- --rounds 5 --seconds 10 --idle-flows 10000
//!     cargo test --bench proxy -- --interrupt-check   # stopped by SIGINT: nothing left (CI)
//!
//! Topology as in the end-to-end tests: dante-server as the SOCKS5 proxy in
//! its namespace, the targets (this binary in `serve` mode) in the origin
//! namespace. "baseline" = the same client speaking SOCKS5 itself (the same
//! SOCKS5 code nsproxy uses) to the same dante from the host namespace;
//! "nsproxy" = the client inside an nsproxy account, connecting directly.
//! Rounds alternate baseline and nsproxy; each figure is reported as the
//! median of the per-round ratios nsproxy / baseline, with absolute figures.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "proxy/external.rs"]
mod external;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BULK_DOWN: u16 = 9001;
const BULK_UP: u16 = 9002;
const HTTP: u16 = 9003;
const HOLD: u16 = 9004;

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and
    // then a smoke run (1 round, 1 s) checks the benchmark still works.
    let under_cargo_bench = std::env::args().any(|a| a == "--bench");
    let mut args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if !under_cargo_bench
        && args.first().is_none_or(|a| a != "serve" && a != "client")
        && !args.contains(&"--smoke".to_string())
    {
        args.push("--smoke".into());
    }
    let rt = || tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match args.first().map(String::as_str) {
        Some("serve") => rt().block_on(serve()),
        Some("client") => rt().block_on(client(&args[1..])),
        _ => orchestrate(&args),
    }
}

// ---------------------------------------------------------------- targets

async fn serve() {
    let down = TcpListener::bind(("0.0.0.0", BULK_DOWN)).await.expect("bind");
    let up = TcpListener::bind(("0.0.0.0", BULK_UP)).await.expect("bind");
    let http = TcpListener::bind(("0.0.0.0", HTTP)).await.expect("bind");
    let hold = TcpListener::bind(("0.0.0.0", HOLD)).await.expect("bind");
    tokio::spawn(accept(down, |mut s| async move {
        let buf = vec![0u8; 256 * 1024];
        while s.write_all(&buf).await.is_ok() {}
    }));
    tokio::spawn(accept(up, |mut s| async move {
        let mut buf = vec![0u8; 256 * 1024];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    }));
    tokio::spawn(accept(http, |mut s| async move {
        let mut buf = vec![0u8; 4096];
        let mut have = 0;
        loop {
            match s.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
            while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                    return;
                }
                buf.copy_within(end + 4..have, 0);
                have -= end + 4;
            }
            if have == buf.len() {
                return;
            }
        }
    }));
    accept(hold, |mut s| async move {
        let mut b = [0u8; 16];
        let _ = s.read(&mut b).await;
    })
    .await;
}

async fn accept<F, Fut>(l: TcpListener, f: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        if let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(f(s));
        }
    }
}

// ----------------------------------------------------------------- client

/// `client TARGET_IP [--socks IP:PORT USER PASSFILE] MODE ARGS...`
async fn client(args: &[String]) {
    let target: std::net::IpAddr = args[0].parse().expect("target ip");
    let mut rest = &args[1..];
    let mut socks = None;
    if rest.first().map(String::as_str) == Some("--socks") {
        let pass = std::fs::read_to_string(&rest[3]).expect("password file").trim().to_string();
        let (host, port) = rest[1].rsplit_once(':').expect("ip:port");
        socks = Some(nsproxy::proxy::Upstream::new(
            nsproxy::config::ProxyEntry {
                label: "bench".into(),
                scheme: nsproxy::config::Scheme::Socks5,
                host: host.into(),
                port: port.parse().expect("port"),
                username: Some(nsproxy::config::UserRef::Plain(rest[2].clone())),
                password: None,
                priority: 0,
                enabled: true,
                connect_timeout: Duration::from_secs(10),
                handshake_timeout: Duration::from_secs(10),
                expected_egress_ip: None,
                ca_file: None,
            },
            Some(nsproxy::secrets::Creds {
                user: nsproxy::secrets::Secret::new(rest[2].clone()),
                pass: nsproxy::secrets::Secret::new(pass),
            }),
        ));
        rest = &rest[4..];
    }
    let c = Client { target, socks };
    let n = |i: usize| rest[i].parse::<u64>().expect("number");
    let res = match rest[0].as_str() {
        "down" => c.bulk(true, n(1) as usize, Duration::from_secs_f64(n(2) as f64 / 10.0)).await,
        "up" => c.bulk(false, n(1) as usize, Duration::from_secs_f64(n(2) as f64 / 10.0)).await,
        "lat" => c.latency(n(1) as usize).await,
        "conn" => c.connections(n(1) as usize, n(2) as usize).await,
        "hold" => c.hold(n(1) as usize).await,
        m => panic!("unknown mode {m}"),
    };
    println!("{res}");
}

struct Client {
    target: std::net::IpAddr,
    socks: Option<nsproxy::proxy::Upstream>,
}

/// One small request and its 40-byte response.
async fn request(s: &mut TcpStream, buf: &mut [u8; 256]) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n").await.expect("write");
    let mut got = 0;
    while got < 40 {
        let n = s.read(&mut buf[got..]).await.expect("read");
        assert!(n > 0, "closed");
        got += n;
    }
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0)
}

impl Client {
    async fn try_connect(&self, port: u16) -> std::io::Result<TcpStream> {
        let addr = SocketAddr::new(self.target, port);
        let s = match &self.socks {
            // Bytes that came with the SOCKS5 reply (a bulk source starts at
            // once) are not counted: a few KiB against gigabytes.
            Some(up) => {
                match up.connect(&nsproxy::proxy::Target::Ip(addr)).await.map_err(std::io::Error::other)?.stream {
                    nsproxy::proxy::ProxyStream::Tcp(s) => s,
                    nsproxy::proxy::ProxyStream::Tls(_) => unreachable!("the benchmark's proxy is SOCKS5"),
                }
            }
            None => TcpStream::connect(addr).await?,
        };
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    async fn connect(&self, port: u16) -> TcpStream {
        self.try_connect(port).await.expect("connect")
    }

    /// MB/s over `dur` with `streams` connections.
    async fn bulk(&self, down: bool, streams: usize, dur: Duration) -> String {
        let mut socks = Vec::new();
        for _ in 0..streams {
            socks.push(self.connect(if down { BULK_DOWN } else { BULK_UP }).await);
        }
        let start = Instant::now();
        let tasks: Vec<_> = socks
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut total = 0u64;
                    while start.elapsed() < dur {
                        let r = if down { s.read(&mut buf).await } else { s.write(&buf).await };
                        match r {
                            Ok(0) | Err(_) => break,
                            Ok(n) => total += n as u64,
                        }
                    }
                    total
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap_or(0);
        }
        format!("{:.1}", total as f64 / start.elapsed().as_secs_f64() / 1e6)
    }

    /// p50 and p99 (µs) of small request/response over one connection.
    async fn latency(&self, count: usize) -> String {
        let mut s = self.connect(HTTP).await;
        let mut buf = [0u8; 256];
        let mut v = Vec::with_capacity(count);
        for i in 0..count + 100 {
            let t = Instant::now();
            request(&mut s, &mut buf).await;
            if i >= 100 {
                v.push(t.elapsed().as_micros() as u64);
            }
        }
        format!("{} {}", pct(&mut v, 0.5), pct(&mut v, 0.99))
    }

    /// `count` new connections + small request, `par` at a time:
    /// connections/s, p50, p99 (µs), and the p50 of the two halves
    /// (connect() alone, then the first request). A fixed count, not a
    /// duration: each connection leaves a TIME_WAIT behind (60 s), and
    /// a few seconds at 1,000/s per side ran the ports to the proxy out.
    async fn connections(&self, par: usize, count: usize) -> String {
        let start = Instant::now();
        let me = std::sync::Arc::new(Client { target: self.target, socks: self.socks.clone() });
        let tasks: Vec<_> = (0..par)
            .map(|_| {
                let me = me.clone();
                tokio::spawn(async move {
                    let (mut whole, mut conn, mut req) = (Vec::new(), Vec::new(), Vec::new());
                    let mut buf = [0u8; 256];
                    for _ in 0..count / par {
                        let t = Instant::now();
                        let mut s = me.connect(HTTP).await;
                        let c = t.elapsed().as_micros() as u64;
                        request(&mut s, &mut buf).await;
                        let w = t.elapsed().as_micros() as u64;
                        whole.push(w);
                        conn.push(c);
                        req.push(w - c);
                    }
                    (whole, conn, req)
                })
            })
            .collect();
        let (mut whole, mut conn, mut req) = (Vec::new(), Vec::new(), Vec::new());
        for t in tasks {
            let (w, c, r) = t.await.expect("connection task");
            whole.extend(w);
            conn.extend(c);
            req.extend(r);
        }
        let rate = whole.len() as f64 / start.elapsed().as_secs_f64();
        let (p50, p99) = (pct(&mut whole, 0.5), pct(&mut whole, 0.99));
        format!("{rate:.0} {p50} {p99} {} {}", pct(&mut conn, 0.5), pct(&mut req, 0.5))
    }

    /// Opens `n` idle connections, says "ready", holds them until stdin closes.
    async fn hold(&self, n: usize) -> String {
        let mut held = Vec::with_capacity(n);
        for i in 0..n {
            match tokio::time::timeout(Duration::from_secs(10), self.try_connect(HOLD)).await {
                Ok(Ok(s)) => held.push(s),
                Ok(Err(e)) => {
                    println!("failed at {i}: {e}");
                    return String::new();
                }
                Err(_) => {
                    println!("failed at {i}: timeout");
                    return String::new();
                }
            }
        }
        println!("ready {}", held.len());
        let _ = tokio::task::spawn_blocking(|| {
            let mut b = [0u8; 1];
            std::io::Read::read(&mut std::io::stdin(), &mut b)
        })
        .await;
        format!("held {}", held.len())
    }
}

// ------------------------------------------------------------ orchestrator

fn raise_nofile() {
    use nix::sys::resource::{Resource, setrlimit};
    let _ = setrlimit(Resource::RLIMIT_NOFILE, 200_000, 200_000);
}

struct Daemon(i32);
impl Daemon {
    fn cpu_ticks(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.0)).unwrap_or_default();
        let f: Vec<&str> = s.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
    }
    /// Resets VmHWM to the current RSS (Linux >= 4.0), so each figure's
    /// peak can be read on its own.
    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.0), "5");
    }
    fn kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }
}

/// The daemon's highest anonymous RSS (`RssAnon`, KiB), sampled every
/// 10 ms on a thread of its own: VmHWM counts the binary's and libc's
/// mapped pages too, which are shared through the page cache; this is the
/// part the flows' buffers make.
struct AnonPeak {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl AnonPeak {
    fn start(pid: i32) -> AnonPeak {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let daemon = Daemon(pid);
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = daemon.kib("RssAnon:").max(peak);
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        AnonPeak { stop, thread }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// TCP sockets in TIME_WAIT in this (the host's) namespace, where the
/// baseline client and nsproxy's daemon both connect to the proxy.
fn time_waits() -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|t| t.lines().skip(1).filter(|l| l.split_whitespace().nth(3) == Some("06")).count())
        .sum()
}

/// Waits (up to 65 s) until fewer than 4,500 TIME_WAITs remain (one
/// round's four connection figures leave 4 x 1,000): with 16,000 left by
/// earlier figures, connect() searched the port range for a free port and
/// the figure measured that instead (a baseline fell from 990 to 227
/// connections/s). Rounds then start on an equal footing.
fn settle_time_waits() {
    let start = Instant::now();
    let first = time_waits();
    let mut n = first;
    while n >= 4500 && start.elapsed() < Duration::from_secs(65) {
        std::thread::sleep(Duration::from_millis(500));
        n = time_waits();
    }
    if first >= 4500 {
        println!("  (waited {:.0} s for TIME_WAITs to expire: {first} -> {n})", start.elapsed().as_secs_f64());
    }
}

/// The machine's CPU time from the first line of /proc/stat, in USER_HZ
/// ticks: (busy, all), busy being all but idle and iowait. A bulk figure
/// divides it by the bytes it moved: every process of the chain (client,
/// proxy, target and nsproxy) shares these cores, so when both sides keep
/// them equally busy, the throughput ratio is the ratio of CPU per MB.
fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> =
        s.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let all: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

/// CPU spent over one side's runs of a figure, summed over the rounds,
/// and what they moved: MB for a bulk figure, connections for a
/// connection figure.
#[derive(Default, Clone, Copy)]
struct Spent {
    busy: u64,
    all: u64,
    daemon: u64,
    units: f64,
}

impl Spent {
    /// Runs `figure`, which returns its numbers and how many units it
    /// moved (0 when it failed), and adds what the machine and the daemon
    /// spent on it.
    fn measure(&mut self, daemon: &Daemon, figure: impl FnOnce() -> (Vec<f64>, f64)) -> Vec<f64> {
        let ((b0, a0), d0) = (machine_ticks(), daemon.cpu_ticks());
        let (nums, units) = figure();
        let ((b1, a1), d1) = (machine_ticks(), daemon.cpu_ticks());
        if units > 0.0 && units.is_finite() {
            self.busy += b1 - b0;
            self.all += a1 - a0;
            self.daemon += d1 - d0;
            self.units += units;
        }
        nums
    }

    /// Milliseconds of CPU per unit (USER_HZ is 100: a tick is 10 ms).
    fn ms_per(ticks: u64, units: f64) -> f64 {
        ticks as f64 * 10.0 / units
    }

    /// One line: both sides' machine CPU per unit, the daemon's part, the
    /// ratio and how busy the cores were. `scale` turns ms into the unit
    /// printed (1 for ms, 1000 for µs).
    fn line(name: &str, [base, nsp]: [Spent; 2], scale: f64, unit: &str) -> Option<String> {
        if base.units == 0.0 || nsp.units == 0.0 {
            return None;
        }
        let (b, n) = (Spent::ms_per(base.busy, base.units), Spent::ms_per(nsp.busy, nsp.units));
        // Ticks are 10 ms: µs per connection have no decimals to show.
        let p = if scale > 1.0 { 0 } else { 2 };
        Some(format!(
            "  {name:<26} baseline {:.p$} {unit}, nsproxy {:.p$} {unit} (daemon {:.p$} {unit}): {:.2}x; cores busy {:.0}% / {:.0}%",
            b * scale,
            n * scale,
            Spent::ms_per(nsp.daemon, nsp.units) * scale,
            b / n,
            100.0 * base.busy as f64 / base.all.max(1) as f64,
            100.0 * nsp.busy as f64 / nsp.all.max(1) as f64
        ))
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn orchestrate(args: &[String]) {
    if !common::root_or_skip("benchmark") {
        return;
    }
    // --interrupt-check: this run again (a smoke run), stopped by SIGINT
    // during its first figure; nothing it made may be left.
    if args.iter().any(|a| a == "--interrupt-check") {
        let rest: Vec<&str> = args.iter().map(String::as_str).filter(|a| *a != "--interrupt-check").collect();
        let when = "machine:";
        common::check_interrupted_run(&rest, when, Duration::from_millis(1500), nix::sys::signal::Signal::SIGINT);
        return;
    }
    // A run stopped by Ctrl-C or kill removes its bed.
    common::clean_up_on_signals();
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let smoke = args.iter().any(|a| a == "--smoke");
    let rounds = flag("--rounds", if smoke { 1 } else { 3 }) as usize;
    let secs = flag("--seconds", if smoke { 1 } else { 10 });
    let lat_n = flag("--requests", if smoke { 300 } else { 2000 });
    let idle_flows = flag("--idle-flows", if smoke { 300 } else { 10_000 });
    let conn_n = flag("--connections", if smoke { 100 } else { 1000 }).max(8);
    // --only lat,down1,... runs a subset: down1 down8 up1 lat conn1 conn8 idle.
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_string).collect());
    let want = |k: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == k));
    let ds = (secs * 10).to_string();
    raise_nofile();
    common::ensure_user(common::TEST_USER);
    let me = std::env::current_exe().expect("exe");
    let topo = common::Topology::new(&[common::Kind::Dante]);
    let px = &topo.proxies[0];
    let server = std::process::Command::new("ip")
        .args(["netns", "exec", &topo.origin_ns])
        .arg(&me)
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("server");
    let _server = common::Proc { name: "bench-server".into(), child: server };
    std::thread::sleep(Duration::from_millis(500));
    // --socket-buffer BYTES: the account's limits.socket_buffer, which then
    // sizes both directions (default: the policy's, 256 KiB each);
    // --send-buffer BYTES: limits.send_buffer alone.
    let limit = |name: &str, key: &str| match flag(name, 0) {
        0 => String::new(),
        n => format!("      {key}: {n}\n"),
    };
    let limits = format!(
        "    limits:\n      max_flows: {}\n      max_half_open: 4096\n{}{}",
        (idle_flows + 100).max(4096),
        limit("--socket-buffer", "socket_buffer"),
        limit("--send-buffer", "send_buffer")
    );
    let acct = common::Account::for_proxy("bn", px, &limits);
    acct.up_quiet();
    let daemon = Daemon(acct.daemon_pid().expect("daemon pid"));
    let pw = acct.dir.join("pw");
    let target = px.origin_ip.to_string();
    let proxy = format!("{}:{}", px.listen, px.port);
    let me_s = me.display().to_string();
    // --client rust|python|tools: who measures. `rust` (default) is this
    // binary's tokio client; `python` is benches/client.py, blocking
    // sockets and a thread per stream; `tools` is wrk and ab against
    // nginx, the baseline through proxychains4. All three run as a
    // separate process, inside the account for the nsproxy column.
    let kind = args
        .iter()
        .position(|a| a == "--client")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or("rust")
        .to_string();
    let tools = match kind.as_str() {
        "rust" | "python" => None,
        "tools" => Some(external::Tools::start(&topo, px, &pw)),
        other => panic!("--client {other}: expected rust, python or tools"),
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/client.py").display().to_string();
    let pw_s = pw.display().to_string();
    let socks = ["--socks", proxy.as_str(), px.user.as_str(), pw_s.as_str()];
    let run = |via_nsproxy: bool, mode: &[&str]| -> String {
        let argv: Vec<String> = match &tools {
            Some(t) => t.argv(via_nsproxy, &target, mode, secs),
            None => {
                let mut v: Vec<&str> = if kind == "python" {
                    vec!["/usr/bin/python3", &script, &target]
                } else {
                    vec![&me_s, "client", &target]
                };
                if !via_nsproxy {
                    v.extend_from_slice(&socks);
                }
                v.extend_from_slice(mode);
                v.into_iter().map(str::to_string).collect()
            }
        };
        let o = if via_nsproxy {
            let v: Vec<&str> = argv.iter().map(String::as_str).collect();
            acct.cmd(&[&["exec", acct.name.as_str(), "--user", common::TEST_USER, "--"][..], &v[..]].concat())
        } else {
            std::process::Command::new(&argv[0]).args(&argv[1..]).output().expect("client")
        };
        assert!(o.status.success(), "client {mode:?} failed: {}", common::err(&o));
        let text = common::out(&o);
        // NSP_BENCH_VERBOSE=1 shows each client's own report.
        if std::env::var_os("NSP_BENCH_VERBOSE").is_some() {
            println!("  {} {mode:?}:\n{text}", if via_nsproxy { "nsproxy" } else { "baseline" });
        }
        match &tools {
            Some(t) => t.parse(mode, &text),
            None => text.trim().to_string(),
        }
    };
    println!(
        "nsproxy benchmark, {kind} client: {rounds} round(s), {secs} s per bulk figure, {lat_n} keep-alive requests, {conn_n} new connections"
    );
    println!(
        "machine: {} cores, load {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        loadavg()
    );
    let names = [
        "download 1 stream MB/s",
        "download 8 streams MB/s",
        "upload 1 stream MB/s",
        "keep-alive latency p50 µs",
        "keep-alive latency p99 µs",
        "new conn/s, 1 at a time",
        "new conn p50 µs",
        "new conn p99 µs",
        "  of which connect() p50 µs",
        "  of which 1st request p50 µs",
        "new conn/s, 8 parallel",
        "new conn, 8 parallel p50 µs",
        "new conn, 8 parallel p99 µs",
    ];
    let short = [
        "down1", "down8", "up1", "p50", "p99", "conn1", "c1p50", "c1p99", "c1conn", "c1req", "conn8", "c8p50", "c8p99",
    ];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut abs: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()]; names.len()];
    // CPU over the bulk figures (down 1, down 8, up 1) and the connection
    // figures (1 at a time, 8 in parallel), per side.
    let mut spent = [[Spent::default(); 5]; 2];
    // nsproxy's peak RSS (KiB) per figure, the highest over the rounds.
    let peak_names = ["down1", "down8", "up1", "lat", "conn1", "conn8"];
    let mut peaks = [0u64; 6];
    let anon_peak = AnonPeak::start(daemon.0);
    let lat_s = lat_n.to_string();
    for round in 0..rounds {
        let mut fig = [[0f64; 13]; 2];
        // Baseline first in odd rounds, nsproxy first in even ones: what one
        // side leaves behind (TIME_WAITs to the proxy in the host's port
        // space, a warm cache) must not always favour the same side.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for via in order {
            let i = usize::from(via);
            let nums = |mode: &[&str], n: usize| -> Vec<f64> {
                let v: Vec<f64> = run(via, mode).split(' ').filter_map(|x| x.parse().ok()).collect();
                if v.len() == n { v } else { vec![f64::NAN; n] }
            };
            let skip = |n: usize| vec![f64::NAN; n];
            if via {
                daemon.reset_peak();
            }
            let mut mark = |k: usize| {
                if via {
                    peaks[k] = peaks[k].max(daemon.kib("VmHWM:"));
                    daemon.reset_peak();
                }
            };
            let [s_d1, s_d8, s_u1, s_c1, s_c8] = &mut spent[i];
            let bulk = |mode: &[&str]| {
                let v = nums(mode, 1);
                let mb = v[0] * secs as f64;
                (v, mb)
            };
            let d1 = if want("down1") { s_d1.measure(&daemon, || bulk(&["down", "1", &ds]))[0] } else { f64::NAN };
            mark(0);
            let d8 = if want("down8") { s_d8.measure(&daemon, || bulk(&["down", "8", &ds]))[0] } else { f64::NAN };
            mark(1);
            let u1 = if want("up1") { s_u1.measure(&daemon, || bulk(&["up", "1", &ds]))[0] } else { f64::NAN };
            mark(2);
            let lat = if want("lat") { nums(&["lat", &lat_s], 2) } else { skip(2) };
            mark(3);
            let cn = conn_n.to_string();
            if want("conn1") {
                settle_time_waits();
            }
            let conns = |mode: &[&str]| {
                let v = nums(mode, 5);
                let n = if v[0].is_finite() { conn_n as f64 } else { 0.0 };
                (v, n)
            };
            let c1 = if want("conn1") { s_c1.measure(&daemon, || conns(&["conn", "1", &cn])) } else { skip(5) };
            mark(4);
            if want("conn8") {
                settle_time_waits();
            }
            let c8 = if want("conn8") { s_c8.measure(&daemon, || conns(&["conn", "8", &cn])) } else { skip(5) };
            mark(5);
            fig[i] = [d1, d8, u1, lat[0], lat[1], c1[0], c1[1], c1[2], c1[3], c1[4], c8[0], c8[1], c8[2]];
        }
        for k in 0..names.len() {
            ratios[k].push(fig[1][k] / fig[0][k]);
            abs[k][0].push(fig[0][k]);
            abs[k][1].push(fig[1][k]);
        }
        // Each round's own figures, baseline -> nsproxy, so a median
        // can be told from a spread.
        let this: Vec<String> = (0..names.len())
            .filter(|&k| !fig[1][k].is_nan())
            .map(|k| format!("{} {:.0}->{:.0}", short[k], fig[0][k], fig[1][k]))
            .collect();
        println!("round {} done (load {}): {}", round + 1, loadavg(), this.join(", "));
    }
    println!();
    println!("{:<28} {:>12} {:>12} {:>10}", "figure (median)", "baseline", "nsproxy", "ratio");
    for k in 0..names.len() {
        // Figures left out with --only have no samples: print no row.
        if abs[k][1].iter().all(|x| x.is_nan()) {
            continue;
        }
        println!(
            "{:<28} {:>12.1} {:>12.1} {:>9.2}x",
            names[k],
            median(&mut abs[k][0]),
            median(&mut abs[k][1]),
            median(&mut ratios[k])
        );
    }
    // Where a figure's cycles went: the whole machine's CPU per MB (per
    // connection) on each side, and the daemon's share of nsproxy's. When
    // both sides keep the cores equally busy, the throughput ratio follows
    // the ratio of CPU per unit.
    let per = |k: usize| [spent[0][k], spent[1][k]];
    let per_mb: Vec<String> =
        (0..3).filter_map(|k| Spent::line(names[k].trim_end_matches(" MB/s"), per(k), 1.0, "ms")).collect();
    if !per_mb.is_empty() {
        println!("machine CPU per MB moved (every process on both cores; sums over the rounds):");
        per_mb.iter().for_each(|l| println!("{l}"));
    }
    let per_conn: Vec<String> = [(3, "1 at a time"), (4, "8 in parallel")]
        .iter()
        .filter_map(|&(k, name)| Spent::line(name, per(k), 1000.0, "µs"))
        .collect();
    if !per_conn.is_empty() {
        println!("machine CPU per new connection (every process on both cores; sums over the rounds):");
        per_conn.iter().for_each(|l| println!("{l}"));
    }
    let anon_peak = anon_peak.finish();
    if !want("idle") {
        return;
    }
    let down1 = spent[1][0];
    println!("nsproxy CPU per GB downloaded (1 stream): {:.2} s", Spent::ms_per(down1.daemon, down1.units));
    let peak = peaks.iter().copied().max().unwrap_or(0).max(daemon.kib("VmHWM:"));
    println!("nsproxy peak RSS during the benchmark: {:.1} MiB", peak as f64 / 1024.0);
    let by: Vec<String> = peak_names.iter().zip(peaks).map(|(n, k)| format!("{n} {:.1}", k as f64 / 1024.0)).collect();
    println!("  peak RSS by figure (MiB): {}", by.join(", "));
    println!(
        "  of which anonymous at most (sampled every 10 ms): {:.1} MiB; the rest is the binary's and libraries' pages",
        anon_peak as f64 / 1024.0
    );
    println!("  {}", code_order(common::BIN));
    // Idle flows.
    let before = daemon.kib("VmRSS:");
    let mut child = std::process::Command::new(common::BIN)
        .arg("--policies")
        .arg(&acct.policy)
        .args(["exec", &acct.name, "--user", common::TEST_USER, "--"])
        .arg(&me)
        .args(["client", &target, "hold", &idle_flows.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("hold client");
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let _ = std::io::BufRead::read_line(&mut reader, &mut line);
    std::thread::sleep(Duration::from_secs(1));
    let held = daemon.kib("VmRSS:");
    let t0 = daemon.cpu_ticks();
    std::thread::sleep(Duration::from_secs(5));
    let idle_ticks = daemon.cpu_ticks() - t0;
    println!(
        "idle flows: {} -> daemon RSS {:.1} MiB -> {:.1} MiB, {:.1} KiB per flow; CPU while idle: {} ticks in 5 s",
        line.trim(),
        before as f64 / 1024.0,
        held as f64 / 1024.0,
        (held.saturating_sub(before)) as f64 / idle_flows.max(1) as f64,
        idle_ticks
    );
    drop(child.stdin.take());
    let _ = child.wait();
    drop(reader);
    println!("load at the end: {}", loadavg());
}

/// How much of scripts/code-order.txt (build.rs lays the release binary's
/// code out in its order) names functions of `bin`: the file goes stale as
/// the code changes, the binary's file pages in the peak RSS grow with it,
/// and this line shows it (scripts/code-order.sh writes the file again).
fn code_order(bin: &str) -> String {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/code-order.txt");
    let Ok(text) = std::fs::read_to_string(&file) else {
        return format!("code order: {} not readable", file.display());
    };
    let names: Vec<&str> = text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let nm = match std::process::Command::new("nm").args(["--defined-only", bin]).output() {
        Ok(o) if o.status.success() => o.stdout,
        _ => return format!("code order: nm --defined-only {bin} failed"),
    };
    let nm = String::from_utf8_lossy(&nm);
    let defined: std::collections::HashSet<&str> = nm.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    let found = names.iter().filter(|n| defined.contains(*n)).count();
    // A debug build (`cargo test --bench proxy`) is laid out in the default
    // order and shares only the standard library's names with the file.
    let build = if cfg!(debug_assertions) { "; a debug build, which build.rs leaves in the default order" } else { "" };
    format!(
        "code order: {found} of the {} names in scripts/code-order.txt are functions of this binary (the file names each function as a release and as a bench build names it{build})",
        names.len()
    )
}
