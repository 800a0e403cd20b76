//! Containers attached to the account by the CNI plugin: for each one the
//! daemon creates a TUN in the container's namespace (on a thread that
//! enters it and exits) and runs a data plane on it, with the account's
//! pool, DNS and counters. One daemon per account serves its own namespace
//! and every container of the account, so burns, failovers and metrics
//! are the account's whatever the traffic's source. The TUN lives as long
//! as the daemon holds it: a daemon that dies takes every container's
//! route with it (fail closed), and a daemon that starts attaches again
//! the containers recorded in `/run/nsproxy/.cni/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dataplane::stats::Stats;
use crate::dataplane::{Dataplane, Limits, Parts};
use crate::dns::names::Names;
use crate::dns::server::DnsServer;
use crate::host::{Paths, TunPlan};
use crate::pool::PoolHandle;
use crate::published::control::Response;

/// What the control socket asks of this service.
pub enum Order {
    Attach { container: String, netns: String, ifname: String },
    Detach { container: String },
}

pub type Call = (Order, oneshot::Sender<Response>);

/// What every container's data plane shares with the account's own.
pub struct Shared {
    pub account: String,
    pub paths: Paths,
    pub pool: Arc<PoolHandle>,
    pub dns: Arc<DnsServer>,
    pub names: Option<Arc<Mutex<Names>>>,
    pub limits: Limits,
    pub stats: Arc<Stats>,
    pub tasks: TaskTracker,
    /// Cancelled at shutdown: every container's data plane ends.
    pub stop: CancellationToken,
    /// The TUN's shape, as the account's own (MTU, queue, IPv6).
    pub tun: TunPlan,
}

struct Running {
    netns: PathBuf,
    ifname: String,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

/// Serves attach and detach orders until the channel closes; first
/// attaches again the containers recorded for this account.
pub async fn serve(sh: Shared, mut calls: mpsc::Receiver<Call>) {
    let mut running: HashMap<String, Running> = HashMap::new();
    for a in crate::host::rundir::attachments(&sh.paths, Some(&sh.account)) {
        let netns = a.netns.display().to_string();
        match attach(&sh, &a.container, &netns, &a.ifname).await {
            Ok(r) => {
                tracing::info!(account = %sh.account, container = %a.container, netns = %netns, "container attached again");
                running.insert(a.container.clone(), r);
            }
            Err(e) => tracing::warn!(
                account = %sh.account,
                container = %a.container,
                error = %e,
                "cannot attach the container again; it has no network (fail closed) until its runtime adds it again"
            ),
        }
    }
    while let Some((order, reply)) = calls.recv().await {
        let resp = match order {
            Order::Attach { container, netns, ifname } => match running.get(&container) {
                Some(r) if r.netns == Path::new(&netns) && r.ifname == ifname && !r.done.is_finished() => {
                    Response::ok(format!("container {container} is attached"), answer(&sh, &ifname))
                }
                _ => {
                    if let Some(old) = running.remove(&container) {
                        end(old).await;
                    }
                    match attach(&sh, &container, &netns, &ifname).await {
                        Ok(r) => {
                            tracing::info!(account = %sh.account, container = %container, netns = %netns, ifname = %ifname, "container attached");
                            running.insert(container.clone(), r);
                            Response::ok(format!("container {container} attached"), answer(&sh, &ifname))
                        }
                        Err(e) => {
                            tracing::error!(account = %sh.account, container = %container, error = %e, "cannot attach the container");
                            Response::err(format!("account {}: container {container}: {e}", sh.account))
                        }
                    }
                }
            },
            Order::Detach { container } => match running.remove(&container) {
                Some(r) => {
                    end(r).await;
                    tracing::info!(account = %sh.account, container = %container, "container detached");
                    Response::ok(format!("container {container} detached"), serde_json::Value::Null)
                }
                None => Response::ok(format!("container {container} was not attached"), serde_json::Value::Null),
            },
        };
        let _ = reply.send(resp);
    }
    for (_, r) in running.drain() {
        end(r).await;
    }
}

/// The addresses a container's TUN has (the same plan as the account's).
fn answer(sh: &Shared, ifname: &str) -> serde_json::Value {
    let (address, dns) = (sh.limits.addresses.tun_v4(), sh.limits.addresses.dns_v4());
    serde_json::json!({"ifname": ifname, "address": address.to_string(), "dns": dns.to_string()})
}

/// Stops a container's data plane; its TUN goes with the fd.
async fn end(r: Running) {
    r.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), r.done).await;
}

async fn attach(sh: &Shared, container: &str, netns: &str, ifname: &str) -> Result<Running, String> {
    let path = PathBuf::from(netns);
    if !path.is_absolute() || !path.exists() {
        return Err(format!("network namespace {netns} does not exist"));
    }
    let plan = TunPlan {
        namespace: format!("container {container}"),
        path: Some(path.clone()),
        ifname: ifname.to_string(),
        ..sh.tun.clone()
    };
    let paths = sh.paths.clone();
    let fd = tokio::task::spawn_blocking(move || crate::host::link::create_tun(&paths, &plan))
        .await
        .map_err(|e| format!("TUN thread: {e}"))?
        .map_err(|e| e.to_string())?;
    let stop = sh.stop.child_token();
    let dp = Dataplane::new(Parts {
        account: sh.account.clone(),
        device: fd,
        router: sh.pool.clone(),
        dns: sh.dns.clone(),
        names: sh.names.clone(),
        limits: sh.limits.clone(),
        tasks: sh.tasks.clone(),
        stop: stop.clone(),
        stats: Some(sh.stats.clone()),
    })
    .map_err(|e| format!("TUN: {e}"))?;
    let (account, id) = (sh.account.clone(), container.to_string());
    let run_stop = stop.clone();
    let done = tokio::spawn(async move {
        if let Err(e) = dp.run(run_stop).await {
            tracing::warn!(account = %account, container = %id, error = %e, "container's data plane ended (its namespace is gone?)");
        }
    });
    Ok(Running { netns: path, ifname: ifname.to_string(), stop, done })
}
