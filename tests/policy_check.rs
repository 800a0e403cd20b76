//! `nsproxy policy check` on the shipped examples and on bad fixtures (no
//! root needed). Each bad fixture has a `.expected` file: every line of it
//! must appear in the output, and the exit code must be non-zero.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nsproxy");

fn check(path: &Path) -> (bool, String) {
    let o = Command::new(BIN)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["policy", "check"])
        .arg(path)
        .output()
        .expect("run nsproxy");
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn shipped_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples");
    // Password files of the examples do not exist here; check parsing and
    // validation through the library, and the CLI for the whole directory.
    let accounts =
        nsproxy::config::load(&dir, &Default::default()).unwrap_or_else(|p| panic!("examples invalid:\n{p}"));
    let names: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, vec!["account-a", "account-fleet", "account-b", "account-c"]);
    let (ok, text) = check(&dir);
    // Only the (absent) password, token and CA files may be reported.
    assert!(!ok);
    for line in text.lines().filter(|l| !l.ends_with("problem(s) found")) {
        let absent = line.contains("does not exist") || line.contains("No such file");
        let field = ["password_file", "token_file", "ca_file"].iter().any(|f| line.contains(f));
        assert!(absent && field, "unexpected problem: {line}");
    }
}

#[test]
fn bad_fixtures_report_the_expected_problems() {
    let dir = Path::new("tests/fixtures/bad");
    let mut n = 0;
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).expect("fixtures") {
        let path = e.expect("entry").path();
        if path.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue;
        }
        let rel = dir.join(path.file_name().expect("name"));
        let expected = std::fs::read_to_string(path.with_extension("expected")).expect("every fixture has .expected");
        let (ok, text) = check(&rel);
        assert!(!ok, "{}: policy check must fail, printed:\n{text}", rel.display());
        for want in expected.lines().filter(|l| !l.is_empty()) {
            assert!(text.contains(want), "{}: missing {want:?} in:\n{text}", rel.display());
        }
        assert!(!text.contains("hunter2"), "a secret reached the output: {text}");
        n += 1;
    }
    assert!(n >= 7, "fixtures found: {n}");
}

