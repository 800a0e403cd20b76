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

fn spawn_in(ns: &str, name: &str, cmd: &str, log: &Path) -> Proc {
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
    wait_until(&format!("{ip}:{port} in {ns}"), Duration::from_secs(10), || {
        sh(&format!("ip netns exec {ns} sh -c 'exec 3<>/dev/tcp/{ip}/{port}' 2>/dev/null")).status.success()
            || sh(&format!("ip netns exec {ns} ss -ltnH 'sport = :{port}' | grep -q {ip}")).status.success()
            || sh(&format!("ip netns exec {ns} ss -ltnH 'sport = :{port}' | grep -q '0.0.0.0'")).status.success()
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Microsocks,
    Dante,
    Tinyproxy,
}

pub struct ProxyInfo {
    pub kind: Kind,
    pub ns: String,
    /// Where the daemon reaches it (host side).
    pub listen: Ipv4Addr,
    pub port: u16,
    /// Its source address as seen by the origin.
    pub egress: Ipv4Addr,
    /// The origin's address as this proxy reaches it.
    pub origin_ip: Ipv4Addr,
    /// The same over IPv6 (the proxy's egress, the origin's address).
    pub egress6: std::net::Ipv6Addr,
    pub origin_ip6: std::net::Ipv6Addr,
    pub user: String,
    pub pass: String,
    pub proc: Option<Proc>,
    /// How it was started (to start it again after a test killed it).
    start: (String, PathBuf),
}

impl ProxyInfo {
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Tinyproxy => format!("http://{}:{}", self.listen, self.port),
            _ => format!("socks5://{}:{}", self.listen, self.port),
        }
    }
}

/// The test bed. Addresses: 10.B.(T*16 + L).x where B is per run and T per
/// topology; L: 0 host-origin, 1.. host-proxyN, 8.. proxyN-origin.
pub struct Topology {
    pub prefix: String,
    pub dir: PathBuf,
    pub origin_ns: String,
    /// The host's own address towards the origin: what a leak looks like.
    pub host_addr: Ipv4Addr,
    /// The origin's address on the host link.
    pub origin_addr: Ipv4Addr,
    pub host_link: String,
    pub proxies: Vec<ProxyInfo>,
    procs: Vec<Proc>,
    namespaces: Vec<String>,
    links: Vec<String>,
    b: u8,
    t: u8,
}

pub const HOSTNAME: &str = "api.exchange.test";
/// More names the proxies resolve to the origin (per-destination rules).
pub const EXTRA_NAMES: &str = "api.exchange-a.test blocked.exchange-a.test";
/// Resolves to the origin's second address (`Topology::origin_addr2`).
pub const NAME_B: &str = "api.exchange-b.test";

impl Topology {
    /// Origin namespace with its servers, and one namespace per proxy kind.
    pub fn new(kinds: &[Kind]) -> Topology {
        for tool in ["microsocks", "danted", "tinyproxy", "dnsmasq", "dig", "curl"] {
            assert!(sh(&format!("command -v {tool}")).status.success(), "{tool} is not installed (see .ci/run)");
        }
        let prefix = unique("nt");
        let b = 100 + (std::process::id() % 100) as u8;
        let t = (SEQ.fetch_add(1, Ordering::SeqCst) % 15) as u8;
        let dir = std::env::temp_dir().join(format!("nsproxy-test-{prefix}"));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        must(&format!("chmod 755 {}", dir.display()));
        let mut topo = Topology {
            origin_ns: format!("{prefix}-or"),
            host_addr: Ipv4Addr::new(10, b, t * 16, 1),
            origin_addr: Ipv4Addr::new(10, b, t * 16, 2),
            host_link: format!("{prefix}h0"),
            prefix,
            dir,
            proxies: Vec::new(),
            procs: Vec::new(),
            namespaces: Vec::new(),
            links: Vec::new(),
            b,
            t,
        };
        topo.build_origin();
        for (i, k) in kinds.iter().enumerate() {
            topo.add_proxy(*k, i as u8 + 1);
        }
        topo
    }

