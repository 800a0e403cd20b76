//! Daemon supervision: one runtime, every listener bound here and handed
//! to its server, every service task in one `JoinSet` under one
//! cancellation token, flow and DNS tasks in one tracker. Shutdown drains
//! in order: the data plane stops reading the TUN, then the services stop
//! (the control socket first, the stats written a last time), then the
//! flows are cancelled and awaited, then the socket and pid file go.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::plan::{AccountPlan, Claim};
use super::{ON_EXIT, Started, containers, control, notify, publish};
use crate::config::Account;
use crate::config::{DnsMode, MetricsListen};
use crate::dataplane::{Dataplane, Limits, Parts};
use crate::dns::names::Names;
use crate::dns::server::{DnsServer, FakeDns};
use crate::fleet::client::ServiceClient;
use crate::host::Host;
use crate::pool::PoolHandle;
use crate::pool::manager::{self, ManagerConfig};
use crate::pool::service::{Fleet, send_feedback};
use crate::published::pool::Summary;
use std::os::fd::OwnedFd;

/// What the first choice may take beyond its bound (timers, scheduling).
const FIRST_CHOICE_SLACK: Duration = Duration::from_secs(3);
/// How long stopped flows get to close their sockets.
const DRAIN: Duration = Duration::from_secs(2);

/// How far the start has come, for `up` and systemd.
pub enum Progress {
    /// The namespace, its TUN and the data plane are in place: nothing
    /// leaves the namespace except through the account's proxy. The pool's
    /// first choice (`waiting_for`) follows within `bound`.
    Ready { bound: Duration, waiting_for: String },
    /// The pool made its first choice (`in_time`), or `bound` passed first.
    Chosen { summary: Summary, in_time: bool },
}

/// Runs the account until SIGTERM, SIGINT or SIGHUP; `progress` hears of
/// readiness, then of the pool's first choice.
pub fn serve(host: &dyn Host, s: Started, progress: impl FnMut(Progress)) -> anyhow::Result<()> {
    let name = s.account.name.clone();
    // One thread: the poll loop and the flow tasks hand work to each other
    // on every packet; on one thread that costs no cross-thread wake-up.
    let rt = tokio::runtime::Builder::new_current_thread()
        .thread_name(format!("nsproxy-{name}"))
        .enable_all()
        .build()
        .with_context(|| format!("account {name}: cannot start runtime"))?;
    let plan = s.plan.clone();
    // A second descriptor of the TUN, closed after the lock: the last close
    // of a TUN unregisters its device, which waits for an RCU grace period
    // (~30 ms); `down` waits for the lock, not for that.
    let hold = s.tun.try_clone().ok();
    let hup = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (res, claim) = rt.block_on(async {
        tracing::info!(account = %name, namespace = %s.account.namespace, pid = std::process::id(), "daemon ready");
        supervise(s, shutdown_signal(hup.clone()), progress).await
    });
    // SIGHUP is no clean stop: a unit with Restart=on-failure must bring
    // the account back.
    let res = match res {
        Ok(()) if hup.load(std::sync::atomic::Ordering::Relaxed) => Err(anyhow::anyhow!(
            "account {name}: stopped by SIGHUP; exiting with a failure so that a supervisor (Restart=on-failure) starts it again"
        )),
        other => other,
    };
    drop(rt);
    tracing::info!(account = %name, "daemon stopping; the namespace has no route out until it is up again");
    let _ = notify::notify("STOPPING=1");
    for e in plan.release(host, ON_EXIT) {
        tracing::warn!(account = %name, error = %e, "cleanup at exit");
    }
    // The lock goes last: a daemon started after this one must find its
    // own pid file untouched.
    drop(claim);
    drop(hold);
    res
}

/// Runs `fut` until `stop` is cancelled.
async fn until(stop: CancellationToken, fut: impl Future<Output = ()>) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = fut => {}
    }
}

/// The services and the data plane of one started account, until
/// `shutdown` resolves (or the TUN fails). Hands the claim (the account's
/// lock) back, to be released after the run files.
pub async fn supervise(
    s: Started,
    shutdown: impl Future<Output = ()>,
    progress: impl FnMut(Progress),
) -> (anyhow::Result<()>, Claim) {
    let Started { account, plan, pool, fleet, tun, claim, checks, paths } = s;
    let res = run(Service { account, plan, pool, fleet, tun, checks, paths }, shutdown, progress).await;
    (res, claim)
}

/// A started account without its claim.
struct Service {
    account: Account,
    plan: AccountPlan,
    pool: Arc<PoolHandle>,
    fleet: Option<Arc<ServiceClient>>,
    tun: OwnedFd,
    checks: ManagerConfig,
    paths: crate::host::Paths,
}

