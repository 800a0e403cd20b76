//! nsproxy: every outbound connection of an unmodified program leaves
//! through the account's proxy.
#![deny(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod engine;
pub mod exec;
pub mod fleet;
pub mod link;
pub mod metrics;
pub mod netns;
pub mod notify;
pub mod pool;
pub mod proxy;
pub mod rules;
pub mod rundir;
pub mod secrets;
pub mod sys;
