//! Issue 5: credentials (files, daemon environment, Fernet tokens made by
//! Python's `cryptography`), what `exec` hands the program, access
//! refusals, planted symlinks, policy overrides and the canary sweep. Root,
//! real namespaces and proxies.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Python with `cryptography` from PyPI (scripts/install-deps.sh).
const FERNET_PY: &str = "/opt/nsproxy-test/venv/bin/python";

fn fernet_python(test: &str) -> Option<&'static str> {
    if Path::new(FERNET_PY).exists() {
        return Some(FERNET_PY);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {FERNET_PY} is missing: scripts/install-deps.sh installs it");
    }
    eprintln!("\n!!!!! SKIPPED {test}: {FERNET_PY} missing (run scripts/install-deps.sh) !!!!!\n");
    None
}

/// Runs Python code with `cryptography`; returns stdout lines.
fn py(code: &str, args: &[&str]) -> Vec<String> {
    let o = std::process::Command::new(FERNET_PY).arg("-c").arg(code).args(args).output().expect("python");
    assert!(o.status.success(), "python failed: {}", err(&o));
    out(&o).lines().map(str::to_string).collect()
}

const MAKE_KEY_AND_TOKENS: &str = r#"
import sys
from cryptography.fernet import Fernet
key = Fernet.generate_key()
open(sys.argv[1], "wb").write(key + b"\n")
for v in sys.argv[2:]:
    print(Fernet(key).encrypt(v.encode()).decode())
"#;

fn write_root_0600(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
    must(&format!("chown root:root {0} && chmod 600 {0}", path.display()));
}

/// Runs nsproxy with stdin.
fn nsproxy_stdin(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut c = std::process::Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nsproxy");
    c.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("stdin");
    c.wait_with_output().expect("wait")
}

