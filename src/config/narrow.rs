//! One account out of a big policy file without parsing the others: the
//! text of every other entry of the top-level `accounts:` list is replaced
//! by blank lines, so the YAML parser and the line index see one account
//! instead of a thousand while every line number stays the file's own; the
//! list indexes of the entries left are recorded, so that errors and an
//! account's origin name the file's own index. Pure text work; `None`
//! whenever the file is not in the plain block layout this understands
//! (the caller then parses it whole, as before).

use super::lines::{FieldPath, Seg};

/// A narrowed text and where its entries stand in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Narrowed {
    pub text: String,
    /// The file's index of each entry left in `text`, in order.
    pub entries: Vec<usize>,
}

/// `path` (into the narrowed text) with the file's index of its account.
pub fn in_file(path: &FieldPath, entries: &[usize]) -> FieldPath {
    let mut p = path.clone();
    if let [Seg::Key(k), Seg::Index(i), ..] = p.0.as_mut_slice()
        && k == "accounts"
        && let Some(f) = entries.get(*i)
    {
        *i = *f;
    }
    p
}

/// Name characters (account names are `[a-z0-9_-]`; upper case counts so
/// that `Acct-1` is not taken for `acct-1`'s neighbour).
fn name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// Where `name` appears in `text` as a whole token (byte offsets, rising).
fn mentions_at(text: &str, name: &str) -> Vec<usize> {
    let (t, n) = (text.as_bytes(), name.len());
    text.match_indices(name)
        .map(|(i, _)| i)
        .filter(|&i| (i == 0 || !name_char(t[i - 1])) && (i + n >= t.len() || !name_char(t[i + n])))
        .collect()
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Blank or comment-only.
fn empty(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// The line without its terminator, and the terminator.
fn split_eol(line: &str) -> (&str, &str) {
    let body = line.trim_end_matches(['\n', '\r']);
    (body, &line[body.len()..])
}

/// `text` with every `accounts:` entry that does not mention `name` made
/// blank (when none does, the last becomes `- {}`: an empty list would be
/// an error of its own); None when the layout is not one this handles.
pub fn only_account(text: &str, name: &str) -> Option<Narrowed> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let bodies: Vec<&str> = lines.iter().map(|l| split_eol(l).0).collect();
    // Directives, several documents, tabs: leave them to the parser.
    let mut seen_content = false;
    for b in &bodies {
        if b.starts_with('\t') || b.starts_with("...") || b.starts_with('%') {
            return None;
        }
        if b.starts_with("---") && seen_content {
            return None;
        }
        if !empty(b) {
            seen_content = true;
        }
    }
    let start = bodies.iter().position(|b| {
        b.strip_prefix("accounts:").is_some_and(|rest| {
            let r = rest.trim_start();
            r.is_empty() || r.starts_with('#')
        })
    })?;
    // Items: from the first content line after `accounts:` to the first
    // line indented less than it (or at column 0 that is not a `- ` item
    // when the list itself is at column 0).
    let first = (start + 1..lines.len()).find(|&i| !empty(bodies[i]))?;
    let item_indent = indent(bodies[first]);
    let is_item =
        |b: &str| indent(b) == item_indent && (b[item_indent..] == *"-" || b[item_indent..].starts_with("- "));
    if !is_item(bodies[first]) {
        return None;
    }
    let mut end = lines.len();
    for (i, b) in bodies.iter().enumerate().skip(first) {
        if empty(b) {
            continue;
        }
        if indent(b) < item_indent || (indent(b) == item_indent && !is_item(b)) {
            end = i;
            break;
        }
    }
    // Byte offset of each line in `text` (the lines are slices of it).
    let offset = |i: usize| lines.get(i).map_or(text.len(), |l| l.as_ptr() as usize - text.as_ptr() as usize);
    let hits = mentions_at(text, name);
    // Entry boundaries within [first, end).
    let starts: Vec<usize> = (first..end).filter(|&i| is_item(bodies[i])).collect();
    let mut out = String::with_capacity(text.len());
    lines[..first].iter().for_each(|l| out.push_str(l));
    let mut entries = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let e = starts.get(k + 1).copied().unwrap_or(end);
        let (from, to) = (offset(s), offset(e));
        let keep = hits.iter().any(|&h| (from..to).contains(&h));
        if keep {
            lines[s..e].iter().for_each(|l| out.push_str(l));
            entries.push(k);
            continue;
        }
        let mut rest = &lines[s..e];
        if k + 1 == starts.len() && entries.is_empty() {
            out.push_str(&" ".repeat(item_indent));
            out.push_str("- {}");
            out.push_str(split_eol(lines[s]).1);
            rest = &rest[1..];
            entries.push(k);
        }
        rest.iter().for_each(|l| out.push_str(split_eol(l).1));
    }
    lines[end..].iter().for_each(|l| out.push_str(l));
    Some(Narrowed { text: out, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# fleet\nsecrets: {key_env: K}\naccounts:\n  - name: a-1\n    proxies:\n      - {label: p, url: 'socks5://h:1'}\n\n  # the second\n  - name: a-10\n    proxies:\n      - label: q\n        url: |\n          socks5://h:2\n  - name: a-1x\n    namespace: ns-a-1\nextra: 1\n";

    fn mentions(text: &str, name: &str) -> bool {
        !mentions_at(text, name).is_empty()
    }

    #[test]
    fn other_entries_go_blank_and_lines_stay() {
        let n = only_account(FILE, "a-10").expect("handled");
        assert_eq!(n.text.lines().count(), FILE.lines().count(), "{}", n.text);
        let want = "# fleet\nsecrets: {key_env: K}\naccounts:\n\n\n\n\n\n  - name: a-10\n    proxies:\n      - label: q\n        url: |\n          socks5://h:2\n\n\nextra: 1\n";
        assert_eq!(n.text, want);
        assert_eq!(n.entries, vec![1], "a-10 is the file's second entry");
        // Parsed, the chosen entry is alone and everything else at the
        // top level survives.
        let v: serde_yaml::Value = serde_yaml::from_str(&n.text).expect("yaml");
        assert_eq!(v["accounts"][0]["name"].as_str(), Some("a-10"));
        assert_eq!(v["accounts"].as_sequence().map(Vec::len), Some(1));
        assert_eq!(v["extra"].as_u64(), Some(1));
        assert_eq!(v["secrets"]["key_env"].as_str(), Some("K"));
    }

    #[test]
    fn paths_into_the_narrowed_text_get_the_file_index() {
        let p = FieldPath::default().key("accounts").index(0).key("proxies").index(0);
        assert_eq!(in_file(&p, &[1]).to_string(), "accounts[1].proxies[0]");
        assert_eq!(in_file(&p, &[]).to_string(), "accounts[0].proxies[0]", "the file's own text");
        let secrets = FieldPath::default().key("secrets").key("key_env");
        assert_eq!(in_file(&secrets, &[7]), secrets, "not an account's");
    }

    #[test]
    fn a_name_mentioned_nowhere_leaves_one_placeholder() {
        let n = only_account(FILE, "zz").expect("handled");
        assert_eq!(n.entries, vec![2]);
        assert_eq!(n.text.lines().count(), FILE.lines().count());
        let v: serde_yaml::Value = serde_yaml::from_str(&n.text).expect("yaml");
        assert_eq!(v["accounts"].as_sequence().map(Vec::len), Some(1));
        assert!(v["accounts"][0]["name"].is_null(), "{}", n.text);
    }

    #[test]
    fn a_name_counts_as_a_whole_token_only() {
        let n = only_account(FILE, "a-1").expect("handled");
        // a-1's own entry only: neither "a-10" nor "ns-a-1" is the token
        // "a-1" ('-' is a name character).
        assert_eq!(n.entries, vec![0], "{}", n.text);
        let v: serde_yaml::Value = serde_yaml::from_str(&n.text).expect("yaml");
        assert_eq!(v["accounts"][0]["name"].as_str(), Some("a-1"));
        assert_eq!(v["accounts"].as_sequence().map(Vec::len), Some(1), "{}", n.text);
        assert!(mentions("x: 'a-1'", "a-1") && mentions("a-1", "a-1") && !mentions("a-10", "a-1"));
        assert!(!mentions("ns-a-1", "a-1") && !mentions("a-1_b", "a-1") && mentions("a-1.x", "a-1"));
    }

    #[test]
    fn a_list_at_column_zero_and_crlf() {
        let text = "accounts:\r\n- name: b\r\n  proxies: []\r\n- name: c\r\n  proxies: []\r\n";
        let n = only_account(text, "c").expect("handled");
        assert_eq!(n.text, "accounts:\r\n\r\n\r\n- name: c\r\n  proxies: []\r\n");
        assert_eq!(n.entries, vec![1]);
    }

    #[test]
    fn layouts_it_does_not_know_are_left_to_the_parser() {
        for text in [
            "accounts: [{name: a}]\n",
            "accounts:\n\t- name: a\n",
            "accounts:\n  name: a\n",
            "a: 1\n---\naccounts:\n  - name: a\n",
            "%YAML 1.2\n---\naccounts:\n  - name: a\n",
            "secrets: {}\n",
            "accounts:\n",
        ] {
            assert_eq!(only_account(text, "a"), None, "{text:?}");
        }
        // A leading document marker is fine.
        assert!(only_account("---\naccounts:\n  - name: a\n", "a").is_some());
    }
}
