//! Named network namespaces (`/run/netns/<name>`, visible to `ip netns`),
//! and running code inside one on a dedicated thread that then exits.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use netns_rs::NetNs;
use nix::fcntl::{Flock, FlockArg};
use nix::sched::{CloneFlags, setns};

use super::Paths;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot create network namespace {name}: {reason}")]
    Create { name: String, reason: String },
    #[error("network namespace {name} does not exist")]
    Missing { name: String },
    #[error("cannot open network namespace {name}: {source}")]
    Open { name: String, source: io::Error },
    #[error("cannot enter network namespace {name}: {source}")]
    Enter { name: String, source: nix::Error },
    #[error("cannot remove network namespace {name}: {reason}")]
    Remove { name: String, reason: String },
    #[error("thread for namespace {name} failed: {reason}")]
    Thread { name: String, reason: String },
}

/// (dev, inode) of a namespace file, the identity `/proc/<pid>/ns/net`
/// links compare against.
fn ns_id(path: &Path) -> io::Result<(u64, u64)> {
    let m = fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Whether `/run/netns/<name>` is a live namespace (not a stale plain file
/// left by a crash).
pub fn exists(paths: &Paths, name: &str) -> bool {
    let nsfs_dev = match fs::metadata("/proc/self/ns/net") {
        Ok(m) => m.dev(),
        Err(_) => return false,
    };
    matches!(ns_id(&paths.netns(name)), Ok((dev, _)) if dev == nsfs_dev)
}

/// Serialises namespace creation and removal between nsproxy processes
/// (netns-rs turns /run/netns into a shared mount point on first use).
fn global_lock(paths: &Paths) -> Result<Flock<File>, String> {
    super::rundir::ensure_run_root(paths).map_err(|e| e.to_string())?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.netns_lock())
        .map_err(|e| e.to_string())?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| e.to_string())
}

/// Creates the namespace, or reuses a live one. Returns whether it was
/// created by this call. A stale file is removed and replaced.
pub fn create_or_reuse(paths: &Paths, name: &str) -> Result<bool, NetnsError> {
    let err = |reason: String| NetnsError::Create { name: name.into(), reason };
    let _lock = global_lock(paths).map_err(|e| err(format!("lock: {e}")))?;
    if exists(paths, name) {
        return Ok(false);
    }
    let path = paths.netns(name);
    if path.exists() {
        // A stale mount point (the namespace behind it is gone).
        let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        fs::remove_file(&path).map_err(|e| err(format!("stale {}: {e}", path.display())))?;
    }
    NetNs::new(name).map_err(|e| err(e.to_string()))?;
    Ok(true)
}

/// Removes the namespace; already gone is success.
pub fn remove(paths: &Paths, name: &str) -> Result<(), NetnsError> {
    let _lock = global_lock(paths).map_err(|reason| NetnsError::Remove { name: name.into(), reason })?;
    let path = paths.netns(name);
    if !path.exists() {
        return Ok(());
    }
    match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(NetnsError::Remove { name: name.into(), reason: format!("umount: {e}") }),
    }
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(NetnsError::Remove { name: name.into(), reason: format!("unlink: {e}") })
        }
        _ => Ok(()),
    }
}

/// Runs `f` on a fresh thread that has entered the namespace; the thread
/// exits afterwards, so no other code ever runs in the wrong namespace.
pub fn run_in<T, F>(paths: &Paths, name: &str, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if !exists(paths, name) {
        return Err(NetnsError::Missing { name: name.into() });
    }
    run_in_path(&paths.netns(name), name, f)
}

/// `run_in` for a namespace given by its file (a container's, made by the
/// runtime: `/run/netns/cni-...` or `/proc/PID/ns/net`); `name` is how
/// messages call it.
pub fn run_in_path<T, F>(path: &Path, name: &str, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let file = File::open(path).map_err(|source| NetnsError::Open { name: name.into(), source })?;
    let owned = name.to_string();
    std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter { name: owned, source })?;
            Ok(f())
        })
        .map_err(|e| NetnsError::Thread { name: name.into(), reason: e.to_string() })?
        .join()
        .map_err(|_| NetnsError::Thread { name: name.into(), reason: "panicked".into() })?
}

/// Every other process with the identity of its network namespace.
fn processes_by_netns() -> Vec<(i32, (u64, u64))> {
    let me = std::process::id() as i32;
    let Ok(rd) = fs::read_dir("/proc") else { return Vec::new() };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| Some((pid, ns_id(Path::new(&format!("/proc/{pid}/ns/net"))).ok()?)))
        .collect()
}

/// Processes whose network namespace is this one.
pub fn pids_in(paths: &Paths, name: &str) -> Vec<i32> {
    let Ok(target) = ns_id(&paths.netns(name)) else { return Vec::new() };
    let mut pids: Vec<i32> =
        processes_by_netns().into_iter().filter(|(_, id)| *id == target).map(|(pid, _)| pid).collect();
    pids.sort();
    pids
}

/// How many processes (this one excluded) each namespace of `names` holds,
/// from one pass over /proc (`status` of many accounts).
pub fn program_counts(paths: &Paths, names: &[String]) -> Vec<usize> {
    let mut counts = vec![0; names.len()];
    let mut index: std::collections::HashMap<(u64, u64), Vec<usize>> = std::collections::HashMap::new();
    for (i, n) in names.iter().enumerate() {
        if let Ok(id) = ns_id(&paths.netns(n)) {
            index.entry(id).or_default().push(i);
        }
    }
    if index.is_empty() {
        return counts;
    }
    for (_, id) in processes_by_netns() {
        for &i in index.get(&id).into_iter().flatten() {
            counts[i] += 1;
        }
    }
    counts
}

/// `f` inside each live namespace of `names` in turn, on one fresh thread
/// that exits afterwards; None for a namespace that is missing or cannot
/// be entered.
pub fn run_in_each<T, F>(paths: &Paths, names: &[String], f: F) -> Vec<Option<T>>
where
    T: Send + 'static,
    F: Fn() -> T + Send + 'static,
{
    let files: Vec<Option<File>> =
        names.iter().map(|n| if exists(paths, n) { File::open(paths.netns(n)).ok() } else { None }).collect();
    let n = files.len();
    std::thread::Builder::new()
        .name("netns-each".into())
        .spawn(move || {
            files
                .into_iter()
                .map(|file| {
                    let file = file?;
                    setns(&file, CloneFlags::CLONE_NEWNET).ok()?;
                    Some(f())
                })
                .collect::<Vec<_>>()
        })
        .ok()
        .and_then(|t| t.join().ok())
        .unwrap_or_else(|| (0..n).map(|_| None).collect())
}
