//! `nsproxy exec`: enter the account's namespace and replace this process
//! with the program. Runs before any thread or runtime exists (unshare of
//! the mount namespace fails in a multi-threaded process).

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::unistd::{Group, Uid, User};

use crate::rundir::{RunDir, State};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("nsproxy exec needs root to enter the namespace: run it with sudo")]
    NotRoot,
    #[error("account {0} is not up: run `nsproxy up {0}` first")]
    NotUp(String),
    #[error("account {account}: {source}")]
    State { account: String, source: crate::rundir::RunDirError },
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
    #[error("account {account}: {op}: {source}")]
    Sys { account: String, op: String, source: nix::Error },
    #[error("command not found: {0}")]
    NotFound(String),
    #[error("cannot run {cmd}: {source}")]
    Exec { cmd: String, source: nix::Error },
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
            ExecError::NotFound(_) => 127,
            ExecError::Exec { .. } => 126,
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
        let req = crate::control::Request::ExecRefused {
            caller: caller(),
            user: asked.user.map(str::to_string).unwrap_or_else(|| "(sudo caller)".into()),
            reason: err.to_string(),
        };
        let path = RunDir::new(account).ctl_path();
        if let Err(e) = crate::control::call(&path, &req, std::time::Duration::from_secs(2)) {
            eprintln!("nsproxy: could not log the refusal with the daemon: {e}");
        }
    }
    err
}

fn exec_inner(account: &str, asked: &Asked<'_>, cmd: &[OsString]) -> Result<std::convert::Infallible, ExecError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ExecError::NotRoot);
    }
    let rd = RunDir::new(account);
    let state = rd
        .read_state()
        .map_err(|source| ExecError::State { account: account.into(), source })?
        .ok_or_else(|| ExecError::NotUp(account.into()))?;
    if !rd.daemon_alive() || !crate::netns::exists(&state.namespace) {
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
    let sys = |op: &str| {
        let account = account.to_string();
        let op = op.to_string();
        move |source| ExecError::Sys { account, op, source }
    };

    // 1. The network namespace.
    let ns = std::fs::File::open(crate::netns::ns_path(&state.namespace)).map_err(|e| ExecError::Sys {
        account: account.into(),
        op: "open namespace".into(),
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(0)),
    })?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(sys("setns"))?;
    drop(ns);

    // 2. A private mount namespace: /sys of this netns, the account's /etc
    //    files, host resolver sockets hidden.
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unshare mount namespace"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(sys("make / slave"))?;
    if umount2("/sys", MntFlags::MNT_DETACH).is_ok() {
        mount(Some("sysfs"), "/sys", Some("sysfs"), MsFlags::empty(), None::<&str>).map_err(sys("mount /sys"))?;
    }
    for dir in ["/run/systemd/resolve", "/run/nscd", "/var/run/nscd", "/run/dbus"] {
        let p = Path::new(dir);
        if p.is_dir() && !p.is_symlink() {
            mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=16k,mode=755"),
            )
            .map_err(sys(&format!("hide {dir}")))?;
        }
    }
    bind_etc(&state.namespace).map_err(sys("bind /etc/netns files"))?;

    // 3. Only fds 0-2 survive exec.
    close_other_fds();

    // 4. Environment: the user's identity, nothing of nsproxy's.
    let vars: Vec<OsString> = std::env::vars_os().map(|(k, _)| k).collect();
    for k in vars {
        let ks = k.to_string_lossy();
        if ks.starts_with("NSPROXY_")
            || ks.starts_with("SUDO_")
            || ks == "RUST_LOG"
            || state.secret_env.iter().any(|s| *s == ks)
        {
            crate::sys::remove_env(&k);
        }
    }
    crate::sys::set_env("HOME", user.dir.as_os_str());
    crate::sys::set_env("USER", user.name.as_ref());
    crate::sys::set_env("LOGNAME", user.name.as_ref());
    crate::sys::set_env("SHELL", user.shell.as_os_str());

    // 5. Drop privileges: groups, gid, bounding set, uid; then verify.
    let cname = CString::new(user.name.as_bytes()).map_err(|_| ExecError::UnknownUser(user.name.clone()))?;
    nix::unistd::initgroups(&cname, user.gid).map_err(sys("initgroups"))?;
    nix::unistd::setresgid(user.gid, user.gid, user.gid).map_err(sys("setresgid"))?;
    caps::clear(None, caps::CapSet::Ambient).map_err(|_| ExecError::Sys {
        account: account.into(),
        op: "clear ambient capabilities".into(),
        source: nix::Error::EPERM,
    })?;
    caps::clear(None, caps::CapSet::Bounding).map_err(|_| ExecError::Sys {
        account: account.into(),
        op: "clear capability bounding set".into(),
        source: nix::Error::EPERM,
    })?;
    nix::unistd::setresuid(user.uid, user.uid, user.uid).map_err(sys("setresuid"))?;
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted, caps::CapSet::Inheritable] {
        caps::clear(None, set).map_err(|_| ExecError::Sys {
            account: account.into(),
            op: "clear capabilities".into(),
            source: nix::Error::EPERM,
        })?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(sys("no_new_privs"))?;
    if nix::unistd::getuid() != user.uid || nix::unistd::geteuid() != user.uid || nix::unistd::getegid() != user.gid {
        return Err(ExecError::Sys {
            account: account.into(),
            op: "verify dropped privileges".into(),
            source: nix::Error::EPERM,
        });
    }

    // 6. Exec. The exit code and signals are the program's own.
    let argv: Vec<CString> = cmd.iter().map(|a| CString::new(a.as_bytes()).unwrap_or_default()).collect();
    let shown = cmd.first().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
    let prog = find_program(cmd.first().map(|c| c.as_os_str()).unwrap_or_default())
        .ok_or_else(|| ExecError::NotFound(shown.clone()))?;
    match nix::unistd::execv(&prog, &argv) {
        Err(nix::Error::ENOENT) => Err(ExecError::NotFound(shown)),
        Err(source) => Err(ExecError::Exec { cmd: shown, source }),
        Ok(never) => match never {},
    }
}

