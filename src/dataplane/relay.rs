//! Both directions between the program's connection (a smoltcp socket) and
//! the upstream stream, without copy buffers of our own: bytes go straight
//! from the stack's receive buffer into the upstream stream and from the
//! upstream stream into the stack's send buffer (for a TLS proxy, rustls
//! encrypts and decrypts in its own record buffers on the way). Half-closes
//! are passed on each way, resets are passed on each way, and a flow idle
//! for `idle` is reset on both sides. Memory per flow is the stack's two
//! socket buffers (and rustls's, with TLS).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use smoltcp::socket::tcp::RecvError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::adapter::SmolStream;
use super::stats::Stats;
use crate::proxy::ProxyStream;
use crate::proxy::route::ProxyCounters;

#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed normally.
    Closed,
    /// The program reset its connection; the upstream was reset too.
    ProgramReset,
    /// The upstream reset (or failed); the program got a reset.
    UpstreamReset,
    /// Nothing moved for the idle timeout; both sides were reset.
    Idle,
    /// `rotate --reset-flows`: both sides were reset.
    Reset,
}

enum Io {
    Moved(usize),
    Eof,
    WouldBlock,
    Failed,
}

/// What one non-blocking upstream read or write did, as (bytes the stack
/// should consume or commit, outcome). A read of 0 bytes is the upstream's
/// FIN; Pending has registered the task's waker with the upstream.
fn io_outcome(r: Poll<io::Result<usize>>, reading: bool) -> (usize, Io) {
    match r {
        Poll::Ready(Ok(0)) if reading => (0, Io::Eof),
        Poll::Ready(Ok(n)) => (n, Io::Moved(n)),
        Poll::Pending => (0, Io::WouldBlock),
        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => (0, Io::WouldBlock),
        Poll::Ready(Err(_)) => (0, Io::Failed),
    }
}

/// One write of `data` to the upstream (TCP: straight to the socket; TLS:
/// into rustls, which sends what the socket takes).
fn write_up(up: &mut ProxyStream, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
    std::pin::Pin::new(up).poll_write(cx, data)
}

/// One read from the upstream into `buf`: the bytes read.
fn read_up(up: &mut ProxyStream, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
    let mut rb = ReadBuf::new(buf);
    let tls = up.is_tls();
    match std::pin::Pin::new(up).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
        // A TLS proxy that closes without close_notify: its FIN, as a
        // plain proxy's (what the tunnel carries has its own framing).
        Poll::Ready(Err(e)) if tls && e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(0)),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

struct Flow<'a> {
    program: &'a mut SmolStream,
    upstream: &'a mut ProxyStream,
    stats: &'a Stats,
    proxy: &'a ProxyCounters,
    /// The program sent FIN and it was passed on.
    up_done: bool,
    /// The upstream sent FIN and it was passed on.
    down_done: bool,
    /// Bytes written to a TLS upstream may wait in rustls until flushed;
    /// the program's FIN waits for the upstream's shutdown to complete.
    unflushed: bool,
    shutting_down: bool,
    progressed: bool,
}

