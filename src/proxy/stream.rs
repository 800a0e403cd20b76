//! The stream to a proxy after its handshake: plain TCP, or TLS to an
//! `https://` proxy (HTTP CONNECT inside a TLS session with the proxy, so
//! Basic credentials never cross the network in clear). Both are tokio
//! AsyncRead/AsyncWrite; the TCP socket underneath is always at hand (for
//! a reset by zero linger, say).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub enum ProxyStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl ProxyStream {
    /// The TCP connection to the proxy.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ProxyStream::Tcp(s) => s,
            ProxyStream::Tls(s) => s.get_ref().0,
        }
    }

    /// On close, reset the connection to the proxy instead of a FIN.
    pub fn set_zero_linger(&self) -> io::Result<()> {
        self.tcp().set_zero_linger()
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ProxyStream::Tls(_))
    }
}

impl From<TcpStream> for ProxyStream {
    fn from(s: TcpStream) -> ProxyStream {
        ProxyStream::Tcp(s)
    }
}

impl AsyncRead for ProxyStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProxyStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ProxyStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ProxyStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ProxyStream::Tcp(s) => Pin::new(s).poll_write(cx, data),
            ProxyStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProxyStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ProxyStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProxyStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ProxyStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
