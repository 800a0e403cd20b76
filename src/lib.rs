//! nsproxy: every outbound connection of an unmodified program leaves
//! through the account's proxy. See docs/architecture.md for which module
//! holds what and which are pure.
#![deny(unsafe_code)]

pub mod cli;
pub mod cni;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod dns;
pub mod fleet;
pub mod host;
pub mod manual;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod published;
pub mod rules;
pub mod secrets;
