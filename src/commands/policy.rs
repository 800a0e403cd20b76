//! `policy check` and `policy show`.

use std::process::ExitCode;

use crate::config;

pub fn policy_check(policy: &config::Policy) -> ExitCode {
    let files = config::policy_files(&policy.path).map(|f| f.len()).unwrap_or(0);
    match policy.load() {
        Ok(accounts) => {
            let problems: Vec<config::Problem> =
                accounts.iter().flat_map(|a| crate::secrets::check_account(a, false)).collect();
            // Not problems: what the policy will do that may surprise.
            for a in accounts.iter().filter(|a| a.udp == config::UdpMode::Proxy) {
                let http: Vec<String> =
                    a.proxies.iter().filter(|p| p.scheme != config::Scheme::Socks5).map(|p| p.display_name()).collect();
                if !http.is_empty() {
                    println!(
                        "note: account {}: udp: proxy, but {} cannot carry UDP: while one of them is active, UDP is refused",
                        a.name,
                        http.join(", ")
                    );
                }
            }
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
                ExitCode::from(crate::cli::exit::POLICY)
            }
        }
        Err(problems) => {
            // Also report password-file problems of the accounts that parsed.
            for p in &problems.0 {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s) found", problems.0.len());
            ExitCode::from(crate::cli::exit::POLICY)
        }
    }
}

/// `policy show`: the accounts as the daemon would see them.
pub fn policy_show(policy: &config::Policy, account: Option<&str>) -> anyhow::Result<()> {
    let chosen = policy.select(account)?;
    println!("{}", serde_json::to_string_pretty(&chosen)?);
    Ok(())
}
