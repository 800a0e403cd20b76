//! The per-account run directory `/run/nsproxy/<account>/`: lock, pid and
//! state files, the daemon log; and `/etc/netns/<ns>`. Created with safe
//! modes; symlinks refused. Roots come from `Paths`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::Paths;
use crate::published::state::State;

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("refusing {path}: it is a symlink or not a directory owned by root (remove it and try again)")]
    Unsafe { path: PathBuf },
    #[error("cannot open lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt: {reason} (remove it, or run `nsproxy down`)")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Debug, Clone)]
pub struct RunDir {
    pub account: String,
    pub dir: PathBuf,
    root: PathBuf,
}

/// `/run/nsproxy` itself, with the same checks as every directory under it.
pub fn ensure_run_root(paths: &Paths) -> Result<(), RunDirError> {
    ensure_dir(&paths.run_root, 0o755)
}

/// Creates `path` with `mode` if missing; refuses symlinks and directories
/// not owned by this process's user (root, for a real nsproxy) or writable
/// by others.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<(), RunDirError> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(RunDirError::Create { path: path.into(), source }),
    }
    let meta = fs::symlink_metadata(path).map_err(|source| RunDirError::Create { path: path.into(), source })?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(RunDirError::Unsafe { path: path.into() });
    }
    Ok(())
}

impl RunDir {
    pub fn new(paths: &Paths, account: &str) -> RunDir {
        RunDir { account: account.into(), dir: paths.run_dir(account), root: paths.run_root.clone() }
    }

    pub fn exists(&self) -> bool {
        self.dir.exists()
    }

    pub fn create(&self) -> Result<(), RunDirError> {
        ensure_dir(&self.root, 0o755)?;
        ensure_dir(&self.dir, 0o700)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("daemon.pid")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
    /// The daemon's counters, refreshed while it runs.
    pub fn stats_path(&self) -> PathBuf {
        self.dir.join("stats.json")
    }
    /// The daemon's control socket (rotate, check).
    pub fn ctl_path(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }
    /// The fake-IP table's append-only log.
    pub fn fakeip_path(&self) -> PathBuf {
        self.dir.join("fakeip.txt")
    }

    fn open_lock(&self) -> Result<File, RunDirError> {
        let path = self.lock_path();
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|source| RunDirError::Lock { path, source })
    }

    /// Takes the daemon lock, retrying for `tries` x 50 ms. `Ok(None)`: held
    /// by a running daemon.
    pub fn lock_daemon(&self, tries: u32) -> Result<Option<Flock<File>>, RunDirError> {
        for i in 0..tries.max(1) {
            let f = self.open_lock()?;
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(l) => return Ok(Some(l)),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) if i + 1 < tries => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, e)) => {
                    return Err(RunDirError::Lock { path: self.lock_path(), source: io::Error::from(e) });
                }
            }
        }
        Ok(None)
    }

    /// Whether a daemon holds the lock right now.
    pub fn daemon_alive(&self) -> bool {
        let Ok(f) = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(self.lock_path()) else {
            return false;
        };
        matches!(Flock::lock(f, FlockArg::LockSharedNonblock), Err((_, nix::errno::Errno::EWOULDBLOCK)))
    }

    pub fn read_pid(&self) -> Option<i32> {
        fs::read_to_string(self.pid_path()).ok()?.trim().parse().ok()
    }

    pub fn write_pid(&self, pid: u32) -> Result<(), RunDirError> {
        write_volatile(&self.pid_path(), format!("{pid}\n").as_bytes(), 0o644)
    }

    pub fn write_state(&self, s: &State) -> Result<(), RunDirError> {
        let path = self.state_path();
        let json = serde_json::to_vec_pretty(s)
            .map_err(|e| RunDirError::Write { path: path.clone(), source: io::Error::other(e) })?;
        write_volatile(&path, &json, 0o600)
    }

    pub fn read_state(&self) -> Result<Option<State>, RunDirError> {
        let path = self.state_path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RunDirError::Read { path, source }),
        };
        serde_json::from_slice(&text).map(Some).map_err(|e| RunDirError::Corrupt { path, reason: e.to_string() })
    }

    /// Removes the run directory; already gone is success.
    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Accounts that have a run directory.