#[test]
fn python_fernet_tokens_decrypt_both_ways_and_tampered_ones_are_refused() {
    if !root_or_skip("python_fernet_tokens") {
        return;
    }
    let Some(_) = fernet_python("python_fernet_tokens") else { return };
    let dir = std::env::temp_dir().join(unique("nsp-fernet"));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("fernet.key");
    let long = "x".repeat(255);
    let values = ["pw-simple", "ünïcode pässwörd", "with:colon@and/slash", long.as_str()];
    let mut args = vec![key.to_str().expect("path")];
    args.extend(values);
    let tokens = py(MAKE_KEY_AND_TOKENS, &args);
    must(&format!("chmod 600 {}", key.display()));
    assert_eq!(tokens.len(), values.len());

    let key_s = key.to_str().expect("path");
    let o = nsproxy_stdin(&["secret", "check", "--key-file", key_s], &tokens.join("\n"));
    println!("python-made tokens: {}", out(&o));
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert_eq!(out(&o).matches(": OK").count(), values.len(), "{}", out(&o));

    // Tampered: one character of the ciphertext changed; and a token made
    // with another key.
    let mut t = tokens[0].clone().into_bytes();
    let i = t.len() / 2;
    t[i] = if t[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(t).expect("ascii");
    let other_key = dir.join("other.key");
    let other = py(MAKE_KEY_AND_TOKENS, &[other_key.to_str().expect("path"), "pw-simple"]);
    let o = nsproxy_stdin(&["secret", "check", "--key-file", key_s], &format!("{tampered}\n{}\n", other[0]));
    println!("tampered and foreign tokens: {}", out(&o));
    assert!(!o.status.success());
    assert!(out(&o).contains("line 1: FAILED: does not decrypt with this key"), "{}", out(&o));
    assert!(out(&o).contains("line 2: FAILED: does not decrypt with this key"), "{}", out(&o));

    // nsproxy's own tokens decrypt in Python; the plaintext never is an argument.
    let o = nsproxy_stdin(&["secret", "encrypt", "--key-file", key_s], "made-by-nsproxy ü\n");
    assert!(o.status.success(), "{}", err(&o));
    let token = out(&o).trim().to_string();
    let back = py(
        "import sys\nfrom cryptography.fernet import Fernet\nprint(Fernet(open(sys.argv[1],'rb').read().strip()).decrypt(sys.argv[2].encode()).decode())",
        &[key_s, &token],
    );
    assert_eq!(back, ["made-by-nsproxy ü"]);

    // The key inside a .env file, as the Python tooling keeps it.
    let env_file = dir.join("bot.env");
    let k = std::fs::read_to_string(&key).expect("key");
    write_root_0600(
        &env_file,
        &format!("# bot\nAPI_URL=https://api.exchange.test\nFERNET_KEY={}\nDEBUG=0\n", k.trim()),
    );
    let o = nsproxy_stdin(
        &["secret", "check", "--key-file", env_file.to_str().expect("p"), "--key-name", "FERNET_KEY"],
        &tokens[1],
    );
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    // A key file others can read is refused, with the fix.
    must(&format!("chmod 644 {}", key.display()));
    let o = nsproxy_stdin(&["secret", "check", "--key-file", key_s], &tokens[0]);
    assert!(err(&o).contains("has mode 0644, expected 0600 or 0400; fix with: chmod 600"), "{}", err(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An account whose Dante credentials are Fernet tokens.
fn encrypted_account(topo: &Topology, key_name: &str) -> (Account, PathBuf) {
    let p = &topo.proxies[0];
    let a = Account::new(
        "fe",
        &format!(
            "    exec:\n      users: [{TEST_USER}]\n    secrets:\n      key_file: {{secrets}}/{key_name}\n    proxies:\n      - label: dante\n        url: {}\n        username_encrypted: TOKEN_U\n        password_encrypted: TOKEN_P\n",
            p.url()
        ),
    );
    a.canary(&p.pass);
    let key = a.dir.join(key_name);
    let t = py(MAKE_KEY_AND_TOKENS, &[key.to_str().expect("p"), &p.user, &p.pass]);
    must(&format!("chmod 600 {}", key.display()));
    let text = std::fs::read_to_string(&a.policy).expect("policy");
    std::fs::write(&a.policy, text.replace("TOKEN_U", &t[0]).replace("TOKEN_P", &t[1])).expect("policy");
    (a, key)
}

#[test]
fn encrypted_credentials_bring_the_account_up_and_a_wrong_key_keeps_it_down() {
    if !root_or_skip("encrypted_credentials") {
        return;
    }
    let Some(_) = fernet_python("encrypted_credentials") else { return };
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Dante]);
    let (a, key) = encrypted_account(&topo, "fernet.key");
    let o = a.cmd(&["secret", "check", &a.name]);
    assert!(o.status.success() && out(&o).contains("OK"), "{}{}", out(&o), err(&o));
    a.up();
    let o = a.run(&format!("curl -sS -m 10 http://{HOSTNAME}/"));
    assert_eq!(out(&o).trim(), topo.proxies[0].egress.to_string(), "through dante: {}", err(&o));
    assert!(a.down().status.success());

    // Another key: the account does not come up, and says why.
    let saved = std::fs::read_to_string(&key).expect("key");
    let fresh = py("from cryptography.fernet import Fernet\nprint(Fernet.generate_key().decode())", &[]);
    write_root_0600(&key, &fresh[0]);
    let o = a.cmd(&["up", &a.name]);
    println!("wrong key: {}", err(&o));
    assert!(!o.status.success());
    assert!(err(&o).contains("username_encrypted does not decrypt with this key"), "{}", err(&o));
    assert!(err(&o).contains(&key.display().to_string()), "names the key file: {}", err(&o));
    assert!(!sh(&format!("ip netns list | grep -qw {}", a.namespace)).status.success(), "nothing left up");
    let o = a.cmd(&["secret", "check", &a.name]);
    assert!(!o.status.success() && out(&o).contains("FAILED"), "{}", out(&o));

    // No key file at all.
    std::fs::remove_file(&key).expect("rm");
    let o = a.cmd(&["up", &a.name]);
    assert!(!o.status.success() && err(&o).contains("does not exist"), "{}", err(&o));
    // Back to the right key: up again.
    write_root_0600(&key, &saved);
    a.up();
    assert!(!topo.leaked());
}

#[test]
fn credential_files_must_be_root_owned_0600_or_0400_and_not_symlinks() {
    if !root_or_skip("credential_files") {
        return;
    }
    ensure_user(TEST_USER);
    let a = Account::new(
        "cf",
        "    proxies:\n      - label: p\n        url: socks5://127.0.0.1:9\n        username: u\n        password_file: {secrets}/pw\n",
    );
    let pw = a.dir.join("pw");
    let real = a.dir.join("real");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "mode 0644",
            format!("chmod 644 {}", pw.display()),
            "has mode 0644, expected 0600 or 0400; fix with: chmod 600",
        ),
        ("mode 0640", format!("chmod 640 {}", pw.display()), "has mode 0640, expected 0600 or 0400"),
        ("mode 0700", format!("chmod 700 {}", pw.display()), "has mode 0700, expected 0600 or 0400"),
        ("owned by a user", format!("chown {TEST_USER} {}", pw.display()), "not root; fix with: chown root:root"),
        (
            "symlink",
            format!("rm {0} && printf x > {1} && chmod 600 {1} && ln -s {1} {0}", pw.display(), real.display()),
            "is a symlink",
        ),
        ("directory", format!("rm -f {0} && mkdir {0}", pw.display()), "is not a regular file"),
        ("missing", format!("rm -rf {0}", pw.display()), "does not exist"),
        ("empty", format!("rm -rf {0} && : > {0} && chmod 600 {0}", pw.display()), "is empty"),
    ];
    for (what, setup, expect) in cases {
        let _ = sh(&format!("rm -rf {0} {1}", pw.display(), real.display()));
        a.secret("pw", "canary-file-secret");
        must(&setup);
        let check = a.cmd(&["policy", "check"]);
        let up = a.cmd(&["up", &a.name]);
        println!("{what}: policy check: {} | up: {}", err(&check).trim(), err(&up).trim());
        assert!(!check.status.success() && err(&check).contains(expect), "{what}: {}", err(&check));
        assert!(!up.status.success() && err(&up).contains(expect), "{what}: {}", err(&up));
        assert!(err(&up).contains(&pw.display().to_string()), "{what}: names the file");
    }
    // 0400 is fine.
    let _ = sh(&format!("rm -rf {0}", pw.display()));
    a.secret("pw", "canary-file-secret");
    must(&format!("chmod 400 {}", pw.display()));
    assert!(a.cmd(&["policy", "check"]).status.success());
}

