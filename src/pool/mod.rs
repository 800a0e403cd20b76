//! One account's proxy pool, in one room: the pure state machine
//! (`state`), its file (`store`), the handle the daemon shares (`handle`:
//! routing, counters, events), the manager task (`manager`: checks,
//! failover, rotation, failback) and the proxy service's member in fleet
//! mode (`service`).

mod checks;
pub mod handle;
pub mod manager;
pub mod service;
pub mod state;
pub mod store;

pub use handle::{PoolHandle, unix_now};
pub use state::*;
