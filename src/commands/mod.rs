//! The CLI's commands, one file each: `up`, `down`, `status`/`list`,
//! `rotate`/`check` (control), `policy check`/`show`, `secret`, `exec`.

pub mod control;
pub mod down;
pub mod exec;
pub mod policy;
pub mod secret;
pub mod status;
pub mod up;

use anyhow::bail;

pub use control::{RotateArgs, check, rotate, unburn};
pub use down::down;
pub use policy::{policy_check, policy_show};
pub use status::{list, status};
pub use up::{DaemonLog, up};

/// The host the commands act on.
fn host() -> crate::host::Linux {
    crate::host::Linux::system()
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("nsproxy {what} needs root: run it with sudo");
    }
    Ok(())
}