#[test]
fn environment_credentials_never_reach_programs() {
    if !root_or_skip("environment_credentials") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks]);
    let p = &topo.proxies[0];
    let a = Account::new(
        "ev",
        &format!(
            "    exec:\n      users: [{TEST_USER}]\n    proxies:\n      - label: ms\n        url: {}\n        username_env: NSP_T_USER\n        password_env: NSP_T_PASS\n",
            p.url()
        ),
    );
    a.canary(&p.pass);
    let env = [("NSP_T_USER", p.user.as_str()), ("NSP_T_PASS", p.pass.as_str())];
    let o = a.cmd_env(&["up", &a.name], &env);
    assert!(o.status.success(), "{}", err(&o));
    // The sweep looks at /proc/<daemon>/environ too: the daemon wiped it.
    a.assert_no_canary("after up with credentials in the environment");
    let pid = a.daemon_pid().expect("daemon pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(!String::from_utf8_lossy(&environ).contains("NSP_T_PASS="), "variable removed from the daemon");

    // exec started with the same variables (sudo -E) does not pass them on.
    let inside = std::process::Command::new(BIN)
        .envs(env)
        .env("NSPROXY_SOMETHING", "x")
        .args(["exec", &a.name, "--user", TEST_USER, "--"])
        .args(["sh", "-c", "tr '\\0' '\\n' < /proc/self/environ; echo ---; cat /proc/self/status; curl -sS -m 10 http://api.exchange.test/"])
        .output()
        .expect("exec");
    let text = out(&inside);
    println!("the program's environment and status:\n{text}");
    let (environ, status) = text.split_once("---").expect("separator");
    assert!(!environ.contains("NSP_T_") && !environ.contains("NSPROXY_") && !environ.contains("SUDO_"), "{environ}");
    assert!(!text.contains(&p.pass), "no secret in the program's view");
    let uid = must(&format!("id -u {TEST_USER}")).trim().to_string();
    let gid = must(&format!("id -g {TEST_USER}")).trim().to_string();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).map(|l| l[name.len()..].split_whitespace().collect::<Vec<_>>())
    };
    assert_eq!(field("Uid:"), Some(vec![uid.as_str(); 4]), "{status}");
    assert_eq!(field("Gid:"), Some(vec![gid.as_str(); 4]), "{status}");
    assert_eq!(field("Groups:"), Some(vec![gid.as_str()]), "{status}");
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(cap), Some(vec!["0000000000000000"]), "{cap} {status}");
    }
    assert!(status.lines().any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')), "{status}");
    assert!(text.trim_end().ends_with(&p.egress.to_string()), "works through the proxy: {text}{}", err(&inside));
}

