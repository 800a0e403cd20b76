//! The daemon's control socket, `/run/nsproxy/<account>/ctl.sock`: one JSON
//! request line, one JSON response line. Root only (mode 0600 in a 0700
//! directory, and the peer's uid is checked); requests are capped in size
//! and slow clients are cut off. Used by `rotate`, `check` and `exec`; the
//! messages are in `published::control`, the client in `commands::control`.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::pool::manager::{Order, OrderCall};
pub use crate::published::control::{MAX_REQUEST, READ_TIMEOUT, Request, Response, parse_request};

/// A request with the channel its answer goes back on.
pub type Call = (Request, oneshot::Sender<Response>);

/// Serves the socket until the task is dropped (its clients with it). Each
/// accepted client is checked (uid 0), read with a size cap and a deadline,
/// and its request handed to `tx`.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Call>, account: String) {
    let mut clients = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = clients.join_next(), if !clients.is_empty() => continue,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (tx, account) = (tx.clone(), account.clone());
        clients.spawn(async move {
            if let Err(e) = client(stream, tx).await {
                tracing::warn!(account = %account, error = %e, "control socket: request refused");
            }
        });
    }
}

/// Control dispatch: `rotate` and `check` become orders for the pool
/// manager, `attach` and `detach` for the containers' service, which
/// answer them themselves; `exec` refusals are logged here. Ends when the
/// socket's server is gone.
pub async fn dispatch(
    mut calls: mpsc::Receiver<Call>,
    orders: mpsc::Sender<OrderCall>,
    containers: mpsc::Sender<super::containers::Call>,
    stats: super::publish::Live,
    account: String,
) {
    use super::containers::Order as C;
    while let Some((req, reply)) = calls.recv().await {
        let order = match req {
            Request::Stats => {
                let resp = match stats.snapshot() {
                    Some(s) => Response::ok("stats", serde_json::to_value(s).unwrap_or_default()),
                    None => Response::err("the data plane is not running yet"),
                };
                let _ = reply.send(resp);
                continue;
            }
            Request::Metrics => {
                let resp = match stats.metrics() {
                    Some(text) => Response::ok("metrics", serde_json::Value::String(text)),
                    None => Response::err("the data plane is not running yet"),
                };
                let _ = reply.send(resp);
                continue;
            }
            Request::Attach { container, netns, ifname } => {
                let _ = containers.send((C::Attach { container, netns, ifname }, reply)).await;
                continue;
            }
            Request::Detach { container } => {
                let _ = containers.send((C::Detach { container }, reply)).await;
                continue;
            }
            Request::Rotate { to, burn, burn_for_secs, reset_flows } => {
                Order::Rotate { to, burn, burn_for_secs, reset_flows }
            }
            Request::Check => Order::Check,
            Request::Unburn { label } => Order::Unburn { label },
            Request::ExecRefused { caller, user, reason } => {
                tracing::warn!(account = %account, caller = %caller, user = %user, reason = %reason, "exec refused");
                let _ = reply.send(Response::ok("logged", serde_json::Value::Null));
                continue;
            }
        };
        // A full queue waits; a stopped manager drops `reply`, and the
        // client hears that the daemon dropped the request.
        let _ = orders.send((order, reply)).await;
    }
}

async fn client(mut stream: UnixStream, tx: mpsc::Sender<Call>) -> Result<(), String> {
    let cred = stream.peer_cred().map_err(|e| format!("cannot read peer credentials: {e}"))?;
    if cred.uid() != 0 {
        let _ = reply(&mut stream, &Response::err("permission denied: the control socket is for root")).await;
        return Err(format!("peer uid {} pid {:?} is not root", cred.uid(), cred.pid()));
    }
    let mut line = Vec::new();
    let read = {
        let mut r = tokio::io::BufReader::new(&mut stream).take(MAX_REQUEST as u64 + 1);
        tokio::time::timeout(READ_TIMEOUT, r.read_until(b'\n', &mut line)).await
    };
    let request = match read {
        Err(_) => Err(format!("no complete request within {READ_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(_)) if line.len() > MAX_REQUEST => Err(format!("request larger than {MAX_REQUEST} bytes")),
        Ok(Ok(_)) if !line.ends_with(b"\n") => Err("request not terminated by a newline".to_string()),
        Ok(Ok(_)) => parse_request(&line[..line.len() - 1]),
    };
    let req = match request {
        Ok(r) => r,
        Err(e) => {
            let _ = reply(&mut stream, &Response::err(e.clone())).await;
            return Err(e);
        }
    };
    let (otx, orx) = oneshot::channel();
    if tx.send((req, otx)).await.is_err() {
        return Err("the daemon is stopping".into());
    }
    let resp = orx.await.unwrap_or_else(|_| Response::err("the daemon dropped the request"));
    reply(&mut stream, &resp).await.map_err(|e| format!("write: {e}"))
}

async fn reply(stream: &mut UnixStream, r: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(r).unwrap_or_default();
    out.push(b'\n');
    stream.write_all(&out).await
}

/// Binds the control socket at `path` (a stale one is replaced), mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    crate::host::rundir::bind_unix(path)
}
