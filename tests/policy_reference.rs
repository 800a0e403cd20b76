//! docs/policy-reference.md against the code, both ways: the validator is
//! asked for the fields it knows in every section (a field `zz` in each
//! section gets "unknown field; expected one of: ..."), and every one must
//! have a row in the reference, and every field in the reference must be
//! known to the validator. Each row's example must be a YAML value. No root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nsproxy");

/// Every section of a policy, with a `zz` field in each.
const PROBE: &str = r#"
zz: 1
secrets: {zz: 1}
accounts:
  - name: a
    zz: 1
    proxies:
      - {label: p, url: "socks5://127.0.0.1:1080", zz: 1}
    exec: {zz: 1}
    dns: {zz: 1}
    tun: {zz: 1}
    limits: {zz: 1}
    health_check: {zz: 1}
    pool: {zz: 1}
    egress_check: {zz: 1}
    rules: [{zz: 1}]
    metrics: {zz: 1}
    secrets: {zz: 1}
    external_service: {zz: 1}
    host_services: [{zz: 1}]
"#;

/// Section path (as the reference writes it: "" for the account,
/// "proxies[]", "external_service", ... and "top" for the file) -> fields.
fn known_fields() -> BTreeMap<String, BTreeSet<String>> {
    let dir = std::env::temp_dir().join(format!("nsproxy-ref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("probe.yaml");
    std::fs::write(&file, PROBE).expect("write");
    let o = Command::new(BIN).args(["policy", "check"]).arg(&file).output().expect("run nsproxy");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    let mut known = BTreeMap::new();
    for line in text.lines() {
        let Some((head, list)) = line.split_once(": unknown field \"zz\"; expected one of: ") else { continue };
        let path = head.rsplit(": ").next().unwrap_or("").trim_end_matches(".zz").trim_end_matches("zz");
        let section = if path.is_empty() {
            "top".to_string()
        } else {
            path.trim_start_matches("accounts[0]").trim_start_matches('.').replace("[0]", "[]")
        };
        known.insert(section, list.split(", ").map(str::to_string).collect());
    }
    known
}

/// Field paths of the reference's tables, with each row's example.
fn documented() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/policy-reference.md"))
        .expect("docs/policy-reference.md");
    let mut out = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert!(cells.len() >= 4, "a row needs field | default | example | meaning: {line}");
        let example = cells[2].trim_matches('`').to_string();
        for f in cells[0].split(", ") {
            out.push((f.trim_matches('`').to_string(), example.clone()));
        }
    }
    out
}

#[test]
fn the_reference_documents_every_field_the_code_knows_and_no_other() {
    let known = known_fields();
    for s in ["top", "", "proxies[]", "dns", "health_check", "external_service", "rules[]", "limits", "host_services[]"]
    {
        assert!(known.contains_key(s), "the probe found no field list for section {s:?}: {known:?}");
    }
    let doc = documented();
    let paths: BTreeSet<&str> = doc.iter().map(|(p, _)| p.as_str()).collect();
    println!(
        "{} fields in {} sections known to the validator; {} documented",
        known.values().map(BTreeSet::len).sum::<usize>(),
        known.len(),
        paths.len()
    );

    // Code -> doc: every field has a row (a section counts as documented
    // through the rows of its fields).
    let mut missing = Vec::new();
    for (section, fields) in &known {
        // The top level's `accounts` is what the tables describe.
        for f in fields.iter().filter(|f| !(section == "top" && *f == "accounts")) {
            let path = match section.as_str() {
                "top" | "" => f.clone(),
                s => format!("{s}.{f}"),
            };
            let covered = paths
                .iter()
                .any(|p| *p == path || p.starts_with(&format!("{path}.")) || p.starts_with(&format!("{path}[]")));
            if !covered {
                missing.push(path);
            }
        }
    }
    assert!(missing.is_empty(), "fields the code knows but docs/policy-reference.md does not: {missing:?}");

    // Doc -> code: every documented path names known fields.
    let mut unknown = Vec::new();
    for p in &paths {
        let (section, field) = match p.rsplit_once('.') {
            Some((s, f)) => (s.to_string(), f.to_string()),
            None => (String::new(), p.trim_end_matches("[]").to_string()),
        };
        // (Top-level and account-level `secrets` share one field list.)
        let ok = known.get(&section).is_some_and(|fs| fs.contains(&field));
        if !ok {
            unknown.push(p.to_string());
        }
    }
    assert!(unknown.is_empty(), "documented in docs/policy-reference.md but unknown to the code: {unknown:?}");

    // Each example is a YAML value.
    for (p, e) in &doc {
        if e != "-" && !e.contains("...") {
            assert!(serde_yaml::from_str::<serde_yaml::Value>(e).is_ok(), "{p}: example {e:?} is not YAML");
        }
    }
}
