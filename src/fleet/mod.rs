//! Fleet mode: proxies allocated by an external proxy service (the
//! `external_service` policy section). nsproxy is the service's client:
//! it asks for a proxy per (account, connection type), caches the answer
//! for its TTL, puts the proxy into the account's pool as the member
//! `service`, and reports each flow's outcome back.

pub mod breaker;
pub mod client;
pub mod protocol;
