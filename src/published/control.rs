//! The control socket's messages: one JSON request line, one JSON
//! response line (`rotate`, `check`, and the refusals `exec` reports).

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// The daemon's counters now (`status`): answered with the snapshot
    /// that `stats.json` holds once the daemon has stopped.
    Stats,
    /// The account's metrics in the Prometheus text format (`nsproxy
    /// metrics`, which serves every account's on one endpoint).
    Metrics,
    /// Lift the burn of one proxy.
    Unburn { label: String },
    /// A container joins the account (the CNI plugin's ADD): the daemon
    /// creates the TUN `ifname` in the container's namespace `netns` and
    /// serves it like the account's own.
    Attach { container: String, netns: String, ifname: String },
    /// The container leaves (DEL): its TUN is closed. Unknown: no error.
    Detach { container: String },
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
