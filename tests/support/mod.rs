//! Helpers for the tests that need no root.
pub mod origin;
pub mod socks;
