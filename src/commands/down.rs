//! `down`: stops the programs (with `--kill`) and the daemon, removes the
//! namespace, its `/etc/netns` files and the run directory, through the
//! account's plan. Safe to repeat; the pool file (burns) stays.

use super::{host, require_root};
use crate::config;
use crate::daemon::plan::AccountPlan;
use crate::host::Host;

pub fn down(policy: &config::Policy, account: &str, kill_programs: bool) -> anyhow::Result<()> {
    require_root("down")?;
    let host = host();
    let from_policy =
        || policy.load().ok().and_then(|v| v.into_iter().find(|a| a.name == account)).map(|a| a.namespace);
    let plan = AccountPlan::known(host.paths(), account, from_policy);
    plan.teardown(&host, kill_programs)?;
    println!("account {account} is down");
    Ok(())
}
