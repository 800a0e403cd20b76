//! The only module allowed `unsafe`: ownership transfers of raw file
//! descriptors that the safe APIs around us cannot express.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

/// Takes ownership of the TUN device's fd.
pub fn tun_into_owned(dev: tun::Device) -> OwnedFd {
    let raw = dev.into_raw_fd();
    // SAFETY: `into_raw_fd` hands over sole ownership of a valid, open fd.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Lets the kernel hand the TUN's reader packets whose TCP/UDP checksum is
/// only partial (TUN_F_CSUM; needs IFF_VNET_HDR): the checksums nobody
/// would check are then never computed (see dataplane/vnet.rs).
pub fn tun_offload_checksums(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: TUNSETOFFLOAD takes its flags by value (no pointer); the fd
    // is a TUN device this process just opened and still owns.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, libc::TUN_F_CSUM as libc::c_ulong) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Registers an owned fd with the tokio reactor.
pub fn register_async(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes the OwnedFd by value, so the descriptor stays
    // open and unique for as long as it is registered, and is deregistered
    // before it is closed (AsyncFd's Drop).
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Borrows a descriptor number read from /proc/self/fd.
pub fn borrow_fd(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used in the single-threaded exec path on descriptors that
    // /proc/self/fd just listed and that nothing closes before exec.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Environment changes: only called from the exec path, before any thread
/// exists, and from the daemon before its runtime starts.
pub fn remove_env(k: &std::ffi::OsStr) {
    // SAFETY: single-threaded at this point (see above).
    unsafe { std::env::remove_var(k) }
}

/// Removes the variable `name` and overwrites its `NAME=value` text with
/// NUL bytes where it lies, so `/proc/self/environ` (which shows the memory
/// the process started with, whatever `unsetenv` did) no longer holds the
/// name or the value. Same single-thread rule as `remove_env`.
pub fn scrub_env(name: &str) {
    let prefix = format!("{name}=");
    // SAFETY: single-threaded (see `remove_env`), so nothing reads or
    // changes the environment meanwhile. `environ` is a NULL-terminated
    // array of pointers to NUL-terminated strings. The matching strings'
    // addresses and lengths are taken first; `remove_var` then drops them
    // from the array (glibc frees nothing it did not allocate, and the
    // start-up strings are never freed), and only then are those bytes, up
    // to but excluding each string's own NUL, overwritten.
    unsafe {
        unsafe extern "C" {
            static mut environ: *const *mut libc::c_char;
        }
        let mut found: Vec<(*mut libc::c_char, usize)> = Vec::new();
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            let entry = *p;
            let bytes = std::ffi::CStr::from_ptr(entry).to_bytes();
            if bytes.starts_with(prefix.as_bytes()) {
                found.push((entry, bytes.len()));
            }
            p = p.add(1);
        }
        std::env::remove_var(name);
        for (entry, len) in found {
            std::ptr::write_bytes(entry, 0, len);
        }
    }
}

pub fn set_env(k: &str, v: &std::ffi::OsStr) {
    // SAFETY: single-threaded at this point (see above).
    unsafe { std::env::set_var(k, v) }
}

/// Takes ownership of a descriptor inherited from the parent (`up` passes
/// the write end of its readiness pipe by number). Checks it is open.
pub fn inherited_fd(fd: i32) -> std::io::Result<OwnedFd> {
    let borrowed = borrow_fd(fd);
    nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_GETFD).map_err(std::io::Error::from)?;
    // SAFETY: the parent handed this descriptor to us alone; it is open (just
    // checked) and nothing else in this process refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes glibc serve every allocation of `bytes` or more with its own
/// mmap. The stack's large socket buffers are then fresh zero pages that
/// cost no memory until data passes (an idle flow touches a page or two),
/// and glibc's dynamic threshold cannot move them onto the heap, where
/// `calloc` would write every byte.
pub fn malloc_mmap_threshold(bytes: i32) -> bool {
    // SAFETY: mallopt only changes allocator parameters; it is called once
    // at daemon start-up, before the runtime and its threads exist.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1 }
}

/// Drops this process's page mappings of read-only file pages (the code and
/// read-only data of the executable and its libraries) once start-up is
/// over: what ran then (argument parsing, policy validation, TLS and
/// netlink set-up) and never runs again stops counting in the daemon's RSS,
/// and what runs later is mapped again from the page cache on first use.
/// Only mappings that are file-backed, not writable and hold no anonymous
/// (written, copy-on-write) page are advised: their pages are exactly the
/// file's, so nothing is lost (relocated read-only data, which was written
/// before it was made read-only, holds anonymous pages and is left alone).
/// Returns the bytes of the ranges advised.
pub fn drop_code_pages() -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return 0 };
    let mut ranges = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first().is_some_and(|r| r.contains('-') && r.chars().all(|c| c.is_ascii_hexdigit() || c == '-')) {
            // A mapping's header: range perms offset dev inode [path].
            current = None;
            let file_backed = f.len() >= 6 && f[5].starts_with('/') && f[4] != "0";
            if file_backed
                && !f[1].contains('w')
                && f[1].ends_with('p')
                && let Some((a, b)) = f[0].split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                current = Some((a, b));
            }
        } else if f.first() == Some(&"Anonymous:")
            && let Some(r) = current.take()
            && f.get(1) == Some(&"0")
        {
            ranges.push(r);
        }
    }
    let mut dropped = 0;
    for (start, end) in ranges {
        // SAFETY: the range is a whole private, file-backed, read-only
        // mapping of this process with no anonymous page (from
        // /proc/self/smaps just now; nothing can write to it). On such a
        // mapping MADV_DONTNEED only drops page-table entries: the next
        // access maps the same bytes again from the file.
        if end > start && unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) } == 0 {
            dropped += end - start;
        }
    }
    dropped
}
