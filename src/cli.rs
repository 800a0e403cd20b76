//! Command-line interface (clap derive). Parsing starts no thread, so the
//! `exec` branch can still switch namespaces afterwards.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub const DEFAULT_POLICIES: &str = "/etc/nsproxy/policies";

/// Exit statuses (the man page's EXIT STATUS lists them).
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// A failure: the system, the proxy, the daemon.
    pub const FAILURE: u8 = 1;
    /// A usage error: an unknown command or option, a bad argument.
    pub const USAGE: u8 = 2;
    /// The policy or a credential is invalid (a file, a field, a secret):
    /// starting again will not help (systemd: `RestartPreventExitStatus=3`).
    pub const POLICY: u8 = 3;
    /// `up`: the account is up and fail-closed, but no proxy passed its
    /// check yet; the daemon keeps checking.
    pub const NO_PROXY: u8 = 4;
}

#[derive(Debug, Parser)]
#[command(
    name = "nsproxy",
    version,
    about = "Run unmodified programs whose every connection leaves through the account's proxy",
    after_help = TOP_EXAMPLES
)]
pub struct Cli {
    /// Policy file, or directory of *.yaml policy files.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_POLICIES, help_heading = GLOBAL)]
    pub policies: PathBuf,
    /// Whether --policies was given (exec refuses one that is not the daemon's).
    #[arg(skip)]
    pub policies_given: bool,
    /// Override a policy field, e.g. --set accounts.account-a.dns.mode=tcp (repeatable; wins
    /// over NSPROXY_ACCOUNTS__ACCOUNT_A__DNS__MODE=tcp in the environment, which wins over the file).
    #[arg(long = "set", global = true, value_name = "FIELD=VALUE", help_heading = GLOBAL)]
    pub set: Vec<String>,
    /// Log level: error, warn, info, debug or trace (or a RUST_LOG-style filter).
    #[arg(long, global = true, value_name = "LEVEL", help_heading = GLOBAL)]
    pub log_level: Option<String>,
    /// Log format: human-readable lines, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, help_heading = GLOBAL)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The heading of the options every command takes.
const GLOBAL: &str = "Global options";

const TOP_EXAMPLES: &str = "Examples:
  sudo nsproxy policy check                      # validate /etc/nsproxy/policies
  sudo nsproxy up account-a                      # namespace, TUN, daemon; prints the egress IP
  sudo nsproxy exec account-a --user bot -- python3 bot.py
  sudo nsproxy status                            # every account: daemon, proxy, egress IP
  sudo nsproxy rotate account-a --burn --for 24h # leave a refused IP for a day
  sudo nsproxy down account-a";

const UP_EXAMPLES: &str = "Examples:
  sudo nsproxy up account-a
  sudo nsproxy --policies ./policies up account-a
  sudo nsproxy --set accounts.account-a.dns.mode=tcp up account-a
  nsproxy up --foreground account-a              # under systemd (nsproxy@.service)";

const EXEC_EXAMPLES: &str = "Examples:
  sudo nsproxy exec account-a -- curl -s https://api.exchange.test/api/v3/ping
  sudo nsproxy exec account-a --user bot -- python3 bot.py --live
  sudo -u root nsproxy exec account-a --user 1001 -- /opt/bot/run";

const STATUS_EXAMPLES: &str = "Examples:
  sudo nsproxy status
  sudo nsproxy status account-a --json | jq .pool";

const METRICS_EXAMPLES: &str = "Examples:
  sudo nsproxy metrics | grep nsproxy_flows_active
  sudo nsproxy metrics --listen 127.0.0.1:9464
  sudo nsproxy metrics --listen unix:/run/nsproxy-metrics.sock";

const ROTATE_EXAMPLES: &str = "Examples:
  sudo nsproxy rotate account-a                  # the next usable proxy by priority
  sudo nsproxy rotate account-a --to res-nl-2
  sudo nsproxy rotate account-a --burn --for 12h --reset-flows";

/// The CLI as the binary shows it: exec's help leaves out `--set` (exec
/// takes the running daemon's policy and refuses overrides).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    // exec's own copy of the global `--set`, hidden: the global one is not
    // propagated where the id exists, and a value given still reaches
    // `Cli::set` (for exec to refuse it).
    let hidden_set = clap::Arg::new("set")
        .long("set")
        .value_name("FIELD=VALUE")
        .action(clap::ArgAction::Append)
        .global(true)
        .hide(true);
    Cli::command().mut_subcommand("exec", |c| c.arg(hidden_set))
}

