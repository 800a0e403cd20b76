//! An account's plan against the recording fake host, without root: the
//! daemon's start failing at each step removes exactly what that start
//! created (and leaves what it found), and `down` after each partial state
//! removes everything and is safe to repeat.

use std::path::{Path, PathBuf};

use nsproxy::config::{Account, Policy};
use nsproxy::daemon::plan::AccountPlan;
use nsproxy::host::fake::FakeHost;
use nsproxy::host::{Host, Paths};

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(tag: &str) -> (Dir, FakeHost) {
    let dir = std::env::temp_dir().join(format!("nsp-plan-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/nsswitch.conf"), "passwd: files\nhosts: files mdns4 dns\n").unwrap();
    let host = FakeHost::new(Paths::under(&dir));
    (Dir(dir), host)
}

fn policy(dir: &Path) -> (Policy, Account) {
    let path = dir.join("policy.yaml");
    std::fs::write(
        &path,
        "accounts:\n  - name: acct\n    proxies:\n      - label: p1\n        url: socks5://127.0.0.1:1\n",
    )
    .unwrap();
    let p = Policy::plain(&path);
    let a = p.load_account("acct").expect("account");
    (p, a)
}

/// What is on the (fake) host for the account.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    namespace: bool,
    etc_netns: bool,
    tun: bool,
    pid_file: bool,
    state_file: bool,
    run_dir: bool,
}

fn seen(host: &FakeHost) -> Seen {
    let p = host.paths();
    Seen {
        namespace: host.netns_exists("nsp-acct"),
        etc_netns: p.etc_netns_dir("nsp-acct").exists(),
        tun: host.tun_present("nsp-acct"),
        pid_file: p.run_dir("acct").join("daemon.pid").exists(),
        state_file: p.run_dir("acct").join("state.json").exists(),
        run_dir: p.run_dir("acct").exists(),
    }
}

const NOTHING: Seen =
    Seen { namespace: false, etc_netns: false, tun: false, pid_file: false, state_file: false, run_dir: false };

#[test]
fn a_start_that_succeeds_applies_every_step() {
    let (dir, host) = setup("ok");
    let (p, a) = policy(&dir.0);
    let started = nsproxy::daemon::start_with(&host, a, vec![None], &p).expect("start");
    assert_eq!(
        seen(&host),
        Seen { namespace: true, etc_netns: true, tun: true, pid_file: true, state_file: true, run_dir: true }
    );
    let resolv = std::fs::read_to_string(host.paths().etc_netns_dir("nsp-acct").join("resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 198.18.0.2"), "{resolv}");
    let nss = std::fs::read_to_string(host.paths().etc_netns_dir("nsp-acct").join("nsswitch.conf")).unwrap();
    assert!(nss.contains("passwd: files\n") && nss.contains("hosts: files dns\n") && !nss.contains("mdns4"), "{nss}");
    assert_eq!(host.calls(), vec!["netns_create nsp-acct", "etc_netns_write nsp-acct", "tun_create nsp-acct"]);
    // The lock is held: a second start is refused and removes nothing.
    let (p2, a2) = policy(&dir.0);
    let e = nsproxy::daemon::start_with(&host, a2, vec![None], &p2).err().expect("second start refused");
    assert!(format!("{e:#}").contains("a daemon is already running"), "{e:#}");
    assert!(seen(&host).pid_file && seen(&host).namespace, "the running daemon's files stay");
    drop(started);
}

#[test]
fn a_start_failing_at_each_step_rolls_back_what_it_created() {
    for (step, created_before) in [("netns_create", 0), ("etc_netns_write", 1), ("tun_create", 2), ("state", 3)] {
        let (dir, host) = setup(step);
        let (p, a) = policy(&dir.0);
        if step == "state" {
            // state.json cannot be replaced: a directory is in the way.
            std::fs::create_dir_all(host.paths().run_dir("acct").join("state.json")).unwrap();
        } else {
            host.fail(step);
        }
        let e = nsproxy::daemon::start_with(&host, a, vec![None], &p).err().expect("start fails");
        let msg = format!("{e:#}");
        assert!(msg.contains("acct") || msg.contains("state.json"), "{step}: the error names the account: {msg}");
        let s = seen(&host);
        assert_eq!(
            (s.namespace, s.etc_netns, s.tun, s.pid_file),
            (false, false, false, false),
            "{step}: everything this start created is gone"
        );
        assert!(s.run_dir, "{step}: the run directory (with the daemon's log) stays");
        let calls = host.calls();
        let undo: Vec<&String> = calls.iter().filter(|c| c.contains("remove")).collect();
        let want: Vec<String> = ["etc_netns_remove nsp-acct", "netns_remove nsp-acct"]
            .iter()
            .rev()
            .take(created_before.min(2))
            .rev()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(undo, want.iter().collect::<Vec<_>>(), "{step}: undone newest first, only what was created");
    }
}

#[test]
fn rollback_leaves_a_namespace_and_files_it_found() {
    let (dir, host) = setup("reuse");
    let (p, a) = policy(&dir.0);
    host.netns_create("nsp-acct").unwrap();
    host.etc_netns_write("nsp-acct", "198.18.0.2".parse().unwrap()).unwrap();
    host.fail("tun_create");
    nsproxy::daemon::start_with(&host, a, vec![None], &p).err().expect("start fails");
    let s = seen(&host);
    assert!(s.namespace && s.etc_netns, "what the start found is not its to remove: {s:?}");
    assert!(!s.pid_file);
}

