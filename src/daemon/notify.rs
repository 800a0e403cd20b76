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
    fn a_relative_or_missing_socket_is_an_error_naming_it() {
        let e = notify_to("run/notify", "READY=1").expect_err("relative");
        assert!(e.to_string().contains("run/notify"), "{e}");
        let e = notify_to("/nonexistent/nsproxy/notify", "READY=1").expect_err("missing");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
