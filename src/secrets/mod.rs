//! Proxy credentials: resolved from their reference (a root-owned file, an
//! environment variable of the daemon, or a Fernet token decrypted with the
//! account's key file) when a daemon starts, and kept in a type whose
//! `Debug` and `Display` never show the value.

use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::config::lines::LineIndex;
use crate::config::{Account, KeySource, Problem, ProxyEntry, SecretRef, ServiceAuth, Token, UserRef};

pub mod fernet;

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

/// A proxy's resolved user name and password.
#[derive(Debug, Clone)]
pub struct Creds {
    pub user: Secret,
    pub pass: Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{owner}: {field} {path}: {reason}")]
    File { owner: String, field: String, path: String, reason: String },
    #[error("{owner}: environment variable {var} ({field}) is not set in the daemon's environment")]
    EnvMissing { owner: String, field: String, var: String },
    #[error("key file {path} (secrets.key_file): {reason}")]
    KeyFile { path: String, reason: String },
    #[error("{owner}: {field} {why} (key file {key})")]
    Decrypt { owner: String, field: String, key: String, why: fernet::DecryptError },
    #[error("{owner}: {field}: {reason}")]
    Value { owner: String, field: String, reason: String },
    #[error("{owner}: {field} is encrypted but the account has no secrets.key_file")]
    NoKey { owner: String, field: String },
}

impl SecretError {
    /// The message without the proxy and field, for reports that name the
    /// field themselves.
    pub fn detail(&self) -> String {
        match self {
            SecretError::File { path, reason, .. } => format!("{path}: {reason}"),
            SecretError::EnvMissing { var, .. } => format!("{var} is not set in this environment"),
            SecretError::KeyFile { path, reason } => format!("key file {path}: {reason}"),
            SecretError::Decrypt { key, why, .. } => format!("{why} (key file {key})"),
            SecretError::Value { field, reason, .. } => format!("{field}: {reason}"),
            SecretError::NoKey { .. } => "encrypted, but the account has no secrets.key_file".into(),
        }
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".into(),
        _ => e.to_string(),
    }
}

/// Checks a secret file the way the daemon will read it: a regular file,
/// not a symlink, owned by root, mode 0600 or 0400. Returns why not.
pub fn check_file(path: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(path).map_err(|e| io_reason(&e))?;
    if meta.file_type().is_symlink() {
        return Err("is a symlink; name the real file instead".into());
    }
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.uid() != 0 {
        return Err(format!("is owned by uid {}, not root; fix with: chown root:root {}", meta.uid(), path.display()));
    }
    let mode = meta.mode() & 0o7777;
    if mode != 0o600 && mode != 0o400 {
        return Err(format!("has mode {mode:04o}, expected 0600 or 0400; fix with: chmod 600 {}", path.display()));
    }
    Ok(())
}

/// Reads a checked secret file (at most 64 KiB) through O_NOFOLLOW.
fn read_file(path: &Path) -> Result<String, String> {
    check_file(path)?;
    let mut f =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(|e| e.to_string())?;
    let mut s = String::new();
    f.by_ref().take(64 * 1024).read_to_string(&mut s).map_err(|e| format!("cannot read: {e}"))?;
    Ok(s)
}

/// The first line of a credential file, without its line ending.
fn first_line(text: &str) -> &str {
    let s = text.strip_suffix('\n').unwrap_or(text);
    s.strip_suffix('\r').unwrap_or(s)
}

/// Loads the account's Fernet key.
pub fn load_key(k: &KeySource) -> Result<fernet::Key, SecretError> {
    let err = |reason: String| SecretError::KeyFile { path: k.file.display().to_string(), reason };
    let text = read_file(&k.file).map_err(err)?;
    fernet::parse_key_file(&text, k.name.as_deref()).map_err(|e| err(e.to_string()))
}

