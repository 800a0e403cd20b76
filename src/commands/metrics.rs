//! `nsproxy metrics`: every running account's metrics as one Prometheus
//! exposition, gathered from the daemons over their control sockets:
//! printed once, or served on one host-wide address (`--listen`), so a
//! thousand accounts need no thousand listeners (the per-account
//! `metrics.listen` of a policy still works). Each account's daemon is
//! asked with a deadline; one that does not answer shows as
//! `nsproxy_account_scraped 0` and its figures are missing.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::{host, require_root};
use crate::host::Host;
use crate::host::paths::Paths;
use crate::host::rundir::{self, RunDir};
use crate::published::control::Request;

/// How long one daemon may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Daemons asked at once.
const PARALLEL: usize = 16;

pub fn metrics(listen: Option<&str>) -> anyhow::Result<()> {
    require_root("metrics")?;
    let paths = host().paths().clone();
    let Some(listen) = listen else {
        print!("{}", gather(&paths));
        return Ok(());
    };
    let at = crate::config::urls::parse_metrics_listen(listen)
        .map_err(|e| anyhow::Error::new(crate::config::Invalid(format!("--listen: {e}"))))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("metrics: runtime")?;
    rt.block_on(async {
        let l = crate::metrics::bind(&at).await.with_context(|| format!("metrics: cannot listen on {listen}"))?;
        eprintln!("nsproxy: serving the metrics of every account on {listen}");
        let source: crate::metrics::Source = Arc::new(move || gather(&paths));
        tokio::select! {
            _ = crate::metrics::serve(l, source) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })
}

/// Every account with a run directory, asked in parallel.
pub fn gather(paths: &Paths) -> String {
    let accounts = rundir::accounts_with_rundir(paths);
    let chunk = accounts.len().div_ceil(PARALLEL).max(1);
    let answers: Vec<(String, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = accounts
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|a| (a.clone(), ask(paths, a))).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    let scraped: Vec<(String, bool)> = answers.iter().map(|(a, t)| (a.clone(), t.is_some())).collect();
    let texts: Vec<String> = answers.into_iter().filter_map(|(_, t)| t).collect();
    crate::metrics::merge(&texts, &scraped)
}

fn ask(paths: &Paths, account: &str) -> Option<String> {
    let rd = RunDir::new(paths, account);
    let r = super::control::call(&rd.ctl_path(), &Request::Metrics, ASK_TIMEOUT).ok()?;
    match (r.ok, r.data) {
        (true, serde_json::Value::String(text)) => Some(text),
        _ => None,
    }
}
