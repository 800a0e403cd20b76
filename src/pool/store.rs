//! The pool state on disk: `/var/lib/nsproxy/<account>/pool.json`, written
//! atomically (temporary file, fsync, rename) after every change, so burns
//! survive daemon restarts and reboots. A corrupt file stops the daemon from
//! starting: guessing could hand flows to a burned proxy.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::state::Record;
use crate::host::Paths;
use crate::host::rundir::{RunDirError, ensure_dir, write_atomic};

const VERSION: u32 = 1;
const MAX_SIZE: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub version: u32,
    pub account: String,
    pub proxies: Vec<Record>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read pool state {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "pool state {path} is corrupt: {reason}. It records burned proxies, so nsproxy will not guess: fix it, or delete it to forget every burn and start the pool afresh"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Write(#[from] RunDirError),
}

/// Parses a state file's bytes for `account`.
pub fn parse(path: &Path, account: &str, bytes: &[u8]) -> Result<Vec<Record>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { path: path.into(), reason };
    if bytes.len() > MAX_SIZE {
        return Err(corrupt(format!("larger than {MAX_SIZE} bytes")));
    }
    let f: File = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if f.version != VERSION {
        return Err(corrupt(format!("version {} (this nsproxy reads version {VERSION})", f.version)));
    }
    if f.account != account {
        return Err(corrupt(format!("it belongs to account {:?}", f.account)));
    }
    for (i, r) in f.proxies.iter().enumerate() {
        if f.proxies[..i].iter().any(|q| q.label == r.label) {
            return Err(corrupt(format!("proxy {:?} appears twice", r.label)));
        }
    }
    Ok(f.proxies)
}

pub fn render(account: &str, records: &[Record]) -> Vec<u8> {
    let f = File { version: VERSION, account: account.into(), proxies: records.to_vec() };
    serde_json::to_vec_pretty(&f).unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct Store {
    pub account: String,
    pub dir: PathBuf,
    root: PathBuf,
}

impl Store {
    pub fn new(paths: &Paths, account: &str) -> Store {
        Store { account: account.into(), dir: paths.state_dir(account), root: paths.state_root.clone() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("pool.json")
    }

    /// The saved records; none saved yet is an empty list.
    /// A planted symlink (the directory or the file) is refused, never
    /// followed.
    pub fn load(&self) -> Result<Vec<Record>, StoreError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path();
        if std::fs::symlink_metadata(&self.dir).is_ok() {
            ensure_dir(&self.dir, 0o700)?;
        }
        let opened = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path);
        let mut f = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(StoreError::Corrupt {
                    path,
                    reason: "it is a symlink, which nsproxy never follows".into(),
                });
            }
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let mut b = Vec::new();
        f.by_ref()
            .take(MAX_SIZE as u64 + 1)
            .read_to_end(&mut b)
            .map_err(|source| StoreError::Read { path: path.clone(), source })?;
        parse(&path, &self.account, &b)
    }

    pub fn save(&self, records: &[Record]) -> Result<(), StoreError> {
        ensure_dir(&self.root, 0o755)?;
        ensure_dir(&self.dir, 0o700)?;
        write_atomic(&self.path(), &render(&self.account, records), 0o600)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::State;

    fn rec(label: &str, state: State) -> Record {
        Record {
            label: label.into(),
            state,
            burned_until: None,
            last_checked_at: Some(5),
            last_error: Some("x".into()),
            consecutive_failures: 2,
            last_egress_ip: Some("192.0.2.4".parse().unwrap()),
            last_egress_at: Some(6),
            burn_reason: None,
        }
    }

    #[test]
    fn round_trip() {
        let recs = vec![rec("a", State::Active), Record { burned_until: Some(99), ..rec("b", State::Burned) }];
        let bytes = render("acct", &recs);
        assert_eq!(parse(Path::new("p"), "acct", &bytes).unwrap(), recs);
    }

    #[test]
    fn corrupt_files_are_refused_with_the_reason() {
        let p = Path::new("/var/lib/nsproxy/acct/pool.json");
        let good = String::from_utf8(render("acct", &[rec("a", State::Burned)])).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "EOF"),
            (good[..good.len() / 2].to_string(), "EOF"),
            (good.replace("\"burned\"", "\"scorched\""), "unknown variant"),
            (good.replace("\"version\": 1", "\"version\": 7"), "version 7"),
            (good.replace("\"acct\"", "\"other\""), "belongs to account \"other\""),
            (good.replace("\"label\"", "\"lable\""), "unknown field"),
            (good.replace("\"consecutive_failures\": 2", "\"consecutive_failures\": -1"), "invalid value"),
            ("\0\u{1}garbage".into(), "expected value"),
            ("x".repeat(MAX_SIZE + 1), "larger than"),
        ];
        for (text, want) in cases {
            let e = parse(p, "acct", text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("pool.json") && e.contains("delete it"), "{want}: {e}");
        }
        let twice = good.replace("\"proxies\": [", "\"proxies\": [{\"label\": \"a\", \"state\": \"standby\"},");
        assert!(parse(p, "acct", twice.as_bytes()).unwrap_err().to_string().contains("appears twice"));
    }
}
