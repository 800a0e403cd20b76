//! Where credentials come from: files, variables, encrypted values and
//! their key.

use super::*;

pub(super) fn env_name_ok(e: &str) -> bool {
    !e.is_empty()
        && e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !e.starts_with(|c: char| c.is_ascii_digit())
}

/// `<what>_file`, `<what>_env` or `<what>_encrypted`: at most one. `Err`
/// when a problem was reported.
pub(super) fn secret_ref(ctx: &mut Ctx, m: &Mapping, path: &FieldPath, what: &str) -> Result<Option<SecretRef>, ()> {
    let (kf, ke, kx) = (format!("{what}_file"), format!("{what}_env"), format!("{what}_encrypted"));
    let given: Vec<&String> = [&kf, &ke, &kx].into_iter().filter(|k| m.contains_key(k.as_str())).collect();
    if given.len() > 1 {
        let names: Vec<&str> = given.iter().map(|s| s.as_str()).collect();
        ctx.problem(path, format!("give one of {kf}, {ke} or {kx}, not {}", names.join(" and ")));
        return Err(());
    }
    if m.contains_key(kf.as_str()) {
        let f: PathBuf = ctx.get(m, &kf, path, "an absolute file path").ok_or(())?;
        if !f.is_absolute() {
            ctx.problem(&path.key(&kf), format!("expected an absolute path, got {:?}", f.display()));
            return Err(());
        }
        return Ok(Some(SecretRef::File(f)));
    }
    if m.contains_key(ke.as_str()) {
        let e: String = ctx.get(m, &ke, path, "an environment variable name").ok_or(())?;
        if !env_name_ok(&e) {
            ctx.problem(&path.key(&ke), format!("invalid environment variable name {e:?}"));
            return Err(());
        }
        if e.starts_with("NSPROXY_") {
            ctx.problem(&path.key(&ke), format!("{e}: NSPROXY_ variables are policy overrides; pick another name"));
            return Err(());
        }
        return Ok(Some(SecretRef::Env(e)));
    }
    if m.contains_key(kx.as_str()) {
        let t: String = ctx.get(m, &kx, path, "a Fernet token (gAAAAA...)").ok_or(())?;
        let t = t.trim().to_string();
        if let Err(e) = crate::secrets::fernet::token_shape(&t) {
            ctx.problem(&path.key(&kx), format!("not a Fernet token: {e}"));
            return Err(());
        }
        return Ok(Some(SecretRef::Encrypted(Token(t))));
    }
    Ok(None)
}

/// `secrets: {key_file, key_name}`: where the Fernet key is.
pub(super) fn key_source(ctx: &mut Ctx, v: &Value, path: &FieldPath) -> Option<KeySource> {
    let m = ctx.mapping(v, path, &["key_file", "key_name"])?;
    let file: PathBuf = ctx.require(m, "key_file", path, "the absolute path of the Fernet key file")?;
    if !file.is_absolute() {
        ctx.problem(&path.key("key_file"), format!("expected an absolute path, got {:?}", file.display()));
        return None;
    }
    let name: Option<String> = match ctx.get::<String>(m, "key_name", path, "a variable name in the key file") {
        Some(n) if !env_name_ok(&n) => {
            ctx.problem(&path.key("key_name"), format!("invalid variable name {n:?}"));
            return None;
        }
        Some(n) => Some(n),
        None if m.contains_key("key_name") => return None,
        None => None,
    };
    Some(KeySource { file, name })
}
