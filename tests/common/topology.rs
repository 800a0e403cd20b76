//! The network of a test: an origin namespace that stands for the
//! internet, one namespace per proxy (microsocks, dante, tinyproxy).
#![allow(dead_code)]

use super::*;

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
        note(Made::Dir(dir.clone()));
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

    /// Noted before it is made: a run stopped in between removes it too.
    fn own_namespace(&mut self, ns: &str) {
        note(Made::Namespace(ns.to_string()));
        self.namespaces.push(ns.to_string());
    }

    fn own_link(&mut self, link: String) {
        note(Made::Link(link.clone()));
        self.links.push(link);
    }

    fn net(&self, l: u8, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.b, self.t * 16 + l, host)
    }

    fn build_origin(&mut self) {
        let (p, o) = (self.prefix.clone(), self.origin_ns.clone());
        self.own_namespace(&o);
        must(&format!("ip netns add {o}"));
        self.own_link(format!("{p}h0"));
        must(&format!("ip link add {p}h0 type veth peer name eth0 netns {o}"));
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
        self.own_namespace(&ns);
        must(&format!("ip netns add {ns}"));
        let (listen, host_side) = (self.net(i, 2), self.net(i, 1));
        let (egress, origin_side) = (self.net(8 + i, 1), self.net(8 + i, 2));
        self.own_link(format!("{p}h{i}"));
        must(&format!("ip link add {p}h{i} type veth peer name eth0 netns {ns}"));
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
                    "logoutput: stderr\ninternal: {listen} port = 1080\nexternal: eth1\nsocksmethod: username\ntimeout.io: 0\nuser.privileged: root\nuser.unprivileged: nobody\nclient pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}\nsocks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect udpassociate }}\nsocks pass {{ from: 0.0.0.0/0 to: ::/0 command: connect }}\nsocks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 command: udpreply }}\n"
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
    /// Source addresses the origin's UDP echo (port 8083) saw, one per new
    /// sender.
    pub fn udp_clients(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("udp-clients.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

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
        self.own_namespace(&ns);
        must(&format!("ip netns add {ns}"));
        let (host_side, ip) = (self.net(l, 1), self.net(l, 2));
        self.own_link(format!("{p}hl"));
        must(&format!("ip link add {p}hl type veth peer name eth0 netns {ns}"));
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
        self.own_namespace(&ns);
        must(&format!("ip netns add {ns}"));
        let (host_side, ip) = (self.net(l, 1), self.net(l, 2));
        self.own_link(format!("{p}hs"));
        must(&format!("ip link add {p}hs type veth peer name eth0 netns {ns}"));
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
        let made = self
            .links
            .drain(..)
            .map(Made::Link)
            .chain(self.namespaces.drain(..).map(Made::Namespace))
            .chain((std::env::var_os("NSP_TEST_KEEP_DIR").is_none()).then(|| Made::Dir(self.dir.clone())));
        for m in made {
            remove(&m);
        }
        forget(&Made::Dir(self.dir.clone()));
    }
}
