//! Faults a real proxy cannot be made to produce, with a scripted SOCKS5
//! server on loopback: the requested destination port picks its behaviour.
//! Also flow limits and the idle timeout.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

const RESET_AFTER_CONNECT: u16 = 1001;
const CLOSE_FIRST: u16 = 1002;
const STALL: u16 = 1003;
const GARBAGE: u16 = 1004;
const HOLD: u16 = 1005;
const HOST_UNREACHABLE: u16 = 1006;

/// Accepts forever on 127.0.0.1:0; reports what CLOSE_FIRST received.
fn scripted_proxy() -> (u16, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || serve(s, tx));
        }
    });
    (port, rx)
}

fn serve(mut s: TcpStream, tx: mpsc::Sender<Vec<u8>>) {
    let mut b = [0u8; 512];
    // Greeting: version, n methods, methods.
    if s.read_exact(&mut b[..2]).is_err() {
        return;
    }
    let n = b[1] as usize;
    if s.read_exact(&mut b[..n]).is_err() {
        return;
    }
    let _ = s.write_all(&[5, 0]);
    // Request: VER CMD RSV ATYP=1 ADDR(4) PORT(2).
    if s.read_exact(&mut b[..10]).is_err() {
        return;
    }
    let port = u16::from_be_bytes([b[8], b[9]]);
    match port {
        STALL => {
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        GARBAGE => {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            return;
        }
        HOST_UNREACHABLE => {
            let _ = s.write_all(&[5, 4, 0, 1, 0, 0, 0, 0, 0, 0]);
            return;
        }
        _ => {}
    }
    let _ = s.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 80]);
    match port {
        RESET_AFTER_CONNECT => {
            let _ = s.read(&mut b);
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
        CLOSE_FIRST => {
            let _ = s.write_all(b"bye\n");
            let _ = s.shutdown(Shutdown::Write);
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let _ = tx.send(got);
        }
        _ => {
            // HOLD and the rest: echo until EOF.
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}

fn account(port: u16, extra: &str) -> Account {
    ensure_user(TEST_USER);
    Account::new(
        "ft",
        &format!(
            "    exec:\n      users: [{TEST_USER}]\n    proxies:\n      - label: scripted\n        url: socks5://127.0.0.1:{port}\n        handshake_timeout: 1s\n{extra}"
        ),
    )
}

const CLIENT: &str = r#"
import socket, sys, time
port = int(sys.argv[1])
t = time.time()
def el(): return round(time.time() - t, 2)
try:
    s = socket.create_connection(("10.77.0.1", port), timeout=10)
except Exception as e:
    print("connect-failed", type(e).__name__, el()); sys.exit(0)
if port == 1001:
    s.sendall(b"x")
    try:
        d = s.recv(100); print("recv", d, el())
    except ConnectionResetError:
        print("reset", el())
elif port == 1002:
    got = b""
    while True:
        d = s.recv(100)
        if not d: break
        got += d
    s.sendall(b"after-eof"); s.close()
    print("got", got, el())
"#;

#[test]
fn upstream_reset_and_upstream_half_close_reach_the_program() {
    if !root_or_skip("upstream_reset_and_upstream_half_close_reach_the_program") {
        return;
    }
    let (port, rx) = scripted_proxy();
    let a = account(port, "");
    a.up();
    let o = a.python(CLIENT, &RESET_AFTER_CONNECT.to_string());
    let t = out(&o);
    assert!(t.starts_with("reset "), "the program must see the upstream's reset: {t}{}", err(&o));
    let secs: f64 = t.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(99.0);
    assert!(secs < 1.0, "reset took {secs}s");
    let o = a.python(CLIENT, &CLOSE_FIRST.to_string());
    assert!(out(&o).starts_with("got b'bye\\n'"), "{}{}", out(&o), err(&o));
    let got = rx.recv_timeout(Duration::from_secs(5)).expect("proxy got the program's data after its own FIN");
    assert_eq!(got, b"after-eof", "data sent after the upstream's half-close still arrives");
}

#[test]
fn stalled_garbage_and_destination_errors_are_refused_with_reasons() {
    if !root_or_skip("stalled_garbage_and_destination_errors_are_refused_with_reasons") {
        return;
    }
    let (port, _rx) = scripted_proxy();
    let a = account(port, "");
    a.up();
    for (p, reason, max) in [
        (STALL, "handshake timed out after 1s", 2.5),
        (GARBAGE, "protocol error: bad reply version 72", 1.0),
        (HOST_UNREACHABLE, "host unreachable (SOCKS5 reply 4)", 1.0),
    ] {
        let o = a.python(CLIENT, &p.to_string());
        let t = out(&o);
        assert!(t.starts_with("connect-failed ConnectionRefusedError"), "port {p}: {t}{}", err(&o));
        let secs: f64 = t.split_whitespace().nth(2).and_then(|x| x.parse().ok()).unwrap_or(99.0);
        assert!(secs < max, "port {p}: refusal took {secs}s");
        wait_until(reason, Duration::from_secs(3), || a.log().contains(reason));
        assert!(a.log().contains(&format!("scripted (socks5://127.0.0.1:{port})")), "the log names the proxy");
    }
}

const HOLD_MANY: &str = r#"
import socket, sys, time
held, results = [], []
for i in range(int(sys.argv[1])):
    try:
        s = socket.create_connection(("10.77.0.1", int(sys.argv[3])), timeout=5); s.sendall(b"p"); s.recv(1); held.append(s); results.append("ok")
    except Exception as e:
        results.append(type(e).__name__)
print(" ".join(results))
if sys.argv[2] == "idle":
    s = held[0]; t = time.time()
    try:
        d = s.recv(10); print("idle-eof" if not d else "data", round(time.time() - t, 1))
    except ConnectionResetError:
        print("idle-reset", round(time.time() - t, 1))
"#;

#[test]
fn flow_limit_resets_the_excess_and_counts_it() {
    if !root_or_skip("flow_limit_resets_the_excess_and_counts_it") {
        return;
    }
    let (port, _rx) = scripted_proxy();
    let a = account(port, "    limits:\n      max_flows: 3\n");
    a.up();
    let o = a.python(HOLD_MANY, &format!("5 keep {HOLD}"));
    assert_eq!(out(&o).trim(), "ok ok ok ConnectionRefusedError ConnectionRefusedError", "{}", err(&o));
    wait_until("refusals counted", Duration::from_secs(3), || a.stats()["flows_refused_limit"] == 2);
    assert!(a.log().contains("flow refused: flow limit reached"));
    wait_until("flows reaped after the program exited", Duration::from_secs(10), || a.stats()["flows_active"] == 0);
}

#[test]
fn idle_flows_are_reset_after_the_idle_timeout() {
    if !root_or_skip("idle_flows_are_reset_after_the_idle_timeout") {
        return;
    }
    let (port, _rx) = scripted_proxy();
    let a = account(port, "    limits:\n      idle_timeout: 2s\n");
    a.up();
    let o = a.python(HOLD_MANY, &format!("1 idle {HOLD}"));
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first().copied(), Some("ok"), "{text}{}", err(&o));
    let last = lines.get(1).copied().unwrap_or("");
    assert!(last.starts_with("idle-reset"), "an idle flow is reset: {text}");
    let secs: f64 = last.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    assert!((1.5..4.0).contains(&secs), "after about 2s: {secs}");
}
