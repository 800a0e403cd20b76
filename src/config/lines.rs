//! Maps a field path (`accounts[0].proxies[1].port`) to the line it stands on
//! in block-style YAML, so every problem can name its line. Pure text scan:
//! flow-style collections (`{..}`, `[..]`) count as values of their key.

use std::collections::HashMap;
use std::fmt;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A field path such as `accounts[0].proxies[1].port`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn key(&self, k: &str) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }
    pub fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Index from field path to 1-based line number.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<FieldPath, usize>,
}

struct Frame {
    indent: usize,
    seg: Seg,
}

impl LineIndex {
    pub fn build(text: &str) -> LineIndex {
        let mut lines = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let lineno = n + 1;
            let trimmed = raw.trim_start_matches(' ');
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
                continue;
            }
            let mut col = raw.len() - trimmed.len();
            let mut rest = trimmed;
            // Sequence item markers, possibly several on one line ("- - a").
            while rest == "-" || rest.starts_with("- ") {
                while stack.last().is_some_and(|f| f.indent > col) {
                    stack.pop();
                }
                let next = match stack.last() {
                    Some(Frame { indent, seg: Seg::Index(i) }) if *indent == col => {
                        let i = *i + 1;
                        stack.pop();
                        i
                    }
                    _ => 0,
                };
                stack.push(Frame { indent: col, seg: Seg::Index(next) });
                lines.entry(FieldPath(stack.iter().map(|f| f.seg.clone()).collect())).or_insert(lineno);
                let after = rest[1..].trim_start_matches(' ');
                col += rest.len() - after.len();
                rest = after;
            }
            if let Some(key) = key_of(rest) {
                while stack.last().is_some_and(|f| f.indent >= col) {
                    stack.pop();
                }
                stack.push(Frame { indent: col, seg: Seg::Key(key) });
                lines.entry(FieldPath(stack.iter().map(|f| f.seg.clone()).collect())).or_insert(lineno);
            }
        }
        LineIndex { lines }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn locate(&self, path: &FieldPath) -> Option<usize> {
        let mut p = path.0.as_slice();
        loop {
            if let Some(l) = self.lines.get(&FieldPath(p.to_vec())) {
                return Some(*l);
            }
            if p.is_empty() {
                return None;
            }
            p = &p[..p.len() - 1];
        }
    }
}

/// The key of a `key: value` or `key:` line, unquoted.
fn key_of(s: &str) -> Option<String> {
    for quote in ['"', '\''] {
        if let Some(q) = s.strip_prefix(quote) {
            let end = q.find(quote)?;
            return q[end + 1..].starts_with(':').then(|| q[..end].to_string());
        }
    }
    for (i, b) in s.bytes().enumerate() {
        match b {
            b':' if s.as_bytes().get(i + 1).is_none_or(|&n| n == b' ') => return Some(s[..i].trim_end().to_string()),
            b'#' | b'{' | b'[' => return None,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[Seg]) -> FieldPath {
        FieldPath(s.to_vec())
    }
    fn k(s: &str) -> Seg {
        Seg::Key(s.into())
    }

    const DOC: &str = "\
# comment
accounts:
  - name: a
    proxies:
      - label: one
        port: 1
      - label: two
        port: 70000
  - name: b
    dns:
      mode: tcp
top:
- x: 1
- \"y\": 2
";

    #[test]
    fn locates_nested_fields() {
        let ix = LineIndex::build(DOC);
        assert_eq!(ix.locate(&p(&[k("accounts")])), Some(2));
        assert_eq!(ix.locate(&p(&[k("accounts"), Seg::Index(0), k("name")])), Some(3));
        let port2 = p(&[k("accounts"), Seg::Index(0), k("proxies"), Seg::Index(1), k("port")]);
        assert_eq!(ix.locate(&port2), Some(8));
        assert_eq!(ix.locate(&p(&[k("accounts"), Seg::Index(1), k("dns"), k("mode")])), Some(11));
        assert_eq!(ix.locate(&p(&[k("top"), Seg::Index(1), k("y")])), Some(14));
    }

    #[test]
    fn falls_back_to_nearest_ancestor() {
        let ix = LineIndex::build(DOC);
        let missing = p(&[k("accounts"), Seg::Index(1), k("dns"), k("resolver")]);
        assert_eq!(ix.locate(&missing), Some(10));
    }

    #[test]
    fn displays_paths() {
        let path = FieldPath::default().key("accounts").index(0).key("proxies").index(2).key("url");
        assert_eq!(path.to_string(), "accounts[0].proxies[2].url");
    }
}