/// The program to exec, searched in PATH as the (already unprivileged)
/// user: the first candidate that exists and is executable. Directories the
/// user cannot read are skipped, so they do not turn "not found" into EACCES.
fn find_program(name: &std::ffi::OsStr) -> Option<CString> {
    use nix::unistd::{AccessFlags, access};
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return None;
    }
    if bytes.contains(&b'/') {
        return CString::new(bytes).ok();
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file() && access(p, AccessFlags::X_OK).is_ok())
        .and_then(|p| CString::new(p.as_os_str().as_bytes()).ok())
}

/// Bind-mounts every file of `/etc/netns/<ns>` over its twin in `/etc`. A
/// target that is a dangling symlink (resolv.conf pointing into a hidden
/// directory) gets an empty file created where it points.
fn bind_etc(namespace: &str) -> Result<(), nix::Error> {
    let dir = crate::rundir::etc_netns_dir(namespace);
    let Ok(rd) = std::fs::read_dir(&dir) else { return Ok(()) };
    for e in rd.flatten() {
        let src = e.path();
        let dst = Path::new("/etc").join(e.file_name());
        if dst.is_symlink() && !dst.exists() {
            if let Ok(target) = std::fs::canonicalize(dst.parent().unwrap_or(Path::new("/etc")))
                .map(|p| p.join(std::fs::read_link(&dst).unwrap_or_default()))
            {
                if let Some(parent) = target.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let _ = std::fs::File::create(&target);
            }
        } else if !dst.exists() {
            let _ = std::fs::File::create(&dst);
        }
        mount(Some(&src), &dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    }
    Ok(())
}

fn close_other_fds() {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        let _ =
            nix::fcntl::fcntl(crate::sys::borrow_fd(fd), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    }
}
