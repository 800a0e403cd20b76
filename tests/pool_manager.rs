//! The pool manager without root: real health checks through in-process
//! SOCKS5 proxies, tokio's paused clock driving the intervals, the pool's
//! clock following it (burn expiry), the pool file in a temporary
//! directory. Failover, failback, rotation with a burn, and burn expiry.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nsproxy::host::Paths;
use nsproxy::pool::manager::{self, ManagerConfig, Order};
use nsproxy::pool::{PoolHandle, State};
use support::socks::Socks;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

fn temp_paths(tag: &str) -> (PathBuf, Paths) {
    let dir = std::env::temp_dir().join(format!("nsp-pm-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("var/lib")).unwrap();
    std::fs::create_dir_all(dir.join("run")).unwrap();
    (dir.clone(), Paths::under(&dir))
}

fn account(p1: &Socks, p2: &Socks) -> nsproxy::config::Account {
    let text = format!(
        "accounts:
  - name: acct
    proxies:
      - label: p1
        url: {}
        priority: 10
      - label: p2
        url: {}
        priority: 20
    health_check:
      interval: 10s
      timeout: 2s
      target: tcp://api.exchange.test:443
      failures_before_unhealthy: 2
    pool:
      failback: true
",
        p1.url(),
        p2.url()
    );
    nsproxy::config::parse_str(Path::new("t.yaml"), &text).expect("policy").remove(0)
}

fn state_of(h: &PoolHandle, label: &str) -> (State, Option<u64>) {
    let p = h.lock();
    let r = p.records().iter().find(|r| r.label == label).expect("member").clone();
    (r.state, r.burned_until)
}

fn saved(paths: &Paths) -> String {
    std::fs::read_to_string(paths.state_dir("acct").join("pool.json")).expect("pool.json written")
}

/// The manager task on `h`, and how to reach and stop it.
struct Running {
    orders: mpsc::Sender<manager::OrderCall>,
    chosen: oneshot::Receiver<()>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(h: &Arc<PoolHandle>, a: &nsproxy::config::Account) -> Running {
    let (orders, orders_rx) = mpsc::channel(4);
    let (chosen_tx, chosen) = oneshot::channel();
    let stop = CancellationToken::new();
    let cfg = ManagerConfig::new(a).expect("checks");
    let task = tokio::spawn(manager::manage(h.clone(), cfg, orders_rx, chosen_tx, None, stop.clone()));
    Running { orders, chosen, stop, task }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn failover_failback_rotation_and_burn_expiry_follow_the_clock() {
    let (dir, paths) = temp_paths("cycle");
    let (p1, p2) = (Socks::start().await, Socks::start().await);
    let a = account(&p1, &p2);
    let base = 1_000_000u64;
    let t0 = tokio::time::Instant::now();
    let clock: nsproxy::pool::handle::Clock = Arc::new(move || base + t0.elapsed().as_secs());
    let h = PoolHandle::open_with_clock(&paths, &a, vec![None, None], clock).expect("open pool");
    let Running { orders: orders_tx, chosen: chosen_rx, stop, task } = start(&h, &a);

    // Start: the best candidate that passes its check.
    chosen_rx.await.expect("first choice made");
    assert_eq!(h.lock().active(), Some("p1"));
    assert!(p1.connects().contains(&"api.exchange.test:443".to_string()), "checked through p1: {:?}", p1.connects());

    // p1 goes down: two failed checks (10 s apart), then failover to p2.
    p1.set_up(false);
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(h.lock().active(), Some("p1"), "one failure is below the threshold");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.lock().active(), Some("p2"), "failover after the second failure");
    assert_eq!(state_of(&h, "p1").0, State::Unhealthy);
    assert_eq!(h.counters.failovers.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(saved(&paths).contains("\"unhealthy\""), "the failover is persisted: {}", saved(&paths));

    // p1 comes back: failback (the policy asks for it) on the next round.
    p1.set_up(true);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.lock().active(), Some("p1"), "failback to the better priority");

    // rotate --burn --for 60s: p2 takes over, p1 is burned until now + 60.
    let (reply_tx, reply_rx) = oneshot::channel();
    let order = Order::Rotate { to: None, burn: true, burn_for_secs: Some(60), reset_flows: false };
    orders_tx.send((order, reply_tx)).await.expect("manager takes orders");
    let resp = reply_rx.await.expect("answer");
    assert!(resp.ok, "{}", resp.message);
    assert!(resp.message.contains("active proxy p2"), "{}", resp.message);
    let now = h.now();
    assert_eq!(h.lock().active(), Some("p2"));
    assert_eq!(state_of(&h, "p1"), (State::Burned, Some(now + 60)));
    assert!(saved(&paths).contains("\"burned\""));

    // Within the burn, failback must not touch p1.
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(h.lock().active(), Some("p2"), "a burned proxy is no failback candidate");
    // After it: the burn expires at a round, and failback brings p1 back.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(state_of(&h, "p1").1, None, "burn expired");
    assert_eq!(h.lock().active(), Some("p1"));

    // A check order answers with the active proxy.
    let (reply_tx, reply_rx) = oneshot::channel();
    orders_tx.send((Order::Check, reply_tx)).await.expect("manager takes orders");
    let resp = reply_rx.await.expect("answer");
    assert!(resp.ok && resp.message.contains("proxy p1"), "{}", resp.message);

    stop.cancel();
    task.await.expect("manager ends when cancelled");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_proxy_down_refuses_until_one_passes_a_check() {
    let (dir, paths) = temp_paths("alldown");
    let (p1, p2) = (Socks::start().await, Socks::start().await);
    p1.set_up(false);
    p2.set_up(false);
    let a = account(&p1, &p2);
    let h = PoolHandle::open(&paths, &a, vec![None, None]).expect("open pool");
    let Running { orders: _orders, chosen: chosen_rx, stop, task } = start(&h, &a);
    chosen_rx.await.expect("first choice made, even if none passed");
    assert_eq!(h.lock().active(), None);
    assert!(h.all_down.load(std::sync::atomic::Ordering::Relaxed));
    let dest = nsproxy::rules::Dest { name: Some("api.exchange.test"), ip: None, port: 443 };
    assert!(matches!(h.route(&dest), Err(nsproxy::pool::handle::Refusal::NoActive)));
    // p2 comes back: the next round (the interval) finds it.
    p2.set_up(true);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(h.lock().active(), Some("p2"));
    assert_eq!(h.route(&dest).map(|r| r.label().to_string()).ok(), Some("p2".to_string()));
    stop.cancel();
    task.await.expect("manager ends when cancelled");
    let _ = std::fs::remove_dir_all(dir);
}