    fn net(&self, l: u8, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.b, self.t * 16 + l, host)
    }

    fn build_origin(&mut self) {
        let (p, o) = (self.prefix.clone(), self.origin_ns.clone());
        must(&format!("ip netns add {o}"));
        self.namespaces.push(o.clone());
        must(&format!("ip link add {p}h0 type veth peer name eth0 netns {o}"));
        self.links.push(format!("{p}h0"));
        // No IPv6 chatter on the host link: its packet counter is a leak detector.
        let _ = sh(&format!("sysctl -qw net.ipv6.conf.{p}h0.disable_ipv6=1"));
        must(&format!("ip addr add {}/24 dev {p}h0 && ip link set {p}h0 up", self.host_addr));
        must(&format!(
            "ip -n {o} addr add {}/24 dev eth0 && ip -n {o} link set eth0 up && ip -n {o} link set lo up",
            self.origin_addr
        ));
        must(&format!("ip -n {o} addr add {}/32 dev lo", self.origin_addr2()));
        // The origin's servers, on every address of the origin.
        let py = "/usr/bin/python3";
        let d = self.dir.display().to_string();
        std::fs::write(self.dir.join("origin.py"), ORIGIN_PY).expect("write origin.py");
        let log = self.dir.join("origin.log");
        let srv = spawn_in(&o, "origin", &format!("{py} {d}/origin.py {d}/origin-clients.log"), &log);
        self.procs.push(srv);
        // dnsmasq with a query log: answers *.test, never forwards.
        let dns_log = self.dir.join("dnsmasq.log");
        let dm = spawn_in(
            &o,
            "dnsmasq",
            &format!(
                "dnsmasq --no-daemon --no-resolv --no-hosts --log-queries --log-facility={} --pid-file={d}/dnsmasq.pid --local-ttl=60 --address=/exchange-b.test/{} --address=/test/{}",
                dns_log.display(),
                self.origin_addr2(),
                self.origin_addr
            ),
            &self.dir.join("dnsmasq.out"),
        );
        self.procs.push(dm);
        for port in [80u16, 8081, 8082, 8443] {
            wait_port(&o, self.origin_addr, port);
        }
    }

    fn add_proxy(&mut self, kind: Kind, i: u8) {
        let (p, o) = (self.prefix.clone(), self.origin_ns.clone());
        let ns = format!("{p}-p{i}");
        must(&format!("ip netns add {ns}"));
        self.namespaces.push(ns.clone());
        let (listen, host_side) = (self.net(i, 2), self.net(i, 1));
        let (egress, origin_side) = (self.net(8 + i, 1), self.net(8 + i, 2));
        must(&format!("ip link add {p}h{i} type veth peer name eth0 netns {ns}"));
        self.links.push(format!("{p}h{i}"));
        must(&format!("ip addr add {host_side}/24 dev {p}h{i} && ip link set {p}h{i} up"));
        must(&format!(
            "ip -n {ns} addr add {listen}/24 dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up"
        ));
        must(&format!("ip -n {ns} link add eth1 type veth peer name eth{i} netns {o}"));
        must(&format!("ip -n {ns} addr add {egress}/24 dev eth1 && ip -n {ns} link set eth1 up"));
        must(&format!("ip -n {o} addr add {origin_side}/24 dev eth{i} && ip -n {o} link set eth{i} up"));
        let v6 = |h: u16| std::net::Ipv6Addr::new(0xfd00, self.b as u16, (self.t * 16 + 8 + i) as u16, 0, 0, 0, 0, h);
        let (egress6, origin_ip6) = (v6(1), v6(2));
        must(&format!("ip -n {ns} -6 addr add {egress6}/64 dev eth1 nodad"));
        must(&format!("ip -n {o} -6 addr add {origin_ip6}/64 dev eth{i} nodad"));
        // The origin's main address (its resolver) is reachable from the proxy too.
        must(&format!("ip -n {ns} route add {}/32 via {origin_side}", self.origin_addr));
        // The proxy resolves test names to the origin, via /etc/netns hosts.
        let etc = PathBuf::from("/etc/netns").join(&ns);
        std::fs::create_dir_all(&etc).expect("etc netns");
        std::fs::write(
            etc.join("hosts"),
            format!(
                "127.0.0.1 localhost\n{origin_side} {HOSTNAME} ws.exchange.test {EXTRA_NAMES}\n{} {NAME_B}\n",
                self.origin_addr2()
            ),
        )
        .expect("hosts");
        // The origin's second address (exchange-b names in DNS mode tcp).
        must(&format!("ip -n {ns} route add {}/32 via {origin_side}", self.origin_addr2()));
        let d = self.dir.display().to_string();
        // Every proxy password is a canary: Account sweeps logs, status
        // output and /proc for it (see `Account::assert_no_canary`).
        let (user, pass) = (format!("u{i}x"), format!("canary{}x{i}", self.prefix));
        let log = self.dir.join(format!("proxy{i}.log"));
        let (port, proc, cmd) = match kind {
            Kind::Microsocks => {
                let c = format!("microsocks -i {listen} -p 1080 -b {egress} -u {user} -P {pass}");
                (1080, spawn_in(&ns, "microsocks", &c, &log), c)
            }
            Kind::Dante => {
                // dante authenticates against system accounts.
                ensure_user(&user);
                // dante checks the password with crypt(3) against
                // /etc/shadow on every connection; Debian's default
                // yescrypt costs ~27 ms of CPU per check, which capped
                // every client at ~50 connections/s and hid everything
                // else in the connection figures. MD5-crypt costs ~0.1 ms.
                // These are throwaway test users with canary passwords.
                must(&format!("echo '{user}:{pass}' | chpasswd -c MD5"));
                let conf = format!(
                    "logoutput: stderr\ninternal: {listen} port = 1080\nexternal: eth1\nsocksmethod: username\ntimeout.io: 0\nuser.privileged: root\nuser.unprivileged: nobody\nclient pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}\nsocks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect }}\nsocks pass {{ from: 0.0.0.0/0 to: ::/0 command: connect }}\n"
                );
                std::fs::write(self.dir.join(format!("danted{i}.conf")), conf).expect("dante conf");
                let c = format!("danted -f {d}/danted{i}.conf");
                (1080, spawn_in(&ns, "danted", &c, &log), c)
            }
            Kind::Tinyproxy => {
                let conf = format!(
                    "Port 8888\nListen {listen}\nBind {egress}\nBasicAuth {user} {pass}\nMaxClients 1000\nLogLevel Info\n"
                );
                std::fs::write(self.dir.join(format!("tinyproxy{i}.conf")), conf).expect("tinyproxy conf");
                let c = format!("tinyproxy -d -c {d}/tinyproxy{i}.conf");
                (8888, spawn_in(&ns, "tinyproxy", &c, &log), c)
            }
        };
        wait_port(&ns, listen, port);
        self.proxies.push(ProxyInfo {
            kind,
            ns,
            listen,
            port,
            egress,
            origin_ip: origin_side,
            egress6,
            origin_ip6,
            user,
            pass,
            proc: Some(proc),
            start: (cmd, log),
        });
    }

    /// The origin's second address, on its loopback: test names under
    /// exchange-b.test resolve to it in the origin's dnsmasq.
    pub fn origin_addr2(&self) -> Ipv4Addr {
        self.net(15, 1)
    }

    /// Stops proxy `i` (by PID).
    pub fn stop_proxy(&mut self, i: usize) {
        if let Some(mut p) = self.proxies[i].proc.take() {
            p.stop();
        }
    }

    /// Starts proxy `i` again, as it was first started.
    pub fn start_proxy(&mut self, i: usize) {
        let p = &self.proxies[i];
        let (cmd, log) = p.start.clone();
        let proc = spawn_in(&p.ns, "proxy", &cmd, &log);
        let (ns, listen, port) = (p.ns.clone(), p.listen, p.port);
        self.proxies[i].proc = Some(proc);
        wait_port(&ns, listen, port);
    }

    /// Silently drops every packet the host sends to proxy `i`, or stops
    /// doing so: the proxy's neighbour entry on the host link is pinned to
    /// a MAC address nobody has, so frames reach its link and are thrown
    /// away there (no RST, no ICMP: a proxy behind a black hole).
    pub fn drop_packets_to_proxy(&self, i: usize, drop: bool) {
        let dev = format!("{}h{}", self.prefix, i + 1);
        let listen = self.proxies[i].listen;
        if drop {
            must(&format!("ip neigh replace {listen} lladdr 02:00:5e:00:53:01 dev {dev} nud permanent"));
        } else {
            must(&format!("ip neigh del {listen} dev {dev}"));
        }
    }

    /// Client addresses the origin's servers have seen, one per connection.
    pub fn origin_clients(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("origin-clients.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.to_string())
            .collect()
    }

    /// Whether any connection reached the origin from the host's address.
    pub fn leaked(&self) -> bool {
        self.origin_clients().iter().any(|l| l.starts_with(&self.host_addr.to_string()))
    }

    /// Packets the host sent on its link to the origin (kernel counter).
    pub fn host_tx_packets(&self) -> u64 {
        std::fs::read_to_string(format!("/sys/class/net/{}/statistics/tx_packets", self.host_link))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Connections the origin saw from the host's own address.
    pub fn host_hits(&self) -> usize {
        let h = self.host_addr.to_string();
        self.origin_clients().iter().filter(|l| **l == h).count()
    }

    pub fn dns_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }

    /// A "LAN" host: a namespace on a link of the host's own (10.B.x.2),
    /// reachable from the host but by no proxy. Returns its namespace and
    /// address; anything that arrives there from an account is a leak.
    pub fn add_lan(&mut self) -> (String, Ipv4Addr) {
        let (p, l) = (self.prefix.clone(), 6u8);
        let ns = format!("{p}-lan");
        must(&format!("ip netns add {ns}"));
        self.namespaces.push(ns.clone());
        let (host_side, ip) = (self.net(l, 1), self.net(l, 2));
        must(&format!("ip link add {p}hl type veth peer name eth0 netns {ns}"));
        self.links.push(format!("{p}hl"));
        let _ = sh(&format!("sysctl -qw net.ipv6.conf.{p}hl.disable_ipv6=1"));
        must(&format!("ip addr add {host_side}/24 dev {p}hl && ip link set {p}hl up"));
        must(&format!(
            "ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up"
        ));
        must(&format!("ip -n {ns} route add default via {host_side}"));
        (ns, ip)
    }

    /// The fleet-mode proxy service (`SERVICE_PY`) in a namespace of its
    /// own, reached from the host: `url` without client certificates,
    /// `mtls_url` requiring one signed by the test CA.
    pub fn add_service(&mut self) -> Service {
        let (p, l) = (self.prefix.clone(), 7u8);
        let ns = format!("{p}-svc");
        must(&format!("ip netns add {ns}"));
        self.namespaces.push(ns.clone());
        let (host_side, ip) = (self.net(l, 1), self.net(l, 2));
        must(&format!("ip link add {p}hs type veth peer name eth0 netns {ns}"));
        self.links.push(format!("{p}hs"));
        must(&format!("ip addr add {host_side}/24 dev {p}hs && ip link set {p}hs up"));
        must(&format!(
            "ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up"
        ));
        let dir = self.dir.join("service");
        std::fs::create_dir_all(&dir).expect("service dir");
        let d = dir.display();
        // A CA, the service's certificate (for its IP) and a client certificate.
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        must(&format!(
            "cd {d} && openssl req -x509 {ec} -days 1 -subj /CN=nsproxy-test-ca -keyout ca.key -out ca.pem 2>/dev/null \
             && openssl req {ec} -subj /CN=alloc -keyout srv.key -out srv.csr 2>/dev/null \
             && printf 'subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n' > srv.ext \
             && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile srv.ext -out srv.pem 2>/dev/null \
             && openssl req {ec} -subj /CN=nsproxy-client -keyout client.key -out client.csr 2>/dev/null \
             && printf 'extendedKeyUsage=clientAuth\n' > client.ext \
             && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile client.ext -out client.pem 2>/dev/null \
             && chmod 600 client.key && echo ok > mode"
        ));
        std::fs::write(dir.join("service.py"), SERVICE_PY).expect("service.py");
        let mut s = Service {
            ns,
            ip,
            url: format!("https://{ip}:8443"),
            mtls_url: format!("https://{ip}:8444"),
            dir,
            procs: Vec::new(),
        };
        s.start();
        s
    }
}

