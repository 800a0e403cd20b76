//! Policy files: parsing and validation (pure), reporting every problem at
//! once with file, line, field and what is expected.

pub mod duration;
pub mod lines;
pub mod model;
mod narrow;
pub mod overrides;
pub mod plan;
pub mod suggest;
pub mod urls;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;
pub use overrides::Overrides;
pub use urls::parse_proxy_url;
pub use validate::{parse_str, parse_str_with};

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Field path such as `accounts[0].proxies[1].port`; empty for the file.
    pub field: String,
    pub message: String,
    /// The environment variable or `--set` argument that set this field.
    pub via: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(via) = &self.via {
            // The value came from an override: name it first.
            return if self.field.is_empty() {
                write!(f, "{via}: {} (policy {})", self.message, self.file.display())
            } else {
                write!(f, "{via}: {} in {}: {}", self.field, self.file.display(), self.message)
            };
        }
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found, for one `policy check` or `up`.
#[derive(Debug)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The policy files under `path`: the file itself, or every `*.yaml`/`*.yml`
/// in the directory (not recursive), sorted.
pub fn policy_files(path: &Path) -> Result<Vec<PathBuf>, Problem> {
    let problem =
        |m: String| Problem { file: path.to_path_buf(), line: None, field: String::new(), message: m, via: None };
    let meta = std::fs::metadata(path).map_err(|e| problem(format!("cannot read policy path: {e}")))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let rd = std::fs::read_dir(path).map_err(|e| problem(format!("cannot list policy directory: {e}")))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(problem("no *.yaml or *.yml policy files in this directory".into()));
    }
    Ok(files)
}

/// Loads and validates every policy file under `path`, with the overrides
/// (environment, then `--set`) applied. Account names and namespaces must
/// be unique across all files; every override must reach an account.
pub fn load(path: &Path, ov: &Overrides) -> Result<Vec<Account>, Problems> {
    let files = policy_files(path).map_err(|p| Problems(vec![p]))?;
    let mut accounts: Vec<Account> = Vec::new();
    let mut problems: Vec<Problem> = ov
        .problems
        .iter()
        .map(|(via, m)| Problem {
            file: path.to_path_buf(),
            line: None,
            field: String::new(),
            message: m.clone(),
            via: Some(via.clone()),
        })
        .collect();
    let mut reached = vec![false; ov.items.len()];
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let (mut a, mut p, r) = validate::parse_one(&file, &text, ov);
                accounts.append(&mut a);
                problems.append(&mut p);
                reached.iter_mut().zip(r).for_each(|(x, y)| *x |= y);
            }
            Err(e) => problems.push(Problem {
                file: file.clone(),
                line: None,
                field: String::new(),
                message: format!("cannot read: {e}"),
                via: None,
            }),
        }
    }
    for (o, reached) in ov.items.iter().zip(reached) {
        if !reached && o.path[0] == "accounts" {
            problems.push(Problem {
                file: path.to_path_buf(),
                line: None,
                field: String::new(),
                message: format!(
                    "no account named {} in the policy (accounts there: {})",
                    o.path[1],
                    accounts.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
                via: Some(o.source.clone()),
            });
        }
    }
    validate::check_unique(&accounts, &mut problems);
    sort_problems(&mut problems);
    if problems.is_empty() { Ok(accounts) } else { Err(Problems(problems)) }
}

/// By file, then line (problems without a line, such as overrides, last
/// within their file); the order found stays for equal places.
fn sort_problems(problems: &mut [Problem]) {
    problems.sort_by(|a, b| a.file.cmp(&b.file).then(a.line.unwrap_or(usize::MAX).cmp(&b.line.unwrap_or(usize::MAX))));
}

/// The error of a policy with problems, as `up` and the daemon report it.
fn invalid_policy(path: &Path, mut problems: Vec<Problem>) -> anyhow::Error {
    sort_problems(&mut problems);
    anyhow::Error::new(Invalid(format!("policy {} is invalid:\n{}", path.display(), Problems(problems))))
}

/// The policy (or something it names) is invalid: starting again will not
/// help. Commands exit with `cli::exit::POLICY` when an error's chain holds
/// one.
#[derive(Debug)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

/// Loads the policy and returns the named account.
pub fn load_account(path: &Path, ov: &Overrides, name: &str) -> Result<Account, anyhow::Error> {
    let mut v = select(path, ov, Some(name))?;
    v.pop().ok_or_else(|| anyhow::Error::new(Invalid(format!("no account named {name:?}"))))
}

