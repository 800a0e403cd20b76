//! Policy overrides from the environment (`NSPROXY_ACCOUNTS__ACCOUNT_A__DNS__MODE=tcp`)
//! and the command line (`--set accounts.account-a.dns.mode=tcp`), applied
//! to the YAML tree of each policy file before validation, so an override
//! is checked exactly like the file. Precedence: file < environment <
//! command line. Pure: the environment is passed in.

use serde_yaml::{Mapping, Value};

use super::lines::{FieldPath, Seg};

pub const ENV_PREFIX: &str = "NSPROXY_";

/// One override: where it came from, the field path and the new value.
#[derive(Clone, PartialEq)]
pub struct Override {
    /// `NSPROXY_ACCOUNTS__A__DNS__MODE` or `--set accounts.a.dns.mode`.
    pub source: String,
    /// `accounts` + account selector + field segments, or `secrets` + fields.
    pub path: Vec<String>,
    /// `Null` removes the field.
    pub value: Value,
}

impl std::fmt::Debug for Override {
    // The value can be a token or a path; only where it goes is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Override({})", self.source)
    }
}

/// Every override for one run, in the order they apply, and the problems
/// found in their names (reported when a policy is loaded).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub items: Vec<Override>,
    pub problems: Vec<(String, String)>,
}

/// Parses a value the way YAML would read it in the file; text that is
/// not valid YAML stays a string.
fn parse_value(raw: &str) -> Value {
    if raw.is_empty() {
        return Value::String(String::new());
    }
    match serde_yaml::from_str::<Value>(raw) {
        Ok(v) => v,
        Err(_) => Value::String(raw.to_string()),
    }
}

fn check_path(source: &str, path: &[String]) -> Result<(), String> {
    if path.iter().any(|s| s.is_empty()) {
        return Err("empty name between separators".into());
    }
    match path.first().map(String::as_str) {
        Some("accounts") if path.len() >= 3 => Ok(()),
        Some("accounts") => Err(format!(
            "name an account and a field, e.g. {}",
            if source.starts_with("--set") {
                "accounts.account-a.dns.mode"
            } else {
                "NSPROXY_ACCOUNTS__ACCOUNT_A__DNS__MODE"
            }
        )),
        Some("secrets") if path.len() >= 2 => Ok(()),
        Some("secrets") => Err("name a field of secrets (key_file, key_name)".into()),
        Some(other) => Err(format!("unknown policy section {other:?}: overrides start with accounts or secrets")),
        None => Err("empty".into()),
    }
}

