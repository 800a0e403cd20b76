//! One account out of a big policy file without parsing the others: the
//! text of every other entry of the top-level `accounts:` list is replaced
//! by `- {}` and blank lines, so the YAML parser builds one account's tree
//! instead of a thousand, while every line number and every list index in
//! an error stays the file's own. Pure text work; `None` whenever the file
//! is not in the plain block layout this understands (the caller then
//! parses it whole, as before).

/// Name characters (account names are `[a-z0-9_-]`; upper case counts so
/// that `Acct-1` is not taken for `acct-1`'s neighbour).
fn name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// `name` appears in `text` as a whole token.
fn mentions(text: &str, name: &str) -> bool {
    let (t, n) = (text.as_bytes(), name.len());
    text.match_indices(name).any(|(i, _)| {
        let before = i == 0 || !name_char(t[i - 1]);
        let after = i + n >= t.len() || !name_char(t[i + n]);
        before && after
    })
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

/// `text` with every `accounts:` entry that does not mention `name`
/// reduced to `- {}`; None when the layout is not one this handles.
pub fn only_account(text: &str, name: &str) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    // Directives, several documents, tabs: leave them to the parser.
    let mut seen_content = false;
    for l in &lines {
        let (b, _) = split_eol(l);
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
    let start = lines.iter().position(|l| {
        let b = split_eol(l).0;
        b.strip_prefix("accounts:").is_some_and(|rest| {
            let r = rest.trim_start();
            r.is_empty() || r.starts_with('#')
        })
    })?;
    // Items: from the first content line after `accounts:` to the first
    // line indented less than it (or at column 0 that is not a `- ` item
    // when the list itself is at column 0).
    let first = (start + 1..lines.len()).find(|&i| !empty(split_eol(lines[i]).0))?;
    let item_indent = indent(lines[first]);
    let is_item =
        |b: &str| indent(b) == item_indent && (b[item_indent..] == *"-" || b[item_indent..].starts_with("- "));
    if !is_item(split_eol(lines[first]).0) {
        return None;
    }
    let mut end = lines.len();
    for (i, l) in lines.iter().enumerate().skip(first) {
        let b = split_eol(l).0;
        if empty(b) {
            continue;
        }
        if indent(b) < item_indent || (indent(b) == item_indent && !is_item(b)) {
            end = i;
            break;
        }
    }
    // Entry boundaries within [first, end).
    let starts: Vec<usize> = (first..end).filter(|&i| is_item(split_eol(lines[i]).0)).collect();
    let mut out = String::with_capacity(text.len());
    for l in &lines[..first] {
        out.push_str(l);
    }
    for (k, &s) in starts.iter().enumerate() {
        let e = starts.get(k + 1).copied().unwrap_or(end);
        let entry = &lines[s..e];
        if entry.iter().any(|l| mentions(l, name)) {
            entry.iter().for_each(|l| out.push_str(l));
            continue;
        }
        let (_, eol) = split_eol(entry[0]);
        out.push_str(&" ".repeat(item_indent));
        out.push_str("- {}");
        out.push_str(eol);
        for l in &entry[1..] {
            out.push_str(split_eol(l).1);
        }
    }
    for l in &lines[end..] {
        out.push_str(l);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# fleet\nsecrets: {key_env: K}\naccounts:\n  - name: a-1\n    proxies:\n      - {label: p, url: 'socks5://h:1'}\n\n  # the second\n  - name: a-10\n    proxies:\n      - label: q\n        url: |\n          socks5://h:2\n  - name: a-1x\n    namespace: ns-a-1\nextra: 1\n";

    #[test]
    fn other_entries_shrink_and_lines_and_indexes_stay() {
        let out = only_account(FILE, "a-10").expect("handled");
        assert_eq!(out.lines().count(), FILE.lines().count(), "{out}");
        let want = "# fleet\nsecrets: {key_env: K}\naccounts:\n  - {}\n\n\n\n\n  - name: a-10\n    proxies:\n      - label: q\n        url: |\n          socks5://h:2\n  - {}\n\nextra: 1\n";
        assert_eq!(out, want);
        // Parsed, the chosen entry keeps its index and everything else
        // at the top level survives.
        let v: serde_yaml::Value = serde_yaml::from_str(&out).expect("yaml");
        assert_eq!(v["accounts"][1]["name"].as_str(), Some("a-10"));
        assert_eq!(v["accounts"].as_sequence().map(Vec::len), Some(3));
        assert_eq!(v["extra"].as_u64(), Some(1));
        assert_eq!(v["secrets"]["key_env"].as_str(), Some("K"));
    }

    #[test]
    fn a_name_counts_as_a_whole_token_only() {
        let out = only_account(FILE, "a-1").expect("handled");
        // a-1's own entry only: neither "a-10" nor "ns-a-1" is the token
        // "a-1" ('-' is a name character).
        let v: serde_yaml::Value = serde_yaml::from_str(&out).expect("yaml");
        assert_eq!(v["accounts"][0]["name"].as_str(), Some("a-1"));
        assert!(v["accounts"][1]["name"].is_null() && v["accounts"][2]["name"].is_null(), "{out}");
        assert!(mentions("x: 'a-1'", "a-1") && mentions("a-1", "a-1") && !mentions("a-10", "a-1"));
        assert!(!mentions("ns-a-1", "a-1") && !mentions("a-1_b", "a-1") && mentions("a-1.x", "a-1"));
    }

    #[test]
    fn a_list_at_column_zero_and_crlf() {
        let text = "accounts:\r\n- name: b\r\n  proxies: []\r\n- name: c\r\n  proxies: []\r\n";
        let out = only_account(text, "c").expect("handled");
        assert_eq!(out, "accounts:\r\n- {}\r\n\r\n- name: c\r\n  proxies: []\r\n");
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
