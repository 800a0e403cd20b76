//! `https://` proxies: HTTP CONNECT inside TLS with the proxy (a real
//! stunnel in front of a real tinyproxy with Basic authentication). Flows,
//! health and egress checks go through it; the proxy's certificate is
//! checked against the system's roots plus `ca_file`, for the host of the
//! URL; the credentials and the CONNECT line never cross the host's link in
//! clear (a capture of the link, with the plain proxy as positive control).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// A CA, a certificate for `ip` and one for another address (10.0.0.99:
/// only a name in a certificate, nothing is sent there).
fn certificates(dir: &Path, ip: std::net::Ipv4Addr) {
    let d = dir.display();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    must(&format!(
        "cd {d} && openssl req -x509 {ec} -days 1 -subj /CN=nsproxy-test-proxy-ca -keyout ca.key -out ca.pem 2>/dev/null \
         && for n in good:{ip} wrong:10.0.0.99; do c=${{n%%:*}}; a=${{n#*:}}; \
              openssl req {ec} -subj /CN=proxy -keyout $c.key -out $c.csr 2>/dev/null \
              && printf 'subjectAltName=IP:%s\\nextendedKeyUsage=serverAuth\\n' $a > $c.ext \
              && openssl x509 -req -in $c.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile $c.ext -out $c.pem 2>/dev/null \
              || exit 1; done \
         && chmod 644 *.pem"
    ));
}

/// stunnel in the proxy's namespace: TLS on `port`, to tinyproxy.
fn stunnel(topo: &Topology, cert: &str, port: u16) -> Proc {
    let p = &topo.proxies[0];
    let d = topo.dir.display();
    let conf = format!(
        "foreground = yes\npid =\n[proxy]\naccept = {l}:{port}\nconnect = {l}:{tp}\ncert = {d}/{cert}.pem\nkey = {d}/{cert}.key\n",
        l = p.listen,
        tp = p.port
    );
    let file = topo.dir.join(format!("stunnel-{port}.conf"));
    std::fs::write(&file, conf).expect("stunnel conf");
    let proc = spawn_in(
        &p.ns,
        "stunnel",
        &format!("stunnel4 {}", file.display()),
        &topo.dir.join(format!("stunnel-{port}.log")),
    );
    wait_until(&format!("stunnel on {port}"), Duration::from_secs(10), || {
        sh(&format!("ip netns exec {} ss -ltnH 'sport = :{port}' | grep -q {}", p.ns, p.listen)).status.success()
    });
    proc
}

/// A capture of the host's link to the proxy, payload included.
struct LinkCapture {
    proc: Proc,
    file: PathBuf,
}

impl LinkCapture {
    fn start(topo: &Topology, tag: &str) -> LinkCapture {
        let file = topo.dir.join(format!("link-{tag}.pcap"));
        let log = file.with_extension("log");
        let link = format!("{}h1", topo.prefix);
        let child = std::process::Command::new("tcpdump")
            .args(["-i", &link, "-nn", "-U", "--immediate-mode", "-s", "0", "-w"])
            .arg(&file)
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("tcpdump");
        let proc = Proc { name: "tcpdump".into(), child };
        wait_until("tcpdump listening", Duration::from_secs(10), || {
            std::fs::read_to_string(&log).unwrap_or_default().contains("listening on")
        });
        LinkCapture { proc, file }
    }

    /// Stops it; the raw bytes of every packet.
    fn stop(mut self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(300));
        self.proc.stop();
        std::fs::read(&self.file).expect("pcap")
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The account on the https endpoint of the test proxy.
fn tls_account(topo: &Topology, tag: &str, port: u16, ca_file: Option<&str>) -> Account {
    let p = &topo.proxies[0];
    let a = Account::for_proxy(tag, p, "");
    let policy = std::fs::read_to_string(&a.policy).expect("policy");
    let ca = ca_file.map(|f| format!("\n        ca_file: {f}")).unwrap_or_default();
    let policy = policy.replace(&format!("url: {}", p.url()), &format!("url: https://{}:{port}{ca}", p.listen));
    assert!(policy.contains("https://"), "{policy}");
    std::fs::write(&a.policy, policy).expect("policy");
    a
}

fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The bed of both tests (serialised, root): tinyproxy behind stunnel on
/// 8443 with the certificate for its address, and the CA in the test's dir.
fn tls_bed() -> Option<(std::sync::MutexGuard<'static, ()>, Topology, Proc)> {
    if !root_or_skip("proxy_tls") {
        return None;
    }
    let g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Tinyproxy]);
    certificates(&topo.dir, topo.proxies[0].listen);
    let tunnel = stunnel(&topo, "good", 8443);
    Some((g, topo, tunnel))
}