async fn run(s: Service, shutdown: impl Future<Output = ()>, mut progress: impl FnMut(Progress)) -> anyhow::Result<()> {
    let Service { account, plan, pool, fleet, tun, checks, paths } = s;
    let name = account.name.clone();
    let bound = checks.first_choice_bound(&account);
    let waiting_for = waiting_for(&account, &checks);
    raise_nofile();
    let services_stop = CancellationToken::new();
    let flows_stop = CancellationToken::new();
    let mut services = JoinSet::new();
    let tasks = TaskTracker::new();

    // Control socket: bound here, served and dispatched by its own tasks.
    let ctl = plan.run.ctl_path();
    let listener =
        control::bind(&ctl).map_err(|e| anyhow::anyhow!("account {name}: control socket {}: {e}", ctl.display()))?;
    let (calls_tx, calls_rx) = mpsc::channel(16);
    let (orders_tx, orders_rx) = mpsc::channel(16);
    let (containers_tx, containers_rx) = mpsc::channel(16);
    services.spawn(until(services_stop.clone(), control::serve(listener, calls_tx, name.clone())));
    let mode = match account.dns.mode {
        DnsMode::FakeIp => "fake-ip",
        DnsMode::Tcp => "tcp",
    };
    let live = publish::Live::new(pool.clone(), mode);
    services.spawn(until(
        services_stop.clone(),
        control::dispatch(calls_rx, orders_tx, containers_tx, live.clone(), name.clone()),
    ));

    // Fleet mode: the service's member and its feedback queue.
    let fleet = match (fleet, &account.external_service) {
        (Some(client), Some(svc)) => {
            let f = Fleet::new(client.clone(), svc.clone());
            let (sink, rx) = f.sink(&name);
            pool.enable_fleet(sink, svc.fallback_to_embedded);
            services.spawn(until(services_stop.clone(), send_feedback(client, pool.clone(), rx)));
            Some(f)
        }
        _ => None,
    };
    let (chosen_tx, chosen_rx) = oneshot::channel();
    services.spawn(manager::manage(pool.clone(), checks, orders_rx, chosen_tx, fleet, services_stop.clone()));

    // DNS and the data plane.
    let names = (account.dns.mode == DnsMode::Tcp && pool.has_rules()).then(|| Arc::new(Mutex::new(Names::new(65536))));
    let hosts: crate::dns::HostNames = Arc::new(
        account
            .host_services
            .iter()
            .enumerate()
            .map(|(i, h)| {
                (format!("{}{}", h.name, crate::config::HOST_SUFFIX), account.dns.fake_ip_range.host_service_addr(i))
            })
            .collect(),
    );
    let dns = match (account.dns.mode, account.dns.resolver) {
        (DnsMode::Tcp, Some(resolver)) => {
            tracing::info!(account = %name, resolver = %resolver, "DNS: forwarded over TCP through the proxy");
            DnsServer::Forward(
                crate::dns::forward::Forwarder::start(
                    pool.clone(),
                    resolver,
                    names.clone(),
                    &tasks,
                    flows_stop.clone(),
                ),
                hosts.clone(),
            )
        }
        _ => DnsServer::FakeIp(Mutex::new(
            FakeDns::open(&plan.run.fakeip_path(), &name, &account.dns.fake_ip_range).with_hosts(hosts.clone()),
        )),
    };
    let dns = Arc::new(dns);
    let stats = Arc::new(crate::dataplane::stats::Stats::default());
    let limits = Limits::from_account(&account);
    let dp = Dataplane::new(Parts {
        account: name.clone(),
        device: tun,
        router: pool.clone(),
        dns: dns.clone(),
        names: names.clone(),
        limits: limits.clone(),
        tasks: tasks.clone(),
        stop: flows_stop.clone(),
        stats: Some(stats.clone()),
    })
    .with_context(|| format!("account {name}: TUN"))?;
    // Containers (CNI): their TUNs, served with the same pool and counters;
    // the ones recorded before this start are attached again first.
    let attached = containers::Shared {
        account: name.clone(),
        paths,
        pool: pool.clone(),
        dns,
        names,
        limits,
        stats,
        tasks: tasks.clone(),
        stop: flows_stop.clone(),
        tun: plan.tun.clone(),
    };
    services.spawn(containers::serve(attached, containers_rx));
    let observer = dp.observer();
    live.set(observer.clone());
    services.spawn(publish::stats(live.clone(), plan.run.clone(), services_stop.clone()));
    if let Some(listen) = account.metrics.clone() {
        let shown = match &listen {
            MetricsListen::Tcp(a) => a.to_string(),
            MetricsListen::Unix(p) => format!("unix:{}", p.display()),
        };
        match crate::metrics::bind(&listen).await {
            Ok(l) => {
                tracing::info!(account = %name, listen = %shown, "metrics served");
                let live = live.clone();
                let source: crate::metrics::Source = Arc::new(move || live.metrics().unwrap_or_default());
                services.spawn(until(services_stop.clone(), crate::metrics::serve(l, source)));
            }
            Err(e) => tracing::error!(account = %name, listen = %shown, error = %e, "metrics: cannot listen"),
        }
    }

    if notify::wanted() {
        services.spawn(until(services_stop.clone(), systemd_status(name.clone(), pool.clone())));
    }
    match watchdog() {
        Ok(Some(period)) => {
            tracing::info!(account = %name, period = ?period, "systemd watchdog: pinging while the poll loop turns");
            services.spawn(until(services_stop.clone(), ping_watchdog(name.clone(), observer.clone(), period)));
        }
        Ok(None) => {}
        Err(e) => tracing::error!(account = %name, error = %e, "systemd watchdog: ignored"),
    }

    // READY as soon as the data plane runs (fail-closed is in place); the
    // pool's first choice is reported when made, or when its bound passed.
    progress(Progress::Ready { bound, waiting_for });
    let first = async {
        let in_time = tokio::time::timeout(bound + FIRST_CHOICE_SLACK, chosen_rx).await.is_ok();
        progress(Progress::Chosen { summary: pool.summary(), in_time });
        // Start-up is over: its code need not stay mapped (see docs/performance.md).
        let dropped = crate::host::sys::drop_code_pages();
        tracing::debug!(account = %name, bytes = dropped, "start-up code unmapped");
    };
    let dp_stop = CancellationToken::new();
    let res = {
        let stop = dp_stop.clone();
        tokio::pin!(shutdown);
        tokio::pin!(first);
        let run = dp.run(stop);
        tokio::pin!(run);
        let mut first_done = false;
        loop {
            tokio::select! {
                r = &mut run => break r,
                _ = &mut shutdown => { dp_stop.cancel(); break run.await }
                _ = &mut first, if !first_done => first_done = true,
            }
        }
    };
    // Drain in order: services (control first: no new orders), flows.
    services_stop.cancel();
    while services.join_next().await.is_some() {}
    flows_stop.cancel();
    tasks.close();
    if tokio::time::timeout(DRAIN, tasks.wait()).await.is_err() {
        tracing::warn!(account = %name, left = tasks.len(), "flow tasks still running at exit");
    }
    res
}

