//! HTTP checks classified, without root: the pool manager under a paused
//! clock, each in-process SOCKS5 proxy relaying to its own in-process
//! origin (so each proxy's "IP" can be answered differently). A ban burns
//! the active proxy and the pool fails over at once; `Retry-After` sets
//! the burn's end; an exchange outage (trouble through the standby too)
//! switches nothing; trouble through the active proxy alone fails over.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use nsproxy::host::Paths;
use nsproxy::pool::manager::{self, ManagerConfig, Order};
use nsproxy::pool::{PoolHandle, State};
use support::origin::Origin;
use support::socks::Socks;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

struct Bed {
    dir: PathBuf,
    h: Arc<PoolHandle>,
    orders: mpsc::Sender<manager::OrderCall>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    // Kept alive for the test's length.
    _proxies: (Socks, Socks),
}

impl Bed {
    async fn order(&self, o: Order) -> nsproxy::published::control::Response {
        let (tx, rx) = oneshot::channel();
        self.orders.send((o, tx)).await.expect("manager takes orders");
        rx.await.expect("answer")
    }

    fn state(&self, label: &str) -> nsproxy::published::pool::Record {
        self.h.lock().records().iter().find(|r| r.label == label).expect("member").clone()
    }

    async fn end(self) {
        self.stop.cancel();
        self.task.await.expect("manager ends");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// p1 (priority 10) reaches `o1`, p2 reaches `o2`; one http check.
async fn bed(tag: &str, o1: &Origin, o2: &Origin, check_extra: &str) -> Bed {
    let dir = std::env::temp_dir().join(format!("nsp-pc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("var/lib")).unwrap();
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let paths = Paths::under(&dir);
    let (p1, p2) = (Socks::start().await, Socks::start().await);
    p1.relay_to(o1.addr);
    p2.relay_to(o2.addr);
    let text = format!(
        "accounts:
  - name: acct
    proxies:
      - {{label: p1, url: {}, priority: 10}}
      - {{label: p2, url: {}, priority: 20}}
    health_check:
      name: exchange
      target: http://api.exchange.test/api/v3/ping
      interval: 10s
      timeout: 2s
      failures_before_unhealthy: 3
{check_extra}",
        p1.url(),
        p2.url()
    );
    let a = nsproxy::config::parse_str(Path::new("t.yaml"), &text).expect("policy").remove(0);
    let t0 = tokio::time::Instant::now();
    let clock: nsproxy::pool::handle::Clock = Arc::new(move || 1_000_000 + t0.elapsed().as_secs());
    let h = PoolHandle::open_with_clock(&paths, &a, vec![None, None], clock).expect("open pool");
    let (orders, orders_rx) = mpsc::channel(4);
    let (chosen_tx, chosen) = oneshot::channel();
    let stop = CancellationToken::new();
    let cfg = ManagerConfig::new(&a).expect("checks");
    let task = tokio::spawn(manager::manage(h.clone(), cfg, orders_rx, chosen_tx, None, stop.clone()));
    chosen.await.expect("first choice");
    Bed { dir, h, orders, stop, task, _proxies: (p1, p2) }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_ban_burns_the_active_proxy_until_retry_after_and_fails_over() {
    let (o1, o2) = (Origin::start().await, Origin::start().await);
    let b = bed("ban", &o1, &o2, "").await;
    assert_eq!(b.h.lock().active(), Some("p1"));

    // The exchange bans p1's IP: 418 with Retry-After, Binance-style.
    o1.answer(418, Some("30"), "{\"code\":-1003,\"msg\":\"Way too many requests; IP banned\"}");
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(b.h.lock().active(), Some("p2"), "failed over at once, on the first banned answer");
    let r = b.state("p1");
    assert_eq!(r.state, State::Burned);
    let now = b.h.now();
    assert!(r.burned_until.is_some_and(|u| u > now && u <= now + 30), "Retry-After sets the end: {r:?}");
    let why = r.burn_reason.unwrap_or_default();
    assert!(why.contains("check exchange") && why.contains("418") && why.contains("IP banned"), "{why}");
    assert_eq!(b.h.counters.burns.load(Relaxed), 1);
    let saved = std::fs::read_to_string(b.dir.join("var/lib/nsproxy/acct/pool.json")).unwrap();
    assert!(saved.contains("\"burn_reason\"") && saved.contains("418"), "the reason is saved: {saved}");

    // Within the burn p1 is no candidate; after it, a standby again.
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(b.state("p1").state, State::Standby, "the burn expired");
    assert_eq!(b.h.lock().active(), Some("p2"), "sticky: no failback by default");
    b.end().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_ban_without_retry_after_lasts_burn_for_and_unburn_lifts_it() {
    let (o1, o2) = (Origin::start().await, Origin::start().await);
    let b = bed(
        "forever",
        &o1,
        &o2,
        "      burn_for: forever\n      burn_on: {status: [403], body: [\"could not be satisfied\"]}\n",
    )
    .await;
    // CloudFront's block page, with a status the rules do not list.
    o1.answer(400, None, "<H2>The request could not be satisfied.</H2>");
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(b.h.lock().active(), Some("p2"));
    let r = b.state("p1");
    assert_eq!((r.state, r.burned_until), (State::Burned, None), "for good");
    assert!(r.burn_reason.unwrap_or_default().contains("body matches"));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(b.state("p1").state, State::Burned, "still burned an hour later");
    let resp = b.order(Order::Unburn { label: "p1".into() }).await;
    assert!(resp.ok, "{}", resp.message);
    assert_eq!(b.state("p1").state, State::Standby);
    let resp = b.order(Order::Unburn { label: "p1".into() }).await;
    assert!(!resp.ok && resp.message.contains("not burned"), "{}", resp.message);
    b.end().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_exchange_outage_switches_nothing_and_trouble_through_one_proxy_fails_over() {
    let (o1, o2) = (Origin::start().await, Origin::start().await);
    let b = bed("outage", &o1, &o2, "").await;
    // 503 to everyone: several rounds, no burn, no switch, no failure count.
    o1.answer(503, None, "maintenance");
    o2.answer(503, None, "maintenance");
    let before = o2.requests.load(Relaxed);
    tokio::time::sleep(Duration::from_secs(45)).await;
    assert_eq!(b.h.lock().active(), Some("p1"), "no flapping during an outage");
    assert_eq!(b.state("p1").state, State::Active);
    assert_eq!(b.state("p2").state, State::Standby);
    assert_eq!(b.h.counters.burns.load(Relaxed) + b.h.counters.failovers.load(Relaxed), 0);
    assert!(o2.requests.load(Relaxed) >= before + 3, "the standby was asked each round");
    // The exchange is back, but not for p1: p1 is blamed and replaced.
    o2.answer(200, None, "{}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(b.h.lock().active(), Some("p2"), "trouble through the active proxy only: failover");
    assert_eq!(b.state("p1").state, State::Unhealthy, "unhealthy, not burned");
    // `check` shows each classified result.
    let resp = b.order(Order::Check).await;
    assert!(resp.ok && resp.message.contains("exchange ok in"), "{}", resp.message);
    assert_eq!(resp.data["checks"][0]["verdict"], "ok");
    b.end().await;
}
