//! Issue 1: namespace lifecycle and `exec`, as root with real namespaces.

mod common;
use common::*;
use std::time::Duration;

fn simple_account(tag: &str) -> Account {
    ensure_user(TEST_USER);
    Account::new(
        tag,
        &format!(
            "    exec:\n      users: [{TEST_USER}]\n    proxies:\n      - label: dummy\n        url: socks5://127.0.0.1:9\n"
        ),
    )
}

fn ns_exists(ns: &str) -> bool {
    out(&sh("ip netns list")).lines().any(|l| l.split_whitespace().next() == Some(ns))
}

fn nothing_left(a: &Account) {
    assert!(!ns_exists(&a.namespace), "namespace {} left behind", a.namespace);
    assert!(!std::path::Path::new(&format!("/run/nsproxy/{}", a.name)).exists(), "run dir of {} left behind", a.name);
    assert!(!std::path::Path::new(&format!("/etc/netns/{}", a.namespace)).exists(), "/etc/netns of {} left", a.name);
}

#[test]
fn namespace_has_only_lo_and_tun_and_its_own_resolver() {
    if !root_or_skip("namespace_has_only_lo_and_tun_and_its_own_resolver") {
        return;
    }
    let a = simple_account("lc");
    a.up();
    let ns = &a.namespace;
    assert!(ns_exists(ns), "ip netns list does not show {ns}");
    let links: Vec<String> = must(&format!("ip -n {ns} -o link show"))
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .collect();
    assert_eq!(links, vec!["lo".to_string(), "tun0".to_string()], "links in the namespace");
    let routes = must(&format!("ip -n {ns} route show default"));
    assert_eq!(routes.trim(), "default dev tun0 proto static", "the only default route is the TUN");
    let v6 = must(&format!("ip -n {ns} -6 route show default"));
    assert!(v6.trim().is_empty(), "no IPv6 default route with ipv6: block, got {v6:?}");
    let inside = a.run("cat /etc/resolv.conf");
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert!(out(&inside).contains("nameserver 198.18.0.2"), "resolv.conf inside: {}", out(&inside));
    assert_ne!(out(&inside), host, "resolv.conf inside must differ from the host's");
    let nss = a.run("grep '^hosts:' /etc/nsswitch.conf");
    assert_eq!(out(&nss).trim(), "hosts: files dns");
    // Second up: says so, exit 0, same daemon.
    let pid = a.daemon_pid();
    let o = a.cmd(&["up", &a.name]);
    assert!(o.status.success() && out(&o).contains("already up"), "{}{}", out(&o), err(&o));
    assert_eq!(a.daemon_pid(), pid);
    // status --json
    let st: serde_json::Value =
        serde_json::from_str(&out(&a.cmd(&["status", &a.name, "--json"]))).expect("status json");
    assert_eq!(st[0]["state"], "up", "{st}");
    assert_eq!(st[0]["tun_present"], true);
    wait_until("the daemon's counters in status", Duration::from_secs(3), || {
        let st: serde_json::Value = serde_json::from_str(&out(&a.cmd(&["status", &a.name, "--json"]))).expect("json");
        st[0]["stats"]["flows_active"] == 0
    });
    let text = out(&a.cmd(&["status", &a.name]));
    assert!(text.contains("flows:") && text.contains("bytes:"), "{text}");
    assert!(a.down().status.success());
    nothing_left(&a);
    // down again: safe to repeat.
    let again = a.down();
    assert!(again.status.success(), "second down: {}", err(&again));
}