/// A packet capture (tcpdump on every interface of a namespace).
pub struct Capture {
    proc: Proc,
    file: PathBuf,
}

impl Capture {
    pub fn start(ns: &str, file: PathBuf) -> Capture {
        let log = file.with_extension("log");
        let proc = spawn_in(ns, "tcpdump", &format!("tcpdump -i any -nn -U -w {}", file.display()), &log);
        wait_until("tcpdump listening", Duration::from_secs(10), || {
            std::fs::read_to_string(&log).unwrap_or_default().contains("listening on")
        });
        Capture { proc, file }
    }

    /// Stops it and returns every IPv4/IPv6 packet as `(source address, line)`.
    pub fn stop(mut self) -> Vec<(String, String)> {
        std::thread::sleep(Duration::from_millis(300));
        self.proc.stop();
        let text = out(&sh(&format!("tcpdump -nn -r {} 2>/dev/null", self.file.display())));
        text.lines()
            .filter_map(|l| {
                let rest = l.split_once(" IP ").or_else(|| l.split_once(" IP6 "))?.1;
                let src = rest.split_whitespace().next()?;
                // a.b.c.d.port or a.b.c.d (ICMP); IPv6 likewise with ':'.
                let addr = if src.contains(':') {
                    src.rsplit_once('.').map(|(a, _)| a).unwrap_or(src)
                } else {
                    let parts: Vec<&str> = src.trim_end_matches(':').split('.').collect();
                    if parts.len() >= 4 { return Some((parts[..4].join("."), l.to_string())) } else { src }
                };
                Some((addr.trim_end_matches(':').to_string(), l.to_string()))
            })
            .collect()
    }
}

