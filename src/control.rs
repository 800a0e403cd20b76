//! The daemon's control socket, `/run/nsproxy/<account>/ctl.sock`: one JSON
//! request line, one JSON response line. Root only (mode 0600 in a 0700
//! directory, and the peer's uid is checked); requests are capped in size
//! and slow clients are cut off. Used by `rotate` and `check`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Largest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// A client must send its whole request within this time.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Switch the active proxy now.
    Rotate {
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        burn: bool,
        /// With `burn`: for how long (None: for good).
        #[serde(default)]
        burn_for_secs: Option<u64>,
        #[serde(default)]
        reset_flows: bool,
    },
    /// Health and egress check of the active proxy now.
    Check,
    /// `nsproxy exec` refused someone: the daemon logs it with the
    /// account's other events.
    ExecRefused {
        /// Who asked (the sudo caller, or root).
        caller: String,
        /// Who the program would have run as.
        user: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(message: impl Into<String>, data: serde_json::Value) -> Response {
        Response { ok: true, message: message.into(), data }
    }
    pub fn err(message: impl Into<String>) -> Response {
        Response { ok: false, message: message.into(), data: serde_json::Value::Null }
    }
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!("request larger than {MAX_REQUEST} bytes"));
    }
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
    if !text.trim_start().starts_with('{') {
        return Err("invalid request: expected a JSON object such as {\"cmd\":\"check\"}".into());
    }
    serde_json::from_str(text.trim()).map_err(|e| format!("invalid request: {e}"))
}

/// A request with the channel its answer goes back on.
pub type Call = (Request, oneshot::Sender<Response>);

/// Serves the socket until the task is dropped. Each accepted client is
/// checked (uid 0), read with a size cap and a deadline, and its request
/// handed to `tx`.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Call>, account: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (tx, account) = (tx.clone(), account.clone());
        tokio::spawn(async move {
            if let Err(e) = client(stream, tx).await {
                tracing::warn!(account = %account, error = %e, "control socket: request refused");
            }
        });
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
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() || m.is_dir() => {
            return Err(std::io::Error::other(format!("{} is not a socket; refusing to replace it", path.display())));
        }
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Sends `req` to the daemon at `path` and waits up to `timeout` for the
/// answer (blocking; for the CLI).
pub fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Response, String> {
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| format!("cannot reach the daemon at {}: {e} (is the account up?)", path.display()))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(READ_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut out = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    out.push(b'\n');
    s.write_all(&out).map_err(|e| format!("send to the daemon: {e}"))?;
    let mut line = String::new();
    BufReader::new(&s)
        .take(1 << 20)
        .read_line(&mut line)
        .map_err(|e| format!("no answer from the daemon within {timeout:?}: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("bad answer from the daemon: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(parse_request(br#"{"cmd":"check"}"#), Ok(Request::Check));
        assert_eq!(
            parse_request(br#"{"cmd":"rotate","to":"p2","burn":true,"burn_for_secs":60}"#),
            Ok(Request::Rotate { to: Some("p2".into()), burn: true, burn_for_secs: Some(60), reset_flows: false })
        );
        for bad in [
            &br#"{"cmd":"rotate","tooo":"p2"}"#[..],
            br#"{"cmd":"explode"}"#,
            br#"{"to":"p2"}"#,
            br#"["check"]"#,
            b"\xff\xfe",
            b"",
            br#"{"cmd":"rotate","burn":"yes"}"#,
        ] {
            assert!(parse_request(bad).is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
        }
        let huge = vec![b' '; MAX_REQUEST + 1];
        assert!(parse_request(&huge).unwrap_err().contains("larger than"));
    }
}
