//! Policy files: parsing and validation (pure), reporting every problem at
//! once with file, line, field and what is expected.

pub mod duration;
pub mod lines;
pub mod model;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;
pub use validate::{parse_proxy_url, parse_str};

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Field path such as `accounts[0].proxies[1].port`; empty for the file.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
    let problem = |m: String| Problem { file: path.to_path_buf(), line: None, field: String::new(), message: m };
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

/// Loads and validates every policy file under `path`. Account names and
/// namespaces must be unique across all files.
pub fn load(path: &Path) -> Result<Vec<Account>, Problems> {
    let files = policy_files(path).map_err(|p| Problems(vec![p]))?;
    let mut accounts: Vec<Account> = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let (mut a, mut p) = validate::parse_one(&file, &text);
                accounts.append(&mut a);
                problems.append(&mut p);
            }
            Err(e) => problems.push(Problem {
                file: file.clone(),
                line: None,
                field: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    validate::check_unique(&accounts, &mut problems);
    if problems.is_empty() { Ok(accounts) } else { Err(Problems(problems)) }
}

/// Loads the policy and returns the named account.
pub fn load_account(path: &Path, name: &str) -> Result<Account, anyhow::Error> {
    let accounts = load(path).map_err(|p| anyhow::anyhow!("policy {} is invalid:\n{p}", path.display()))?;
    let known: Vec<String> = accounts.iter().map(|a| a.name.clone()).collect();
    accounts.into_iter().find(|a| a.name == name).ok_or_else(|| {
        anyhow::anyhow!(
            "no account named {name:?} in policy {} (accounts there: {})",
            path.display(),
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        )
    })
}