/// The fleet-mode proxy service of the tests (see `SERVICE_PY`).
pub struct Service {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub url: String,
    pub mtls_url: String,
    pub dir: PathBuf,
    procs: Vec<Proc>,
}

impl Service {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Starts both listeners (8443, and 8444 with client certificates).
    pub fn start(&mut self) {
        let d = self.dir.display().to_string();
        for (port, client_ca) in [(8443u16, "-".to_string()), (8444, format!("{d}/ca.pem"))] {
            let cmd =
                format!("/usr/bin/python3 {d}/service.py {} {port} {d}/srv.pem {d}/srv.key {client_ca} {d}", self.ip);
            self.procs.push(spawn_in(&self.ns, "service", &cmd, &self.dir.join(format!("service{port}.log"))));
            wait_port(&self.ns, self.ip, port);
        }
    }

    /// Stops both listeners (by PID): the service is down.
    pub fn stop(&mut self) {
        for p in self.procs.iter_mut() {
            p.stop();
        }
        self.procs.clear();
    }

    /// `ok`, `slow`, `garbage`, `500`.
    pub fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.join("mode"), mode).expect("mode");
    }

    /// What the service accepts: `bearer:TOKEN`, `apikey:KEY` or `mtls`.
    pub fn expect_auth(&self, auth: &str) {
        std::fs::write(self.dir.join("expect"), auth).expect("expect");
    }

    /// The allocation it hands out.
    pub fn set_answer(&self, answer: &serde_json::Value) {
        std::fs::write(self.dir.join("alloc.json"), answer.to_string()).expect("alloc");
    }

    /// Every request it received, in order.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn allocations(&self) -> Vec<serde_json::Value> {
        self.requests().into_iter().filter(|r| r["path"] == "/api/v1/proxy/request").collect()
    }

    pub fn feedback(&self) -> Vec<serde_json::Value> {
        self.requests().into_iter().filter(|r| r["path"] == "/api/v1/proxy/feedback").collect()
    }
}

