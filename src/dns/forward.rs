//! DNS mode `tcp`: queries are forwarded as DNS-over-TCP through the
//! account's proxy to the policy's resolver, over one persistent pipelined
//! connection (ids rewritten), answers cached by TTL. No DNS packet leaves
//! the host except inside that proxied connection. The connection always
//! goes through the pool's active proxy: after a failover or rotation the
//! next query opens a new one. The names behind the addresses answered are
//! remembered for per-domain rules.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dns::cache::{Cache, Key};
use crate::dns::message::{self, Query, RCODE_SERVFAIL};
use crate::dns::names::Names;
use crate::proxy::Target;
use crate::proxy::route::Router;

const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_CLOSE: Duration = Duration::from_secs(60);

struct Req {
    q: Query,
    raw: Vec<u8>,
    reply: oneshot::Sender<Vec<u8>>,
}

pub struct Forwarder {
    tx: mpsc::Sender<Req>,
    cache: Arc<Mutex<Cache>>,
    names: Option<Arc<Mutex<Names>>>,
}

fn servfail(q: &Query) -> Vec<u8> {
    message::response(q, RCODE_SERVFAIL, &[], 0)
}

impl Forwarder {
    /// Starts the forwarding task on `tasks`; it ends when the forwarder is
    /// dropped or `stop` is cancelled.
    pub fn start(
        pool: Arc<dyn Router>,
        resolver: SocketAddr,
        names: Option<Arc<Mutex<Names>>>,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Forwarder {
        let (tx, rx) = mpsc::channel(1024);
        let cache = Arc::new(Mutex::new(Cache::new(10_000)));
        let work = run(pool, resolver, rx, cache.clone(), names.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = work => {}
            }
        });
        Forwarder { tx, cache, names }
    }

    /// The answer to `raw` (a parsed query `q`) with the client's own id.
    pub async fn resolve(&self, q: Query, raw: &[u8]) -> Vec<u8> {
        let key = Key { name: q.name.clone(), qtype: q.qtype, qclass: q.qclass };
        if let Some(hit) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key, Instant::now()) {
            if let Some(names) = &self.names {
                names.lock().unwrap_or_else(|e| e.into_inner()).remember(&q.name, &message::answer_addrs(hit));
            }
            return message::with_id(hit, q.id);
        }
        let (reply, rx) = oneshot::channel();
        let fail = servfail(&q);
        if self.tx.try_send(Req { q, raw: raw.to_vec(), reply }).is_err() {
            return fail;
        }
        match tokio::time::timeout(QUERY_TIMEOUT + Duration::from_secs(1), rx).await {
            Ok(Ok(r)) => r,
            _ => fail,
        }
    }
}

struct Pending {
    q: Query,
    reply: oneshot::Sender<Vec<u8>>,
    deadline: Instant,
}

async fn run(
    pool: Arc<dyn Router>,
    resolver: SocketAddr,
    mut rx: mpsc::Receiver<Req>,
    cache: Arc<Mutex<Cache>>,
    names: Option<Arc<Mutex<Names>>>,
) {
    let account = pool.account().to_string();
    let mut next_id: u16 = rand_id();
    let mut carried: Option<Req> = None;
    'outer: loop {
        let first = match carried.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => break,
            },
        };
        let Some(route) = pool.active() else {
            tracing::warn!(account = %account, name = %first.q.name, "DNS over TCP: no usable proxy; answering SERVFAIL");
            let _ = first.reply.send(servfail(&first.q));
            continue;
        };
        let label = route.label().to_string();
        let up = route.upstream;
        let conn = match up.connect(&Target::Ip(resolver)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(account = %account, resolver = %resolver, error = %e, "DNS over TCP: cannot reach the resolver through the proxy");
                let _ = first.reply.send(servfail(&first.q));
                continue;
            }
        };
        tracing::debug!(account = %account, resolver = %resolver, "DNS over TCP connection open");
        let (mut rd, mut wr) = tokio::io::split(conn.stream);
        let (ftx, mut frx) = mpsc::channel::<Vec<u8>>(64);
        let mut leftover = conn.leftover;
        let reader = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                let mut len = [0u8; 2];
                let n = if leftover.len() >= 2 {
                    len.copy_from_slice(&leftover[..2]);
                    leftover.drain(..2);
                    2
                } else {
                    match rd.read_exact(&mut len).await {
                        Ok(n) => n,
                        Err(_) => break,
                    }
                };
                if n != 2 {
                    break;
                }
                let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                let from_left = leftover.len().min(msg.len());
                msg[..from_left].copy_from_slice(&leftover[..from_left]);
                leftover.drain(..from_left);
                if rd.read_exact(&mut msg[from_left..]).await.is_err() || ftx.send(msg).await.is_err() {
                    break;
                }
            }
        }));
        let mut pending: HashMap<u16, Pending> = HashMap::new();
        let mut queued = Some(first);
        let mut last_use = Instant::now();
        loop {
            if let Some(req) = queued.take() {
                // The pool moved to another proxy: reconnect through it.
                if pool.active().as_ref().map(|r| r.label()) != Some(label.as_str()) {
                    carried = Some(req);
                    break;
                }
                next_id = next_id.wrapping_add(1);
                let id = next_id;
                let mut frame = (req.raw.len() as u16).to_be_bytes().to_vec();
                frame.extend_from_slice(&message::with_id(&req.raw, id));
                if wr.write_all(&frame).await.is_err() {
                    let _ = req.reply.send(servfail(&req.q));
                    break;
                }
                pending.insert(id, Pending { q: req.q, reply: req.reply, deadline: Instant::now() + QUERY_TIMEOUT });
                last_use = Instant::now();
            }
            let wake = pending.values().map(|p| p.deadline).min().unwrap_or(last_use + IDLE_CLOSE);
            tokio::select! {
                req = rx.recv() => match req {
                    Some(r) => queued = Some(r),
                    None => { reader.abort(); break 'outer }
                },
                frame = frx.recv() => {
                    let Some(msg) = frame else { break };
                    if msg.len() < 12 { break }
                    let id = u16::from_be_bytes([msg[0], msg[1]]);
                    if let Some(p) = pending.remove(&id) {
                        if let Some(names) = &names {
                            let addrs = message::answer_addrs(&msg);
                            if !addrs.is_empty() {
                                names.lock().unwrap_or_else(|e| e.into_inner()).remember(&p.q.name, &addrs);
                            }
                        }
                        if let Some(ttl) = message::min_ttl(&msg) {
                            let key = Key { name: p.q.name.clone(), qtype: p.q.qtype, qclass: p.q.qclass };
                            cache.lock().unwrap_or_else(|e| e.into_inner()).put(key, msg.clone(), ttl, Instant::now());
                        }
                        let _ = p.reply.send(message::with_id(&msg, p.q.id));
                    }
                    last_use = Instant::now();
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    let expired: Vec<u16> = pending.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| *k).collect();
                    for id in expired {
                        if let Some(p) = pending.remove(&id) {
                            tracing::warn!(account = %account, name = %p.q.name, "DNS over TCP: no answer in time");
                            let _ = p.reply.send(servfail(&p.q));
                        }
                    }
                    if pending.is_empty() && now >= last_use + IDLE_CLOSE { break }
                }
            }
        }
        reader.abort();
        for (_, p) in pending.drain() {
            let _ = p.reply.send(servfail(&p.q));
        }
    }
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(1) & 0xffff)
        as u16
}
