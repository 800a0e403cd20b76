//! systemd readiness notification (`Type=notify`): datagrams such as
//! `READY=1` to the socket named by `NOTIFY_SOCKET`, a path or, with a
//! leading `@`, an abstract address. Nothing happens without the variable.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` to systemd if it asked for notifications; errors are
/// returned for the caller to log (systemd then times the unit out).
pub fn notify(state: &str) -> io::Result<()> {
    match std::env::var("NOTIFY_SOCKET") {
        Ok(addr) if !addr.is_empty() => notify_to(&addr, state),
        _ => Ok(()),
    }
}

/// Sends `state` to the notification socket `addr`.
pub fn notify_to(addr: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let to = socket_addr(addr)?;
    let n = sock.send_to_addr(state.as_bytes(), &to)?;
    if n != state.len() {
        return Err(io::Error::other(format!("NOTIFY_SOCKET {addr}: short write ({n} of {} bytes)", state.len())));
    }
    Ok(())
}

/// Whether systemd asked for notifications at all.
pub fn wanted() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
}

/// The watchdog period systemd expects pings within (`WatchdogSec=`), from
/// `WATCHDOG_USEC` and `WATCHDOG_PID` (the ping is for this process only
/// when that names it); `None` without a watchdog. A malformed value is an
/// error naming the variable.
pub fn watchdog_period(usec: Option<&str>, pid: Option<&str>, me: u32) -> Result<Option<std::time::Duration>, String> {
    let Some(usec) = usec else { return Ok(None) };
    if let Some(pid) = pid {
        let pid: u32 = pid.trim().parse().map_err(|_| format!("WATCHDOG_PID={pid:?} is not a process id"))?;
        if pid != me {
            return Ok(None);
        }
    }
    match usec.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(us) => Ok(Some(std::time::Duration::from_micros(us))),
        Err(_) => Err(format!("WATCHDOG_USEC={usec:?} is not a number of microseconds")),
    }
}

fn socket_addr(addr: &str) -> io::Result<SocketAddr> {
    if let Some(name) = addr.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if addr.starts_with('/') {
        SocketAddr::from_pathname(addr)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET {addr:?}: neither an absolute path nor an @abstract name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_address() {
        let dir = std::env::temp_dir().join(format!("nsproxy-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).expect("bind");
        notify_to(path.to_str().expect("utf-8"), "READY=1\nSTATUS=up").expect("send");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
        let _ = std::fs::remove_dir_all(&dir);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("nsproxy-notify-test-{}", std::process::id());
        let rx =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).expect("addr")).expect("bind");
        notify_to(&format!("@{name}"), "STOPPING=1").expect("send");
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn the_watchdog_period_is_for_this_process_only() {
        let s = std::time::Duration::from_secs(30);
        assert_eq!(watchdog_period(Some("30000000"), None, 7), Ok(Some(s)));
        assert_eq!(watchdog_period(Some("30000000"), Some("7"), 7), Ok(Some(s)));
        assert_eq!(watchdog_period(Some("30000000"), Some("8"), 7), Ok(None));
        assert_eq!(watchdog_period(None, Some("7"), 7), Ok(None));
        assert_eq!(watchdog_period(Some("0"), None, 7), Ok(None));
        let e = watchdog_period(Some("30s"), None, 7).expect_err("not microseconds");
        assert!(e.contains("WATCHDOG_USEC"), "{e}");
        let e = watchdog_period(Some("1"), Some("me"), 7).expect_err("not a pid");
        assert!(e.contains("WATCHDOG_PID"), "{e}");
    }

    #[test]
    fn a_relative_or_missing_socket_is_an_error_naming_it() {
        let e = notify_to("run/notify", "READY=1").expect_err("relative");
        assert!(e.to_string().contains("run/notify"), "{e}");
        let e = notify_to("/nonexistent/nsproxy/notify", "READY=1").expect_err("missing");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