/// The proxy service: HTTPS, records every request (path, auth headers,
/// whether a client certificate was shown, JSON body) to requests.jsonl;
/// answers according to the files `mode`, `expect` and `alloc.json` in its
/// directory, read per request.
pub const SERVICE_PY: &str = r#"
import json, ssl, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
addr, port, cert, key, client_ca, d = sys.argv[1:7]
LOG = open(d + "/requests.jsonl", "a", buffering=1)
def read(name, default=""):
    try:
        return open(d + "/" + name).read().strip()
    except OSError:
        return default
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def reply(self, code, body):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        try:
            body = json.loads(raw)
        except Exception:
            body = None
        mode, expect = read("mode", "ok"), read("expect")
        cert_seen = bool(self.connection.getpeercert())
        LOG.write(json.dumps({"path": self.path, "port": int(port), "auth": self.headers.get("Authorization"),
                              "api_key": self.headers.get("X-API-Key"), "client_cert": cert_seen,
                              "body": body, "mode": mode, "t": time.time()}) + "\n")
        if expect.startswith("bearer:"):
            ok = self.headers.get("Authorization") == "Bearer " + expect[7:]
        elif expect.startswith("apikey:"):
            ok = self.headers.get("X-API-Key") == expect[7:]
        else:
            ok = cert_seen
        if not ok:
            return self.reply(401, b'{"error":"unauthorized"}')
        if self.path.endswith("/proxy/feedback"):
            return self.reply(200, b"{}")
        if mode == "slow":
            time.sleep(20)
        if mode == "garbage":
            return self.reply(200, b"<html>not json at all")
        if mode == "500":
            return self.reply(500, b'{"error":"down"}')
        self.reply(200, read("alloc.json", "{}").encode())
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
if client_ca != "-":
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(client_ca)
srv = ThreadingHTTPServer((addr, int(port)), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

impl Drop for Topology {
    fn drop(&mut self) {
        for p in self.proxies.iter_mut() {
            if let Some(mut pr) = p.proc.take() {
                pr.stop();
            }
        }
        for p in self.procs.iter_mut() {
            p.stop();
        }
        for l in &self.links {
            let _ = sh(&format!("ip link del {l} 2>/dev/null"));
        }
        for ns in &self.namespaces {
            let _ = sh(&format!("ip netns pids {ns} 2>/dev/null | xargs -r kill -9"));
            let _ = sh(&format!("ip netns del {ns} 2>/dev/null"));
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
        }
        if std::env::var_os("NSP_TEST_KEEP_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// An nsproxy account for a test; `down --kill` on drop. Its daemons log at
/// trace level, and every secret written through `secret` (or registered
/// with `canary`) is looked for in the daemon's log and run files, `status
/// --json`, every nsproxy command's output, and `/proc/*/cmdline` and
/// `/proc/*/environ` of nsproxy and the account's programs: after `up` and
/// before `down`. One hit fails the test.
pub struct Account {
    pub name: String,
    pub namespace: String,
    pub policy: PathBuf,
    pub dir: PathBuf,
    canaries: Mutex<Vec<String>>,
}

impl Account {
    /// Writes a policy for this account. `body` is the YAML of the account
    /// after its name (indented 4 spaces); `{secrets}` expands to the dir.
    pub fn new(tag: &str, body: &str) -> Account {
        let name = unique(tag);
        let dir = std::env::temp_dir().join(format!("nsproxy-acct-{name}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let policy = dir.join("policy.yaml");
        let body = body.replace("{secrets}", &dir.display().to_string());
        std::fs::write(&policy, format!("accounts:\n  - name: {name}\n{body}")).expect("policy");
        Account { namespace: format!("nsp-{name}"), name, policy, dir, canaries: Mutex::new(Vec::new()) }
    }

    /// An account using `proxy` (with its credentials in a 0600 file).
    pub fn for_proxy(tag: &str, proxy: &ProxyInfo, extra: &str) -> Account {
        let a = Account::new(
            tag,
            &format!(
                "    exec:\n      users: [{TEST_USER}]\n    proxies:\n      - label: {}\n        url: {}\n        username: {}\n        password_file: {{secrets}}/pw\n{extra}",
                match proxy.kind {
                    Kind::Microsocks => "ms",
                    Kind::Dante => "dante",
                    Kind::Tinyproxy => "tiny",
                },
                proxy.url(),
                proxy.user
            ),
        );
        a.secret("pw", &proxy.pass);
        a
    }

    /// A value that must never show up anywhere nsproxy writes.
    pub fn canary(&self, value: &str) {
        self.canaries.lock().unwrap_or_else(|e| e.into_inner()).push(value.to_string());
    }

    /// Fails the test if a canary shows up in what nsproxy shows or leaves.
    pub fn assert_no_canary(&self, when: &str) {
        let canaries = self.canaries.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if canaries.is_empty() {
            return;
        }
        let mut places: Vec<(String, Vec<u8>)> = Vec::new();
        for root in ["/run/nsproxy", "/var/lib/nsproxy"] {
            let dir = Path::new(root).join(&self.name);
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    places.push((e.path().display().to_string(), std::fs::read(e.path()).unwrap_or_default()));
                }
            }
        }
        let o = Command::new(BIN).args(["status", &self.name, "--json"]).output().expect("status");
        places.push(("status --json".into(), [o.stdout, o.stderr].concat()));
        let ns_ino = std::fs::metadata(format!("/run/netns/{}", self.namespace))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let bin = std::fs::canonicalize(BIN).unwrap_or_default();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap_or_default();
            let in_ns = ns_ino.is_some_and(|i| net.to_string_lossy() == format!("net:[{i}]"));
            if exe == bin || in_ns {
                for f in ["cmdline", "environ"] {
                    let b = std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
                    places.push((format!("/proc/{pid}/{f} ({})", exe.display()), b));
                }
            }
        }
        for (place, bytes) in &places {
            for c in &canaries {
                if bytes.windows(c.len()).any(|w| w == c.as_bytes()) {
                    panic!("SECRET LEAK ({when}): the canary secret of account {} is in {place}", self.name);
                }
            }
        }
        println!("canary sweep ({when}): {} places clean for account {}", places.len(), self.name);
    }

    fn check_output(&self, o: &Output) {
        let all = [&o.stdout[..], &o.stderr[..]].concat();
        for c in self.canaries.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if all.windows(c.len()).any(|w| w == c.as_bytes()) && !std::thread::panicking() {
                panic!("SECRET LEAK: the canary secret of account {} is in nsproxy's output", self.name);
            }
        }
    }

    pub fn secret(&self, file: &str, value: &str) {
        self.canary(value);
        let p = self.dir.join(file);
        let mut f = std::fs::File::create(&p).expect("secret");
        writeln!(f, "{value}").expect("write secret");
        must(&format!("chmod 600 {}", p.display()));
    }

    /// Runs nsproxy with this account's policy; daemons started by `up`
    /// log at trace level.
    pub fn cmd(&self, args: &[&str]) -> Output {
        self.cmd_env(args, &[])
    }

    pub fn cmd_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(BIN);
        c.arg("--policies").arg(&self.policy);
        if args.first() == Some(&"up") {
            c.args(["--log-level", "trace"]);
        }
        let o = c.args(args).envs(env.iter().copied()).output().expect("run nsproxy");
        self.check_output(&o);
        o
    }

    pub fn up(&self) {
        let o = self.cmd(&["up", &self.name]);
        assert!(o.status.success(), "up {} failed: {}{}", self.name, out(&o), err(&o));
        self.assert_no_canary("after up");
    }

    /// `up` with the daemon logging at info, as in production (benchmarks:
    /// trace logging writes a line per packet).
    pub fn up_quiet(&self) {
        let o = self.cmd(&["--log-level", "info", "up", &self.name]);
        assert!(o.status.success(), "up {} failed: {}{}", self.name, out(&o), err(&o));
    }

    pub fn down(&self) -> Output {
        self.cmd(&["down", &self.name, "--kill"])
    }

    /// Runs `script` with sh inside the account as the test user.
    pub fn run(&self, script: &str) -> Output {
        let o = Command::new(BIN)
            .arg("--policies")
            .arg(&self.policy)
            .args(["exec", &self.name, "--user", TEST_USER, "--", "sh", "-c", script])
            .output()
            .expect("run nsproxy exec");
        self.check_output(&o);
        o
    }

    /// Runs a Python script (as a file, so quoting is no issue) inside.
    pub fn python(&self, script: &str, args: &str) -> Output {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.join(format!("script{n}.py"));
        std::fs::write(&path, script).expect("script");
        must(&format!("chmod 755 {} && chmod 644 {}", self.dir.display(), path.display()));
        self.run(&format!("/usr/bin/python3 {} {args}", path.display()))
    }

    /// Starts a Python script inside (as the test user) with its stdout
    /// piped, without waiting for it.
    pub fn python_spawn(&self, script: &str, args: &[&str]) -> Child {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.join(format!("script{n}.py"));
        std::fs::write(&path, script).expect("script");
        must(&format!("chmod 755 {} && chmod 644 {}", self.dir.display(), path.display()));
        Command::new(BIN)
            .arg("--policies")
            .arg(&self.policy)
            .args(["exec", &self.name, "--user", TEST_USER, "--", "/usr/bin/python3"])
            .arg(&path)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python inside the account")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(format!("/run/nsproxy/{}/daemon.log", self.name)).unwrap_or_default()
    }

    pub fn stats(&self) -> serde_json::Value {
        std::fs::read_to_string(format!("/run/nsproxy/{}/stats.json", self.name))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(format!("/run/nsproxy/{}/daemon.pid", self.name)).ok()?.trim().parse().ok()
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.assert_no_canary("before down");
        } else {
            // A failed test says why from the daemon's side too (in the VM
            // and in CI the log is gone once the account is down).
            let log = self.log();
            let bad: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
            eprintln!("daemon log of {} at the failure: {} warning/error line(s), the last 30:", self.name, bad.len());
            for l in bad.iter().skip(bad.len().saturating_sub(30)) {
                eprintln!("  {l}");
            }
        }
        let _ = self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(format!("/var/lib/nsproxy/{}", self.name));
    }
}