#[test]
fn exec_drops_every_privilege() {
    if !root_or_skip("exec_drops_every_privilege") {
        return;
    }
    let a = simple_account("ex");
    a.up();
    let uid = must(&format!("id -u {TEST_USER}"));
    let gid = must(&format!("id -g {TEST_USER}"));
    let o = a.run(
        "id -u; id -g; id -G; grep -E '^Cap(Eff|Prm|Bnd|Amb|Inh):' /proc/self/status; \
         ip link add nspdummy0 type dummy 2>/dev/null && echo LINKADD-OK || echo LINKADD-DENIED; \
         ls /run/systemd/resolve 2>/dev/null | wc -l; ls /proc/self/fd | wc -l; env | grep -c '^NSPROXY_' ; \
         grep NoNewPrivs /proc/self/status",
    );
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(o.status.success(), "{text}{}", err(&o));
    assert_eq!(lines[0], uid.trim());
    assert_eq!(lines[1], gid.trim());
    assert_eq!(lines[2], gid.trim(), "supplementary groups are the user's own");
    for l in &lines[3..8] {
        assert!(l.ends_with("0000000000000000"), "capability set not empty: {l}");
    }
    assert_eq!(lines[8], "LINKADD-DENIED");
    assert_eq!(lines[9], "0", "host resolver sockets must be hidden");
    // 0,1,2 and the fd of ls itself reading /proc/self/fd.
    assert_eq!(lines[10], "4", "only fds 0-2 are inherited");
    assert_eq!(lines[11], "0", "no NSPROXY_ variable reaches the program");
    assert!(lines[12].ends_with('1'), "no_new_privs set: {}", lines[12]);
    // Exit code is the program's own.
    assert_eq!(a.run("exit 42").status.code(), Some(42));
    // Signals as a program started from a shell has them: SIGPIPE not
    // ignored (Rust's runtime ignores it in nsproxy), so a writer into a
    // closed pipe ends quietly, as it does outside the account.
    let o = a.run("grep SigIgn /proc/self/status; seq 1 1000000 | head -1");
    let text = out(&o);
    let ign = text.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("");
    let ign = u64::from_str_radix(ign, 16).unwrap_or_else(|_| panic!("no SigIgn: {text}"));
    assert_eq!(ign & (1 << (nix::sys::signal::Signal::SIGPIPE as u64 - 1)), 0, "SIGPIPE ignored: {text}");
    assert_eq!(text.lines().nth(1), Some("1"), "{text}");
    assert!(err(&o).is_empty(), "seq | head complained: {}", err(&o));
}

