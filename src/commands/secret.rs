//! `nsproxy secret new-key | encrypt | check`: Fernet keys and tokens for
//! the `*_encrypted` credential fields. Plaintext is read from stdin only,
//! never from the command line (argv is visible to every local user).

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};

use crate::config::{self, KeySource};
use crate::secrets::{self, fernet};

/// Loads a key file for the command-line tools: the same checks as the
/// daemon's, except that the file may also belong to the user running the
/// tool (an operator preparing tokens with their own copy of the key).
fn load_key(path: &Path, name: Option<&str>) -> anyhow::Result<fernet::Key> {
    let ks = KeySource { file: path.to_path_buf(), name: name.map(str::to_string) };
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("key file {}", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if me != 0 && meta.uid() == me && !meta.file_type().is_symlink() && meta.mode() & 0o077 == 0 {
        let text = std::fs::read_to_string(path).with_context(|| format!("key file {}", path.display()))?;
        return fernet::parse_key_file(&text, name).map_err(|e| anyhow!("key file {}: {e}", path.display()));
    }
    Ok(secrets::load_key(&ks)?)
}

/// One line from stdin; with a terminal, asked for without echo.
fn read_value(prompt: &str) -> anyhow::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let saved = if tty {
        eprint!("{prompt}: ");
        let _ = std::io::stderr().flush();
        let t = tcgetattr(&stdin).context("terminal")?;
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("terminal")?;
        Some(t)
    } else {
        None
    };
    let mut line = String::new();
    let res = read_line_capped(stdin.lock(), &mut line);
    if let Some(t) = saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &t);
        eprintln!();
    }
    res?;
    let v = line.strip_suffix('\n').unwrap_or(&line);
    let v = v.strip_suffix('\r').unwrap_or(v);
    if v.is_empty() {
        bail!("nothing to encrypt: stdin was empty");
    }
    Ok(v.to_string())
}

/// One line of at most 4 KiB: a credential, not a file.
fn read_line_capped(r: impl BufRead, out: &mut String) -> anyhow::Result<()> {
    let mut limited = std::io::Read::take(r, 4097);
    limited.read_line(out).context("reading stdin")?;
    if out.len() > 4096 {
        bail!("the value on stdin is longer than 4096 bytes");
    }
    Ok(())
}

/// Writes a new random key to `path` (mode 0600, refused if it exists).
pub fn new_key(path: &Path) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot create key file {} (it must not exist yet)", path.display()))?;
    writeln!(f, "{}", fernet::generate_key()).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot write {}", path.display()))?;
    println!("new Fernet key written to {} (mode 0600); point secrets.key_file at it", path.display());
    Ok(())
}

/// Encrypts one value read from stdin and prints the token.
pub fn encrypt(key_file: &Path, key_name: Option<&str>) -> anyhow::Result<()> {
    let key = load_key(key_file, key_name)?;
    let value = read_value("value to encrypt (not echoed)")?;
    println!("{}", fernet::encrypt(&key, &value));
    Ok(())
}

/// With `key_file`: checks tokens read from stdin, one per line. Without:
/// resolves every credential of the policy's accounts (or of `account`)
/// the way the daemon would, reporting fields, never values.
pub fn check(
    policies: &config::Policy,
    account: Option<&str>,
    key_file: Option<&Path>,
    key_name: Option<&str>,
) -> ExitCode {
    match check_inner(policies, account, key_file, key_name) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(crate::cli::exit::POLICY),
        Err(e) => {
            eprintln!("nsproxy: {e:#}");
            ExitCode::from(super::exit_status(&e))
        }
    }
}

fn check_inner(
    policies: &config::Policy,
    account: Option<&str>,
    key_file: Option<&Path>,
    key_name: Option<&str>,
) -> anyhow::Result<bool> {
    if let Some(kf) = key_file {
        let key = load_key(kf, key_name)?;
        let (mut n, mut bad) = (0, 0);
        for (i, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line.context("reading stdin")?;
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            n += 1;
            match fernet::decrypt(&key, t) {
                Ok(_) => println!("line {}: OK", i + 1),
                Err(e) => {
                    bad += 1;
                    println!("line {}: FAILED: {e}", i + 1);
                }
            }
        }
        if n == 0 {
            bail!("no token on stdin");
        }
        println!("{} token(s), {} failed", n, bad);
        return Ok(bad == 0);
    }
    let chosen = policies.select(account)?;
    let mut ok = true;
    for a in &chosen {
        let problems = secrets::check_account(a, true);
        let n = a.proxies.iter().filter(|p| p.password.is_some()).count();
        if problems.is_empty() {
            println!("account {}: OK, {n} proxy credential(s) resolve", a.name);
        } else {
            ok = false;
            for p in problems {
                println!("account {}: FAILED: {}", a.name, p.message);
            }
        }
    }
    Ok(ok)
}
