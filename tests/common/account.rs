//! An nsproxy account of a test: policy, `up`, `exec`, `down`.
#![allow(dead_code)]

use super::*;

/// An nsproxy account for a test; `down --kill` on drop. Its daemons log at
/// trace level, and every secret written through `secret` (or registered
/// with `canary`) is looked for in the daemon's log and run files, `status
/// --json`, every nsproxy command's output, and `/proc/*/cmdline` and
/// `/proc/*/environ` of nsproxy and the account's programs: after `up` and
/// before `down`. One hit fails the test.
/// A proxy that listens nowhere, for accounts whose test needs no traffic.
pub const NO_PROXY_URL: &str = "socks5://127.0.0.1:9";

pub struct Account {
    /// The account's only proxy is `NO_PROXY_URL`.
    no_proxy: bool,
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
        let policy = dir.join("policy.yaml");
        note(Made::Dir(dir.clone()));
        note(Made::Account { policy: policy.clone(), name: name.clone() });
        std::fs::create_dir_all(&dir).expect("dir");
        let body = body.replace("{secrets}", &dir.display().to_string());
        std::fs::write(&policy, format!("accounts:\n  - name: {name}\n{body}")).expect("policy");
        let no_proxy = body.contains(NO_PROXY_URL);
        Account { namespace: format!("nsp-{name}"), name, policy, dir, canaries: Mutex::new(Vec::new()), no_proxy }
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
        if self.no_proxy {
            // The account's only proxy listens nowhere: up says so, exit 4.
            self.up_without_proxy();
            return;
        }
        let o = self.cmd(&["up", &self.name]);
        assert!(o.status.success(), "up {} failed: {}{}", self.name, out(&o), err(&o));
        self.assert_no_canary("after up");
    }

    /// `up` of an account none of whose proxies can pass its first check:
    /// the account is up (fail-closed) and `up` says so loudly, with its own
    /// exit status (4). Returns what it printed.
    pub fn up_without_proxy(&self) -> String {
        let o = self.cmd(&["up", &self.name]);
        let said = format!("{}{}", out(&o), err(&o));
        assert_eq!(o.status.code(), Some(4), "up {} with no usable proxy must exit 4: {said}", self.name);
        assert!(said.contains("NO USABLE PROXY"), "{said}");
        assert!(said.contains("its only way out is the account's proxy"), "the account is up: {said}");
        assert_eq!(self.status_json()["state"], "up", "{said}");
        self.assert_no_canary("after up");
        said
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

    /// `nsproxy status ACCOUNT --json` of this account.
    pub fn status_json(&self) -> serde_json::Value {
        let o = self.cmd(&["status", &self.name, "--json"]);
        assert!(o.status.success(), "status: {}", err(&o));
        let v: serde_json::Value = serde_json::from_str(&out(&o)).expect("status json");
        v[0].clone()
    }

    /// One pool member as `status --json` shows it (Null if absent).
    pub fn member(&self, label: &str) -> serde_json::Value {
        self.status_json()["pool"]
            .as_array()
            .and_then(|p| p.iter().find(|x| x["label"] == label).cloned())
            .unwrap_or_default()
    }

    /// The daemon's counters now, as `status --json` shows them (asked
    /// of the running daemon; `stats.json` after it stopped).
    pub fn stats(&self) -> serde_json::Value {
        let o = self.cmd(&["status", &self.name, "--json"]);
        serde_json::from_str::<serde_json::Value>(&out(&o)).map(|v| v[0]["stats"].clone()).unwrap_or_default()
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(format!("/run/nsproxy/{}/daemon.pid", self.name)).ok()?.trim().parse().ok()
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        if stopping() {
            // A benchmark stopped by a signal: its clean-up downs this.
        } else if !std::thread::panicking() {
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
        removing(&Made::Account { policy: self.policy.clone(), name: self.name.clone() }, || {
            let _ = self.down();
            let _ = std::fs::remove_dir_all(format!("/var/lib/nsproxy/{}", self.name));
        });
        remove(&Made::Dir(self.dir.clone()));
    }
}

/// The origin: an HTTP server on 80 that answers with the client's address
/// (and serves /bytes/N and accepts POST /sha256), a TLS twin on 8443, a
/// WebSocket echo server on 8081 and a raw TCP echo on 8082. Every
/// connection's client address is appended to the log named in argv[1].
pub const ORIGIN_PY: &str = include_str!("../fixtures/origin.py");
