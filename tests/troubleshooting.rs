//! docs/troubleshooting.md lists every error message of the code: each
//! `#[error("...")]` template and each `bail!`/`anyhow!` message literal in
//! src/ must appear in it verbatim. No root.

use std::path::Path;

fn messages(dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).expect("src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            messages(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&p).expect("read");
            // Unit tests are not messages nsproxy prints.
            let text = text.split("#[cfg(test)]").next().unwrap_or("");
            for marker in ["#[error(\"", "bail!(\"", "anyhow!(\""] {
                for (i, _) in text.match_indices(marker) {
                    let rest = &text[i + marker.len()..];
                    let mut msg = String::new();
                    let mut chars = rest.chars();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some(n) = chars.next() {
                                    msg.push('\\');
                                    msg.push(n);
                                }
                            }
                            '"' => break,
                            c => msg.push(c),
                        }
                    }
                    out.push((p.display().to_string(), msg));
                }
            }
        }
    }
}

#[test]
fn every_error_message_is_in_the_troubleshooting_page() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/troubleshooting.md")).expect("docs/troubleshooting.md");
    let mut all = Vec::new();
    messages(&root.join("src"), &mut all);
    assert!(all.len() > 40, "found only {} messages: the scan is broken", all.len());
    let missing: Vec<String> = all
        .iter()
        .filter(|(_, m)| m.len() > 3 && m.as_str() != "{0}" && !doc.contains(m.as_str()))
        .map(|(f, m)| format!("{f}: {m}"))
        .collect();
    println!("{} messages in src/, {} not in docs/troubleshooting.md", all.len(), missing.len());
    assert!(missing.is_empty(), "messages missing from docs/troubleshooting.md:\n{}", missing.join("\n"));
}
