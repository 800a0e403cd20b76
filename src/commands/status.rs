//! `status` and `list`: what is there for each account (run directory,
//! daemon, namespace, TUN, programs), the daemon's published counters and
//! the saved pool. Gathering reads the host; `render` and `render_list`
//! are pure and tested on fixtures.

use std::fmt::Write as _;

use anyhow::bail;
use serde::Serialize;

use super::{host, require_root};
use crate::config::{self, plan};
use crate::host::rundir::{self, RunDir};
use crate::host::{Host, Paths};
use crate::published::control::Request;
use crate::published::pool::{Record, State};
use crate::published::stats::Snapshot;
use std::time::Duration;

/// One pool member as `status` shows it.
#[derive(Debug, Serialize)]
pub struct ProxyStatus {
    /// Shown in the table; in JSON the record's own `label` stands for it
    /// (one key, not two).
    #[serde(skip)]
    pub label: String,
    pub endpoint: String,
    pub priority: u32,
    pub enabled: bool,
    #[serde(flatten)]
    pub record: Record,
}

/// The pool as saved by the daemon (also shown while the account is down:
/// burns persist), joined with the policy's members.
fn pool_status(
    paths: &Paths,
    account: &str,
    from_policy: Option<&config::Account>,
) -> (Vec<ProxyStatus>, Option<String>) {
    let records = match crate::pool::store::Store::new(paths, account).load() {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Some(e.to_string())),
    };
    let Some(a) = from_policy else {
        let v = records
            .into_iter()
            .map(|r| ProxyStatus {
                label: r.label.clone(),
                endpoint: String::new(),
                priority: 0,
                enabled: true,
                record: r,
            })
            .collect();
        return (v, None);
    };
    let v = a
        .proxies
        .iter()
        .map(|p| ProxyStatus {
            label: p.label.clone(),
            endpoint: p.endpoint(),
            priority: p.priority,
            enabled: p.enabled,
            record: records.iter().find(|r| r.label == p.label).cloned().unwrap_or_else(|| Record::new(&p.label)),
        })
        .collect();
    (v, None)
}

#[derive(Debug, Serialize)]
pub struct AccountStatus {
    pub account: String,
    pub namespace: String,
    /// up: daemon running with its TUN; down: nothing; degraded: partly there.
    pub state: &'static str,
    pub daemon_pid: Option<i32>,
    pub daemon_running: bool,
    pub namespace_exists: bool,
    pub tun_present: bool,
    pub programs: usize,
    pub proxy: Option<String>,
    pub policy: Option<String>,
    /// The daemon's counters (flows, bytes, DNS), when it is running.
    pub stats: Option<Snapshot>,
    /// The active proxy's label and its last egress IP.
    pub active_proxy: Option<String>,
    pub egress_ip: Option<std::net::IpAddr>,
    pub pool: Vec<ProxyStatus>,
    /// The pool state file could not be read.
    pub pool_error: Option<String>,
    /// Containers attached by the CNI plugin.
    pub containers: Vec<crate::published::containers::Attachment>,
}

/// The status of each account, with what is looked up on the host done
/// once for all of them (one pass over /proc for the programs, one thread
/// entering each namespace for the TUNs, one read of the containers'
/// records): `status` of a thousand accounts stays well under a second.
fn account_statuses(host: &dyn Host, accounts: &[(&str, Option<&config::Account>)]) -> Vec<AccountStatus> {
    let firsts: Vec<First> = accounts.iter().map(|(name, from_policy)| first_look(host, name, *from_policy)).collect();
    let live: Vec<String> = firsts.iter().filter(|f| f.ns_exists).map(|f| f.namespace.clone()).collect();
    let (mut tuns, mut programs) = (host.tuns_present(&live).into_iter(), host.netns_program_counts(&live).into_iter());
    let mut containers = rundir::attachments(host.paths(), None);
    firsts
        .into_iter()
        .zip(accounts)
        .map(|(f, (name, from_policy))| {
            let (tun, progs) =
                if f.ns_exists { (tuns.next().unwrap_or(false), programs.next().unwrap_or(0)) } else { (false, 0) };
            let (mine, rest): (Vec<_>, Vec<_>) = containers.drain(..).partition(|c| c.account == *name);
            containers = rest;
            account_status(host, f, *from_policy, tun, progs, mine)
        })
        .collect()
}