impl Cli {
    /// Parses the command line, noting which global options were given.
    pub fn parse_args() -> Cli {
        use clap::FromArgMatches;
        let matches = command().get_matches();
        let mut cli = match Cli::from_arg_matches(&matches) {
            Ok(c) => c,
            Err(e) => e.exit(),
        };
        let given =
            |m: &clap::ArgMatches| matches!(m.value_source("policies"), Some(clap::parser::ValueSource::CommandLine));
        cli.policies_given = given(&matches) || matches.subcommand().is_some_and(|(_, sub)| given(sub));
        cli
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the account's namespace and TUN and start its daemon.
    ///
    /// Prints when the namespace is in place (its only way out is the
    /// account's proxy), what it waits for, then the active proxy and its
    /// egress IP. Exit status 4: the account is up but no proxy passed its
    /// check (the daemon keeps checking); 3: the policy or a credential is
    /// invalid.
    #[command(after_help = UP_EXAMPLES)]
    Up {
        /// The account's name in the policy.
        #[arg(value_name = "ACCOUNT")]
        account: String,
        /// Stay in the foreground (for systemd); logs go to stderr.
        #[arg(long)]
        foreground: bool,
    },
    /// Stop the account's daemon and remove its namespace. Safe to repeat.
    Down {
        /// The account's name (in the policy, or as it is up).
        #[arg(value_name = "ACCOUNT")]
        account: String,
        /// Also kill the programs still running in the namespace.
        #[arg(long)]
        kill: bool,
    },
    /// Run a program inside the account's namespace as an unprivileged user.
    ///
    /// The policy is the running daemon's (overrides do not apply). The
    /// program's exit status is exec's; 126: it cannot be executed, 127: not
    /// found.
    #[command(after_help = EXEC_EXAMPLES)]
    Exec {
        /// The account to run in (it must be up).
        #[arg(value_name = "ACCOUNT")]
        account: String,
        /// User to run as (default: the sudo caller).
        #[arg(long, short)]
        user: Option<String>,
        /// The program and its arguments, after `--`.
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Show accounts: namespace, daemon, TUN, proxy.
    #[command(after_help = STATUS_EXAMPLES)]
    Status {
        /// One account (default: every account of the policy and every one up).
        #[arg(value_name = "ACCOUNT")]
        account: Option<String>,
        /// Print JSON (one object, or a list) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Switch the account's active proxy now (checked before it is used).
    /// Existing flows keep their proxy unless --reset-flows.
    #[command(after_help = ROTATE_EXAMPLES)]
    Rotate {
        /// The account whose proxy changes (it must be up).
        #[arg(value_name = "ACCOUNT")]
        account: String,
        /// The proxy label to switch to (default: the next usable one by priority).
        #[arg(long, value_name = "LABEL")]
        to: Option<String>,
        /// Mark the proxy being left as burned: never used again (or until --for passes).
        #[arg(long)]
        burn: bool,
        /// With --burn: how long, e.g. 30m, 12h, 7d (default: for good).
        #[arg(long = "for", value_name = "DURATION", requires = "burn")]
        burn_for: Option<String>,
        /// Reset the account's existing connections so programs reconnect through the new proxy.
        #[arg(long)]
        reset_flows: bool,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lift the burn of one proxy (found by a check, or by `rotate --burn`): it is a standby again.
    Unburn {
        /// The account (it must be up).
        #[arg(value_name = "ACCOUNT")]
        account: String,
        /// The proxy's label.
        #[arg(value_name = "LABEL")]
        label: String,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Health-check the active proxy and fetch its egress IP now.
    Check {
        /// The account (it must be up).
        #[arg(value_name = "ACCOUNT")]
        account: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the accounts of the policy and whether they are up.
    List {
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Every running account's metrics (Prometheus text format) in one
    /// exposition, asked of the daemons: printed once, or served on one
    /// address with --listen.
    #[command(after_help = METRICS_EXAMPLES)]
    Metrics {
        /// Serve on this address (host:port, or unix:/absolute/path) instead of printing once.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Fernet keys and encrypted credentials (password_encrypted, username_encrypted).
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell the script is for.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or with --dir write it and one page per command there.
    Man {
        /// Directory for nsproxy.1, nsproxy-up.1, ... (e.g. /usr/share/man/man1).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// The per-account daemon (started by `up`).
    #[command(hide = true)]
    Daemon {
        account: String,
        #[arg(long)]
        ready_fd: Option<i32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Write a new random Fernet key to PATH (mode 0600; refused if PATH exists).
    NewKey {
        /// Where the key goes, e.g. /etc/nsproxy/secrets/fernet.key.
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Encrypt one value read from stdin (a prompt without echo on a terminal) and print its token.
    Encrypt {
        /// The Fernet key: the key alone, or a .env file holding it.
        #[arg(long, value_name = "PATH")]
        key_file: PathBuf,
        /// The variable holding the key in a .env file with several values.
        #[arg(long, value_name = "NAME")]
        key_name: Option<String>,
    },
    /// Check that credentials resolve: every account's in the policy (or ACCOUNT's), as its
    /// daemon would; or, with --key-file, tokens read from stdin, one per line.
    Check {
        /// One account (default: every account of the policy).
        #[arg(value_name = "ACCOUNT")]
        account: Option<String>,
        /// Check tokens from stdin against this Fernet key instead (the key alone, or a .env file).
        #[arg(long, value_name = "PATH", conflicts_with = "account")]
        key_file: Option<PathBuf>,
        /// The variable holding the key in a .env file with several values.
        #[arg(long, value_name = "NAME", requires = "key_file")]
        key_name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files and report every problem at once.
    Check {
        /// File or directory (default: --policies).
        path: Option<PathBuf>,
    },
    /// Print the effective policy (files, then NSPROXY_ variables, then --set) as JSON.
    /// Credentials are shown by source only.
    Show {
        /// One account (default: all).
        #[arg(value_name = "ACCOUNT")]
        account: Option<String>,
    },
}

/// Writes the completion script for `shell` (from the CLI definition).
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    // Rendered first: clap_complete panics when its writer fails (a closed
    // pipe, `| head`); the write below reports it instead.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "nsproxy", &mut script);
    out.write_all(&script).and_then(|()| out.flush())
}

/// Writes the manual page (roff), from the CLI definition.
pub fn man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    crate::manual::render(&command(), "nsproxy", out)
}

/// Writes nsproxy.1, a page per visible command (nsproxy-up.1, ...) and
/// the policy format's page (nsproxy-policy.5) into `dir`; returns the
/// files written.
pub fn man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let cmd = command();
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    write_pages(&cmd, "nsproxy", dir, &mut written)?;
    let path = dir.join("nsproxy-policy.5");
    std::fs::write(&path, crate::manual::policy_page())?;
    written.push(path);
    Ok(written)
}

fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &std::path::Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut f = std::fs::File::create(&path)?;
    crate::manual::render(cmd, name, &mut f)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set() && c.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_the_man_page_cover_every_visible_command() {
        let mut bash = Vec::new();
        completions(clap_complete::Shell::Bash, &mut bash).expect("render");
        let bash = String::from_utf8(bash).expect("utf-8");
        let mut man = Vec::new();
        man_page(&mut man).expect("render");
        let man = String::from_utf8(man).expect("utf-8");
        use clap::CommandFactory;
        for sub in Cli::command().get_subcommands().filter(|c| !c.is_hide_set()) {
            let name = sub.get_name();
            assert!(bash.contains(name), "bash completion lacks {name}");
            assert!(man.contains(name), "man page lacks {name}");
        }
        assert!(man.contains(".TH nsproxy 1"), "{}", &man[..200.min(man.len())]);
        let dir = std::env::temp_dir().join(format!("nsproxy-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let pages = man_pages(&dir).expect("pages");
        let names: Vec<String> =
            pages.iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
        for want in
            ["nsproxy.1", "nsproxy-up.1", "nsproxy-policy-check.1", "nsproxy-secret-encrypt.1", "nsproxy-policy.5"]
        {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("daemon")), "{names:?}");
        let up = std::fs::read_to_string(dir.join("nsproxy-up.1")).expect("read");
        assert!(up.contains("foreground"), "{up}");
        assert!(up.contains(".SH EXAMPLES") && up.contains(".SH EXIT STATUS"), "{up}");
        for section in [".SH EXAMPLES", ".SH FILES", ".SH ENVIRONMENT", ".SH EXIT STATUS", ".SH SEE ALSO"] {
            assert!(man.contains(section), "nsproxy.1 lacks {section}");
        }
        let policy = std::fs::read_to_string(dir.join("nsproxy-policy.5")).expect("read");
        assert!(policy.starts_with(".TH nsproxy-policy 5"), "{}", &policy[..80.min(policy.len())]);
        assert!(policy.contains("health_check") && policy.contains(".SH"), "{policy}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod help_tests {
    use super::*;

    fn help(args: &[&str]) -> String {
        let e = command().try_get_matches_from(args).expect_err("--help ends the parse");
        e.render().to_string()
    }

    #[test]
    fn every_argument_has_help_and_exec_shows_no_set() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
                let id = a.get_id().as_str();
                if a.get_help().is_none() && !matches!(id, "help" | "version") {
                    missing.push(format!("{path} {id}"));
                }
            }
            for s in c.get_subcommands().filter(|s| !s.is_hide_set()) {
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&command(), "nsproxy", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
        let exec = help(&["nsproxy", "exec", "--help"]);
        assert!(!exec.contains("--set"), "{exec}");
        assert!(exec.contains("Examples:") && exec.contains("ACCOUNT"), "{exec}");
        let up = help(&["nsproxy", "up", "--help"]);
        assert!(up.contains("Global options:") && up.contains("--set"), "{up}");
        assert!(up.contains("Exit status 4"), "{up}");
        // Hidden, but still seen: exec refuses it.
        use clap::FromArgMatches;
        for args in [
            &["nsproxy", "exec", "--set", "a=b", "x", "--", "true"][..],
            &["nsproxy", "--set", "a=b", "exec", "x", "--", "true"],
        ] {
            let m = command().try_get_matches_from(args).expect("parses");
            let cli = Cli::from_arg_matches(&m).expect("cli");
            assert_eq!(cli.set, vec!["a=b".to_string()], "{args:?}");
        }
        let top = help(&["nsproxy", "--help"]);
        assert!(top.contains("Global options:") && top.contains("Examples:"), "{top}");
    }
}