#[test]
fn down_after_each_partial_state_removes_everything_and_repeats() {
    type Make = fn(&FakeHost);
    let states: [(&str, Make); 6] = [
        ("nothing", |_| {}),
        ("run dir", |h| std::fs::create_dir_all(h.paths().run_dir("acct")).unwrap()),
        ("stale pid", |h| {
            std::fs::create_dir_all(h.paths().run_dir("acct")).unwrap();
            std::fs::write(h.paths().run_dir("acct").join("daemon.pid"), "999999\n").unwrap();
        }),
        ("namespace", |h| {
            h.netns_create("nsp-acct").unwrap();
        }),
        ("namespace and files", |h| {
            h.netns_create("nsp-acct").unwrap();
            h.etc_netns_write("nsp-acct", "198.18.0.2".parse().unwrap()).unwrap();
        }),
        ("namespace, files, TUN", |h| {
            std::fs::create_dir_all(h.paths().run_dir("acct")).unwrap();
            h.netns_create("nsp-acct").unwrap();
            h.etc_netns_write("nsp-acct", "198.18.0.2".parse().unwrap()).unwrap();
            let plan = nsproxy::host::TunPlan {
                namespace: "nsp-acct".into(),
                path: None,
                ifname: "tun0".into(),
                address: "198.18.0.1".parse().unwrap(),
                mtu: 1500,
                txqueuelen: 10,
                ipv6: false,
            };
            drop(h.tun_create(&plan).unwrap());
        }),
    ];
    for (name, make) in states {
        let (_dir, host) = setup(&name.replace([' ', ','], "-"));
        make(&host);
        for round in 0..2 {
            let plan = AccountPlan::known(host.paths(), "acct", || None);
            assert_eq!(plan.namespace, "nsp-acct", "the default namespace name");
            plan.teardown(&host, false).unwrap_or_else(|e| panic!("{name}, round {round}: {e:#}"));
            assert_eq!(seen(&host), NOTHING, "{name}, round {round}: everything is gone");
        }
    }
}

#[test]
fn down_refuses_while_programs_run_unless_told_to_kill_them() {
    let (_dir, host) = setup("programs");
    host.netns_create("nsp-acct").unwrap();
    host.add_program("nsp-acct", 4242);
    let plan = AccountPlan::known(host.paths(), "acct", || None);
    let e = plan.teardown(&host, false).expect_err("refused");
    let msg = format!("{e:#}");
    assert!(msg.contains("pids 4242") && msg.contains("--kill"), "{msg}");
    assert!(host.netns_exists("nsp-acct"), "nothing removed when refused");
    plan.teardown(&host, true).expect("down --kill");
    assert!(host.calls().contains(&"signal 4242 SIGTERM".to_string()), "{:?}", host.calls());
    assert_eq!(seen(&host), NOTHING);
}

#[test]
fn the_namespace_comes_from_the_state_then_the_policy_then_the_default() {
    let (_dir, host) = setup("names");
    let plan = AccountPlan::known(host.paths(), "acct", || Some("from-policy".into()));
    assert_eq!(plan.namespace, "from-policy");
    assert_eq!(AccountPlan::known(host.paths(), "acct", || None).namespace, "nsp-acct");
    let run = host.paths().run_dir("acct");
    std::fs::create_dir_all(&run).unwrap();
    let state = nsproxy::published::state::State {
        account: "acct".into(),
        namespace: "from-state".into(),
        pid: 1,
        policy: "/p".into(),
        tun: "tun0".into(),
        dns: "198.18.0.2".into(),
        proxy: String::new(),
        exec_users: vec![],
        exec_groups: vec![],
        secret_env: vec![],
        started_at_unix: 0,
    };
    std::fs::write(run.join("state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
    assert_eq!(AccountPlan::known(host.paths(), "acct", || Some("from-policy".into())).namespace, "from-state");
}

#[test]
fn down_leaves_a_file_an_admin_put_in_etc_netns() {
    let (_dir, host) = setup("admin");
    host.netns_create("nsp-acct").unwrap();
    host.etc_netns_write("nsp-acct", "198.18.0.2".parse().unwrap()).unwrap();
    let etc = host.paths().etc_netns_dir("nsp-acct");
    std::fs::write(etc.join("hosts"), "10.0.0.5 db.internal\n").unwrap();
    AccountPlan::known(host.paths(), "acct", || None).teardown(&host, false).expect("down");
    assert!(!etc.join("resolv.conf").exists() && !etc.join("nsswitch.conf").exists(), "nsproxy's files go");
    assert_eq!(std::fs::read_to_string(etc.join("hosts")).unwrap(), "10.0.0.5 db.internal\n", "the admin's stays");
    std::fs::remove_file(etc.join("hosts")).unwrap();
    AccountPlan::known(host.paths(), "acct", || None).teardown(&host, false).expect("down again");
    assert!(!etc.exists(), "an empty directory goes");
}