impl Flow<'_> {
    /// Program → upstream. Ready(Some(end)) when the flow must stop.
    fn upward(&mut self, cx: &mut Context<'_>) -> Option<End> {
        if self.unflushed {
            match std::pin::Pin::new(&mut *self.upstream).poll_flush(cx) {
                Poll::Pending => return None,
                Poll::Ready(Err(_)) => return Some(End::UpstreamReset),
                Poll::Ready(Ok(())) => self.unflushed = false,
            }
        }
        if self.shutting_down {
            return match std::pin::Pin::new(&mut *self.upstream).poll_shutdown(cx) {
                Poll::Pending => None,
                Poll::Ready(Err(_)) => Some(End::UpstreamReset),
                Poll::Ready(Ok(())) => {
                    self.shutting_down = false;
                    self.up_done = true;
                    self.progressed = true;
                    None
                }
            };
        }
        while !self.up_done {
            let shared = self.program.shared.clone();
            let mut st = shared.lock();
            let s = st.socket(self.program.handle);
            if !s.can_recv() && s.may_recv() {
                s.register_recv_waker(cx.waker());
                return None;
            }
            let up = &mut *self.upstream;
            // With nothing to read, recv reports FIN or reset without calling us.
            let r = s.recv(|data| io_outcome(write_up(up, cx, data), false));
            match r {
                Ok(Io::Moved(n)) => {
                    drop(st);
                    self.program.moved += n as u64;
                    self.stats.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
                    self.proxy.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
                    self.progressed = true;
                    shared.mark_forwarded();
                    shared.notify.notify_one(); // window update
                    if self.upstream.is_tls() {
                        self.unflushed = true;
                        match std::pin::Pin::new(&mut *self.upstream).poll_flush(cx) {
                            Poll::Pending => return None,
                            Poll::Ready(Err(_)) => return Some(End::UpstreamReset),
                            Poll::Ready(Ok(())) => self.unflushed = false,
                        }
                    }
                }
                // The upstream holds the task's waker.
                Ok(Io::WouldBlock) => return None,
                Ok(Io::Failed | Io::Eof) => return Some(End::UpstreamReset),
                Err(RecvError::Finished) => {
                    drop(st);
                    self.progressed = true;
                    if self.upstream.is_tls() {
                        // close_notify, then the TCP FIN.
                        self.shutting_down = true;
                        return self.upward(cx);
                    }
                    let _ = socket2::SockRef::from(self.upstream.tcp()).shutdown(std::net::Shutdown::Write);
                    self.up_done = true;
                }
                Err(RecvError::InvalidState) => return Some(End::ProgramReset),
            }
        }
        None
    }

    /// Upstream → program.
    fn downward(&mut self, cx: &mut Context<'_>) -> Option<End> {
        while !self.down_done {
            let shared = self.program.shared.clone();
            {
                let mut st = shared.lock();
                let s = st.socket(self.program.handle);
                if !s.may_send() {
                    // We have not closed our side, so the program reset it.
                    return Some(End::ProgramReset);
                }
                if !s.can_send() {
                    s.register_send_waker(cx.waker());
                    return None;
                }
            }
            let mut st = shared.lock();
            let s = st.socket(self.program.handle);
            let up = &mut *self.upstream;
            let r = s.send(|buf| io_outcome(read_up(up, cx, buf), true));
            match r {
                Ok(Io::Moved(n)) => {
                    drop(st);
                    self.program.moved += n as u64;
                    self.stats.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                    self.proxy.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                    self.progressed = true;
                    shared.notify.notify_one(); // data to transmit
                }
                // The upstream holds the task's waker.
                Ok(Io::WouldBlock) => return None,
                Ok(Io::Eof) => {
                    s.close();
                    drop(st);
                    self.down_done = true;
                    self.progressed = true;
                    shared.notify.notify_one();
                }
                Ok(Io::Failed) => return Some(End::UpstreamReset),
                Err(_) => return Some(End::ProgramReset),
            }
        }
        None
    }
}

/// Queues `data` (bytes the proxy sent right after its reply) for the
/// program; false if the program's connection is gone.
async fn send_leftover(program: &mut SmolStream, data: &[u8]) -> bool {
    use tokio::io::AsyncWriteExt;
    program.write_all(data).await.is_ok()
}

pub async fn relay(
    mut program: SmolStream,
    mut upstream: ProxyStream,
    leftover: Vec<u8>,
    idle: Duration,
    stats: &Arc<Stats>,
    proxy: &ProxyCounters,
    mut reset: tokio::sync::watch::Receiver<u64>,
) -> End {
    if !leftover.is_empty() && !send_leftover(&mut program, &leftover).await {
        let _ = upstream.set_zero_linger();
        return End::ProgramReset;
    }
    let end = {
        let mut flow = Flow {
            program: &mut program,
            upstream: &mut upstream,
            stats,
            proxy,
            up_done: false,
            down_done: false,
            unflushed: false,
            shutting_down: false,
            progressed: false,
        };
        let sleep = tokio::time::sleep(idle);
        tokio::pin!(sleep);
        let reset = async move {
            if reset.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        };
        tokio::pin!(reset);
        std::future::poll_fn(|cx| {
            if reset.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::Reset);
            }
            flow.progressed = false;
            if let Some(end) = flow.upward(cx).or_else(|| flow.downward(cx)) {
                return Poll::Ready(end);
            }
            if flow.up_done && flow.down_done {
                return Poll::Ready(End::Closed);
            }
            if flow.progressed {
                sleep.as_mut().reset(Instant::now() + idle);
            }
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(End::Idle),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    };
    match end {
        End::Closed => {}
        End::ProgramReset => {
            let _ = upstream.set_zero_linger();
        }
        End::UpstreamReset => program.abort_on_drop(),
        End::Idle | End::Reset => {
            let _ = upstream.set_zero_linger();
            program.abort_on_drop();
        }
    }
    end
}
