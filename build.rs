//! Lays out the release binary's code in the order of `scripts/code-order.txt`:
//! the functions a running daemon executes (relaying, polling, new flows,
//! control requests), hottest first, then the rest it touches, packed
//! together at the start of `.text` instead of spread over its 7 MB. The
//! kernel maps a file's pages 64-128 KiB at a time around each one touched,
//! so scattered code costs the daemon's RSS far more than its size
//! (docs/performance.md, "Code laid out in the order it runs").
//!
//! Only for release builds on x86_64-unknown-linux-gnu, whose default linker
//! since Rust 1.90 is LLD, the one that reads `--symbol-ordering-file`. A
//! build that picks another linker through RUSTFLAGS, or sets
//! `NSPROXY_CODE_ORDER=0`, links in the default order. Names the file lists
//! and the binary no longer has are skipped: a stale file costs memory,
//! never a build (`scripts/code-order.sh` writes it again).

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=scripts/code-order.txt");
    println!("cargo:rerun-if-env-changed=NSPROXY_CODE_ORDER");
    let var = |name: &str| env::var(name).unwrap_or_default();
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let other_linker = flags.contains("linker") || flags.contains("link-self-contained");
    if var("PROFILE") != "release"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || var("NSPROXY_CODE_ORDER") == "0"
        || other_linker
    {
        return;
    }
    let file = Path::new(&var("CARGO_MANIFEST_DIR")).join("scripts/code-order.txt");
    if file.is_file() {
        println!("cargo:rustc-link-arg-bin=nsproxy=-Wl,--symbol-ordering-file={}", file.display());
        println!("cargo:rustc-link-arg-bin=nsproxy=-Wl,--no-warn-symbol-ordering");
    }
}
