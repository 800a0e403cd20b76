//! Command-line interface (clap derive). Parsing starts no thread, so the
//! `exec` branch can still switch namespaces afterwards.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub const DEFAULT_POLICIES: &str = "/etc/nsproxy/policies";

#[derive(Debug, Parser)]
#[command(
    name = "nsproxy",
    version,
    about = "Run unmodified programs whose every connection leaves through the account's proxy"
)]
pub struct Cli {
    /// Policy file, or directory of *.yaml policy files.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_POLICIES)]
    pub policies: PathBuf,
    /// Whether --policies was given (exec refuses one that is not the daemon's).
    #[arg(skip)]
    pub policies_given: bool,
    /// Override a policy field, e.g. --set accounts.account-a.dns.mode=tcp (repeatable; wins
    /// over NSPROXY_ACCOUNTS__ACCOUNT_A__DNS__MODE=tcp in the environment, which wins over the file).
    #[arg(long = "set", global = true, value_name = "FIELD=VALUE")]
    pub set: Vec<String>,
    /// Log level: error, warn, info, debug or trace (or a RUST_LOG-style filter).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line, noting which global options were given.
    pub fn parse_args() -> Cli {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().get_matches();
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
    Up {
        account: String,
        /// Stay in the foreground (for systemd); logs go to stderr.
        #[arg(long)]
        foreground: bool,
    },
    /// Stop the account's daemon and remove its namespace. Safe to repeat.
    Down {
        account: String,
        /// Also kill the programs still running in the namespace.
        #[arg(long)]
        kill: bool,
    },
    /// Run a program inside the account's namespace as an unprivileged user.
    Exec {
        account: String,
        /// User to run as (default: the sudo caller).
        #[arg(long, short)]
        user: Option<String>,
        /// The program and its arguments, after `--`.
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Show accounts: namespace, daemon, TUN, proxy.
    Status {
        account: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Switch the account's active proxy now (checked before it is used).
    /// Existing flows keep their proxy unless --reset-flows.
    Rotate {
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
        #[arg(long)]
        json: bool,
    },
    /// Lift the burn of one proxy (found by a check, or by `rotate --burn`): it is a standby again.
    Unburn {
        account: String,
        /// The proxy's label.
        label: String,
        #[arg(long)]
        json: bool,
    },
    /// Health-check the active proxy and fetch its egress IP now.
    Check {
        account: String,
        #[arg(long)]
        json: bool,
    },
    /// List the accounts of the policy and whether they are up.
    List {
        #[arg(long)]
        json: bool,
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
        #[arg(value_enum)]
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
    NewKey { path: PathBuf },
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
        account: Option<String>,
        #[arg(long, value_name = "PATH", conflicts_with = "account")]
        key_file: Option<PathBuf>,
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
        account: Option<String>,
    },
}

/// Writes the completion script for `shell` (from the CLI definition).
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    // Rendered first: clap_complete panics when its writer fails (a closed
    // pipe, `| head`); the write below reports it instead.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "nsproxy", &mut script);
    out.write_all(&script).and_then(|()| out.flush())
}

/// Writes the manual page (roff), from the CLI definition.
pub fn man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let cmd = Cli::command().after_help(MAN_EXTRA);
    clap_mangen::Man::new(cmd).render(out)
}

/// Writes nsproxy.1 and a page per visible command (nsproxy-up.1, ...)
/// into `dir`; returns the files written.
pub fn man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    use clap::CommandFactory;
    let mut cmd = Cli::command().after_help(MAN_EXTRA);
    cmd.build();
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    write_pages(&cmd, "nsproxy", dir, &mut written)?;
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
    clap_mangen::Man::new(cmd.clone()).title(name).render(&mut f)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set() && c.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

const MAN_EXTRA: &str = "Files: policies in /etc/nsproxy/policies (--policies), run state in /run/nsproxy/ACCOUNT \
(daemon.log, daemon.pid, ctl.sock, stats.json, metrics), pool state in /var/lib/nsproxy/ACCOUNT. \
Environment: NSPROXY_ACCOUNTS__<ACCOUNT>__<FIELD> overrides a policy field (see --set). \
Documentation: /usr/share/doc/nsproxy and docs/ in the sources.";

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
        for want in ["nsproxy.1", "nsproxy-up.1", "nsproxy-policy-check.1", "nsproxy-secret-encrypt.1"] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("daemon")), "{names:?}");
        let up = std::fs::read_to_string(dir.join("nsproxy-up.1")).expect("read");
        assert!(up.contains("foreground"), "{up}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