/// What is read of one account before the host-wide lookups.
struct First {
    account: String,
    rd: RunDir,
    state: Option<crate::published::state::State>,
    namespace: String,
    running: bool,
    ns_exists: bool,
}

fn first_look(host: &dyn Host, account: &str, from_policy: Option<&config::Account>) -> First {
    let rd = RunDir::new(host.paths(), account);
    let state = rd.read_state().ok().flatten();
    let namespace = plan::namespace_of(account, state.as_ref().map(|s| s.namespace.clone()), || {
        from_policy.map(|a| a.namespace.clone())
    });
    let running = rd.daemon_alive();
    let ns_exists = host.netns_exists(&namespace);
    First { account: account.into(), rd, state, namespace, running, ns_exists }
}

fn account_status(
    host: &dyn Host,
    f: First,
    from_policy: Option<&config::Account>,
    tun: bool,
    programs: usize,
    containers: Vec<crate::published::containers::Attachment>,
) -> AccountStatus {
    let First { account, rd, state, namespace, running, ns_exists } = f;
    let account = account.as_str();
    let tun = ns_exists && tun;
    let st = match (running, ns_exists, tun) {
        (true, true, true) => "up",
        (false, false, _) => "down",
        _ => "degraded",
    };
    let (pool, pool_error) = pool_status(host.paths(), account, from_policy);
    let active = pool.iter().find(|p| p.record.state == State::Active);
    AccountStatus {
        active_proxy: active.map(|p| p.label.clone()),
        egress_ip: active.and_then(|p| p.record.last_egress_ip),
        account: account.into(),
        state: st,
        daemon_pid: if running { rd.read_pid() } else { None },
        daemon_running: running,
        namespace_exists: ns_exists,
        tun_present: tun,
        programs,
        proxy: active
            .map(|p| format!("{} ({})", p.label, p.endpoint))
            .or_else(|| state.as_ref().map(|s| s.proxy.clone()).filter(|p| !p.is_empty())),
        policy: state
            .as_ref()
            .map(|s| s.policy.display().to_string())
            .or_else(|| from_policy.map(|a| a.origin.file.display().to_string())),
        stats: if running { live_stats(&rd) } else { None },
        namespace,
        pool,
        pool_error,
        containers,
    }
}

/// A running daemon's counters, asked over its control socket (an idle
/// daemon publishes nothing on a timer); a daemon that does not answer in
/// a second: the last `stats.json` it wrote, if any.
fn live_stats(rd: &RunDir) -> Option<Snapshot> {
    let asked = super::control::call(&rd.ctl_path(), &Request::Stats, Duration::from_secs(1));
    match asked {
        Ok(r) if r.ok => serde_json::from_value(r.data).ok(),
        _ => std::fs::read(rd.stats_path()).ok().and_then(|b| serde_json::from_slice(&b).ok()),
    }
}

fn all_status(host: &dyn Host, policy: &config::Policy) -> Vec<AccountStatus> {
    let from_policy = policy.load().unwrap_or_default();
    let mut names: std::collections::BTreeSet<String> = from_policy.iter().map(|a| a.name.clone()).collect();
    names.extend(rundir::accounts_with_rundir(host.paths()));
    let by_name: std::collections::HashMap<&str, &config::Account> =
        from_policy.iter().map(|a| (a.name.as_str(), a)).collect();
    let accounts: Vec<(&str, Option<&config::Account>)> =
        names.iter().map(|n| (n.as_str(), by_name.get(n.as_str()).copied())).collect();
    account_statuses(host, &accounts)
}

