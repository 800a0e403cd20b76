//! The data plane. (Placeholder: reads and drops every packet.)

use std::os::fd::OwnedFd;

use crate::config::Account;
use crate::rundir::RunDir;
use crate::secrets::Secret;

pub async fn run(
    account: Account,
    _creds: Vec<Option<Secret>>,
    tun: OwnedFd,
    _rundir: RunDir,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let fd = crate::sys::register_async(tun)?;
    let mut buf = vec![0u8; 65536];
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            g = fd.readable() => {
                let mut g = g?;
                loop {
                    match g.try_io(|f| nix::unistd::read(f.get_ref(), &mut buf).map_err(std::io::Error::from)) {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => { tracing::warn!(account = %account.name, error = %e, "tun read"); break }
                        Err(_would_block) => break,
                    }
                }
            }
        }
    }
}
