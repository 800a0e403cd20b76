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
use super::{ON_EXIT, Started, control, notify, publish};
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
use std::os::fd::OwnedFd;

/// How long `up` may wait for the pool's first choice: it waits 30 s for
/// READY, and the manager goes on after this (flows are refused until a
/// proxy passed its check).
const FIRST_CHOICE: Duration = Duration::from_secs(20);
/// How long stopped flows get to close their sockets.
const DRAIN: Duration = Duration::from_secs(2);

/// Runs the account until SIGTERM, SIGINT or SIGHUP; `ready` is called once
/// the pool made its first choice.
pub fn serve(host: &dyn Host, s: Started, ready: impl FnOnce()) -> anyhow::Result<()> {
    let name = s.account.name.clone();
    crate::host::sys::malloc_mmap_threshold(64 * 1024);
    // One thread: the poll loop and the flow tasks hand work to each other
    // on every packet; on one thread that costs no cross-thread wake-up.
    let rt = tokio::runtime::Builder::new_current_thread()
        .thread_name(format!("nsproxy-{name}"))
        .enable_all()
        .build()
        .with_context(|| format!("account {name}: cannot start runtime"))?;
    let plan = s.plan.clone();
    let hup = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (res, claim) = rt.block_on(async {
        tracing::info!(account = %name, namespace = %s.account.namespace, pid = std::process::id(), "daemon ready");
        supervise(s, shutdown_signal(hup.clone()), ready).await
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
    ready: impl FnOnce(),
) -> (anyhow::Result<()>, Claim) {
    let Started { account, plan, pool, fleet, tun, claim, checks } = s;
    let res = run(Service { account, plan, pool, fleet, tun, checks }, shutdown, ready).await;
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
}

async fn run(s: Service, shutdown: impl Future<Output = ()>, ready: impl FnOnce()) -> anyhow::Result<()> {
    let Service { account, plan, pool, fleet, tun, checks } = s;
    let name = account.name.clone();
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
    services.spawn(until(services_stop.clone(), control::serve(listener, calls_tx, name.clone())));
    services.spawn(until(services_stop.clone(), control::dispatch(calls_rx, orders_tx, name.clone())));

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
    let dns = match (account.dns.mode, account.dns.resolver) {
        (DnsMode::Tcp, Some(resolver)) => {
            tracing::info!(account = %name, resolver = %resolver, "DNS: forwarded over TCP through the proxy");
            DnsServer::Forward(crate::dns::forward::Forwarder::start(
                pool.clone(),
                resolver,
                names.clone(),
                &tasks,
                flows_stop.clone(),
            ))
        }
        _ => DnsServer::FakeIp(Mutex::new(FakeDns::open(&plan.run.fakeip_path(), &name))),
    };
    let dp = Dataplane::new(Parts {
        account: name.clone(),
        device: tun,
        router: pool.clone(),
        dns: Arc::new(dns),
        names,
        limits: Limits::from_account(&account),
        tasks: tasks.clone(),
        stop: flows_stop.clone(),
    })
    .with_context(|| format!("account {name}: TUN"))?;
    let observer = dp.observer();
    services.spawn(publish::stats(pool.clone(), observer.clone(), plan.run.clone(), services_stop.clone()));
    if let Some(listen) = account.metrics.clone() {
        let shown = match &listen {
            MetricsListen::Tcp(a) => a.to_string(),
            MetricsListen::Unix(p) => format!("unix:{}", p.display()),
        };
        match crate::metrics::bind(&listen).await {
            Ok(l) => {
                tracing::info!(account = %name, listen = %shown, "metrics served");
                let mode = match account.dns.mode {
                    DnsMode::FakeIp => "fake-ip",
                    DnsMode::Tcp => "tcp",
                };
                let (pool, obs) = (pool.clone(), observer.clone());
                let source: crate::metrics::Source =
                    Arc::new(move || crate::metrics::render(&publish::collect(&pool, &obs, mode)));
                services.spawn(until(services_stop.clone(), crate::metrics::serve(l, source)));
            }
            Err(e) => tracing::error!(account = %name, listen = %shown, error = %e, "metrics: cannot listen"),
        }
    }

    // READY after the first choice, or after FIRST_CHOICE.
    let _ = tokio::time::timeout(FIRST_CHOICE, chosen_rx).await;
    ready();

    let dp_stop = CancellationToken::new();
    let res = {
        let stop = dp_stop.clone();
        tokio::pin!(shutdown);
        let run = dp.run(stop);
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => r,
            _ = &mut shutdown => { dp_stop.cancel(); run.await }
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
