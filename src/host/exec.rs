//! The privileged half of `nsproxy exec`: enter the account's network
//! namespace, a private mount namespace with the account's `/etc` files and
//! the host's resolver sockets hidden, close every other fd, clean the
//! environment, drop to the user for good, and `execv`. Runs before any
//! thread or runtime exists.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::unistd::User;

use super::Paths;
use crate::published::state::State;

#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("account {account}: {op}: {source}")]
    Sys { account: String, op: String, source: nix::Error },
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("command not found: {0}")]
    NotFound(String),
    #[error("cannot run {cmd}: {source}")]
    Exec { cmd: String, source: nix::Error },
}

/// Enters the account as `user` and execs `cmd`; returns only on error.
pub fn enter_and_exec(
    paths: &Paths,
    account: &str,
    state: &State,
    user: &User,
    cmd: &[OsString],
) -> Result<std::convert::Infallible, EnterError> {
    let sys = |op: &str| {
        let account = account.to_string();
        let op = op.to_string();
        move |source| EnterError::Sys { account, op, source }
    };

    // 1. The network namespace.
    let ns = std::fs::File::open(paths.netns(&state.namespace)).map_err(|e| EnterError::Sys {
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
    bind_etc(paths, &state.namespace).map_err(sys("bind /etc/netns files"))?;

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
            super::sys::remove_env(&k);
        }
    }
    super::sys::set_env("HOME", user.dir.as_os_str());
    super::sys::set_env("USER", user.name.as_ref());
    super::sys::set_env("LOGNAME", user.name.as_ref());
    super::sys::set_env("SHELL", user.shell.as_os_str());

    // 5. Drop privileges: groups, gid, bounding set, uid; then verify.
    let cname = CString::new(user.name.as_bytes()).map_err(|_| EnterError::UnknownUser(user.name.clone()))?;
    nix::unistd::initgroups(&cname, user.gid).map_err(sys("initgroups"))?;
    nix::unistd::setresgid(user.gid, user.gid, user.gid).map_err(sys("setresgid"))?;
    caps::clear(None, caps::CapSet::Ambient).map_err(|_| EnterError::Sys {
        account: account.into(),
        op: "clear ambient capabilities".into(),
        source: nix::Error::EPERM,
    })?;
    caps::clear(None, caps::CapSet::Bounding).map_err(|_| EnterError::Sys {
        account: account.into(),
        op: "clear capability bounding set".into(),
        source: nix::Error::EPERM,
    })?;
    nix::unistd::setresuid(user.uid, user.uid, user.uid).map_err(sys("setresuid"))?;
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted, caps::CapSet::Inheritable] {
        caps::clear(None, set).map_err(|_| EnterError::Sys {
            account: account.into(),
            op: "clear capabilities".into(),
            source: nix::Error::EPERM,
        })?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(sys("no_new_privs"))?;
    if nix::unistd::getuid() != user.uid || nix::unistd::geteuid() != user.uid || nix::unistd::getegid() != user.gid {
        return Err(EnterError::Sys {
            account: account.into(),
            op: "verify dropped privileges".into(),
            source: nix::Error::EPERM,
        });
    }

    // 6. Exec. The exit code and signals are the program's own.
    let argv: Vec<CString> = cmd.iter().map(|a| CString::new(a.as_bytes()).unwrap_or_default()).collect();
    let shown = cmd.first().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
    let prog = find_program(cmd.first().map(|c| c.as_os_str()).unwrap_or_default())
        .ok_or_else(|| EnterError::NotFound(shown.clone()))?;
    // The program starts with SIGPIPE's default action, not Rust's SIG_IGN.
    crate::host::sys::default_sigpipe().map_err(|e| EnterError::Sys {
        account: account.into(),
        op: "restore SIGPIPE's default action".into(),
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)),
    })?;
    match nix::unistd::execv(&prog, &argv) {
        Err(nix::Error::ENOENT) => Err(EnterError::NotFound(shown)),
        Err(source) => Err(EnterError::Exec { cmd: shown, source }),
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
fn bind_etc(paths: &Paths, namespace: &str) -> Result<(), nix::Error> {
    let dir = paths.etc_netns_dir(namespace);
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
            nix::fcntl::fcntl(super::sys::borrow_fd(fd), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    }
}
