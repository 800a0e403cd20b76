//! `nsproxy exec`: who may run what in which account (the running
//! daemon's state, the policy's users and groups, the sudo caller), then
//! `host::exec` enters the namespace and replaces this process with the
//! program. Runs before any thread or runtime exists (unshare of the mount
//! namespace fails in a multi-threaded process).

use std::ffi::{CString, OsString};
use std::path::Path;

use nix::unistd::{Group, Uid, User};

use crate::host::exec::EnterError;
use crate::host::rundir::RunDir;
use crate::host::{Host, Paths};
use crate::published::state::State;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("nsproxy exec needs root to enter the namespace: run it with sudo")]
    NotRoot,
    #[error("account {0} is not up: run `nsproxy up {0}` first")]
    NotUp(String),
    #[error("account {account}: {source}")]
    State { account: String, source: crate::host::rundir::RunDirError },
    #[error("no user to run as: pass --user NAME or run through sudo (nsproxy exec never runs programs as root)")]
    NoUser,
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("refusing to run as root inside account {0}: pass --user NAME")]
    RootTarget(String),
    #[error(
        "user {user} may not exec into account {account} (allowed by its policy: users [{users}], groups [{groups}])"
    )]
    NotAllowed { user: String, account: String, users: String, groups: String },
    #[error("sudo caller {caller} may not run programs as {user}")]
    OtherUser { caller: String, user: String },
    #[error(
        "account {account} runs with policy {running}; exec takes its policy from the running daemon and refuses --policies {given}"
    )]
    OtherPolicy { account: String, given: String, running: String },
    #[error("exec takes its policy from the running daemon of account {0}; --set does not apply to it")]
    Overrides(String),
    #[error(transparent)]
    Enter(#[from] EnterError),
}

impl ExecError {
    /// Refusals an operator should hear about: logged by the daemon.
    fn is_refusal(&self) -> bool {
        matches!(
            self,
            ExecError::NotAllowed { .. }
                | ExecError::OtherUser { .. }
                | ExecError::RootTarget(_)
                | ExecError::UnknownUser(_)
                | ExecError::OtherPolicy { .. }
                | ExecError::Overrides(_)
        )
    }

    /// Shell conventions: 127 command not found, 126 cannot execute.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecError::Enter(EnterError::NotFound(_)) => 127,
            ExecError::Enter(EnterError::Exec { .. }) => 126,
            _ => 1,
        }
    }
}

/// Looks a user up by name or numeric uid.
fn lookup_user(s: &str) -> Result<User, ExecError> {
    let found = match s.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(s),
    };
    found.ok().flatten().ok_or_else(|| ExecError::UnknownUser(s.into()))
}

/// Decides who the program runs as. Pure apart from user database look-ups.
fn target_user(state: &State, user_arg: Option<&str>) -> Result<User, ExecError> {
    let sudo_caller = std::env::var("SUDO_UID").ok().and_then(|u| u.parse::<u32>().ok()).filter(|&u| u != 0);
    let user = match (user_arg, sudo_caller) {
        (Some(u), _) => lookup_user(u)?,
        (None, Some(uid)) => lookup_user(&uid.to_string())?,
        (None, None) => return Err(ExecError::NoUser),
    };
    if user.uid.is_root() {
        return Err(ExecError::RootTarget(state.account.clone()));
    }
    if let Some(caller) = sudo_caller
        && caller != user.uid.as_raw()
    {
        let caller_name =
            User::from_uid(Uid::from_raw(caller)).ok().flatten().map(|u| u.name).unwrap_or(caller.to_string());
        return Err(ExecError::OtherUser { caller: caller_name, user: user.name });
    }
    let mut allowed = state.exec_users.iter().any(|u| *u == user.name || *u == user.uid.to_string());
    if !allowed && !state.exec_groups.is_empty() {
        let name = CString::new(user.name.as_bytes()).map_err(|_| ExecError::UnknownUser(user.name.clone()))?;
        let groups = nix::unistd::getgrouplist(&name, user.gid).unwrap_or_default();
        allowed = state
            .exec_groups
            .iter()
            .any(|g| Group::from_name(g).ok().flatten().is_some_and(|grp| groups.contains(&grp.gid)));
    }
    if !allowed {
        return Err(ExecError::NotAllowed {
            user: user.name,
            account: state.account.clone(),
            users: state.exec_users.join(", "),
            groups: state.exec_groups.join(", "),
        });
    }
    Ok(user)
}

/// What the caller asked for on the command line.
pub struct Asked<'a> {
    pub user: Option<&'a str>,
    /// `--policies`, when given explicitly.
    pub policies: Option<&'a Path>,
    pub sets: &'a [String],
}

/// The person behind this exec: the sudo caller, or root itself.
fn caller() -> String {
    match std::env::var("SUDO_UID").ok().and_then(|u| u.parse::<u32>().ok()) {
        Some(uid) => {
            let name = User::from_uid(Uid::from_raw(uid)).ok().flatten().map(|u| u.name).unwrap_or_default();
            format!("{name} (uid {uid})")
        }
        None => format!("uid {}", nix::unistd::getuid()),
    }
}

/// Enters the account and execs `cmd`. Returns only on error. Access
/// refusals are also sent to the account's daemon, which logs them.
pub fn exec(account: &str, asked: Asked<'_>, cmd: &[OsString]) -> ExecError {
    let err = match exec_inner(account, &asked, cmd) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    if err.is_refusal() {
        let req = crate::published::control::Request::ExecRefused {
            caller: caller(),
            user: asked.user.map(str::to_string).unwrap_or_else(|| "(sudo caller)".into()),
            reason: err.to_string(),
        };
        let path = RunDir::new(&Paths::system(), account).ctl_path();
        if let Err(e) = super::control::call(&path, &req, std::time::Duration::from_secs(2)) {
            eprintln!("nsproxy: could not log the refusal with the daemon: {e}");
        }
    }
    err
}

fn exec_inner(account: &str, asked: &Asked<'_>, cmd: &[OsString]) -> Result<std::convert::Infallible, ExecError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ExecError::NotRoot);
    }
    let host = crate::host::Linux::system();
    let rd = RunDir::new(host.paths(), account);
    let state = rd
        .read_state()
        .map_err(|source| ExecError::State { account: account.into(), source })?
        .ok_or_else(|| ExecError::NotUp(account.into()))?;
    if !rd.daemon_alive() || !host.netns_exists(&state.namespace) {
        return Err(ExecError::NotUp(account.into()));
    }
    if let Some(given) = asked.policies {
        let canon = given.canonicalize().unwrap_or_else(|_| given.to_path_buf());
        if canon != state.policy {
            return Err(ExecError::OtherPolicy {
                account: account.into(),
                given: given.display().to_string(),
                running: state.policy.display().to_string(),
            });
        }
    }
    if !asked.sets.is_empty() {
        return Err(ExecError::Overrides(account.into()));
    }
    let user = target_user(&state, asked.user)?;
    match crate::host::exec::enter_and_exec(host.paths(), account, &state, &user, cmd) {
        Ok(never) => match never {},
        Err(EnterError::UnknownUser(u)) => Err(ExecError::UnknownUser(u)),
        Err(e) => Err(e.into()),
    }
}
