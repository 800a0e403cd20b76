#![deny(unsafe_code)]

use std::process::ExitCode;

use nsproxy::cli::{Cli, Command, LogFormat, PolicyCommand, SecretCommand};
use nsproxy::commands::exec;
use nsproxy::{commands, daemon};

/// Large allocations (the daemon's socket buffers) are mappings of their
/// own, fresh zero pages freed back to the kernel: see `host::sys::OwnPages`.
#[global_allocator]
static ALLOCATOR: nsproxy::host::sys::OwnPages = nsproxy::host::sys::OwnPages;

fn init_logging(level: Option<&str>, format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level.unwrap_or(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

fn main() -> ExitCode {
    // Run by a container runtime as its CNI plugin: env + stdin, JSON out.
    if commands::cni::invoked_as_plugin() {
        return commands::cni::plugin();
    }
    let cli = Cli::parse_args();
    // `exec` first: no runtime, no thread, nothing else may have started.
    if let Command::Exec { account, user, command } = &cli.command {
        init_logging(cli.log_level.as_deref(), cli.log_format, "warn");
        let asked = exec::Asked {
            user: user.as_deref(),
            policies: cli.policies_given.then_some(cli.policies.as_path()),
            sets: &cli.set,
        };
        let err = exec::exec(account, asked, command);
        eprintln!("nsproxy: {err}");
        return ExitCode::from(err.exit_code() as u8);
    }
    match &cli.command {
        Command::Completions { shell } => {
            return match nsproxy::cli::completions(*shell, &mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                // `| head` closed the pipe: what was wanted was read.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nsproxy: completions: cannot write the script: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Man { dir: None } => {
            return match nsproxy::cli::man_page(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nsproxy: man: cannot write the page: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Man { dir: Some(dir) } => {
            return match nsproxy::cli::man_pages(dir) {
                Ok(pages) => {
                    println!("wrote {} manual pages to {}", pages.len(), dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("nsproxy: man: cannot write the pages to {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let is_daemon = matches!(cli.command, Command::Daemon { .. } | Command::Up { foreground: true, .. });
    // Before any thread: the signals that stop the daemon reach it whatever
    // mask its parent handed down.
    if is_daemon && let Err(e) = nsproxy::host::sys::clear_signal_mask() {
        eprintln!("nsproxy: cannot unblock signals ({e}): SIGTERM may not stop this daemon");
    }
    init_logging(cli.log_level.as_deref(), cli.log_format, if is_daemon { "info" } else { "warn" });
    let policy = nsproxy::config::Policy::from_process(cli.policies.clone(), cli.set.clone());
    let res = match &cli.command {
        Command::Up { account, foreground } => {
            let log = commands::DaemonLog { level: cli.log_level.as_deref(), json: cli.log_format == LogFormat::Json };
            commands::up(&policy, account, *foreground, log)
        }
        Command::Down { account, kill } => commands::down(&policy, account, *kill),
        Command::Status { account, json } => commands::status(&policy, account.as_deref(), *json),
        Command::List { json } => commands::list(&policy, *json),
        Command::Metrics { listen } => commands::metrics(listen.as_deref()),
        Command::Rotate { account, to, burn, burn_for, reset_flows, json } => {
            let r = commands::RotateArgs {
                to: to.clone(),
                burn: *burn,
                burn_for: burn_for.clone(),
                reset_flows: *reset_flows,
            };
            commands::rotate(account, r, *json)
        }
        Command::Check { account, json } => commands::check(account, *json),
        Command::Unburn { account, label, json } => commands::unburn(account, label, *json),
        Command::Policy { command: PolicyCommand::Check { path } } => {
            let p = match path {
                Some(p) => nsproxy::config::Policy { path: p.clone(), ..policy },
                None => policy,
            };
            return commands::policy_check(&p);
        }
        Command::Policy { command: PolicyCommand::Show { account } } => {
            commands::policy_show(&policy, account.as_deref())
        }
        Command::Secret { command } => match command {
            SecretCommand::NewKey { path } => commands::secret::new_key(path),
            SecretCommand::Encrypt { key_file, key_name } => commands::secret::encrypt(key_file, key_name.as_deref()),
            SecretCommand::Check { account, key_file, key_name } => {
                return commands::secret::check(&policy, account.as_deref(), key_file.as_deref(), key_name.as_deref());
            }
        },
        Command::Daemon { account, ready_fd } => {
            let fd = match ready_fd.map(nsproxy::host::sys::inherited_fd).transpose() {
                Ok(fd) => fd,
                Err(e) => {
                    eprintln!("nsproxy: --ready-fd: {e}");
                    return ExitCode::FAILURE;
                }
            };
            daemon::run(account, &policy, fd)
        }
        Command::Exec { .. } | Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nsproxy: {e:#}");
            ExitCode::from(commands::exit_status(&e))
        }
    }
}