#[test]
fn an_https_proxy_carries_everything_inside_tls_and_its_credentials_never_cross_in_clear() {
    let Some((_g, topo, _tunnel)) = tls_bed() else { return };
    let p = &topo.proxies[0];
    let basic = base64(&format!("{}:{}", p.user, p.pass));
    let fetch = |a: &Account, url: &str| {
        let o = a.run(&format!("curl -sS -m 20 {url}"));
        assert!(o.status.success(), "{} {url}: {}", a.name, err(&o));
        out(&o).trim().to_string()
    };

    // Positive control: the plain http:// proxy, seen on the link in clear.
    let plain = Account::for_proxy("tp", p, "");
    plain.up();
    let cap = LinkCapture::start(&topo, "plain");
    assert_eq!(fetch(&plain, &format!("http://{HOSTNAME}/")), p.egress.to_string());
    let seen = cap.stop();
    assert!(
        contains(&seen, b"CONNECT ") && contains(&seen, basic.as_bytes()),
        "the capture sees a plain proxy's CONNECT and credentials ({} bytes captured)",
        seen.len()
    );
    let digest = fetch(&plain, &format!("http://{HOSTNAME}/bytes/20000000 | sha256sum"));
    assert!(plain.down().status.success());

    // The same proxy behind TLS.
    let ca = format!("{}/ca.pem", topo.dir.display());
    let a = tls_account(&topo, "ts", 8443, Some(&ca));
    a.up();
    let st = a.status_json();
    println!("status: {st}");
    assert!(st.to_string().contains(&format!("https://{}:8443", p.listen)), "status shows the https endpoint: {st}");
    let cap = LinkCapture::start(&topo, "tls");
    assert_eq!(fetch(&a, &format!("http://{HOSTNAME}/")), p.egress.to_string(), "a flow through the TLS proxy");
    assert_eq!(fetch(&a, &format!("-k https://{HOSTNAME}:8443/")), p.egress.to_string(), "TLS inside TLS");
    let started = std::time::Instant::now();
    let got = fetch(&a, &format!("http://{HOSTNAME}/bytes/20000000 | sha256sum"));
    println!("20 MB through the TLS proxy in {:?}", started.elapsed());
    assert_eq!(got, digest, "the download arrives intact");
    let file = a.dir.join("upload.bin");
    must(&format!("head -c 8000000 /dev/urandom > {f} && chmod 644 {f}", f = file.display()));
    let want = must(&format!("sha256sum {} | cut -d' ' -f1", file.display())).trim().to_string();
    let got = fetch(&a, &format!("--data-binary @{} http://{HOSTNAME}/", file.display()));
    assert_eq!(got, want, "the upload arrives intact");
    // Many short flows at once (handshakes in parallel).
    let many = a.run(&format!("for i in $(seq 1 20); do curl -sS -m 20 http://{HOSTNAME}/ & done; wait"));
    let lines: Vec<String> = out(&many).lines().map(str::to_string).collect();
    assert!(lines.len() == 20 && lines.iter().all(|l| *l == p.egress.to_string()), "20 parallel: {lines:?}");
    let seen = cap.stop();
    println!("captured {} bytes on the link", seen.len());
    assert!(seen.len() > 20_000_000, "the capture saw the traffic");
    assert!(!contains(&seen, b"CONNECT "), "no CONNECT line in clear");
    assert!(!contains(&seen, basic.as_bytes()) && !contains(&seen, p.pass.as_bytes()), "no credentials in clear");
    assert!(!contains(&seen, HOSTNAME.as_bytes()), "not even the destination's name");
    let metrics = a.stats();
    println!("stats: {metrics}");
    a.assert_no_canary("https proxy");
    assert!(a.down().status.success());
    assert!(!topo.leaked());
}

#[test]
fn an_https_proxy_whose_certificate_does_not_check_out_is_never_used() {
    let Some((_g, topo, _good)) = tls_bed() else { return };
    let _wrong = stunnel(&topo, "wrong", 8444);
    let ca = format!("{}/ca.pem", topo.dir.display());
    for (tag, port, ca_file, says) in
        [("tu", 8443, None, "UnknownIssuer"), ("tw", 8444, Some(ca.as_str()), "certificate not valid for name")]
    {
        let a = tls_account(&topo, tag, port, ca_file);
        let said = a.up_without_proxy();
        println!("{tag}: {said}");
        assert!(said.contains("TLS") && said.contains(says), "{tag}: up names the TLS fault: {said}");
        let o = a.run(&format!("curl -sS -m 5 http://{HOSTNAME}/"));
        assert!(!o.status.success(), "{tag}: no way out: {}", out(&o));
        a.assert_no_canary(tag);
        assert!(a.down().status.success());
    }
    assert!(topo.origin_clients().is_empty(), "the origin saw nobody: {:?}", topo.origin_clients());

    // A ca_file that is missing or holds no certificate: a policy error.
    let junk = topo.dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("junk");
    for (tag, file, says) in [
        ("tm", "/nonexistent/nsproxy-ca.pem".to_string(), "nsproxy-ca.pem"),
        ("tj", junk.display().to_string(), "holds no PEM certificate"),
    ] {
        let a = tls_account(&topo, tag, 8443, Some(&file));
        let o = a.cmd(&["up", &a.name]);
        let said = format!("{}{}", out(&o), err(&o));
        println!("{tag}: {said}");
        assert_eq!(o.status.code(), Some(3), "{tag}: a policy error: {said}");
        assert!(said.contains("ca_file") && said.contains(says) && said.contains("proxies[0]"), "{tag}: {said}");
        assert!(a.daemon_pid().is_none(), "{tag}: no daemon left");
        if tag == "tm" {
            let o = a.cmd(&["policy", "check"]);
            let said = format!("{}{}", out(&o), err(&o));
            assert!(!o.status.success() && said.contains("proxies[0].ca_file"), "policy check: {said}");
        }
    }
}