#[test]
fn exec_refusals_are_refused_and_logged_by_the_daemon() {
    if !root_or_skip("exec_refusals") {
        return;
    }
    ensure_user(TEST_USER);
    ensure_user(OTHER_USER);
    let a = Account::new(
        "rf",
        &format!(
            "    exec:\n      users: [{TEST_USER}]\n    proxies:\n      - label: dummy\n        url: socks5://127.0.0.1:9\n"
        ),
    );
    a.up();
    let other_policy = a.dir.join("other.yaml");
    std::fs::copy(&a.policy, &other_policy).expect("copy");
    let other_uid = must(&format!("id -u {OTHER_USER}")).trim().to_string();
    let run = |envs: &[(&str, &str)], args: &[&str]| {
        std::process::Command::new(BIN).envs(envs.iter().copied()).args(args).output().expect("exec")
    };
    let other_p = other_policy.to_str().expect("p").to_string();
    let attempts: Vec<(&str, std::process::Output, &str)> = vec![
        (
            "a user the policy does not list",
            run(&[], &["exec", &a.name, "--user", OTHER_USER, "--", "true"]),
            "may not exec into account",
        ),
        (
            "a sudo caller picking another user",
            run(&[("SUDO_UID", &other_uid)], &["exec", &a.name, "--user", TEST_USER, "--", "true"]),
            "may not run programs as",
        ),
        (
            "another policy path",
            run(&[], &["--policies", &other_p, "exec", &a.name, "--user", TEST_USER, "--", "true"]),
            "refuses --policies",
        ),
        (
            "an override",
            run(&[], &["exec", &a.name, "--set", "accounts.x.dns.mode=tcp", "--user", TEST_USER, "--", "true"]),
            "--set does not apply",
        ),
        ("root", run(&[], &["exec", &a.name, "--user", "root", "--", "true"]), "refusing to run as root"),
    ];
    for (what, o, expect) in &attempts {
        println!("{what}: exit {:?}: {}", o.status.code(), err(o).trim());
        assert_eq!(o.status.code(), Some(1), "{what}");
        assert!(err(o).contains(expect), "{what}: {}", err(o));
    }
    wait_until("refusals in the daemon log", Duration::from_secs(5), || a.log().matches("exec refused").count() >= 5);
    let log = a.log();
    assert!(log.contains(&format!("user {OTHER_USER} may not exec")), "{log}");
    assert!(
        log.contains(&format!("caller={OTHER_USER} (uid {other_uid})"))
            || log.contains(&format!("caller=\"{OTHER_USER} (uid {other_uid})\"")),
        "{log}"
    );
    // The same policy path given explicitly is fine.
    let o = a.cmd(&["exec", &a.name, "--user", TEST_USER, "--", "true"]);
    assert!(o.status.success(), "{}", err(&o));
}

