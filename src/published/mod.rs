//! The schemas the daemon publishes and the CLI and the metrics read:
//! `state.json`, `stats.json` (with the proxy service's state), the pool
//! records of `pool.json`, and the control socket's messages. Plain data
//! with serde; this module depends on nothing else in the crate.

pub mod containers;
pub mod control;
pub mod pool;
pub mod service;
pub mod state;
pub mod stats;