/// Loads the policy and returns every account, or only the one named; an
/// invalid policy or an unknown name is an `Invalid` error.
pub fn select(path: &Path, ov: &Overrides, only: Option<&str>) -> Result<Vec<Account>, anyhow::Error> {
    let invalid = |m: String| anyhow::Error::new(Invalid(m));
    if let Some(name) = only
        && let Some(found) = load_named(path, ov, name)?
    {
        return Ok(vec![found]);
    }
    let accounts = load(path, ov).map_err(|p| invalid_policy(path, p.0))?;
    let Some(name) = only else { return Ok(accounts) };
    let known: Vec<String> = accounts.iter().map(|a| a.name.clone()).collect();
    let found = accounts.into_iter().find(|a| a.name == name).ok_or_else(|| {
        invalid(format!(
            "no account named {name:?} in policy {}{} (accounts there: {})",
            path.display(),
            suggest::hint(name, known.iter().map(String::as_str)),
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        ))
    })?;
    Ok(vec![found])
}

/// One account out of the policy: only its own entries are validated (the
/// YAML of a file and its `secrets` section still are), so `up` and the
/// daemon cost about the same with a thousand accounts as with one, and
/// another account's broken entry does not keep this one down (`policy
/// check` validates everything). In a directory, a file named after the
/// account (`<account>.yaml` or `.yml`) that defines it is the only one
/// read; otherwise every file is read and those whose text holds the name
/// are parsed, so a name defined in two files is still refused. A
/// namespace shared with another account is refused when the second daemon
/// claims it. None: no shortcut (overrides aimed elsewhere, the name not
/// found): the caller loads everything, and its errors name what is wrong.
fn load_named(path: &Path, ov: &Overrides, name: &str) -> Result<Option<Account>, anyhow::Error> {
    if !ov.problems.is_empty()
        || ov.items.iter().any(|o| {
            o.path.first().map(String::as_str) != Some("accounts") || o.path.get(1).map(String::as_str) != Some(name)
        })
    {
        return Ok(None);
    }
    if path.is_dir() {
        for ext in ["yaml", "yml"] {
            let own = path.join(format!("{name}.{ext}"));
            let Ok(text) = std::fs::read_to_string(&own) else { continue };
            let (accounts, mut problems, reached) = validate::parse_one_for(&own, &text, ov, Some(name));
            validate::check_unique(&accounts, &mut problems);
            if !problems.is_empty() {
                return Err(invalid_policy(path, problems));
            }
            if reached.iter().all(|r| *r)
                && let Some(found) = accounts.into_iter().find(|a| a.name == name)
            {
                return Ok(Some(found));
            }
        }
    }
    let Ok(files) = policy_files(path) else { return Ok(None) };
    let mut accounts = Vec::new();
    let mut problems = Vec::new();
    let mut reached = vec![false; ov.items.len()];
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { return Ok(None) };
        if !text.contains(name) {
            continue;
        }
        // Only this account's entry is parsed (narrow.rs); a file the
        // narrowing cannot handle, or whose narrowed text is not YAML, is
        // parsed whole so its errors are the parser's own.
        let narrowed = narrow::only_account(&text, name)
            .map(|n| validate::parse_narrowed(&file, &n, ov, Some(name)))
            .filter(|(_, p, _)| !p.iter().any(|p| p.message.starts_with(validate::NOT_YAML)));
        let (mut a, mut p, r) = narrowed.unwrap_or_else(|| validate::parse_one_for(&file, &text, ov, Some(name)));
        accounts.append(&mut a);
        problems.append(&mut p);
        reached.iter_mut().zip(r).for_each(|(x, y)| *x |= y);
    }
    if reached.iter().any(|r| !r) {
        return Ok(None);
    }
    validate::check_unique(&accounts, &mut problems);
    if !problems.is_empty() {
        return Err(invalid_policy(path, problems));
    }
    Ok(accounts.into_iter().find(|a| a.name == name))
}

/// Where a command's policy comes from: the files under `path`, then the
/// overrides from the environment and `--set` (kept to hand on to the
/// daemon).
#[derive(Debug, Clone)]
pub struct Policy {
    pub path: PathBuf,
    pub overrides: Overrides,
    pub sets: Vec<String>,
}

impl Policy {
    /// The policy at `path` with this process's `NSPROXY_*` variables and
    /// the `--set` arguments.
    pub fn from_process(path: PathBuf, sets: Vec<String>) -> Policy {
        let overrides = Overrides::gather(std::env::vars(), &sets);
        Policy { path, overrides, sets }
    }

    /// The files alone, no override.
    pub fn plain(path: &Path) -> Policy {
        Policy { path: path.to_path_buf(), overrides: Overrides::default(), sets: Vec::new() }
    }

    pub fn load(&self) -> Result<Vec<Account>, Problems> {
        load(&self.path, &self.overrides)
    }

    pub fn load_account(&self, name: &str) -> Result<Account, anyhow::Error> {
        load_account(&self.path, &self.overrides, name)
    }

    /// Every account, or only the one named (see `select`).
    pub fn select(&self, only: Option<&str>) -> Result<Vec<Account>, anyhow::Error> {
        select(&self.path, &self.overrides, only)
    }
}