/// What the first choice waits for, in words for `up`.
fn waiting_for(a: &Account, checks: &ManagerConfig) -> String {
    let proxies = a.proxies.iter().filter(|p| p.enabled).count();
    let what = if checks.probes.is_empty() {
        "a connection test".to_string()
    } else {
        let names: Vec<&str> = checks.probes.iter().map(|p| p.check.name.as_str()).collect();
        format!("the health checks ({})", names.join(", "))
    };
    let egress = if checks.egress.is_some() { " and the egress-IP check" } else { "" };
    let service =
        if a.external_service.as_ref().is_some_and(|s| s.enabled) { "the proxy service's answer, then " } else { "" };
    let of = if proxies == 1 {
        "of its proxy".to_string()
    } else {
        format!("of up to {proxies} proxies, in priority order")
    };
    format!("{service}{what}{egress} {of}")
}

/// Tells systemd where the pool stands (`STATUS=`) each time it changes.
async fn systemd_status(account: String, pool: Arc<PoolHandle>) {
    let mut changes = pool.changes();
    let mut last = String::new();
    loop {
        let line = format!("STATUS=account {account}: {}", pool.summary().line());
        if line != last {
            if let Err(e) = notify::notify(&line) {
                tracing::warn!(account = %account, error = %e, "cannot tell systemd the pool's status");
            }
            last = line;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// The watchdog's period from systemd's variables.
fn watchdog() -> Result<Option<Duration>, String> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    notify::watchdog_period(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// Pings systemd's watchdog at half its period while the poll loop turns:
/// each round nudges the loop, and the next ping goes only if it turned
/// since. A wedged loop (or runtime) stops the pings and systemd restarts
/// the daemon.
async fn ping_watchdog(account: String, dp: crate::dataplane::Observer, period: Duration) {
    let mut seen = dp.turns().wrapping_sub(1);
    let mut tick = tokio::time::interval(period / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = dp.turns();
        if now != seen {
            if let Err(e) = notify::notify("WATCHDOG=1") {
                tracing::warn!(account = %account, error = %e, "cannot ping systemd's watchdog");
            }
        } else {
            tracing::error!(account = %account, "the poll loop has not turned for half the watchdog period; no ping");
        }
        seen = now;
        dp.nudge();
    }
}

/// Resolves on SIGTERM, SIGINT or SIGHUP (and then sets `hup`).
async fn shutdown_signal(hup_seen: Arc<std::sync::atomic::AtomicBool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = hup.recv() => {
            tracing::warn!("SIGHUP: stopping, with a failure exit so that the account is started again");
            hup_seen.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
