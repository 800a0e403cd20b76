//! The source layout of docs/architecture.md, enforced: each room of src/
//! imports only rooms below it (never back up), and no file grows past 600
//! lines. No root.

use std::path::{Path, PathBuf};

/// Rooms, lowest first (same rank: neither imports the other).
const RANKS: &[(&str, u32)] = &[
    ("published", 0),
    ("rules", 0),
    ("secrets::fernet", 0),
    ("proxy::verdict", 0),
    ("cli", 1),
    ("manual", 0),
    ("cni", 0),
    ("config", 1),
    ("secrets", 2),
    ("proxy", 3),
    ("fleet", 4),
    ("host", 3),
    ("dns", 4),
    ("pool", 5),
    ("dataplane", 6),
    ("metrics", 6),
    ("daemon", 7),
    ("commands", 8),
];

/// The rank of a module path such as `pool::handle` (the longest entry of
/// `RANKS` that is a prefix of it).
fn rank(path: &str) -> Option<(&'static str, u32)> {
    RANKS
        .iter()
        .filter(|(room, _)| path == *room || path.starts_with(&format!("{room}::")))
        .max_by_key(|(room, _)| room.len())
        .copied()
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/pool/handle.rs` -> `pool::handle`; `src/dns/mod.rs` -> `dns`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src").with_extension("");
    let parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).filter(|c| c != "mod").collect();
    parts.join("::")
}

#[test]
fn rooms_import_only_rooms_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for f in &all {
        let module = module_of(&src, f);
        if module == "main" || module == "lib" {
            continue;
        }
        let Some((room, r)) = rank(&module) else {
            wrong.push(format!("{}: module {module} has no room in RANKS (add it)", f.display()));
            continue;
        };
        let text = std::fs::read_to_string(f).expect("read");
        // Code only: comments may name any module.
        let code: String = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            let path = path.trim_end_matches(':');
            if path.is_empty() {
                wrong
                    .push(format!("{}: `crate::{{...}}` hides which rooms it imports: one path per room", f.display()));
                continue;
            }
            let Some((to, tr)) = rank(path) else { continue };
            checked += 1;
            if to != room && !to.starts_with(&format!("{room}::")) && !room.starts_with(&format!("{to}::")) && tr >= r {
                wrong.push(format!("{}: {room} (rank {r}) imports crate::{path} ({to}, rank {tr})", f.display()));
            }
        }
    }
    println!("{checked} crate:: paths checked in {} files", all.len());
    assert!(checked > 100, "the scan found almost nothing: {checked}");
    assert!(wrong.is_empty(), "imports against the layering:\n{}", wrong.join("\n"));
}

#[test]
fn no_source_file_is_over_600_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let long: Vec<String> = all
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).expect("read").lines().count();
            (n > 600).then(|| format!("{}: {n} lines", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these:\n{}", long.join("\n"));
}

#[test]
fn the_rank_table_reads_as_intended() {
    assert_eq!(rank("pool::handle"), Some(("pool", 5)));
    assert_eq!(rank("secrets::fernet::token_shape"), Some(("secrets::fernet", 0)));
    assert_eq!(rank("secrets"), Some(("secrets", 2)));
    assert_eq!(rank("poolside"), None);
}
