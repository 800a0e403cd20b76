//! `/run/nsproxy/<account>/state.json`: what a running daemon publishes
//! about its account for `exec`, `status` and `down`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a running daemon publishes about its account. Contains no secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub account: String,
    pub namespace: String,
    pub pid: u32,
    pub policy: PathBuf,
    pub tun: String,
    pub dns: String,
    pub proxy: String,
    /// Local users and groups allowed to `exec` (names, as in the policy).
    pub exec_users: Vec<String>,
    pub exec_groups: Vec<String>,
    /// Names (never values) of the environment variables the credentials
    /// came from: `exec` removes them from the program's environment.
    #[serde(default)]
    pub secret_env: Vec<String>,
    pub started_at_unix: u64,
}
