//! Real container runtimes on an nsproxy CNI network, offline: podman 4.3
//! (CNI backend, `--rootfs` of busybox-static) and containerd 1.6 (`ctr run
//! --cni --rootfs`). Each runtime gets a private configuration, storage and
//! plugin directory made here; the host's `/etc/cni/net.d` files (Debian's
//! 87-podman-bridge.conflist masquerades) are never used: podman is given
//! its own config directory, and ctr, which reads only the first file in
//! `/etc/cni/net.d`, gets ours placed first and removed afterwards.

mod common;

use std::time::Duration;

use common::containers::*;
use common::*;

/// What a container sees and gets: only lo and the TUN, one default route
/// via it, the account's DNS first, a name that egresses through the
/// account's proxy, UDP refused.
const INSIDE: &str = "ip -o link show | cut -d: -f2 | tr -d ' ' | tr '\\n' ','; echo; \
    ip route; echo ---; cat /etc/resolv.conf; echo ---; \
    timeout 15 wget -q -O - http://api.exchange.test/; echo; echo ---; \
    timeout 3 tftp -g -r x -l /tmp/x 192.0.2.1 2>&1; echo tftp-rc=$?; echo done";

#[test]
fn podman_runs_a_container_whose_only_way_out_is_the_accounts_proxy() {
    if !root_or_skip("podman_cni") || !tools_or_skip("podman_cni", &["podman", "runc"]) {
        return;
    }
    let _g = serial();
    let topo = Topology::new(&[Kind::Microsocks]);
    let a = Account::for_proxy("pd", &topo.proxies[0], "");
    let pm = Podman::new("a");
    pm.network("nsp-pd", &a);
    let o = pm.run("nsp-pd", INSIDE);
    let text = out(&o);
    println!("podman: {text}\nstderr: {}", err(&o));
    assert!(o.status.success(), "podman run: {text} {}", err(&o));
    let parts: Vec<&str> = text.split("---").collect();
    assert_eq!(parts[0].lines().next().unwrap_or(""), "lo,eth0,", "only lo and the TUN: {text}");
    let routes: Vec<&str> = parts[0].lines().skip(1).filter(|l| !l.is_empty()).collect();
    assert_eq!(routes.iter().map(|r| r.trim()).collect::<Vec<_>>(), vec!["default dev eth0"], "{text}");
    assert!(parts[1].trim().starts_with("nameserver 198.18.0.2"), "the account's DNS first: {text}");
    assert_eq!(parts[2].trim(), topo.proxies[0].egress.to_string(), "the origin saw the proxy: {text}");
    assert!(!topo.leaked(), "the origin saw the host");
    assert!(parts[3].contains("tftp-rc=") && !parts[3].contains("tftp-rc=0"), "UDP gets nowhere: {text}");
    // After the container: DEL ran, nothing left but the account.
    wait_until("the container's record gone", Duration::from_secs(10), || {
        a.status_json()["containers"].as_array().is_none_or(|c| c.is_empty())
    });
    let st = a.status_json();
    assert_eq!(st["state"], "up", "{st}");
    assert!(st["stats"]["udp_refused"].as_u64().unwrap_or(0) >= 1, "UDP from the container was refused: {st}");
    assert!(a.down().status.success());
}

#[test]
fn ctr_runs_a_container_whose_only_way_out_is_the_accounts_proxy() {
    if !root_or_skip("ctr_cni") || !tools_or_skip("ctr_cni", &["containerd", "ctr", "runc"]) {
        return;
    }
    let _g = serial();
    let topo = Topology::new(&[Kind::Dante]);
    let a = Account::for_proxy("cd", &topo.proxies[0], "");
    let ctrd = Containerd::new("a", "nsp-cd", &a);
    let o = ctrd.run(&format!("nsp-{}", std::process::id()), INSIDE);
    let text = out(&o);
    println!("ctr: {text}\nstderr: {}", err(&o));
    assert!(o.status.success(), "ctr run: {text} {}", err(&o));
    let parts: Vec<&str> = text.split("---").collect();
    assert_eq!(parts[0].lines().next().unwrap_or(""), "lo,eth0,", "only lo and the TUN: {text}");
    assert_eq!(parts[2].trim(), topo.proxies[0].egress.to_string(), "the origin saw the proxy: {text}");
    assert!(!topo.leaked(), "the origin saw the host");
    wait_until("the container's record gone", Duration::from_secs(10), || {
        a.status_json()["containers"].as_array().is_none_or(|c| c.is_empty())
    });
    assert!(a.down().status.success());
}