pub fn status(policy: &config::Policy, account: Option<&str>, json: bool) -> anyhow::Result<()> {
    require_root("status")?;
    let host = host();
    let list = match account {
        Some(a) => {
            let p = policy.load().ok().and_then(|v| v.into_iter().find(|x| x.name == a));
            if p.is_none() && !RunDir::new(host.paths(), a).exists() {
                bail!("unknown account {a:?}: not in policy {} and not up", policy.path.display());
            }
            account_statuses(&host, &[(a, p.as_ref())])
        }
        None => all_status(&host, policy),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    print!("{}", render(&list, crate::pool::unix_now()));
    Ok(())
}

/// The text of `status`: pure, `now` in Unix seconds.
pub fn render(list: &[AccountStatus], now: u64) -> String {
    let mut o = String::new();
    for s in list {
        let _ = writeln!(o, "account:   {}", s.account);
        let _ = writeln!(o, "  state:     {}", s.state);
        let _ = writeln!(o, "  namespace: {} ({})", s.namespace, if s.namespace_exists { "present" } else { "absent" });
        let _ = writeln!(
            o,
            "  daemon:    {}",
            match s.daemon_pid {
                Some(p) => format!("running, pid {p}"),
                None => "not running".into(),
            }
        );
        let _ = writeln!(o, "  tun:       {}", if s.tun_present { "tun0" } else { "absent (no route out)" });
        let _ = writeln!(o, "  programs:  {}", s.programs);
        let _ = writeln!(o, "  proxy:     {}", s.proxy.as_deref().unwrap_or("-"));
        let _ = writeln!(o, "  policy:    {}", s.policy.as_deref().unwrap_or("-"));
        if let Some(st) = &s.stats {
            let _ = writeln!(
                o,
                "  flows:     {} active, {} connecting, {} opened, refused: {} by the proxy, {} by limits, {} stale fake IP",
                st.flows_active,
                st.flows_pending,
                st.flows_opened,
                st.flows_refused_proxy,
                st.flows_refused_limit,
                st.flows_refused_unknown_fake_ip
            );
            let _ =
                writeln!(o, "  bytes:     {} up, {} down; DNS queries: {}", st.bytes_up, st.bytes_down, st.dns_queries);
            if let Some(svc) = &st.service {
                let _ = writeln!(
                    o,
                    "  service:   {}, breaker {}, proxy {}{}; {} allocation(s), {} failed call(s); feedback {} sent, {} failed, {} dropped{}",
                    svc.state,
                    svc.breaker,
                    svc.proxy.as_deref().unwrap_or("-"),
                    svc.refresh_in_s.map(|s| format!(" (cached {s}s)")).unwrap_or_default(),
                    svc.allocations,
                    svc.failed_calls,
                    svc.feedback_sent,
                    svc.feedback_failed,
                    svc.feedback_dropped,
                    svc.last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default()
                );
            }
            if st.flows_refused_rule + st.flows_refused_no_proxy > 0 {
                let _ = writeln!(
                    o,
                    "  refused:   {} by rules, {} with no usable proxy",
                    st.flows_refused_rule, st.flows_refused_no_proxy
                );
            }
        }
        let _ = writeln!(o, "  egress IP: {}", s.egress_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()));
        if !s.containers.is_empty() {
            let ids: Vec<String> = s.containers.iter().map(|c| format!("{} ({})", c.container, c.network)).collect();
            let _ = writeln!(o, "  containers: {}", ids.join(", "));
        }
        if let Some(e) = &s.pool_error {
            let _ = writeln!(o, "  pool:      ERROR {e}");
        }
        if !s.pool.is_empty() {
            let _ = writeln!(o, "  pool:");
            let _ = writeln!(
                o,
                "    {:<16} {:<10} {:>4}  {:<30} {:<16} {:<12} LAST ERROR",
                "LABEL", "STATE", "PRIO", "ENDPOINT", "EGRESS IP", "CHECKED"
            );
            for p in &s.pool {
                let r = &p.record;
                let state = match (r.state, r.burned_until, p.enabled) {
                    (_, _, false) => "disabled".to_string(),
                    (State::Burned, Some(u), _) => {
                        format!("burned {}", ago(u.saturating_sub(now), "left"))
                    }
                    (st, _, _) => st.to_string(),
                };
                let _ = writeln!(
                    o,
                    "    {:<16} {:<10} {:>4}  {:<30} {:<16} {:<12} {}",
                    p.label,
                    state,
                    p.priority,
                    p.endpoint,
                    r.last_egress_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                    r.last_checked_at.map(|t| ago(now.saturating_sub(t), "ago")).unwrap_or_else(|| "never".into()),
                    match (r.state, &r.burn_reason) {
                        (State::Burned, Some(why)) => why.as_str(),
                        _ => r.last_error.as_deref().unwrap_or("-"),
                    }
                );
            }
        }
    }
    o
}

