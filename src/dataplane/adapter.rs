//! A smoltcp TCP socket as tokio AsyncRead/AsyncWrite. Every read (window
//! update) and write wakes the poll loop.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, RecvError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::stack::Shared;

pub struct SmolStream {
    pub(super) shared: Arc<Shared>,
    pub(super) handle: SocketHandle,
    abort_on_drop: bool,
    /// Bytes moved both ways (whether the stack may keep the socket).
    pub(super) moved: u64,
}

impl SmolStream {
    pub fn new(shared: Arc<Shared>, handle: SocketHandle) -> Self {
        SmolStream { shared, handle, abort_on_drop: false, moved: 0 }
    }

    /// Waits until the three-way handshake completes; Err if the program
    /// gave up first.
    pub async fn established(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut st = self.shared.lock();
            let s = st.socket(self.handle);
            match s.state() {
                tcp::State::Listen | tcp::State::SynReceived | tcp::State::SynSent => {
                    s.register_recv_waker(cx.waker());
                    Poll::Pending
                }
                tcp::State::Closed | tcp::State::TimeWait => {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "program gave up")))
                }
                _ => Poll::Ready(Ok(())),
            }
        })
        .await
    }

    /// On drop, reset the program's connection instead of closing it.
    pub fn abort_on_drop(&mut self) {
        self.abort_on_drop = true;
    }
}

impl Drop for SmolStream {
    fn drop(&mut self) {
        self.shared.lock().detach(self.handle, self.abort_on_drop, self.moved);
        self.shared.notify.notify_one();
    }
}

impl AsyncRead for SmolStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        let s = st.socket(self.handle);
        if s.can_recv() {
            let n = s.recv_slice(buf.initialize_unfilled()).unwrap_or_default();
            buf.advance(n);
            drop(st);
            self.moved += n as u64;
            self.shared.notify.notify_one();
            return Poll::Ready(Ok(()));
        }
        match s.recv_slice(&mut []) {
            Err(RecvError::Finished) => Poll::Ready(Ok(())),
            _ if s.may_recv() || matches!(s.state(), tcp::State::Listen | tcp::State::SynReceived) => {
                s.register_recv_waker(cx.waker());
                Poll::Pending
            }
            _ => Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "program reset the connection"))),
        }
    }
}

impl AsyncWrite for SmolStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut st = self.shared.lock();
        let s = st.socket(self.handle);
        if s.can_send() {
            let n = s.send_slice(data).unwrap_or(0);
            drop(st);
            self.moved += n as u64;
            self.shared.notify.notify_one();
            return Poll::Ready(Ok(n));
        }
        if s.may_send() || matches!(s.state(), tcp::State::Listen | tcp::State::SynReceived) {
            s.register_send_waker(cx.waker());
            return Poll::Pending;
        }
        Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "program's connection is closed")))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.lock().socket(self.handle).close();
        self.shared.notify.notify_one();
        Poll::Ready(Ok(()))
    }
}
