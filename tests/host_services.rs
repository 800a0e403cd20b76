//! `host_services`: a TCP service on the host's loopback reached from inside
//! by name, without the proxy; nothing else of the host is reachable (an
//! unlisted host port, another address of the range, the port of a listed
//! service on another address). Real listeners on the host's 127.0.0.1.

mod common;

use common::*;

/// A TCP server on 127.0.0.1:PORT in the host namespace: answers TAG and
/// logs every peer to LOG.
const SERVER_PY: &str = r#"
import socket, sys, threading
port, tag, log = int(sys.argv[1]), sys.argv[2].encode(), open(sys.argv[3], "a", buffering=1)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(64)
print("listening", flush=True)
while True:
    c, a = s.accept(); log.write(a[0] + "\n"); c.sendall(tag); c.close()
"#;

/// Connects to HOST:PORT inside and prints what it got, or the error.
const ASK_PY: &str = r#"
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    print("got", c.recv(100).decode())
except Exception as e:
    print("error", type(e).__name__)
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

struct Server {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Server {
    fn start(dir: &std::path::Path, port: u16, tag: &str) -> Server {
        let script = dir.join("hostsvc.py");
        std::fs::write(&script, SERVER_PY).expect("script");
        let log = dir.join(format!("hostsvc-{port}.log"));
        let child = start_listening(
            std::process::Command::new("/usr/bin/python3")
                .arg(&script)
                .args([port.to_string(), tag.to_string()])
                .arg(&log),
            "the host service",
        );
        Server { child, log }
    }
    fn peers(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_listed_host_service_is_reached_by_name_and_nothing_else_of_the_host() {
    if !root_or_skip("host_services") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks]);
    let (p1, p2) = (free_port(), free_port());
    let listed = Server::start(&topo.dir, p1, "listed");
    let unlisted = Server::start(&topo.dir, p2, "unlisted");
    for (tag, dns) in
        [("hs", String::new()), ("ht", format!("    dns: {{mode: tcp, resolver: {}}}\n", topo.origin_addr))]
    {
        let a = Account::for_proxy(
            tag,
            &topo.proxies[0],
            &format!("    host_services:\n      - {{name: db, listen: \"127.0.0.1:{p1}\"}}\n{dns}"),
        );
        a.up();
        let ask = |host: &str, port: u16| out(&a.python(ASK_PY, &format!("{host} {port}"))).trim().to_string();
        let resolved = out(&a.run("getent hosts db.host.nsproxy")).trim().to_string();
        println!("{tag}: db.host.nsproxy -> {resolved}");
        assert!(resolved.starts_with("198.18.0.16 "), "{tag}: {resolved}");
        assert_eq!(ask("db.host.nsproxy", p1), "got listed", "{tag}: the listed service by name");
        assert_eq!(ask("198.18.0.16", p1), "got listed", "{tag}: and by its address");
        for (host, port, what) in [
            ("db.host.nsproxy".to_string(), p2, "an unlisted host port"),
            ("198.18.0.16".to_string(), p2, "an unlisted port on the service's address"),
            ("198.18.0.17".to_string(), p1, "another address of the range"),
            ("127.0.0.1".to_string(), p1, "the namespace's own loopback"),
            (topo.host_addr.to_string(), p1, "the host's address"),
        ] {
            let got = ask(&host, port);
            println!("{tag}: {what} ({host}:{port}): {got}");
            assert!(got.starts_with("error"), "{tag}: {what} must be refused: {got}");
        }
        let nx = a.run("getent hosts cache.host.nsproxy");
        assert!(!nx.status.success(), "{tag}: an unlisted name does not resolve");
        // Everything else still goes through the proxy.
        assert_eq!(
            out(&a.run(&format!("curl -sS -m 5 http://{HOSTNAME}/"))).trim(),
            topo.proxies[0].egress.to_string()
        );
        assert!(a.down().status.success());
    }
    assert!(unlisted.peers().is_empty(), "the unlisted port was reached: {:?}", unlisted.peers());
    assert!(!listed.peers().is_empty() && listed.peers().iter().all(|p| p == "127.0.0.1"), "{:?}", listed.peers());
    assert!(!topo.leaked());
}
