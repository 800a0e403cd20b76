//! `policy check` and `policy show`.

use std::process::ExitCode;

use anyhow::anyhow;

use crate::config;

pub fn policy_check(policy: &config::Policy) -> ExitCode {
    let files = config::policy_files(&policy.path).map(|f| f.len()).unwrap_or(0);
    match policy.load() {
        Ok(accounts) => {
            let problems: Vec<config::Problem> =
                accounts.iter().flat_map(|a| crate::secrets::check_account(a, false)).collect();
            if problems.is_empty() {
                println!(
                    "OK: {} account(s) in {} file(s): {}",
                    accounts.len(),
                    files,
                    accounts.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
                );
                ExitCode::SUCCESS
            } else {
                for p in &problems {
                    eprintln!("{p}");
                }
                eprintln!("{} problem(s) found", problems.len());
                ExitCode::FAILURE
            }
        }
        Err(problems) => {
            // Also report password-file problems of the accounts that parsed.
            for p in &problems.0 {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s) found", problems.0.len());
            ExitCode::FAILURE
        }
    }
}

/// `policy show`: the accounts as the daemon would see them.
pub fn policy_show(policy: &config::Policy, account: Option<&str>) -> anyhow::Result<()> {
    let accounts = policy.load().map_err(|p| anyhow!("policy {} is invalid:\n{p}", policy.path.display()))?;
    let chosen: Vec<&config::Account> = match account {
        Some(name) => vec![
            accounts
                .iter()
                .find(|a| a.name == name)
                .ok_or_else(|| anyhow!("no account named {name:?} in policy {}", policy.path.display()))?,
        ],
        None => accounts.iter().collect(),
    };
    println!("{}", serde_json::to_string_pretty(&chosen)?);
    Ok(())
}