#[test]
fn twenty_containers_on_two_accounts_in_parallel_each_through_its_own_proxy() {
    if !root_or_skip("podman_parallel") || !tools_or_skip("podman_parallel", &["podman", "runc"]) {
        return;
    }
    let _g = serial();
    let topo = Topology::new(&[Kind::Microsocks, Kind::Dante]);
    let x = Account::for_proxy("px", &topo.proxies[0], "");
    let y = Account::for_proxy("py", &topo.proxies[1], "");
    let pm = Podman::new("par");
    pm.network("nsp-x", &x);
    pm.network("nsp-y", &y);
    let t = std::time::Instant::now();
    let seen: Vec<(String, String, String)> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..20)
            .map(|i| {
                let (net, want) = if i % 2 == 0 { ("nsp-x", &topo.proxies[0]) } else { ("nsp-y", &topo.proxies[1]) };
                let pm = &pm;
                s.spawn(move || {
                    let o = pm.run(net, "timeout 20 wget -q -O - http://api.exchange.test/");
                    (
                        net.to_string(),
                        want.egress.to_string(),
                        format!(
                            "{}{}",
                            out(&o).trim(),
                            if o.status.success() { String::new() } else { format!(" (failed: {})", err(&o).trim()) }
                        ),
                    )
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().expect("thread")).collect()
    });
    println!("20 containers on two accounts in {:?}", t.elapsed());
    for (net, want, got) in &seen {
        assert_eq!(got, want, "a container on {net} must egress through its account's proxy");
    }
    assert!(!topo.leaked());
    for a in [&x, &y] {
        wait_until("every record gone", Duration::from_secs(15), || {
            a.status_json()["containers"].as_array().is_none_or(|c| c.is_empty())
        });
    }
    let left: Vec<String> = std::fs::read_dir("/run/nsproxy/.cni")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "records left: {left:?}");
    assert!(x.down().status.success() && y.down().status.success());
}

#[test]
fn podman_and_ctr_join_the_namespace_that_up_made() {
    if !root_or_skip("join_up_namespace")
        || !tools_or_skip("join_up_namespace", &["podman", "containerd", "ctr", "runc"])
    {
        return;
    }
    let _g = serial();
    let topo = Topology::new(&[Kind::Microsocks]);
    let a = Account::for_proxy("jn", &topo.proxies[0], "");
    a.up();
    let want = topo.proxies[0].egress.to_string();
    let ns = format!("ns:/run/netns/{}", a.namespace);
    let script = "ip -o link show | cut -d: -f2 | tr -d ' ' | tr '\\n' ','; echo; cat /etc/resolv.conf; echo ---; \
        timeout 15 wget -q -O - http://api.exchange.test/";
    let pm = Podman::new("join");
    let o = pm.run(&ns, script);
    let text = out(&o);
    println!("podman --network {ns}: {text} {}", err(&o));
    assert!(o.status.success(), "{text} {}", err(&o));
    assert!(text.starts_with("lo,tun0,"), "the account's namespace: {text}");
    let servers: Vec<&str> = text.lines().filter(|l| l.starts_with("nameserver")).collect();
    assert_eq!(servers, vec!["nameserver 198.18.0.2"], "podman takes /etc/netns/<ns>/resolv.conf: {text}");
    assert_eq!(text.split("---").nth(1).unwrap_or("").trim(), want, "{text}");

    let ctrd = Containerd::new("join", "unused", &a);
    let o =
        ctrd.ctr_run_with_ns(&format!("join{}", std::process::id()), &format!("/run/netns/{}", a.namespace), script);
    let text = out(&o);
    println!("ctr --with-ns network:/run/netns/{}: {text} {}", a.namespace, err(&o));
    assert!(o.status.success(), "{text} {}", err(&o));
    assert!(text.starts_with("lo,tun0,"), "{text}");
    assert_eq!(text.split("---").nth(1).unwrap_or("").trim(), want, "{text}");
    assert!(!topo.leaked());
    assert_eq!(out(&a.cmd(&["status", &a.name])).matches("containers:").count(), 0, "joining is not attaching");
    assert!(a.down().status.success());
}