#[test]
fn planted_symlinks_are_refused() {
    if !root_or_skip("planted_symlinks") {
        return;
    }
    let a = Account::new("sy", "    proxies:\n      - label: dummy\n        url: socks5://127.0.0.1:9\n");
    let target = a.dir.join("elsewhere");
    std::fs::create_dir_all(&target).expect("dir");
    for (what, link) in [
        ("run directory", format!("/run/nsproxy/{}", a.name)),
        ("state directory", format!("/var/lib/nsproxy/{}", a.name)),
    ] {
        must("mkdir -p /run/nsproxy /var/lib/nsproxy");
        must(&format!("ln -sfn {} {link}", target.display()));
        let o = a.cmd(&["up", &a.name]);
        println!("{what}: {}", err(&o).trim());
        assert!(!o.status.success(), "{what}: up must refuse");
        assert!(err(&o).contains(&link) && err(&o).contains("symlink"), "{what}: {}", err(&o));
        assert!(std::fs::read_dir(&target).expect("target").next().is_none(), "{what}: nothing written through it");
        std::fs::remove_file(&link).expect("rm link");
    }
    // The daemon log planted as a symlink to a file of the attacker's choice.
    must(&format!("rm -rf /run/nsproxy/{0} && mkdir -m 700 -p /run/nsproxy/{0}", a.name));
    let victim = target.join("victim");
    std::fs::write(&victim, "untouched\n").expect("victim");
    must(&format!("ln -s {} /run/nsproxy/{}/daemon.log", victim.display(), a.name));
    let o = a.cmd(&["up", &a.name]);
    assert!(!o.status.success(), "up must refuse a symlinked log");
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "untouched\n");
    let _ = std::fs::remove_dir_all(format!("/run/nsproxy/{}", a.name));
}

#[test]
fn policy_overrides_reach_the_daemon_with_precedence() {
    if !root_or_skip("policy_overrides") {
        return;
    }
    let _g = serial();
    ensure_user(TEST_USER);
    let topo = Topology::new(&[Kind::Microsocks]);
    let a = Account::for_proxy("ov", &topo.proxies[0], "");
    let var = |field: &str| format!("NSPROXY_ACCOUNTS__{}__{field}", a.name.to_uppercase().replace('-', "_"));
    let resolver = format!("{}:53", topo.origin_addr);
    let env_tcp = [(var("DNS__MODE"), "tcp".to_string()), (var("DNS__RESOLVER"), resolver.clone())];
    let env: Vec<(&str, &str)> = env_tcp.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let dig = |a: &Account| out(&a.run(&format!("dig +short +time=3 +tries=1 {HOSTNAME}"))).trim().to_string();

    // File: fake-ip. Environment: tcp, so real answers come back.
    let o = a.cmd_env(&["up", &a.name], &env);
    assert!(o.status.success(), "{}", err(&o));
    let answer = dig(&a);
    println!("with the environment override (tcp): {answer}");
    assert_eq!(answer, topo.origin_addr.to_string(), "tcp mode: the resolver's own answer");
    assert!(a.down().status.success());

    // The command line wins over the environment.
    let (set, unset) =
        (format!("accounts.{}.dns.mode=fake-ip", a.name), format!("accounts.{}.dns.resolver=null", a.name));
    let o = a.cmd_env(&["--set", &set, "--set", &unset, "up", &a.name], &env);
    assert!(o.status.success(), "{}", err(&o));
    let answer = dig(&a);
    println!("with --set over the environment (fake-ip): {answer}");
    assert!(answer.starts_with("198.18.") || answer.starts_with("198.19."), "fake IP: {answer}");
    assert!(a.down().status.success());

    // A bad value is named by its variable, and the account stays down.
    let mode_var = var("DNS__MODE");
    let bad = [(mode_var.as_str(), "udp")];
    let o = a.cmd_env(&["up", &a.name], &bad);
    println!("bad override: {}", err(&o).trim());
    assert!(!o.status.success());
    assert!(err(&o).contains(&format!("{}: accounts[0].dns.mode", var("DNS__MODE"))), "{}", err(&o));
    assert!(err(&o).contains("expected fake-ip or tcp"), "{}", err(&o));
    assert!(!sh(&format!("ip netns list | grep -qw {}", a.namespace)).status.success());
}

#[test]
fn the_canary_sweep_finds_a_planted_secret() {
    if !root_or_skip("canary_positive_control") {
        return;
    }
    // Positive control for every sweep in the suite: a canary written
    // where the sweep looks must be found.
    let a = Account::new("cs", "    proxies:\n      - label: dummy\n        url: socks5://127.0.0.1:9\n");
    a.up();
    a.canary("planted-canary-value");
    std::fs::write(format!("/run/nsproxy/{}/planted.txt", a.name), "x planted-canary-value x").expect("plant");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.assert_no_canary("positive control")));
    let _ = std::fs::remove_file(format!("/run/nsproxy/{}/planted.txt", a.name));
    let msg = r.expect_err("the sweep must fail on a planted canary");
    let text = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("SECRET LEAK") && text.contains("planted.txt"), "{text}");
}