fn resolve_ref(
    r: &SecretRef,
    key: Option<&fernet::Key>,
    ks: Option<&KeySource>,
    owner: &str,
    field: &str,
) -> Result<Secret, SecretError> {
    let value = match r {
        SecretRef::File(path) => {
            read_file(path).map(|t| first_line(&t).to_string()).map_err(|reason| SecretError::File {
                owner: owner.to_string(),
                field: format!("{field}_file"),
                path: path.display().to_string(),
                reason,
            })?
        }
        SecretRef::Env(var) => std::env::var(var).map_err(|_| SecretError::EnvMissing {
            owner: owner.to_string(),
            field: format!("{field}_env"),
            var: var.clone(),
        })?,
        SecretRef::Encrypted(Token(t)) => {
            let key = key
                .ok_or_else(|| SecretError::NoKey { owner: owner.to_string(), field: format!("{field}_encrypted") })?;
            fernet::decrypt(key, t).map_err(|why| SecretError::Decrypt {
                owner: owner.to_string(),
                field: format!("{field}_encrypted"),
                key: ks.map(|k| k.file.display().to_string()).unwrap_or_default(),
                why,
            })?
        }
    };
    let reason = if value.is_empty() {
        Some("is empty")
    } else if field == "token" && value.len() > 4096 {
        Some("is longer than 4096 bytes")
    } else if field != "token" && value.len() > 255 {
        Some("is longer than 255 bytes (SOCKS5 and most proxies refuse that)")
    } else if value.contains(['\n', '\r', '\0']) {
        Some("contains a line break or NUL")
    } else {
        None
    };
    let source = match r {
        SecretRef::File(path) => format!("{field}_file {}", path.display()),
        SecretRef::Env(var) => format!("{field}_env {var}"),
        SecretRef::Encrypted(_) => format!("{field}_{}", r.kind()),
    };
    match reason {
        Some(reason) => Err(SecretError::Value { owner: owner.to_string(), field: source, reason: reason.into() }),
        None => Ok(Secret(value)),
    }
}

/// Reads a secret file (root-owned, 0600/0400, not a symlink).
pub fn read_checked(path: &Path) -> Result<String, String> {
    read_file(path)
}

/// The proxy service's bearer token or API key.
pub fn resolve_service_token(a: &Account, r: &SecretRef) -> Result<Secret, SecretError> {
    let key = match (&a.secrets_key, r) {
        (Some(k), SecretRef::Encrypted(_)) => Some(load_key(k)?),
        _ => None,
    };
    resolve_ref(r, key.as_ref(), a.secrets_key.as_ref(), "external_service", "token")
}

fn owner(p: &ProxyEntry) -> String {
    format!("proxy {}", p.display_name())
}

/// Every proxy's credentials, in policy order. Any failure stops the
/// account (fail closed): no proxy is ever used without its credentials.
pub fn resolve_account(a: &Account) -> Result<Vec<Option<Creds>>, SecretError> {
    let needs_key = a.proxies.iter().any(|p| {
        matches!(p.password, Some(SecretRef::Encrypted(_)))
            || matches!(p.username, Some(UserRef::Secret(SecretRef::Encrypted(_))))
    });
    let key = match (&a.secrets_key, needs_key) {
        (Some(k), true) => Some(load_key(k)?),
        _ => None,
    };
    let ks = a.secrets_key.as_ref();
    a.proxies
        .iter()
        .map(|p| {
            let user = match &p.username {
                None => return Ok(None),
                Some(UserRef::Plain(u)) => Secret(u.clone()),
                Some(UserRef::Secret(r)) => resolve_ref(r, key.as_ref(), ks, &owner(p), "username")?,
            };
            match &p.password {
                None => Ok(None),
                Some(r) => Ok(Some(Creds { user, pass: resolve_ref(r, key.as_ref(), ks, &owner(p), "password")? })),
            }
        })
        .collect()
}

/// The environment variables the account's credentials come from: read by
/// the daemon, scrubbed from every nsproxy process, never handed on.
pub fn env_vars(a: &Account) -> Vec<String> {
    let mut v = Vec::new();
    for p in &a.proxies {
        if let Some(SecretRef::Env(e)) = &p.password {
            v.push(e.clone());
        }
        if let Some(UserRef::Secret(SecretRef::Env(e))) = &p.username {
            v.push(e.clone());
        }
    }
    v.sort();
    v.dedup();
    v
}

