//! The CNI plugin, driven as a runtime drives it (the binary named
//! `nsproxy-cni`, `CNI_*` in its environment, the network configuration on
//! stdin), against namespaces this test makes as "containers": ADD, CHECK,
//! DEL (also without ADD, and twice), VERSION, bad configurations, a daemon
//! restart that attaches the container again, and traffic from inside
//! through the account's proxy. Real runtimes are in tests/containers.rs.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// A directory holding `nsproxy-cni`, the nsproxy binary under the name
/// the runtime calls it by; removed on drop.
struct PluginDir(PathBuf, #[allow(dead_code)] Removes);

impl std::ops::Deref for PluginDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

fn plugin_dir(tag: &str) -> PluginDir {
    let dir = std::env::temp_dir().join(format!("nsproxy-cni-bin-{tag}-{}", std::process::id()));
    let gone = Removes::new(vec![Made::Dir(dir.clone())]);
    std::fs::create_dir_all(&dir).expect("dir");
    let link = dir.join("nsproxy-cni");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(BIN, &link).expect("symlink");
    PluginDir(dir, gone)
}

/// Runs the plugin: `env` is CNI_COMMAND and the rest, `conf` its stdin.
fn cni(dir: &Path, env: &[(&str, &str)], conf: &str) -> (Output, serde_json::Value) {
    let mut child = Command::new(dir.join("nsproxy-cni"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nsproxy-cni");
    child.stdin.take().expect("stdin").write_all(conf.as_bytes()).expect("conf");
    let o = child.wait_with_output().expect("wait");
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o, v)
}

fn conf(account: &str, policy: &Path) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"nsp-test","type":"nsproxy-cni","account":"{account}","policies":"{}"}}"#,
        policy.display()
    )
}

/// A network namespace standing in for a container's, removed on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        must(&format!("ip netns add {name}"));
        Netns(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
    fn sh(&self, cmd: &str) -> Output {
        sh(&format!("ip netns exec {} sh -c '{cmd}'", self.0))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.0));
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.0));
    }
}

