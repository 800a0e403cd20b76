//! Helpers for the tests that need no root.
pub mod socks;
