//! Turns YAML text into validated accounts, collecting every problem. One
//! file per section of an account; the URL forms are in `config::urls`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::lines::{FieldPath, LineIndex};
use super::model::*;
use super::overrides::{self, Applied, Overrides};
use super::urls::*;
use super::{Problem, Problems, duration};

mod account;
mod checks;
mod proxy;
mod rules;
mod secrets;
mod service;

use account::*;
use checks::*;
use proxy::*;
use rules::*;
use secrets::*;
use service::*;

pub const DEFAULT_MTU: u32 = 65000;

struct Ctx<'a> {
    file: &'a Path,
    lines: LineIndex,
    problems: Vec<Problem>,
    /// Fields set by overrides, and by which (latest last).
    overridden: Vec<(FieldPath, String)>,
    /// A narrowed text's entries: the file's index of each (empty: the
    /// text is the file's own).
    entries: &'a [usize],
}

impl Ctx<'_> {
    fn problem(&mut self, path: &FieldPath, message: impl Into<String>) {
        let via = self.overridden.iter().rev().find(|(f, _)| overrides::concerns(f, path)).map(|(_, s)| s.clone());
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            line: if via.is_some() { None } else { self.lines.locate(path) },
            field: self.in_file(path).to_string(),
            message: message.into(),
            via,
        });
    }

    /// `path` as the file numbers it (see `narrow`).
    fn in_file(&self, path: &FieldPath) -> FieldPath {
        super::narrow::in_file(path, self.entries)
    }

    /// `v` as a mapping whose keys are all in `known`; reports unknown keys.
    fn mapping<'v>(&mut self, v: &'v Value, path: &FieldPath, known: &[&str]) -> Option<&'v Mapping> {
        let Some(m) = v.as_mapping() else {
            self.problem(path, format!("expected a mapping with keys {}", known.join(", ")));
            return None;
        };
        for k in m.keys() {
            match k.as_str() {
                Some(s) if known.contains(&s) => {}
                Some(s) => {
                    let p = path.key(s);
                    let hint = super::suggest::hint(s, known.iter().copied());
                    self.problem(&p, format!("unknown field {s:?}{hint}; expected one of: {}", known.join(", ")));
                }
                None => self.problem(path, "keys must be strings"),
            }
        }
        Some(m)
    }

    fn get<T: DeserializeOwned>(&mut self, m: &Mapping, key: &str, path: &FieldPath, what: &str) -> Option<T> {
        let v = m.get(key)?;
        match serde_yaml::from_value::<T>(v.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.problem(&path.key(key), format!("expected {what}: {e}"));
                None
            }
        }
    }

    fn require<T: DeserializeOwned>(&mut self, m: &Mapping, key: &str, path: &FieldPath, what: &str) -> Option<T> {
        if !m.contains_key(key) {
            self.problem(path, format!("missing field {key:?} ({what})"));
            return None;
        }
        self.get(m, key, path, what)
    }

    /// A field that names one of `choices`; absent: `default`. Anything
    /// else is a problem listing the choices.
    fn choice<T: Copy>(
        &mut self,
        m: &Mapping,
        key: &str,
        path: &FieldPath,
        choices: &[(&str, T)],
        default: T,
    ) -> Option<T> {
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let what = names.join(" or ");
        match self.get::<String>(m, key, path, &what) {
            None if m.contains_key(key) => None,
            None => Some(default),
            Some(v) => match choices.iter().find(|(n, _)| *n == v) {
                Some((_, t)) => Some(*t),
                None => {
                    self.problem(&path.key(key), format!("expected {what}, got {v:?}"));
                    None
                }
            },
        }
    }

    fn duration(&mut self, m: &Mapping, key: &str, path: &FieldPath, default: Duration) -> Option<Duration> {
        let Some(v) = m.get(key) else { return Some(default) };
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                self.problem(&path.key(key), "expected a duration such as 500ms, 30s, 5m, 2h or 1d");
                return None;
            }
        };
        match duration::parse(&text) {
            Ok(d) if d.is_zero() => {
                self.problem(&path.key(key), "must be longer than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(&path.key(key), e);
                None
            }
        }
    }

    fn ranged(&mut self, m: &Mapping, key: &str, path: &FieldPath, lo: u64, hi: u64, default: u64) -> Option<u64> {
        let what = format!("a whole number from {lo} to {hi}");
        let Some(n) = self.get::<u64>(m, key, path, &what) else {
            return if m.contains_key(key) { None } else { Some(default) };
        };
        if n < lo || n > hi {
            self.problem(&path.key(key), format!("expected {what}, got {n}"));
            return None;
        }
        Some(n)
    }
}

fn is_name(s: &str, max: usize, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || extra.contains(&c))
        && !s.starts_with('-')
}

/// Parses one policy file's text, checking names are unique within it.
/// `file` is only used in messages.
pub fn parse_str(file: &Path, text: &str) -> Result<Vec<Account>, Problems> {
    parse_str_with(file, text, &Overrides::default())
}