/// The origin: an HTTP server on 80 that answers with the client's address
/// (and serves /bytes/N and accepts POST /sha256), a TLS twin on 8443, a
/// WebSocket echo server on 8081 and a raw TCP echo on 8082. Every
/// connection's client address is appended to the log named in argv[1].
pub const ORIGIN_PY: &str = r#"
import asyncio, hashlib, os, ssl, subprocess, sys, tempfile
LOG = open(sys.argv[1], "a", buffering=1)
def seen(w):
    LOG.write(w.get_extra_info("peername")[0] + "\n")

async def http(r, w):
    seen(w)
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n")[0].decode()
            method, path = line.split(" ")[0], line.split(" ")[1]
            hdrs = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in head.decode().split("\r\n")[1:] if ":" in l)}
            if method == "POST":
                n = int(hdrs.get("content-length", "0")); h = hashlib.sha256(); left = n
                while left:
                    chunk = await r.read(min(left, 1 << 16))
                    if not chunk: return
                    h.update(chunk); left -= len(chunk)
                body = h.hexdigest().encode()
            elif path.startswith("/bytes/"):
                n = int(path.split("/")[2]); seed = hashlib.sha256(str(n).encode()).digest()
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
                block = (seed * 2048)[:65536]; left = n
                while left:
                    c = block[:min(left, len(block))]; w.write(c); left -= len(c); await w.drain()
                continue
            else:
                body = (w.get_extra_info("peername")[0] + "\n").encode()
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await w.drain()
            if hdrs.get("connection", "").lower() == "close":
                break
    except Exception:
        pass
    finally:
        w.close()

