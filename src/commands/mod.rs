//! The CLI's commands, one file each: `up`, `down`, `status`/`list`,
//! `rotate`/`check` (control), `policy check`/`show`, `secret`, `exec`,
//! `metrics` (every account's, on one endpoint), `cni` (the plugin).

pub mod cni;
pub mod control;
pub mod down;
pub mod exec;
pub mod metrics;
pub mod policy;
pub mod secret;
pub mod status;
pub mod up;

use anyhow::bail;

pub use control::{RotateArgs, check, rotate, unburn};
pub use down::down;
pub use metrics::metrics;
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

/// The exit status for an error: a policy or credential problem, `up`
/// without a usable proxy, or any other failure (see `cli::exit`).
pub fn exit_status(e: &anyhow::Error) -> u8 {
    use crate::cli::exit;
    let any = |f: &dyn Fn(&(dyn std::error::Error + 'static)) -> bool| e.chain().any(f);
    if any(&|c| c.is::<crate::config::Invalid>() || c.is::<crate::secrets::SecretError>()) {
        exit::POLICY
    } else if any(&|c| c.is::<up::NoUsableProxy>()) {
        exit::NO_PROXY
    } else {
        exit::FAILURE
    }
}
