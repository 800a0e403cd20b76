//! Fleet mode: the proxy service's state as `stats.json` carries it.

use serde::Serialize;

/// What `status` shows about the proxy service.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ServiceStatus {
    /// `allocated`, `unavailable` (no proxy from it) or `starting`.
    pub state: String,
    pub breaker: String,
    pub proxy: Option<String>,
    pub strategy: Option<String>,
    pub fallback_policy: Option<String>,
    /// Seconds until the cached answer is refreshed.
    pub refresh_in_s: Option<u64>,
    pub last_error: Option<String>,
    pub allocations: u64,
    pub failed_calls: u64,
    pub feedback_sent: u64,
    pub feedback_failed: u64,
    pub feedback_dropped: u64,
    pub fallback_to_embedded: bool,
}