/// `90s ago`, `3h left`.
fn ago(secs: u64, word: &str) -> String {
    match secs {
        s if s < 120 => format!("{s}s {word}"),
        s if s < 7200 => format!("{}m {word}", s / 60),
        s if s < 172_800 => format!("{}h {word}", s / 3600),
        s => format!("{}d {word}", s / 86400),
    }
}

pub fn list(policy: &config::Policy, json: bool) -> anyhow::Result<()> {
    require_root("list")?;
    let list = all_status(&host(), policy);
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    print!("{}", render_list(&list));
    Ok(())
}

/// The text of `list`: pure.
pub fn render_list(list: &[AccountStatus]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{:<24} {:<9} {:<24} {:>8}  PROXY", "ACCOUNT", "STATE", "NAMESPACE", "PID");
    for s in list {
        let _ = writeln!(
            o,
            "{:<24} {:<9} {:<24} {:>8}  {}",
            s.account,
            s.state,
            s.namespace,
            s.daemon_pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            s.proxy.as_deref().unwrap_or("-")
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: &str, state: State) -> Record {
        Record { last_checked_at: Some(9_900), ..Record { state, ..Record::new(label) } }
    }

    fn up_account() -> AccountStatus {
        AccountStatus {
            account: "acct".into(),
            namespace: "nsp-acct".into(),
            state: "up",
            daemon_pid: Some(4242),
            daemon_running: true,
            namespace_exists: true,
            tun_present: true,
            programs: 2,
            proxy: Some("p1 (socks5://10.0.0.1:1080)".into()),
            policy: Some("/etc/nsproxy/policies".into()),
            stats: Some(Snapshot {
                flows_active: 3,
                flows_pending: 1,
                flows_opened: 40,
                flows_refused_proxy: 2,
                bytes_up: 100,
                bytes_down: 2000,
                dns_queries: 7,
                flows_refused_rule: 1,
                ..Default::default()
            }),
            active_proxy: Some("p1".into()),
            egress_ip: Some("192.0.2.7".parse().unwrap()),
            pool: vec![
                ProxyStatus {
                    label: "p1".into(),
                    endpoint: "socks5://10.0.0.1:1080".into(),
                    priority: 10,
                    enabled: true,
                    record: Record {
                        last_egress_ip: Some("192.0.2.7".parse().unwrap()),
                        ..record("p1", State::Active)
                    },
                },
                ProxyStatus {
                    label: "p2".into(),
                    endpoint: "http://10.0.0.2:3128".into(),
                    priority: 20,
                    enabled: true,
                    record: Record {
                        burned_until: Some(10_000 + 3 * 3600),
                        last_error: Some("connection refused".into()),
                        burn_reason: Some("check binance: HTTP status 403".into()),
                        last_checked_at: None,
                        ..record("p2", State::Burned)
                    },
                },
                ProxyStatus {
                    label: "p3".into(),
                    endpoint: "socks5://10.0.0.3:1080".into(),
                    priority: 30,
                    enabled: false,
                    record: record("p3", State::Standby),
                },
            ],
            pool_error: None,
            containers: Vec::new(),
        }
    }

    #[test]
    fn status_text_of_an_account_that_is_up() {
        let text = render(&[up_account()], 10_000);
        let want = "\
account:   acct
  state:     up
  namespace: nsp-acct (present)
  daemon:    running, pid 4242
  tun:       tun0
  programs:  2
  proxy:     p1 (socks5://10.0.0.1:1080)
  policy:    /etc/nsproxy/policies
  flows:     3 active, 1 connecting, 40 opened, refused: 2 by the proxy, 0 by limits, 0 stale fake IP
  bytes:     100 up, 2000 down; DNS queries: 7
  refused:   1 by rules, 0 with no usable proxy
  egress IP: 192.0.2.7
  pool:
    LABEL            STATE      PRIO  ENDPOINT                       EGRESS IP        CHECKED      LAST ERROR
    p1               active       10  socks5://10.0.0.1:1080         192.0.2.7        100s ago     -
    p2               burned 3h left   20  http://10.0.0.2:3128           -                never        check binance: HTTP status 403
    p3               disabled     30  socks5://10.0.0.3:1080         -                100s ago     -
";
        assert_eq!(text, want);
    }

    #[test]
    fn status_text_of_an_account_that_is_down_with_a_broken_pool_file() {
        let s = AccountStatus {
            state: "down",
            daemon_pid: None,
            daemon_running: false,
            namespace_exists: false,
            tun_present: false,
            programs: 0,
            proxy: None,
            stats: None,
            active_proxy: None,
            egress_ip: None,
            pool: Vec::new(),
            pool_error: Some("pool state /var/lib/nsproxy/acct/pool.json is corrupt: EOF".into()),
            ..up_account()
        };
        let text = render(&[s], 10_000);
        assert!(text.contains("  namespace: nsp-acct (absent)\n"), "{text}");
        assert!(text.contains("  daemon:    not running\n"), "{text}");
        assert!(text.contains("  tun:       absent (no route out)\n"), "{text}");
        assert!(text.contains("  proxy:     -\n  policy:    /etc/nsproxy/policies\n  egress IP: -\n"), "{text}");
        assert!(text.contains("  pool:      ERROR pool state /var/lib/nsproxy/acct/pool.json is corrupt: EOF\n"));
        assert!(!text.contains("flows:") && !text.contains("LABEL"), "no counters or table when down: {text}");
    }

    #[test]
    fn list_text_has_one_row_per_account() {
        let down = AccountStatus { account: "b".into(), state: "down", daemon_pid: None, proxy: None, ..up_account() };
        let text = render_list(&[up_account(), down]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ACCOUNT") && lines[0].ends_with("PROXY"));
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>()[..4], ["acct", "up", "nsp-acct", "4242"]);
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["b", "down", "nsp-acct", "-", "-"]);
    }

    #[test]
    fn json_has_each_key_once() {
        let a = up_account();
        for p in &a.pool {
            let json = serde_json::to_string(p).unwrap();
            assert_eq!(json.matches("\"label\":").count(), 1, "{json}");
        }
        let v: serde_json::Value = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(v["pool"][1]["label"], "p2");
        assert_eq!(v["pool"][1]["burn_reason"], "check binance: HTTP status 403");
    }

    #[test]
    fn ages_round_down_to_their_unit() {
        assert_eq!(ago(119, "ago"), "119s ago");
        assert_eq!(ago(120, "ago"), "2m ago");
        assert_eq!(ago(7200, "left"), "2h left");
        assert_eq!(ago(172_800, "left"), "2d left");
    }
}
