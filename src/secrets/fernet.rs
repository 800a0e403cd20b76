//! Fernet tokens (the format of Python's `cryptography.fernet`), so values
//! encrypted by the existing Python tooling can be pasted into a policy as
//! they are. Pure: key text in, bytes out; reading the key file is the
//! caller's business.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;

/// A Fernet key, parsed. Its `Debug` never shows the key.
pub struct Key(fernet::Fernet);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is empty")]
    Empty,
    #[error("does not hold a Fernet key (32 bytes, URL-safe base64, as made by Fernet.generate_key())")]
    NotAKey,
    #[error("has no variable {0} (names there: {1})")]
    NoSuchName(String, String),
    #[error("variable {0} is not a Fernet key (32 bytes, URL-safe base64)")]
    NamedNotAKey(String),
    #[error("holds several Fernet keys ({0}); pick one with secrets.key_name")]
    Ambiguous(String),
}

/// Parses the text of a key file: the key alone on a line, or `.env` lines
/// (`NAME=value`, optional `export ` and quotes, `#` comments) with the key
/// under `name`, or the only value that is a Fernet key when no name is
/// given. Errors name variables, never values.
pub fn parse_key_file(text: &str, name: Option<&str>) -> Result<Key, KeyError> {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    if lines.is_empty() {
        return Err(KeyError::Empty);
    }
    if name.is_none()
        && lines.len() == 1
        && let Some(k) = key(lines[0])
    {
        return Ok(k);
    }
    let pairs: Vec<(&str, &str)> = lines
        .iter()
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim(), v))
        })
        .collect();
    match name {
        Some(n) => {
            let (_, v) = pairs.iter().find(|(k, _)| *k == n).ok_or_else(|| {
                KeyError::NoSuchName(n.into(), pairs.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "))
            })?;
            key(v).ok_or_else(|| KeyError::NamedNotAKey(n.into()))
        }
        None => {
            let keys: Vec<(&str, Key)> = pairs.iter().filter_map(|(k, v)| Some((*k, key(v)?))).collect();
            match keys.len() {
                0 => Err(KeyError::NotAKey),
                1 => keys.into_iter().next().map(|(_, k)| k).ok_or(KeyError::NotAKey),
                _ => Err(KeyError::Ambiguous(keys.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))),
            }
        }
    }
}

fn key(text: &str) -> Option<Key> {
    // Python writes keys with padding; accept them without it too.
    let padded = match text.len() % 4 {
        2 => format!("{text}=="),
        3 => format!("{text}="),
        _ => text.to_string(),
    };
    fernet::Fernet::new(&padded).map(Key)
}

/// A new random key, as `Fernet.generate_key()` makes it.
pub fn generate_key() -> String {
    fernet::Fernet::generate_key()
}

/// Checks the shape of a token without a key: URL-safe base64, version
/// byte 0x80, timestamp, IV, whole AES blocks and an HMAC.
pub fn token_shape(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("empty".into());
    }
    if token.len() > 8192 {
        return Err(format!("{} characters, more than the 8192 a credential needs", token.len()));
    }
    let raw = URL_SAFE.decode(token.as_bytes()).map_err(|_| "not URL-safe base64".to_string())?;
    if raw.first() != Some(&0x80) {
        return Err("wrong version byte (a Fernet token starts with gAAAAA)".into());
    }
    // version 1 + timestamp 8 + IV 16 + ciphertext (n x 16, n >= 1) + HMAC 32
    if raw.len() < 1 + 8 + 16 + 16 + 32 || (raw.len() - 57) % 16 != 0 {
        return Err("truncated or padded wrongly".into());
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("not a Fernet token: {0}")]
    Shape(String),
    #[error("does not decrypt with this key: wrong key, or the token was altered")]
    Rejected,
    #[error("decrypts, but not to UTF-8 text")]
    NotText,
}

/// Decrypts a token. No time limit: a stored credential does not expire,
/// and a token stamped in the future (clock skew between hosts) is fine.
pub fn decrypt(key: &Key, token: &str) -> Result<String, DecryptError> {
    token_shape(token).map_err(DecryptError::Shape)?;
    let bytes = key.0.decrypt_at_time(token, None, u64::MAX / 2).map_err(|_| DecryptError::Rejected)?;
    String::from_utf8(bytes).map_err(|_| DecryptError::NotText)
}

pub fn encrypt(key: &Key, plaintext: &str) -> String {
    key.0.encrypt(plaintext.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "Vd3sdV8K1WMVj2jZ0OmBTAhZ1MOgpxgWVJL8Z9N7aEU=";
    /// Made by Python's cryptography 48.0.0: `Fernet(KEY).encrypt(b"s3cret-pw")`.
    const PY_TOKEN: &str =
        "gAAAAABrBHBA83X4yRW12qUHRD91Dpp7PNF7CpQj1_9eNvPUQlG76gY5KUi4Ug_NxNOYD9buRP5zyqV9ujWHsblvMs3z_k6fcQ==";

    fn k() -> Key {
        parse_key_file(KEY, None).expect("key")
    }

    #[test]
    fn python_token_decrypts() {
        assert_eq!(decrypt(&k(), PY_TOKEN), Ok("s3cret-pw".to_string()));
    }

    #[test]
    fn round_trip_and_tamper() {
        let t = encrypt(&k(), "hunter2");
        assert!(t.starts_with("gAAAAA"));
        assert_eq!(decrypt(&k(), &t), Ok("hunter2".to_string()));
        // Flip one character in the middle of the ciphertext.
        let mut b = t.into_bytes();
        let i = b.len() / 2;
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let t2 = String::from_utf8(b).expect("ascii");
        assert_eq!(decrypt(&k(), &t2), Err(DecryptError::Rejected));
        let other = parse_key_file(&generate_key(), None).expect("key");
        assert_eq!(decrypt(&other, &encrypt(&k(), "x")), Err(DecryptError::Rejected));
    }

    #[test]
    fn shapes() {
        assert!(token_shape("gAAAA").is_err());
        assert!(token_shape("not base64 !!").is_err());
        assert_eq!(decrypt(&k(), ""), Err(DecryptError::Shape("empty".into())));
        let t = encrypt(&k(), "x");
        assert!(token_shape(&t).is_ok());
        assert!(token_shape(&t[..t.len() - 8]).is_err());
    }

    #[test]
    fn key_files() {
        assert!(parse_key_file("\n# only a comment\n", None).is_err());
        assert!(parse_key_file(&format!("{KEY}\n"), None).is_ok());
        assert!(parse_key_file(KEY.trim_end_matches('='), None).is_ok(), "unpadded key");
        assert_eq!(parse_key_file("short", None).unwrap_err(), KeyError::NotAKey);
        let env = format!("# bot settings\nAPI_URL=https://x\nexport FERNET_KEY=\"{KEY}\"\nDEBUG=1\n");
        assert!(parse_key_file(&env, None).is_ok(), "the only key in a .env");
        assert!(parse_key_file(&env, Some("FERNET_KEY")).is_ok());
        assert_eq!(parse_key_file(&env, Some("DEBUG")).unwrap_err(), KeyError::NamedNotAKey("DEBUG".into()));
        let e = parse_key_file(&env, Some("NOPE")).unwrap_err();
        assert_eq!(e.to_string(), "has no variable NOPE (names there: API_URL, FERNET_KEY, DEBUG)");
        let two = format!("A={KEY}\nB='{}'\n", generate_key());
        assert_eq!(parse_key_file(&two, None).unwrap_err(), KeyError::Ambiguous("A, B".into()));
        assert!(!format!("{:?}", k()).contains(&KEY[..10]));
    }
}
