//! Proxy passwords: resolved from their reference when a daemon starts, kept
//! in a type whose `Debug` and `Display` never show the value.

use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::config::{Account, Problem, ProxyEntry, SecretRef};

/// A secret value. Shown as `***` everywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("proxy {proxy}: password file {path}: {reason}")]
    File { proxy: String, path: String, reason: String },
    #[error("proxy {proxy}: environment variable {var} (password_env) is not set in the daemon's environment")]
    EnvMissing { proxy: String, var: String },
}

/// Checks a password file the way the daemon will read it: a regular file,
/// not a symlink, owned by root, mode 0600 or 0400. Returns why not.
pub fn check_file(path: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => e.to_string(),
    })?;
    if meta.file_type().is_symlink() {
        return Err("is a symlink; point password_file at the real file".into());
    }
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.uid() != 0 {
        return Err(format!("is owned by uid {}, not root; fix with: chown root:root {}", meta.uid(), path.display()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "has mode {:o}, readable by others; fix with: chmod 600 {}",
            meta.mode() & 0o777,
            path.display()
        ));
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<String, String> {
    check_file(path)?;
    let mut f =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(|e| e.to_string())?;
    let mut s = String::new();
    f.by_ref().take(4096).read_to_string(&mut s).map_err(|e| format!("cannot read: {e}"))?;
    let s = s.strip_suffix('\n').unwrap_or(&s);
    let s = s.strip_suffix('\r').unwrap_or(s);
    if s.is_empty() {
        return Err("is empty".into());
    }
    Ok(s.to_string())
}

/// The password of one proxy, if it has one.
pub fn resolve(p: &ProxyEntry) -> Result<Option<Secret>, SecretError> {
    match &p.password {
        None => Ok(None),
        Some(SecretRef::File(path)) => read_file(path).map(|s| Some(Secret(s))).map_err(|reason| SecretError::File {
            proxy: p.display_name(),
            path: path.display().to_string(),
            reason,
        }),
        Some(SecretRef::Env(var)) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(Secret(v))),
            _ => Err(SecretError::EnvMissing { proxy: p.display_name(), var: var.clone() }),
        },
    }
}

/// `policy check`: password files that the daemon would refuse.
pub fn check_account_files(a: &Account) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, p) in a.proxies.iter().enumerate() {
        if let Some(SecretRef::File(path)) = &p.password
            && let Err(reason) = check_file(path)
        {
            out.push(Problem {
                file: a.origin.file.clone(),
                line: None,
                field: format!("account {}: proxies[{i}].password_file", a.name),
                message: format!("{}: {reason}", path.display()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
        assert_eq!(s.expose(), "hunter2");
    }
    #[test]
    fn missing_file_is_named() {
        let e = check_file(Path::new("/nonexistent/nsproxy-secret")).unwrap_err();
        assert_eq!(e, "does not exist");
    }
}