#[test]
fn exec_errors_are_clear() {
    if !root_or_skip("exec_errors_are_clear") {
        return;
    }
    ensure_user(OTHER_USER);
    let a = simple_account("ee");
    let o = a.cmd(&["exec", &a.name, "--user", TEST_USER, "--", "true"]);
    assert!(err(&o).contains(&format!("account {} is not up", a.name)), "{}", err(&o));
    a.up();
    let o = a.cmd(&["exec", &a.name, "--user", OTHER_USER, "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains(&format!("user {OTHER_USER} may not exec into account {}", a.name)), "{}", err(&o));
    let o = a.cmd(&["exec", &a.name, "--user", TEST_USER, "--", "no-such-program-xyz"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(err(&o).contains("command not found: no-such-program-xyz"), "{}", err(&o));
    let o = a.cmd(&["exec", &a.name, "--", "true"]);
    assert!(err(&o).contains("no user to run as"), "{}", err(&o));
    let o = a.cmd(&["exec", &a.name, "--user", "root", "--", "true"]);
    assert!(err(&o).contains("refusing to run as root"), "{}", err(&o));
    // Without --user, the program runs as the sudo caller.
    let uid = must(&format!("id -u {TEST_USER}"));
    let o = std::process::Command::new(BIN)
        .env("SUDO_UID", uid.trim())
        .arg("--policies")
        .arg(&a.policy)
        .args(["exec", &a.name, "--", "id", "-u"])
        .output()
        .expect("exec");
    assert_eq!(out(&o).trim(), uid.trim(), "runs as the sudo caller: {}", err(&o));
    // A sudo caller cannot pick somebody else.
    let o = std::process::Command::new(BIN)
        .env("SUDO_UID", must(&format!("id -u {OTHER_USER}")).trim())
        .arg("--policies")
        .arg(&a.policy)
        .args(["exec", &a.name, "--user", TEST_USER, "--", "true"])
        .output()
        .expect("exec");
    assert!(err(&o).contains("may not run programs as"), "{}", err(&o));
}

#[test]
fn down_refuses_while_programs_run_unless_kill() {
    if !root_or_skip("down_refuses_while_programs_run_unless_kill") {
        return;
    }
    let a = simple_account("dn");
    a.up();
    let mut child = std::process::Command::new(BIN)
        .arg("--policies")
        .arg(&a.policy)
        .args(["exec", &a.name, "--user", TEST_USER, "--", "sleep", "60"])
        .spawn()
        .expect("spawn");
    wait_until("sleep in the namespace", Duration::from_secs(5), || {
        !out(&sh(&format!("ip netns pids {}", a.namespace))).trim().is_empty()
    });
    let o = a.cmd(&["down", &a.name]);
    assert!(!o.status.success());
    assert!(err(&o).contains("still run in namespace") && err(&o).contains("--kill"), "{}", err(&o));
    assert!(ns_exists(&a.namespace), "refused down must leave the account up");
    let o = a.down();
    assert!(o.status.success(), "{}", err(&o));
    let st = child.wait().expect("wait");
    assert!(!st.success(), "the program was killed");
    nothing_left(&a);
}

#[test]
fn killed_daemon_fails_closed_and_up_recovers() {
    if !root_or_skip("killed_daemon_fails_closed_and_up_recovers") {
        return;
    }
    let a = simple_account("kd");
    a.up();
    let pid = a.daemon_pid().expect("daemon pid");
    must(&format!("kill -9 {pid}"));
    wait_until("TUN to disappear", Duration::from_secs(5), || {
        !out(&sh(&format!("ip -n {} -o link show", a.namespace))).contains("tun0")
    });
    let routes = must(&format!("ip -n {} route show", a.namespace));
    assert!(routes.trim().is_empty(), "no route may remain once the daemon died: {routes}");
    let status = || -> serde_json::Value {
        serde_json::from_str(&out(&a.cmd(&["status", &a.name, "--json"]))).expect("status json")
    };
    // The lock is released a moment after the TUN (both at process exit).
    wait_until("daemon lock released", Duration::from_secs(5), || status()[0]["daemon_running"] == false);
    assert_eq!(status()[0]["state"], "degraded");
    // exec refuses while the daemon is down.
    let o = a.run("true");
    assert!(err(&o).contains("is not up"), "exec with a dead daemon: {}", err(&o));
    a.up();
    let links = must(&format!("ip -n {} -o link show", a.namespace));
    assert!(links.contains("tun0"), "up recreated the TUN: {links}");
    assert_ne!(a.daemon_pid(), Some(pid));
    assert!(a.down().status.success());
    nothing_left(&a);
}

#[test]
fn ten_accounts_up_and_down_in_parallel_leave_nothing() {
    if !root_or_skip("ten_accounts_up_and_down_in_parallel_leave_nothing") {
        return;
    }
    let accounts: Vec<Account> = (0..10).map(|_| simple_account("pa")).collect();
    // 10 rounds in the suite; NSP_TEST_PARALLEL_ROUNDS=50 for the long run.
    let rounds: u32 = std::env::var("NSP_TEST_PARALLEL_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let t = std::time::Instant::now();
    for round in 0..rounds {
        std::thread::scope(|s| {
            for a in &accounts {
                s.spawn(move || a.up());
            }
        });
        for a in &accounts {
            assert!(ns_exists(&a.namespace), "round {round}: {} not up", a.name);
        }
        std::thread::scope(|s| {
            for a in &accounts {
                s.spawn(move || {
                    let o = a.down();
                    assert!(o.status.success(), "down {}: {}", a.name, err(&o));
                });
            }
        });
        for a in &accounts {
            nothing_left(a);
        }
    }
    println!("{rounds} rounds of 10 accounts up and down in parallel in {:?}, nothing left", t.elapsed());
}

#[test]
fn up_reports_the_daemons_real_error() {
    if !root_or_skip("up_reports_the_daemons_real_error") {
        return;
    }
    let a = Account::new(
        "er",
        "    proxies:\n      - label: p\n        url: socks5://127.0.0.1:9\n        username: u\n        password_env: NSP_TEST_UNSET_VAR\n",
    );
    let o = a.cmd(&["up", &a.name]);
    assert!(!o.status.success());
    assert!(
        err(&o).contains("environment variable NSP_TEST_UNSET_VAR (password_env) is not set"),
        "up must print the daemon's error: {}",
        err(&o)
    );
    assert!(!ns_exists(&a.namespace), "a failed up rolls back");
}

#[test]
fn exec_on_a_systemd_resolved_host_uses_the_account_resolver() {
    if !root_or_skip("exec_on_a_systemd_resolved_host_uses_the_account_resolver") {
        return;
    }
    let a = simple_account("rs");
    a.up();
    // A private mount namespace that looks like Ubuntu's: /etc/resolv.conf
    // is a symlink to systemd-resolved's stub file, and the stub's socket
    // directory exists. The host's own /etc and /run are not touched.
    let fake = a.dir.join("etc");
    let script = format!(
        "set -e; mount --make-rprivate /; mkdir -p {f}; cp -a /etc/. {f}/; mount --bind {f} /etc; \
         mount -t tmpfs tmpfs /run/systemd 2>/dev/null || {{ mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd; }}; \
         mkdir -p /run/systemd/resolve; echo 'nameserver 127.0.0.53' > /run/systemd/resolve/stub-resolv.conf; \
         touch /run/systemd/resolve/io.systemd.Resolve; \
         rm -f /etc/resolv.conf; ln -s ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf; \
         cat /etc/resolv.conf; \
         {bin} --policies {p} exec {n} --user {u} -- sh -c 'cat /etc/resolv.conf; ls -A /run/systemd/resolve'",
        f = fake.display(),
        bin = BIN,
        p = a.policy.display(),
        n = a.name,
        u = TEST_USER
    );
    let o = std::process::Command::new("unshare").args(["-m", "sh", "-c", &script]).output().expect("unshare");
    let text = out(&o);
    assert!(o.status.success(), "{text}{}", err(&o));
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.first().copied(), Some("nameserver 127.0.0.53"), "the fake host uses the stub: {text}");
    assert!(lines.contains(&"nameserver 198.18.0.2"), "inside, the account's resolver: {text}");
    assert!(!lines.iter().skip(1).any(|l| l.contains("127.0.0.53") || l.contains("io.systemd.Resolve")), "{text}");
}

#[test]
fn sighup_is_a_failure_exit_and_sigterm_a_clean_one_in_the_foreground() {
    if !root_or_skip("sighup_is_a_failure_exit_and_sigterm_a_clean_one_in_the_foreground") {
        return;
    }
    let a = simple_account("hu");
    // `up --foreground`, as systemd runs it.
    let run = |signal: &str| -> (Option<i32>, String) {
        let child = std::process::Command::new(BIN)
            .arg("--policies")
            .arg(&a.policy)
            .args(["up", &a.name, "--foreground"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the daemon in the foreground");
        let pid = child.id() as i32;
        wait_until("the foreground daemon is up", Duration::from_secs(30), || {
            a.daemon_pid() == Some(pid) && a.status_json()["state"] == "up"
        });
        must(&format!("kill -{signal} {pid}"));
        let o = child.wait_with_output().expect("wait");
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (code, stderr) = run("HUP");
    assert_eq!(code, Some(1), "SIGHUP must not look like a clean exit (Restart=on-failure): {stderr}");
    assert!(stderr.contains("stopped by SIGHUP"), "{stderr}");
    let (code, stderr) = run("TERM");
    assert_eq!(code, Some(0), "SIGTERM is a clean stop: {stderr}");
    assert!(a.down().status.success());
    nothing_left(&a);
}

/// SigBlk of a process: the signals it has blocked, as a bit mask.
fn blocked_signals(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hex = status.lines().find_map(|l| l.strip_prefix("SigBlk:")).unwrap_or("").trim().to_string();
    u64::from_str_radix(&hex, 16).unwrap_or_else(|_| panic!("no SigBlk for {pid}: {status}"))
}

#[test]
fn a_daemon_started_with_sigterm_blocked_still_stops_cleanly_on_down() {
    use nix::sys::signal::{SigSet, Signal};
    if !root_or_skip("a_daemon_started_with_sigterm_blocked_still_stops_cleanly_on_down") {
        return;
    }
    let a = simple_account("sb");
    // `up` from a thread with SIGTERM, SIGINT and SIGHUP blocked: the mask
    // is handed down to `up` and from it to the daemon (as from a
    // benchmark or a supervisor that waits for signals on a thread).
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().expect("block");
    let o = a.cmd(&["up", &a.name]);
    set.thread_unblock().expect("unblock");
    // The dummy proxy listens nowhere: up says so (exit 4), the daemon runs.
    assert!(matches!(o.status.code(), Some(0) | Some(4)), "up: {}{}", out(&o), err(&o));
    let pid = a.daemon_pid().expect("daemon pid");
    let stop = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP].iter().fold(0u64, |m, s| m | 1 << (*s as u64 - 1));
    assert_eq!(blocked_signals(pid) & stop, 0, "the daemon {pid} has a stop signal blocked");
    // SIGTERM as `down` sends it: the daemon stops through its own exit
    // path (before, it ignored it until `down` killed it 5 s later).
    must(&format!("kill -TERM {pid}"));
    wait_until("the daemon stops on SIGTERM", Duration::from_secs(4), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    let log = a.log();
    assert!(log.contains("daemon stopping"), "no clean stop in the daemon's log:\n{log}");
    assert!(a.down().status.success());
    nothing_left(&a);
}

#[test]
fn two_accounts_naming_one_namespace_in_two_files_are_refused_at_the_second_up() {
    if !root_or_skip("namespace_clash_across_files") {
        return;
    }
    let tag = unique("nc");
    let dir = std::env::temp_dir().join(format!("nsproxy-{tag}"));
    let (a, b) = (format!("{tag}a"), format!("{tag}b"));
    // Both accounts down and their state gone, also when this fails.
    let account = |name: &str| Made::Account { policy: dir.clone(), name: name.to_string() };
    let _gone = Removes::new(vec![Made::Dir(dir.clone()), account(&a), account(&b)]);
    std::fs::create_dir_all(&dir).expect("dir");
    let proxy = "    proxies: [{label: p, url: 'socks5://127.0.0.1:9'}]\n";
    // One namespace, named in both files (neither file names the other
    // account, so `up` of each reads its own file only).
    let ns = format!("sh-{tag}");
    for (file, name) in [("a.yaml", &a), ("b.yaml", &b)] {
        std::fs::write(dir.join(file), format!("accounts:\n  - name: {name}\n    namespace: {ns}\n{proxy}"))
            .expect("write");
    }
    let run = |args: &[&str]| {
        let o = std::process::Command::new(BIN).arg("--policies").arg(&dir).args(args).output().expect("nsproxy");
        (o.status.code(), format!("{}{}", out(&o), err(&o)))
    };
    let (code, said) = run(&["up", &a]);
    assert_eq!(code, Some(4), "{a} is up with no usable proxy: {said}");
    let (code, said) = run(&["up", &b]);
    println!("second up: {said}");
    assert!(code != Some(0) && said.contains(&format!("belongs to account {a}, which is running")), "{said}");
    assert!(!std::path::Path::new(&format!("/run/nsproxy/{b}/daemon.pid")).exists(), "no daemon for {b}");
    assert!(std::path::Path::new(&format!("/run/nsproxy/{a}/daemon.pid")).exists() && ns_exists(&ns), "{a} untouched");
    let (code, said) = run(&["policy", "check"]);
    assert!(code != Some(0) && said.contains("is also used by account"), "policy check sees both files: {said}");
    let (code, said) = run(&["down", &a, "--kill"]);
    assert_eq!(code, Some(0), "{said}");
    let _ = run(&["down", &b]);
    assert!(!ns_exists(&ns), "nothing left");
}