/// `policy check` and `secret check`: every credential the daemon would
/// refuse, as problems naming the field (never a value). Environment
/// variables are checked only when `with_env` (they belong to the daemon,
/// not to whoever runs the check).
pub fn check_account(a: &Account, with_env: bool) -> Vec<Problem> {
    let mut out = Vec::new();
    // The lines of the fields, from the file as it is now (the account's
    // own line when a field is not found, e.g. a key_file given at the top).
    let index = fs::read_to_string(&a.origin.file).ok().map(|t| LineIndex::build(&t));
    let line_of = |rel: &[&str]| -> Option<usize> {
        let mut p = a.origin.path.clone();
        for seg in rel {
            p = match seg.strip_prefix('#').and_then(|n| n.parse().ok()) {
                Some(i) => p.index(i),
                None => p.key(seg),
            };
        }
        index.as_ref().and_then(|ix| ix.locate(&p)).or(a.origin.line)
    };
    let problem_at = |rel: &[&str], field: String, message: String| Problem {
        file: a.origin.file.clone(),
        line: line_of(rel),
        field,
        message,
        via: None,
    };
    let key = match &a.secrets_key {
        Some(k) => match load_key(k) {
            Ok(key) => Some(key),
            Err(e) => {
                out.push(problem_at(
                    &["secrets", "key_file"],
                    format!("account {}: secrets.key_file", a.name),
                    e.to_string(),
                ));
                None
            }
        },
        None => None,
    };
    // One credential: its problem, unless it cannot be checked here (an
    // environment variable without `with_env`, a token whose key failed
    // and was reported above).
    let check = |r: &SecretRef, owner: &str, field: &str| -> Option<String> {
        let skip = match r {
            SecretRef::Env(_) => !with_env,
            SecretRef::Encrypted(_) => key.is_none() && a.secrets_key.is_some(),
            SecretRef::File(_) => false,
        };
        if skip {
            return None;
        }
        resolve_ref(r, key.as_ref(), a.secrets_key.as_ref(), owner, field).err().map(|e| e.detail())
    };
    for (i, p) in a.proxies.iter().enumerate() {
        if let Some(f) = &p.ca_file
            && let Err(e) = fs::metadata(f)
        {
            let at = ["proxies", &format!("#{i}"), "ca_file"];
            let message = format!("{}: {}", f.display(), io_reason(&e));
            out.push(problem_at(&at, format!("account {}: proxies[{i}].ca_file", a.name), message));
        }
        let user = match &p.username {
            Some(UserRef::Secret(r)) => Some(("username", r)),
            _ => None,
        };
        let pass = p.password.as_ref().map(|r| ("password", r));
        for (field, r) in user.into_iter().chain(pass) {
            if let Some(detail) = check(r, &owner(p), field) {
                let key = format!("{field}_{}", r.kind());
                let at = ["proxies", &format!("#{i}"), key.as_str()];
                out.push(problem_at(&at, format!("account {}: proxies[{i}].{key}", a.name), detail));
            }
        }
    }
    if let Some(svc) = &a.external_service {
        let field = |f: &str| format!("account {}: external_service.{f}", a.name);
        let problem = |f: &str, message: String| problem_at(&["external_service", f], field(f), message);
        match &svc.auth {
            ServiceAuth::BearerToken(r) | ServiceAuth::ApiKey(r) => {
                if let Some(detail) = check(r, "external_service", "token") {
                    out.push(problem(&format!("token_{}", r.kind()), detail));
                }
            }
            ServiceAuth::MutualTls { cert_file, key_file } => {
                if let Err(reason) = check_file(key_file) {
                    out.push(problem("client_key_file", format!("{}: {reason}", key_file.display())));
                }
                if let Err(e) = fs::metadata(cert_file) {
                    out.push(problem("client_cert_file", format!("{}: {}", cert_file.display(), io_reason(&e))));
                }
            }
        }
        if let Err(e) = fs::metadata(&svc.ca_file) {
            out.push(problem("ca_file", format!("{}: {}", svc.ca_file.display(), io_reason(&e))));
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