#[test]
fn add_check_del_and_version_as_a_runtime_calls_them() {
    if !root_or_skip("cni_plugin") {
        return;
    }
    let _g = serial();
    let topo = Topology::new(&[Kind::Microsocks]);
    // A moved address range: the result and the container's TUN follow it.
    let a = Account::for_proxy("cn", &topo.proxies[0], "    dns: {fake_ip_range: 100.80.0.0/16}\n");
    let dir = plugin_dir("a");
    let ns = Netns::new(format!("{}-c1", topo.prefix));
    let id = format!("ctr{}", std::process::id());
    let add =
        [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", id.as_str()), ("CNI_NETNS", &ns.path()), ("CNI_IFNAME", "eth0")];
    let del = [("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", id.as_str()), ("CNI_NETNS", ""), ("CNI_IFNAME", "eth0")];
    let check =
        [("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", id.as_str()), ("CNI_NETNS", &ns.path()), ("CNI_IFNAME", "eth0")];
    let c = conf(&a.name, &a.policy);

    let (o, v) = cni(&dir, &[("CNI_COMMAND", "VERSION")], &c);
    assert!(o.status.success(), "{}", err(&o));
    assert!(v["supportedVersions"].as_array().is_some_and(|s| s.iter().any(|x| x == "1.0.0")), "{v}");
    // DEL before any ADD: nothing to do, success, no output.
    let (o, _) = cni(&dir, &del, &c);
    assert!(o.status.success() && o.stdout.is_empty(), "DEL without ADD: {} {}", out(&o), err(&o));
    // The container's lock file goes with DEL (they piled up in /run).
    let lock = std::path::PathBuf::from(format!("/run/nsproxy/.cni/{id}.lock"));
    assert!(!lock.exists(), "DEL left {}", lock.display());

    // ADD: the account was not up; the plugin starts its daemon.
    assert!(a.daemon_pid().is_none());
    let (o, v) = cni(&dir, &add, &c);
    assert!(o.status.success(), "ADD: {} {}", out(&o), err(&o));
    println!("ADD result: {v}");
    assert_eq!(v["interfaces"][0]["name"], "eth0");
    assert_eq!(v["interfaces"][0]["sandbox"], ns.path().as_str());
    assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(v["ips"][0]["address"], "100.80.0.1/32", "the account's range: {v}");
    let dns = v["dns"]["nameservers"][0].as_str().expect("a nameserver").to_string();
    assert_eq!(dns, "100.80.0.2");
    assert!(a.daemon_pid().is_some(), "ADD started the account's daemon");
    // What the runtime then does: the result's nameserver in resolv.conf.
    std::fs::create_dir_all(format!("/etc/netns/{}", ns.0)).expect("etc");
    std::fs::write(format!("/etc/netns/{}/resolv.conf", ns.0), format!("nameserver {dns}\n")).expect("resolv");
    let links = out(&ns.sh("ip -o link show | cut -d: -f2"));
    let names: Vec<&str> = links.split_whitespace().collect();
    assert_eq!(names, vec!["lo", "eth0"], "only lo and the TUN: {links}");
    assert!(out(&ns.sh("ip -4 -o addr show dev eth0")).contains("inet 100.80.0.1/32"));
    let routes = out(&ns.sh("ip route"));
    assert!(routes.trim().starts_with("default dev eth0") && routes.lines().count() == 1, "{routes}");
    let ask = format!("curl -sS -m 10 http://{HOSTNAME}/");
    let got = ns.sh(&ask);
    assert_eq!(out(&got).trim(), topo.proxies[0].egress.to_string(), "through the proxy: {}", err(&got));
    assert!(!topo.leaked());
    let (o, _) = cni(&dir, &check, &c);
    assert!(o.status.success(), "CHECK: {} {}", out(&o), err(&o));
    let st = a.status_json();
    assert_eq!(st["containers"][0]["container"], id.as_str(), "status lists the container: {st}");

    // The daemon restarts: the container gets its TUN back.
    must(&format!("kill {}", a.daemon_pid().expect("pid")));
    wait_until("the daemon gone", Duration::from_secs(10), || a.daemon_pid().is_none());
    let o = ns.sh(&ask);
    assert!(!o.status.success(), "no way out while the daemon is down: {}", out(&o));
    let (o, _) = cni(&dir, &check, &c);
    assert!(!o.status.success(), "CHECK fails while the daemon is down");
    a.up();
    wait_until("the container attached again", Duration::from_secs(10), || ns.sh(&ask).status.success());
    assert_eq!(out(&ns.sh(&ask)).trim(), topo.proxies[0].egress.to_string());

    // DEL: detached, the record gone; again: still fine.
    let (o, _) = cni(&dir, &del, &c);
    assert!(o.status.success(), "DEL: {} {}", out(&o), err(&o));
    let links = out(&ns.sh("ip -o link show"));
    assert!(!links.contains("eth0"), "the TUN is gone: {links}");
    assert!(a.status_json()["containers"].as_array().is_none_or(|c| c.is_empty()));
    let (o, v) = cni(&dir, &check, &c);
    assert!(!o.status.success() && v["code"] == 3, "CHECK after DEL: {v}");
    assert!(!lock.exists(), "DEL left {}", lock.display());
    let (o, _) = cni(&dir, &del, &c);
    assert!(o.status.success(), "DEL twice");
    assert!(!lock.exists(), "DEL twice left {}", lock.display());

    // STATUS (1.1): ready while the policy loads.
    let status = [("CNI_COMMAND", "STATUS")];
    let (o, _) = cni(&dir, &status, &c.replace("1.0.0", "1.1.0"));
    assert!(o.status.success(), "STATUS: {} {}", out(&o), err(&o));
    let broken = c.replace("1.0.0", "1.1.0").replace(&a.policy.display().to_string(), "/nonexistent/nsp-policy");
    let (o, v) = cni(&dir, &status, &broken);
    assert!(!o.status.success() && v["code"] == 50, "STATUS with no policy: {v}");
    // GC (1.1): an attachment the runtime no longer lists is detached.
    let (o, _) = cni(&dir, &add, &c);
    assert!(o.status.success(), "ADD again: {}", out(&o));
    let gc = c
        .replace("1.0.0", "1.1.0")
        .replace(r#""type":"nsproxy-cni","#, r#""type":"nsproxy-cni","cni.dev/valid-attachments":[],"#);
    let (o, _) = cni(&dir, &[("CNI_COMMAND", "GC")], &gc);
    assert!(o.status.success(), "GC: {} {}", out(&o), err(&o));
    assert!(!out(&ns.sh("ip -o link show")).contains("eth0"), "GC detached the forgotten container");
    assert!(a.status_json()["containers"].as_array().is_none_or(|c| c.is_empty()));
    assert!(a.down().status.success());
    assert!(!topo.leaked());
}

#[test]
fn bad_configurations_fail_with_a_cni_error_and_leave_nothing() {
    if !root_or_skip("cni_bad_config") {
        return;
    }
    let _g = serial();
    let a = Account::new("cb", &format!("    proxies:\n      - label: p\n        url: {NO_PROXY_URL}\n"));
    let dir = plugin_dir("b");
    let ns = Netns::new(unique("nspcb"));
    let id = format!("bad{}", std::process::id());
    let add =
        [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", id.as_str()), ("CNI_NETNS", &ns.path()), ("CNI_IFNAME", "eth0")];
    let policy = a.policy.display().to_string();
    for (what, conf, want) in [
        (
            "an unknown account",
            format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"nsproxy-cni","account":"nope","policies":"{policy}"}}"#
            ),
            "no account named \"nope\"",
        ),
        (
            "no account",
            format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"nsproxy-cni","policies":"{policy}"}}"#),
            "no account for container",
        ),
        (
            "a missing policy",
            format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"nsproxy-cni","account":"{}","policies":"/nonexistent/nsp"}}"#,
                a.name
            ),
            "/nonexistent/nsp",
        ),
        (
            "a misspelt field",
            format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"nsproxy-cni","acount":"{}"}}"#, a.name),
            "unknown field \"acount\"",
        ),
        ("not JSON", "{".to_string(), "not valid JSON"),
    ] {
        let (o, v) = cni(&dir, &add, &conf);
        println!("{what}: {v}");
        assert!(!o.status.success(), "{what}: ADD must fail");
        assert!(v["code"].as_u64().is_some(), "{what}: a CNI error on stdout: {}", out(&o));
        assert!(v["msg"].as_str().unwrap_or("").contains(want), "{what}: {v}");
    }
    let (o, v) = cni(
        &dir,
        &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "eth0")],
        &conf(&a.name, &a.policy),
    );
    assert!(!o.status.success() && v["code"] == 4, "no CNI_NETNS: {v}");
    assert!(v["msg"].as_str().unwrap_or("").contains("CNI_NETNS"), "{v}");
    assert!(a.daemon_pid().is_none(), "no daemon was started for a bad configuration");
    assert!(!Path::new(&format!("/run/nsproxy/.cni/{id}.json")).exists(), "no record left");
    assert!(!out(&ns.sh("ip -o link show")).contains("eth0"));
}