impl Overrides {
    /// From `NSPROXY_*` variables (`__` separates levels), then `--set
    /// FIELD=VALUE` arguments (`.` separates levels), which win.
    pub fn gather(env: impl IntoIterator<Item = (String, String)>, sets: &[String]) -> Overrides {
        let mut o = Overrides::default();
        let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        env.sort();
        for (k, v) in env {
            let rest = &k[ENV_PREFIX.len()..];
            if !rest.contains("__") {
                o.problems.push((
                    k.clone(),
                    "not a policy override: overrides use __ between levels, e.g. NSPROXY_ACCOUNTS__ACCOUNT_A__DNS__MODE"
                        .into(),
                ));
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            match check_path(&k, &path) {
                Ok(()) => o.items.push(Override { source: k.clone(), path, value: parse_value(&v) }),
                Err(e) => o.problems.push((k.clone(), e)),
            }
        }
        for s in sets {
            let Some((field, value)) = s.split_once('=') else {
                o.problems
                    .push((format!("--set {s}"), "expected FIELD=VALUE, e.g. accounts.account-a.dns.mode=tcp".into()));
                continue;
            };
            let source = format!("--set {field}");
            let path: Vec<String> = field.split('.').map(str::to_string).collect();
            match check_path(&source, &path) {
                Ok(()) => o.items.push(Override { source, path, value: parse_value(value) }),
                Err(e) => o.problems.push((source, e)),
            }
        }
        o
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.problems.is_empty()
    }
}

/// `account-a`, `ACCOUNT_A` and `account_a` name the same account.
fn same_name(name: &str, selector: &str) -> bool {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    norm(name) == norm(selector)
}

/// What applying one override to one file did.
#[derive(Debug, PartialEq)]
pub enum Applied {
    /// The field it changed (or removed), as a path in this file.
    Changed(FieldPath),
    /// This file has no account by that name.
    NotHere,
}

/// Applies `o` to the YAML tree of one policy file. `Err` explains why the
/// path cannot be followed (a list index out of range, a scalar in the way).
pub fn apply(root: &mut Value, o: &Override) -> Result<Applied, String> {
    if root.is_null() {
        *root = Value::Mapping(Mapping::new());
    }
    let Some(top) = root.as_mapping_mut() else { return Ok(Applied::NotHere) };
    let mut at = FieldPath::default();
    let (start, rest): (&mut Value, &[String]) = match o.path[0].as_str() {
        "accounts" => {
            let Some(Value::Sequence(seq)) = top.get_mut("accounts") else { return Ok(Applied::NotHere) };
            let matches: Vec<usize> = seq
                .iter()
                .enumerate()
                .filter(|(_, a)| a.get("name").and_then(Value::as_str).is_some_and(|n| same_name(n, &o.path[1])))
                .map(|(i, _)| i)
                .collect();
            let i = match matches.as_slice() {
                [] => return Ok(Applied::NotHere),
                [i] => *i,
                _ => return Err(format!("{} matches several accounts in this file", o.path[1])),
            };
            at = at.key("accounts").index(i);
            (&mut seq[i], &o.path[2..])
        }
        _ => {
            let key = Value::String(o.path[0].clone());
            if !top.contains_key(&key) {
                top.insert(key.clone(), Value::Mapping(Mapping::new()));
            }
            at = at.key(&o.path[0]);
            (top.get_mut(&key).ok_or("internal: inserted key missing")?, &o.path[1..])
        }
    };
    set(start, rest, &o.value, at).map(Applied::Changed)
}

fn set(mut cur: &mut Value, path: &[String], value: &Value, mut at: FieldPath) -> Result<FieldPath, String> {
    for (n, seg) in path.iter().enumerate() {
        let last = n + 1 == path.len();
        if cur.is_null() {
            *cur = Value::Mapping(Mapping::new());
        }
        match cur {
            Value::Mapping(m) => {
                let key = Value::String(seg.to_ascii_lowercase());
                at = at.key(&seg.to_ascii_lowercase());
                if last {
                    if value.is_null() {
                        m.remove(&key);
                    } else {
                        m.insert(key, value.clone());
                    }
                    return Ok(at);
                }
                if !m.contains_key(&key) {
                    m.insert(key.clone(), Value::Null);
                }
                cur = m.get_mut(&key).ok_or("internal: inserted key missing")?;
            }
            Value::Sequence(seq) => {
                let len = seq.len();
                let i = match seg.parse::<usize>() {
                    Ok(i) if i < len => i,
                    Ok(i) => return Err(format!("{at} has {len} entries; there is no index {i}")),
                    Err(_) => {
                        // A list of proxies: by label.
                        let found: Vec<usize> = seq
                            .iter()
                            .enumerate()
                            .filter(|(_, e)| e.get("label").and_then(Value::as_str).is_some_and(|l| same_name(l, seg)))
                            .map(|(i, _)| i)
                            .collect();
                        match found.as_slice() {
                            [i] => *i,
                            [] => return Err(format!("{at} has no entry labelled {seg} (use a label or an index)")),
                            _ => return Err(format!("{at}: {seg} matches several labels; use an index")),
                        }
                    }
                };
                at = at.index(i);
                if last {
                    if value.is_null() {
                        return Err(format!("{at}: a list entry cannot be removed by an override"));
                    }
                    seq[i] = value.clone();
                    return Ok(at);
                }
                cur = &mut seq[i];
            }
            _ => return Err(format!("{at} is a single value, not a section with {seg}")),
        }
    }
    Ok(at)
}

/// Whether a problem at `problem` is about the field an override set: at
/// or under it, or on the entry that directly holds it.
pub fn concerns(changed: &FieldPath, problem: &FieldPath) -> bool {
    if problem.0.starts_with(&changed.0) {
        return true;
    }
    let parent = &changed.0[..changed.0.len().saturating_sub(1)];
    !problem.0.is_empty() && problem.0.as_slice() == parent && matches!(problem.0.last(), Some(Seg::Index(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const DOC: &str = "\
accounts:
  - name: account-a
    proxies:
      - label: p1
        url: socks5://h:1
  - name: other
    proxies: []
";

    #[test]
    fn names_and_values() {
        let o = Overrides::gather(
            env(&[
                ("NSPROXY_ACCOUNTS__ACCOUNT_A__DNS__MODE", "tcp"),
                ("NSPROXY_ACCOUNTS__ACCOUNT_A__PROXIES__P1__PRIORITY", "5"),
                ("NSPROXY_ACCOUNTS__ACCOUNT_A__EXEC__USERS", "[alice, bob]"),
                ("NSPROXY_FOO__BAR", "1"),
                ("NSPROXY_LOGLEVEL", "debug"),
                ("NSPROXY_ACCOUNTS__ACCOUNT_A", "x"),
                ("HOME", "/root"),
            ]),
            &["accounts.account-a.dns.mode=fake-ip".into(), "nonsense".into()],
        );
        let sources: Vec<&str> = o.items.iter().map(|i| i.source.as_str()).collect();
        assert_eq!(
            sources,
            [
                "NSPROXY_ACCOUNTS__ACCOUNT_A__DNS__MODE",
                "NSPROXY_ACCOUNTS__ACCOUNT_A__EXEC__USERS",
                "NSPROXY_ACCOUNTS__ACCOUNT_A__PROXIES__P1__PRIORITY",
                "--set accounts.account-a.dns.mode",
            ]
        );
        assert_eq!(o.items[1].value, serde_yaml::from_str::<Value>("[alice, bob]").unwrap());
        assert_eq!(o.items[2].value, Value::Number(5.into()));
        let bad: Vec<String> = o.problems.iter().map(|(s, m)| format!("{s}: {m}")).collect();
        assert_eq!(bad.len(), 4, "{bad:?}");
        assert!(bad[0].starts_with("NSPROXY_ACCOUNTS__ACCOUNT_A: name an account and a field"), "{bad:?}");
        assert!(bad[1].starts_with("NSPROXY_FOO__BAR: unknown policy section \"foo\""), "{bad:?}");
        assert!(bad[2].starts_with("NSPROXY_LOGLEVEL: not a policy override"), "{bad:?}");
        assert!(bad[3].starts_with("--set nonsense: expected FIELD=VALUE"), "{bad:?}");
    }

    #[test]
    fn apply_follows_names_labels_and_indexes() {
        let mut v: Value = serde_yaml::from_str(DOC).unwrap();
        let o = Overrides::gather(
            env(&[
                ("NSPROXY_ACCOUNTS__ACCOUNT_A__DNS__MODE", "tcp"),
                ("NSPROXY_ACCOUNTS__ACCOUNT_A__PROXIES__P1__PRIORITY", "5"),
                ("NSPROXY_ACCOUNTS__ACCOUNT_A__PROXIES__0__ENABLED", "false"),
                ("NSPROXY_ACCOUNTS__NOBODY__DNS__MODE", "tcp"),
                ("NSPROXY_ACCOUNTS__ACCOUNT_A__PROXIES__3__PRIORITY", "1"),
                ("NSPROXY_ACCOUNTS__ACCOUNT_A__PROXIES__P1__URL__X", "1"),
            ]),
            &[],
        );
        let results: Vec<String> = o
            .items
            .iter()
            .map(|i| match apply(&mut v, i) {
                Ok(Applied::Changed(p)) => p.to_string(),
                Ok(Applied::NotHere) => "not here".into(),
                Err(e) => format!("error: {e}"),
            })
            .collect();
        assert_eq!(
            results,
            [
                "accounts[0].dns.mode",
                "accounts[0].proxies[0].enabled",
                "error: accounts[0].proxies has 1 entries; there is no index 3",
                "accounts[0].proxies[0].priority",
                "error: accounts[0].proxies[0].url is a single value, not a section with x",
                "not here",
            ]
            .map(str::to_string)
            .into_iter()
            .collect::<Vec<_>>()
        );
        assert_eq!(v["accounts"][0]["dns"]["mode"], Value::String("tcp".into()));
        assert_eq!(v["accounts"][0]["proxies"][0]["priority"], Value::Number(5.into()));
        // null removes a field.
        let rm = Overrides::gather(env(&[("NSPROXY_ACCOUNTS__ACCOUNT_A__DNS", "null")]), &[]);
        assert!(matches!(apply(&mut v, &rm.items[0]), Ok(Applied::Changed(_))));
        assert!(v["accounts"][0].get("dns").is_none());
    }

    #[test]
    fn problems_concern_the_overridden_field() {
        let f = FieldPath::default().key("accounts").index(0).key("proxies").index(1).key("password_env");
        assert!(concerns(&f, &f));
        assert!(concerns(&f, &FieldPath::default().key("accounts").index(0).key("proxies").index(1)));
        assert!(!concerns(&f, &FieldPath::default().key("accounts").index(0)));
        assert!(!concerns(&f, &FieldPath::default().key("accounts").index(0).key("dns")));
    }
}
