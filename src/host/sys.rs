//! The only module allowed `unsafe`: ownership transfers of raw file
//! descriptors that the safe APIs around us cannot express, and the
//! process's allocator.
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

/// Unblocks every signal in the calling thread, and so in every thread it
/// makes after. A process's signal mask is handed down through `fork` and
/// `exec` (Rust's `Command` too): a daemon started from a process that had
/// SIGTERM blocked never saw `down`'s SIGTERM, and `down` killed it after
/// 5 s, with none of its cleanup at exit. The daemon calls this first.
pub fn clear_signal_mask() -> io::Result<()> {
    nix::sys::signal::SigSet::empty().thread_set_mask().map_err(io::Error::from)
}

/// Gives SIGPIPE back its default action. Rust's runtime ignores it in
/// every Rust program, and an ignored signal stays ignored across `execv`:
/// a program run by `nsproxy exec` got EPIPE where it expects to die
/// (`seq 1 100000 | head -1` printed "write error: Broken pipe"). Rust's
/// `Command` does the same for its children; `exec` calls this last.
pub fn default_sigpipe() -> io::Result<()> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL installs no handler: no code of this process runs
    // when the signal arrives.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(drop).map_err(io::Error::from)
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

/// Allocations of this size or more get pages of their own.
pub const OWN_PAGES_FROM: usize = 64 * 1024;
const PAGE: usize = 4096;

/// The process's allocator: glibc's malloc, except that an allocation of
/// [`OWN_PAGES_FROM`] bytes or more is an anonymous mapping of its own,
/// unmapped when it is freed. The stack's socket buffers are such
/// allocations: fresh zero pages that cost no memory until data passes (an
/// idle flow touches a page or two, an unused buffer none) and that go
/// back to the kernel when the flow ends. glibc alone serves a large
/// request from free heap space before it considers its mmap threshold,
/// and `calloc` then writes every byte of it: 1,000 idle flows with
/// 128 KiB buffers took 96 MiB that way (docs/performance.md).
pub struct OwnPages;

fn own_pages(size: usize, align: usize) -> bool {
    size >= OWN_PAGES_FROM && align <= PAGE
}

fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing touches no existing memory; failure is checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED { std::ptr::null_mut() } else { p.cast() }
}

// SAFETY: every pointer handed out is either glibc's (through `System`,
// with the caller's layout) or a fresh mapping of at least `layout.size()`
// bytes, page-aligned and so aligned for any `align <= PAGE`. Which of the
// two a pointer is follows from its layout alone, and the caller passes
// the same layout back to `dealloc` and `realloc`, so each pointer returns
// to where it came from.
unsafe impl std::alloc::GlobalAlloc for OwnPages {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if own_pages(layout.size(), layout.align()) {
            map(layout.size())
        } else {
            // SAFETY: the caller's contract (non-zero size) passes through.
            unsafe { std::alloc::System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if own_pages(layout.size(), layout.align()) {
            // Anonymous mappings are zero-filled: nothing to write.
            map(layout.size())
        } else {
            // SAFETY: as in `alloc`.
            unsafe { std::alloc::System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if own_pages(layout.size(), layout.align()) {
            // SAFETY: `ptr` is a mapping of `layout.size()` bytes made by
            // `map` (same layout), not used after this call.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: `ptr` came from `System` with this layout.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let (old_own, new_own) = (own_pages(layout.size(), layout.align()), own_pages(new_size, layout.align()));
        if !old_own && !new_own {
            // SAFETY: `ptr` came from `System` with this layout.
            return unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        }
        if old_own && new_own {
            // SAFETY: `ptr` is a mapping of `layout.size()` bytes; mremap
            // moves or resizes it as a whole and keeps its contents.
            let p = unsafe { libc::mremap(ptr.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE) };
            return if p == libc::MAP_FAILED { std::ptr::null_mut() } else { p.cast() };
        }
        // Across the boundary: a new block from the other side, the
        // contents copied, the old block freed (the old one stays valid if
        // the new one cannot be had, as realloc must).
        let Ok(new_layout) = std::alloc::Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `new_layout` has a non-zero size (realloc's contract).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller of the two
            // sizes and do not overlap (`new` is a fresh block); `ptr` is
            // freed with the layout it was allocated with.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout};

    /// The start and end of the mapping of /proc/self/maps that holds `p`.
    fn mapping_of(p: *mut u8) -> Option<(usize, usize)> {
        let a = p as usize;
        std::fs::read_to_string("/proc/self/maps").ok()?.lines().find_map(|l| {
            let (s, e) = l.split_whitespace().next()?.split_once('-')?;
            let (s, e) = (usize::from_str_radix(s, 16).ok()?, usize::from_str_radix(e, 16).ok()?);
            (s <= a && a < e).then_some((s, e))
        })
    }

    #[test]
    fn large_blocks_are_mappings_of_their_own_and_keep_their_contents() {
        let big = Layout::from_size_align(128 * 1024, 1).expect("layout");
        // SAFETY: non-zero sizes; every block is freed with the layout it
        // has at that moment.
        unsafe {
            let p = OwnPages.alloc_zeroed(big);
            assert!(!p.is_null());
            assert_eq!(p as usize % PAGE, 0, "page-aligned");
            // Its own mapping: the block starts it (glibc's chunks carry a
            // header before the block, heap blocks sit inside [heap]).
            let (start, _) = mapping_of(p).expect("mapped");
            assert_eq!(start, p as usize);
            assert!(std::slice::from_raw_parts(p, big.size()).iter().all(|b| *b == 0));
            for i in 0..big.size() {
                *p.add(i) = (i % 251) as u8;
            }
            // Grown in place or moved: the contents follow.
            let q = OwnPages.realloc(p, big, 512 * 1024);
            assert!(!q.is_null());
            assert!((0..big.size()).all(|i| *q.add(i) == (i % 251) as u8));
            // Shrunk below the boundary: back to glibc, contents kept.
            let grown = Layout::from_size_align(512 * 1024, 1).expect("layout");
            let r = OwnPages.realloc(q, grown, 1000);
            assert!(!r.is_null());
            assert!((0..1000).all(|i| *r.add(i) == (i % 251) as u8));
            assert_ne!(mapping_of(r).map(|m| m.0), Some(r as usize));
            // And up across it again.
            let small = Layout::from_size_align(1000, 1).expect("layout");
            let s = OwnPages.realloc(r, small, 100 * 1024);
            assert_eq!(mapping_of(s).map(|m| m.0), Some(s as usize));
            assert!((0..1000).all(|i| *s.add(i) == (i % 251) as u8));
            OwnPages.dealloc(s, Layout::from_size_align(100 * 1024, 1).expect("layout"));
        }
    }

    #[test]
    fn small_and_overaligned_blocks_stay_with_glibc() {
        assert!(own_pages(OWN_PAGES_FROM, 8));
        assert!(!own_pages(OWN_PAGES_FROM - 1, 8));
        assert!(!own_pages(OWN_PAGES_FROM, 2 * PAGE));
        let l = Layout::from_size_align(OWN_PAGES_FROM, 2 * PAGE).expect("layout");
        // SAFETY: non-zero size, freed with the same layout.
        unsafe {
            let p = OwnPages.alloc(l);
            assert!(!p.is_null());
            assert_eq!(p as usize % (2 * PAGE), 0, "glibc honours the alignment");
            OwnPages.dealloc(p, l);
        }
    }
}
