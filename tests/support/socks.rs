//! An in-process SOCKS5 proxy for the tests that run without root and
//! under tokio's paused clock, where an outside proxy cannot be timed:
//! no authentication, every CONNECT answered "succeeded" and then held
//! open, or (`relay_to`) relayed to one fixed address whatever the name
//! asked for. `set_up(false)` makes it drop every new connection during
//! the greeting (a proxy that is down in a way the pool must notice).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Socks {
    pub addr: SocketAddr,
    relay: Arc<Mutex<Option<SocketAddr>>>,
    up: Arc<AtomicBool>,
    /// CONNECT requests answered, as `host:port`.
    pub connects: Arc<Mutex<Vec<String>>>,
    pub accepted: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Socks {
    pub async fn start() -> Socks {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind the in-process proxy");
        let addr = l.local_addr().expect("local addr");
        let up = Arc::new(AtomicBool::new(true));
        let connects = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicU32::new(0));
        let relay = Arc::new(Mutex::new(None));
        let (u, c, a, r) = (up.clone(), connects.clone(), accepted.clone(), relay.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                if !u.load(Ordering::SeqCst) {
                    drop(s);
                    continue;
                }
                let (c, to) = (c.clone(), *r.lock().unwrap());
                tokio::spawn(async move {
                    let _ = serve(s, c, to).await;
                });
            }
        });
        Socks { addr, relay, up, connects, accepted, task }
    }

    /// Every later CONNECT is relayed to `to`.
    pub fn relay_to(&self, to: SocketAddr) {
        *self.relay.lock().unwrap() = Some(to);
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("socks5://{}", self.addr)
    }

    pub fn connects(&self) -> Vec<String> {
        self.connects.lock().unwrap().clone()
    }
}

impl Drop for Socks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut s: TcpStream, connects: Arc<Mutex<Vec<String>>>, relay: Option<SocketAddr>) -> std::io::Result<()> {
    let mut hello = [0u8; 2];
    s.read_exact(&mut hello).await?;
    let mut methods = vec![0u8; hello[1] as usize];
    s.read_exact(&mut methods).await?;
    s.write_all(&[5, 0]).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    let host = match head[3] {
        1 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await?;
            std::net::Ipv4Addr::from(a).to_string()
        }
        3 => {
            let mut n = [0u8; 1];
            s.read_exact(&mut n).await?;
            let mut name = vec![0u8; n[0] as usize];
            s.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        _ => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await?;
            std::net::Ipv6Addr::from(a).to_string()
        }
    };
    let mut port = [0u8; 2];
    s.read_exact(&mut port).await?;
    connects.lock().unwrap().push(format!("{host}:{}", u16::from_be_bytes(port)));
    if let Some(to) = relay {
        let Ok(mut up) = TcpStream::connect(to).await else {
            return s.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await;
        };
        s.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 80]).await?;
        tokio::io::copy_bidirectional(&mut s, &mut up).await?;
        return Ok(());
    }
    s.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 80]).await?;
    let mut sink = [0u8; 1024];
    while s.read(&mut sink).await? > 0 {}
    Ok(())
}