/// `parse_str` with overrides applied (those naming no account here are
/// ignored).
pub fn parse_str_with(file: &Path, text: &str, ov: &Overrides) -> Result<Vec<Account>, Problems> {
    let (accounts, mut problems, _) = parse_one(file, text, ov);
    check_unique(&accounts, &mut problems);
    if problems.is_empty() { Ok(accounts) } else { Err(Problems(problems)) }
}

/// Parses one policy file's text without the uniqueness check: the accounts
/// that are valid, every problem found, and which overrides reached an
/// account of this file.
pub fn parse_one(file: &Path, text: &str, ov: &Overrides) -> (Vec<Account>, Vec<Problem>, Vec<bool>) {
    parse_one_for(file, text, ov, None)
}

/// How a YAML syntax error's message starts.
pub const NOT_YAML: &str = "not valid YAML";

/// `parse_one`, validating only the accounts named `only` (when given):
/// the file's YAML and its `secrets` section are still checked, the other
/// accounts' entries are not looked at.
pub fn parse_one_for(
    file: &Path,
    text: &str,
    ov: &Overrides,
    only: Option<&str>,
) -> (Vec<Account>, Vec<Problem>, Vec<bool>) {
    parse_entries(file, text, &[], ov, only)
}

/// `parse_one_for` on a narrowed text: lines are the file's, and list
/// indexes in problems and origins become the file's.
pub fn parse_narrowed(
    file: &Path,
    n: &super::narrow::Narrowed,
    ov: &Overrides,
    only: Option<&str>,
) -> (Vec<Account>, Vec<Problem>, Vec<bool>) {
    parse_entries(file, &n.text, &n.entries, ov, only)
}

fn parse_entries(
    file: &Path,
    text: &str,
    entries: &[usize],
    ov: &Overrides,
    only: Option<&str>,
) -> (Vec<Account>, Vec<Problem>, Vec<bool>) {
    let mut ctx = Ctx { file, lines: LineIndex::build(text), problems: Vec::new(), overridden: Vec::new(), entries };
    let mut reached = vec![false; ov.items.len()];
    let mut root: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let line = e.location().map(|l| l.line());
            let p = Problem {
                file: file.to_path_buf(),
                line,
                field: String::new(),
                message: format!("{NOT_YAML}: {e}"),
                via: None,
            };
            return (Vec::new(), vec![p], reached);
        }
    };
    for (i, o) in ov.items.iter().enumerate() {
        match overrides::apply(&mut root, o) {
            Ok(Applied::Changed(at)) => {
                reached[i] = true;
                ctx.overridden.push((at, o.source.clone()));
            }
            Ok(Applied::NotHere) => {}
            Err(e) => {
                reached[i] = true;
                ctx.problems.push(Problem {
                    file: file.to_path_buf(),
                    line: None,
                    field: String::new(),
                    message: e,
                    via: Some(o.source.clone()),
                });
            }
        }
    }
    let top = FieldPath::default();
    let mut accounts = Vec::new();
    if let Some(m) = ctx.mapping(&root, &top, &["accounts", "secrets"]) {
        let default_key = match m.get("secrets") {
            None => Ok(None),
            Some(v) => key_source(&mut ctx, v, &top.key("secrets")).map(Some).ok_or(()),
        };
        match m.get("accounts") {
            None => ctx.problem(&top, "missing field \"accounts\" (a list of accounts)"),
            Some(Value::Sequence(seq)) => {
                if seq.is_empty() {
                    ctx.problem(&top.key("accounts"), "expected at least one account");
                }
                for (i, v) in seq.iter().enumerate() {
                    if only.is_some_and(|n| v.get("name").and_then(Value::as_str) != Some(n)) {
                        continue;
                    }
                    if let Some(a) = account(&mut ctx, v, &top.key("accounts").index(i), &default_key) {
                        accounts.push(a);
                    }
                }
            }
            Some(_) => ctx.problem(&top.key("accounts"), "expected a list of accounts"),
        }
    }
    (accounts, ctx.problems, reached)
}

/// Account names and namespaces must be unique across every file loaded.
pub fn check_unique(accounts: &[Account], problems: &mut Vec<Problem>) {
    for (i, a) in accounts.iter().enumerate() {
        for b in &accounts[..i] {
            if a.name == b.name {
                problems.push(Problem {
                    file: a.origin.file.clone(),
                    line: a.origin.line,
                    field: "name".into(),
                    message: format!("duplicate account name {:?} (first defined at {})", a.name, b.origin),
                    via: None,
                });
            } else if a.namespace == b.namespace {
                problems.push(Problem {
                    file: a.origin.file.clone(),
                    line: a.origin.line,
                    field: "namespace".into(),
                    message: format!("namespace {:?} is also used by account {:?} ({})", a.namespace, b.name, b.origin),
                    via: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