pub fn accounts_with_rundir(paths: &Paths) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(&paths.run_root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Writes `path` through a temporary file and rename, so readers never see a
/// half-written file; the file and then its directory are synced, so the
/// new content survives a crash or power loss (burns survive reboots).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), RunDirError> {
    write_replacing(path, data, mode)?;
    let err = |source| RunDirError::Write { path: path.into(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

/// `write_atomic` without the syncs, for what does not outlive a reboot
/// anyway (the run directory, `/etc/netns` files written at every start,
/// the CNI records): readers still never see a half-written file, and
/// `up` does not wait for the disk (two syncs per file cost milliseconds on
/// ext4).
pub fn write_volatile(path: &Path, data: &[u8], mode: u32) -> Result<(), RunDirError> {
    write_file(path, data, mode, false)
}

fn write_replacing(path: &Path, data: &[u8], mode: u32) -> Result<(), RunDirError> {
    write_file(path, data, mode, true)
}

fn write_file(path: &Path, data: &[u8], mode: u32, sync: bool) -> Result<(), RunDirError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let err = |source| RunDirError::Write { path: path.into(), source };
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).and_then(|_| if sync { f.sync_all() } else { Ok(()) }).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

/// Writes resolv.conf (nameserver = the stack's DNS address) and an
/// nsswitch.conf whose hosts line is `files dns`, keeping the host's other
/// databases. Returns whether the directory was created.
pub fn write_etc_netns(paths: &Paths, namespace: &str, dns: std::net::Ipv4Addr) -> Result<bool, RunDirError> {
    ensure_dir(&paths.etc_netns, 0o755)?;
    let dir = paths.etc_netns_dir(namespace);
    let created = !dir.exists();
    ensure_dir(&dir, 0o755)?;
    let resolv = format!("# written by nsproxy: DNS is answered through the account's proxy\nnameserver {dns}\n");
    write_volatile(&dir.join("resolv.conf"), resolv.as_bytes(), 0o644)?;
    let host = fs::read_to_string(&paths.host_nsswitch).unwrap_or_default();
    write_volatile(&dir.join("nsswitch.conf"), nsswitch_for_namespace(&host).as_bytes(), 0o644)?;
    Ok(created)
}

/// The host's nsswitch.conf with its `hosts:` line replaced by
/// `hosts: files dns` (no nss-resolve, mdns, myhostname ...).
pub fn nsswitch_for_namespace(host: &str) -> String {
    let mut out = String::from("# written by nsproxy: host names resolve via /etc/hosts and the account's DNS only\n");
    let mut had_hosts = false;
    for line in host.lines() {
        if line.trim_start().starts_with("hosts:") {
            had_hosts = true;
            out.push_str("hosts: files dns\n");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !had_hosts {
        if host.trim().is_empty() {
            out.push_str("passwd: files\ngroup: files\nshadow: files\n");
        }
        out.push_str("hosts: files dns\n");
    }
    out
}

/// The files nsproxy writes under `/etc/netns/<ns>`.
pub const ETC_NETNS_FILES: &[&str] = &["resolv.conf", "nsswitch.conf"];

/// Removes the files nsproxy wrote under `/etc/netns/<ns>`, and the
/// directory once it is empty; a file an admin put there (`hosts`) stays,
/// with its directory. Already gone is success.
pub fn remove_etc_netns(paths: &Paths, namespace: &str) -> io::Result<()> {
    let dir = paths.etc_netns_dir(namespace);
    for f in ETC_NETNS_FILES {
        match fs::remove_file(dir.join(f)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match fs::remove_dir(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(()),
        Err(e) => Err(e),
        Ok(()) => Ok(()),
    }
}

/// Binds a Unix socket at `path` (a stale socket is replaced; a symlink or
/// directory there is refused), mode 0600. Call inside a tokio runtime.
pub fn bind_unix(path: &Path) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() || m.is_dir() => {
            return Err(std::io::Error::other(format!("{} is not a socket; refusing to replace it", path.display())));
        }
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// The containers attached to accounts (all of them, or `account`'s),
/// from their records; unreadable records are skipped.
pub fn attachments(paths: &Paths, account: Option<&str>) -> Vec<crate::published::containers::Attachment> {
    let mut v: Vec<crate::published::containers::Attachment> = fs::read_dir(paths.cni_dir())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice(&b).ok())
                .collect()
        })
        .unwrap_or_default();
    v.retain(|a: &crate::published::containers::Attachment| account.is_none_or(|n| a.account == n));
    v.sort_by(|a, b| a.container.cmp(&b.container));
    v
}

/// Where a container's record is.
pub fn attachment_path(paths: &Paths, container: &str) -> PathBuf {
    paths.cni_dir().join(format!("{container}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn nsswitch_replaces_only_hosts() {
        let host = "passwd: files systemd\nhosts: files mdns4_minimal [NOTFOUND=return] resolve dns myhostname\nnetworks: files\n";
        let out = nsswitch_for_namespace(host);
        assert!(out.contains("passwd: files systemd\n"));
        assert!(out.contains("\nhosts: files dns\n"));
        let hosts: Vec<&str> = out.lines().filter(|l| l.starts_with("hosts:")).collect();
        assert_eq!(hosts, vec!["hosts: files dns"]);
        assert!(out.contains("networks: files\n"));
        assert!(nsswitch_for_namespace("").contains("hosts: files dns"));
    }
}
