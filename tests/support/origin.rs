//! An in-process HTTP origin standing for an exchange's API, for the
//! tests without root: every request gets the answer set last (status,
//! `Retry-After`, body), and requests are counted.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone)]
struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

pub struct Origin {
    pub addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    pub requests: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start() -> Origin {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind the origin");
        let addr = l.local_addr().expect("addr");
        let reply = Arc::new(Mutex::new(Reply { status: 200, retry_after: None, body: "{}".into() }));
        let requests = Arc::new(AtomicU32::new(0));
        let (r, n) = (reply.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (r, n) = (r.clone(), n.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => head.extend_from_slice(&chunk[..k]),
                        }
                    }
                    n.fetch_add(1, Ordering::SeqCst);
                    let rep = r.lock().unwrap().clone();
                    let extra = rep.retry_after.map(|v| format!("Retry-After: {v}\r\n")).unwrap_or_default();
                    let out = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{}",
                        rep.status,
                        rep.body.len(),
                        rep.body
                    );
                    let _ = s.write_all(out.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Origin { addr, reply, requests, task }
    }

    pub fn answer(&self, status: u16, retry_after: Option<&str>, body: &str) {
        *self.reply.lock().unwrap() = Reply { status, retry_after: retry_after.map(str::to_string), body: body.into() };
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}