async def echo(r, w):
    seen(w)
    try:
        while True:
            d = await r.read(65536)
            if not d: break
            w.write(d); await w.drain()
        w.write_eof()
    except Exception:
        pass
    finally:
        w.close()

async def main():
    import websockets
    async def ws(conn, *a):
        LOG.write(conn.remote_address[0] + "\n")
        async for m in conn:
            await conn.send(conn.remote_address[0] if m == "ip?" else m)
    d = tempfile.mkdtemp()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=api.exchange.test",
                    "-addext", "subjectAltName=DNS:api.exchange.test", "-keyout", d + "/k.pem", "-out", d + "/c.pem"],
                   check=True, capture_output=True)
    os.system("cp %s/c.pem %s" % (d, os.path.join(os.path.dirname(sys.argv[1]), "origin-ca.pem")))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH); ctx.load_cert_chain(d + "/c.pem", d + "/k.pem")
    await asyncio.start_server(http, None, 80, backlog=1024)
    await asyncio.start_server(http, "0.0.0.0", 8443, ssl=ctx, backlog=1024)
    await asyncio.start_server(echo, "0.0.0.0", 8082, backlog=1024)
    # No keep-alive pings: an idle connection is really silent.
    await websockets.serve(ws, "0.0.0.0", 8081, ping_interval=None)
    await asyncio.Future()
asyncio.run(main())
"#;