#[test]
fn control_socket_abuse_is_cheap_and_changes_nothing() {
    if !root_or_skip("control_socket_abuse") {
        return;
    }
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    ensure_user(TEST_USER);
    let a = Account::new("ca", "    proxies:\n      - label: dummy\n        url: socks5://127.0.0.1:9\n");
    a.up();
    let pid = a.daemon_pid().expect("pid");
    let sock = format!("/run/nsproxy/{}/ctl.sock", a.name);
    std::thread::sleep(Duration::from_millis(300));
    let (rss0, fds0) = (rss_kib(pid), fds(pid));
    let ask = |bytes: &[u8]| -> String {
        let mut s = UnixStream::connect(&sock).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let _ = s.write_all(bytes);
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        r
    };
    // A 4 GiB length prefix, as a length-prefixed protocol would read it,
    // then 100 KiB of junk: refused at 64 KiB, nothing allocated for 4 GiB.
    let mut big = vec![0xff, 0xff, 0xff, 0xff];
    big.extend(std::iter::repeat_n(b'A', 100 * 1024));
    let r = ask(&big);
    println!("4 GiB length prefix: {}", r.trim());
    assert!(r.contains("\"ok\":false") && r.contains("larger than 65536 bytes"), "{r}");
    let r = ask(b"\xff\xfe\x00garbage\n");
    assert!(r.contains("not UTF-8"), "{r}");
    let r = ask(b"{\"cmd\": \"check\"\n");
    assert!(r.contains("invalid request"), "{r}");
    let r = ask(b"[1,2,3]\n");
    assert!(r.contains("invalid request"), "{r}");

    // 200 clients that connect and never finish: the daemon still answers
    // others at once, and cuts the idle ones off after its 5 s deadline.
    let idle: Vec<UnixStream> = (0..200).map(|_| UnixStream::connect(&sock).expect("connect idle")).collect();
    for mut s in &idle {
        let _ = s.write_all(b"{\"cmd\":");
    }
    let t = std::time::Instant::now();
    let o = a.cmd(&["check", &a.name, "--json"]);
    let answered = t.elapsed();
    println!("check answered in {answered:?} with 200 idle clients: {}", out(&o).lines().count());
    assert!(out(&o).contains("\"ok\""), "the daemon answers: {}{}", out(&o), err(&o));
    let fds_busy = fds(pid);
    let mut cut = 0;
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        if r.contains("no complete request") {
            cut += 1;
        }
    }
    assert_eq!(cut, 200, "every slow client is cut off with a reason");
    wait_until("daemon fds back to normal", Duration::from_secs(5), || fds(pid) <= fds0);
    let rss1 = rss_kib(pid);
    println!(
        "daemon RSS {rss0} KiB before, {rss1} KiB after; fds {fds0} before, {fds_busy} with 200 idle clients, {} after",
        fds(pid)
    );
    assert!(rss1 < rss0 + 8 * 1024, "abuse must not cost memory: {rss0} -> {rss1} KiB");
    assert!(a.log().contains("control socket: request refused"), "refusals are logged");

    // Somebody who is not root cannot even reach the socket.
    let o = sh(&format!(
        "su -s /bin/sh {TEST_USER} -c \"/usr/bin/python3 -c 'import socket; socket.socket(socket.AF_UNIX).connect(\\\"{sock}\\\")'\" 2>&1"
    ));
    println!("non-root connect: {}", out(&o).lines().last().unwrap_or(""));
    assert!(!o.status.success() && out(&o).contains("PermissionError"), "{}", out(&o));
    let mode = must(&format!("stat -c '%U %a' {sock} /run/nsproxy/{}", a.name));
    assert_eq!(mode.split_whitespace().collect::<Vec<_>>(), ["root", "600", "root", "700"], "{mode}");
}
