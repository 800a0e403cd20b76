//! scripts/install.sh, staged into a temporary root (DESTDIR: no root, no
//! apt, nothing outside it touched): what it installs and with which
//! modes, that it is safe to run again and leaves policies alone, and that
//! a too-old rustc is refused with the way to a newer one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_nsproxy");

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh")
}

fn run(envs: &[(&str, &str)]) -> Output {
    Command::new("bash").arg(script()).envs(envs.iter().copied()).output().expect("run install.sh")
}

fn said(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

#[test]
fn stages_the_binary_units_pages_and_private_directories_and_can_run_again() {
    let root = std::env::temp_dir().join(format!("nsproxy-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dest = root.to_str().expect("utf-8");
    let envs = [("DESTDIR", dest), ("NSPROXY_BIN", BIN)];
    let o = run(&envs);
    assert!(o.status.success(), "{}", said(&o));
    for f in [
        "usr/local/bin/nsproxy",
        "usr/local/share/man/man1/nsproxy.1.gz",
        "usr/local/share/man/man1/nsproxy-up.1.gz",
        "usr/local/share/man/man5/nsproxy-policy.5.gz",
        "usr/local/share/bash-completion/completions/nsproxy",
        "usr/local/share/zsh/site-functions/_nsproxy",
        "usr/local/share/doc/nsproxy/examples/nsproxy-bot-exec.service",
        "etc/systemd/system/nsproxy@.service",
        "etc/modules-load.d/nsproxy.conf",
    ] {
        let p = root.join(f);
        assert!(p.is_file() && std::fs::metadata(&p).expect("meta").len() > 0, "{f} missing:\n{}", said(&o));
    }
    assert_eq!(mode(&root.join("usr/local/bin/nsproxy")), 0o755);
    for d in ["opt/cni/bin", "usr/lib/cni"] {
        let link = std::fs::read_link(root.join(d).join("nsproxy-cni")).expect("the CNI plugin link");
        assert_eq!(link, Path::new("/usr/local/bin/nsproxy"), "{d}");
    }
    for d in ["etc/nsproxy/policies", "etc/nsproxy/secrets", "var/lib/nsproxy"] {
        assert_eq!(mode(&root.join(d)), 0o700, "{d}");
    }
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/nsproxy@.service")).expect("unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/nsproxy --policies"), "{unit}");
    assert!(!unit.contains("/usr/bin/nsproxy"), "{unit}");
    let bot = std::fs::read_to_string(root.join("usr/local/share/doc/nsproxy/examples/nsproxy-bot-exec.service"))
        .expect("bot");
    assert!(bot.contains("ExecStart=/usr/local/bin/nsproxy"), "{bot}");

    // Again, as an upgrade: a policy stays, a loosened directory is fixed.
    let policy = root.join("etc/nsproxy/policies/a.yaml");
    std::fs::write(&policy, "accounts: []\n").expect("policy");
    std::fs::set_permissions(root.join("etc/nsproxy/secrets"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let o = run(&envs);
    assert!(o.status.success(), "{}", said(&o));
    assert_eq!(std::fs::read_to_string(&policy).expect("policy"), "accounts: []\n");
    assert_eq!(mode(&root.join("etc/nsproxy/secrets")), 0o700);
    assert!(said(&o).contains("had mode 755: now 0700"), "{}", said(&o));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_too_old_rustc_is_refused_with_the_way_to_a_newer_one() {
    let dir = std::env::temp_dir().join(format!("nsproxy-old-rustc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for (name, body) in
        [("rustc", "echo 'rustc 1.63.0 (4b91a6ea7 2022-08-08)'"), ("cargo", "echo 'must not build' >&2; exit 99")]
    {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("fake");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let stage = dir.join("root");
    // HOME points away from any real toolchain, so the fake one is found.
    let path = format!("{}:/usr/bin:/bin", dir.display());
    let envs =
        [("DESTDIR", stage.to_str().expect("utf-8")), ("PATH", path.as_str()), ("HOME", dir.to_str().expect("utf-8"))];
    let o = run(&envs);
    let text = said(&o);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!o.status.success(), "{text}");
    let want = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .expect("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \"").map(|v| v.trim_end_matches('"').to_string()))
        .expect("rust-version");
    assert!(text.contains(&format!("rustc 1.63.0 is older than {want}")), "{text}");
    assert!(text.contains("rustup update"), "{text}");
    assert!(!text.contains("must not build"), "{text}");
    assert!(!stage.join("usr/local/bin/nsproxy").exists());
}
