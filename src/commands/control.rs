//! `rotate` and `check`, and the client of the daemon's control socket
//! (also used by `exec` to report refusals).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail};

use super::{host, require_root};
use crate::config;
use crate::host::Host;
use crate::host::rundir::RunDir;
use crate::published::control::{READ_TIMEOUT, Request, Response};

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

pub struct RotateArgs {
    pub to: Option<String>,
    pub burn: bool,
    pub burn_for: Option<String>,
    pub reset_flows: bool,
}

/// Sends a control request to the account's running daemon.
fn control(account: &str, req: &Request, json: bool) -> anyhow::Result<()> {
    require_root("rotate/check/unburn")?;
    let rd = RunDir::new(host().paths(), account);
    if !rd.daemon_alive() {
        bail!("account {account} is not up (no daemon running): run `nsproxy up {account}` first");
    }
    // Long enough for every candidate's checks.
    let resp = call(&rd.ctl_path(), req, Duration::from_secs(180)).map_err(|e| anyhow!("account {account}: {e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else if resp.ok {
        println!("{}", resp.message);
    }
    if !resp.ok {
        bail!("{}", resp.message);
    }
    Ok(())
}

pub fn rotate(account: &str, a: RotateArgs, json: bool) -> anyhow::Result<()> {
    let burn_for_secs = match &a.burn_for {
        None => None,
        Some(d) => Some(config::duration::parse(d).map_err(|e| anyhow!("--for {d:?}: {e}"))?.as_secs().max(1)),
    };
    let req = Request::Rotate { to: a.to, burn: a.burn, burn_for_secs, reset_flows: a.reset_flows };
    control(account, &req, json)
}

pub fn check(account: &str, json: bool) -> anyhow::Result<()> {
    control(account, &Request::Check, json)
}

pub fn unburn(account: &str, label: &str, json: bool) -> anyhow::Result<()> {
    control(account, &Request::Unburn { label: label.to_string() }, json)
}
