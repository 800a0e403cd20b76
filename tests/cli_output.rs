//! The CLI's own output when its reader goes away (`| head`) or its
//! output cannot be written: no panic, a quiet exit or a clear error.
//! No root.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_nsproxy");

#[test]
fn completions_into_a_closed_pipe_exit_quietly() {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    drop(r); // the reader is gone before anything is written: EPIPE
    let o = Command::new(BIN).args(["completions", "bash"]).stdout(Stdio::from(w)).output().expect("run");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "exit {:?}: {stderr}", o.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn completions_that_cannot_be_written_say_so() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let o = Command::new(BIN).args(["completions", "zsh"]).stdout(Stdio::from(full)).output().expect("run");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a failed write is a failure");
    assert!(stderr.contains("cannot write the script") && !stderr.contains("panicked"), "{stderr}");
}