#[test]
fn good_policy_passes_with_zero_exit() {
    let dir = std::env::temp_dir().join(format!("nsproxy-pc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join("ok.yaml");
    std::fs::write(
        &p,
        "accounts:\n  - name: ok\n    proxies:\n      - label: p\n        url: socks5://127.0.0.1:1080\n",
    )
    .expect("write");
    let (ok, text) = check(&p);
    assert!(ok, "{text}");
    assert!(text.contains("OK: 1 account(s) in 1 file(s): ok"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn problems_come_in_file_order_with_suggestions() {
    let dir = std::env::temp_dir().join(format!("nsproxy-order-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("p.yaml");
    std::fs::write(
        &file,
        "accounts:
  - name: a
    proxies: [{label: p, url: 'socks5://10.0.0.1:1080'}]
  - name: a
    proxies: [{label: p, url: 'socks5://10.0.0.1:1080'}]
  - name: c
    helth_check: {target: 'tcp://x.test:1'}
    proxies: [{label: p, url: 'socks5://10.0.0.1:99999'}]
",
    )
    .expect("write");
    let o = Command::new(BIN).args(["policy", "check"]).arg(&file).output().expect("run nsproxy");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&o.stderr).to_string();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("p.yaml:")).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].contains("p.yaml:4:") && lines[0].contains("duplicate account name"), "{text}");
    assert!(lines[1].contains("p.yaml:7:") && lines[1].contains("(did you mean \"health_check\"?)"), "{text}");
    assert!(lines[2].contains("p.yaml:8:") && lines[2].contains("invalid port"), "{text}");
}

#[test]
fn credential_problems_name_their_line_and_invalid_policies_exit_3() {
    let dir = std::env::temp_dir().join(format!("nsproxy-cred-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("c.yaml");
    let missing = dir.join("no-such-password");
    std::fs::write(
        &file,
        format!(
            "accounts:
  - name: a
    proxies:
      - label: p1
        url: socks5://10.0.0.1:1080
        username: u
        password_file: {0}
      - label: p2
        url: http://10.0.0.2:3128
        username: u
        password_file: {0}
",
            missing.display()
        ),
    )
    .expect("write");
    let o = Command::new(BIN).args(["policy", "check"]).arg(&file).output().expect("run nsproxy");
    let text = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(3), "an invalid policy exits 3 (RestartPreventExitStatus): {text}");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("c.yaml:")).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("c.yaml:7:") && lines[0].contains("proxies[0].password_file"), "{text}");
    assert!(lines[1].contains("c.yaml:11:") && lines[1].contains("proxies[1].password_file"), "{text}");
    // The same problem where a command needs the account: exit 3 too.
    let o = Command::new(BIN).arg("--policies").arg(&file).args(["secret", "check", "a"]).output().expect("run");
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(BIN).arg("--policies").arg(&file).args(["policy", "show", "b"]).output().expect("run");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(3), "an unknown account is a policy problem: {err}");
    assert!(err.contains("no account named \"b\""), "{err}");
}

#[test]
fn one_account_of_a_directory_is_loaded_from_its_own_files_only() {
    let dir = std::env::temp_dir().join(format!("nsproxy-scoped-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let account =
        |n: &str| format!("accounts:\n  - name: {n}\n    proxies: [{{label: p, url: 'socks5://127.0.0.1:1080'}}]\n");
    let broken = "accounts:\n  - name: gamma\n    proxies: [{label: p, url: 'ftp://x:1'}]\n";
    // Files not named after their accounts: the ones holding the name are parsed.
    std::fs::write(dir.join("one.yaml"), account("alpha")).expect("write");
    std::fs::write(dir.join("two.yaml"), account("beta")).expect("write");
    std::fs::write(dir.join("three.yaml"), broken).expect("write");
    let ov = Default::default();
    let select = |only: Option<&str>| nsproxy::config::select(&dir, &ov, only).map_err(|e| format!("{e:#}"));
    for n in ["alpha", "beta"] {
        let got = select(Some(n)).unwrap_or_else(|e| panic!("{n}: another account's broken file: {e}"));
        assert_eq!((got.len(), got[0].name.as_str()), (1, n));
    }
    for only in [Some("gamma"), None] {
        let e = select(only).unwrap_err();
        assert!(e.contains("three.yaml") && e.contains("unsupported proxy scheme"), "{only:?}: {e}");
    }
    let e = select(Some("alhpa")).unwrap_err();
    assert!(e.contains("three.yaml") || e.contains("no account named"), "{e}");
    // A second definition in another file is found.
    std::fs::write(dir.join("three.yaml"), account("alpha")).expect("write");
    let e = select(Some("alpha")).unwrap_err();
    assert!(e.contains("duplicate account name \"alpha\""), "{e}");
    // A file named after the account is the only one `up` reads; `policy
    // check` (everything) still refuses the name defined twice.
    std::fs::write(dir.join("alpha.yaml"), account("alpha").replace("1080", "1081")).expect("write");
    let got = select(Some("alpha")).expect("alpha from alpha.yaml");
    assert_eq!((got[0].proxies[0].port, got[0].origin.file.file_name()), (1081, Some("alpha.yaml".as_ref())));
    assert!(select(None).unwrap_err().contains("duplicate account name"));
    // ... and its own problems are its own.
    std::fs::write(dir.join("beta.yaml"), broken.replace("gamma", "beta")).expect("write");
    let e = select(Some("beta")).unwrap_err();
    assert!(e.contains("beta.yaml") && e.contains("unsupported proxy scheme"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_account_of_a_single_file_is_validated_alone() {
    let file = std::env::temp_dir().join(format!("nsproxy-scoped-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        "accounts:\n  - name: alpha\n    proxies: [{label: p, url: 'socks5://127.0.0.1:1080'}]\n  - name: gamma\n    proxies: [{label: p, url: 'ftp://x:1'}]\n  - name: alpha2\n    namespace: nsp-alpha\n    proxies: [{label: p, url: 'socks5://127.0.0.1:1080'}]\n",
    )
    .expect("write");
    let ov = Default::default();
    let select = |only: Option<&str>| nsproxy::config::select(&file, &ov, only).map_err(|e| format!("{e:#}"));
    assert_eq!(select(Some("alpha")).expect("alpha alone")[0].name, "alpha");
    // The origin of an account taken out alone is its place in the file.
    let a2 = select(Some("alpha2")).expect("alpha2 alone");
    assert_eq!((a2[0].origin.path.to_string(), a2[0].origin.line), ("accounts[2]".to_string(), Some(6)));
    let e = select(Some("gamma")).unwrap_err();
    // Only gamma's entry was parsed, yet the line and the index are the file's.
    assert!(e.contains(".yaml:5: accounts[1].proxies[0].url") && e.contains("unsupported proxy scheme"), "{e}");
    // Everything (`policy check`): the broken entry and the namespace clash.
    let e = select(None).unwrap_err();
    assert!(e.contains("unsupported proxy scheme") && e.contains("is also used by account"), "{e}");
    // The other entries are not parsed at all for one account: even broken
    // YAML there does not keep alpha down, while the whole file is refused.
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, text.replace("[{label: p, url: 'ftp://x:1'}]", "[{label: p, url: 'ftp://x:1'"))
        .expect("write");
    assert_eq!(select(Some("alpha")).expect("alpha alone")[0].name, "alpha");
    let e = select(None).unwrap_err();
    assert!(e.contains("not valid YAML"), "{e}");
    let e = select(Some("gamma")).unwrap_err();
    assert!(e.contains("not valid YAML") && e.contains(".yaml:"), "{e}");
    let _ = std::fs::remove_file(&file);
}
