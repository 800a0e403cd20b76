//! "Did you mean ...?" for a misspelt field or account name: the closest
//! candidate within a small edit distance. Pure.

/// Edit distance (insertions, deletions, substitutions; a swap of two
/// neighbours counts once), ASCII case ignored.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_ascii_lowercase().chars().collect();
    let b: Vec<char> = b.to_ascii_lowercase().chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a typo (at
/// most a third of the word's length; a difference of case alone counts as
/// none, and is suggested too).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// ` (did you mean "x"?)`, or nothing.
pub fn hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates).map(|c| format!(" (did you mean {c:?}?)")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_field_and_nothing_else_does() {
        let keys = ["health_check", "egress_check", "proxies", "dns", "ipv6", "mtu"];
        assert_eq!(closest("helth_check", keys), Some("health_check"));
        assert_eq!(closest("proxeis", keys), Some("proxies"), "a swap is one edit");
        assert_eq!(closest("DNS", keys), Some("dns"), "keys are lower case");
        assert_eq!(closest("colour", keys), None);
        assert_eq!(closest("zz", keys), None, "short words need a very close match");
        assert_eq!(hint("mtuu", keys), " (did you mean \"mtu\"?)");
        assert_eq!(hint("account-b", ["account-a", "account-c"]), " (did you mean \"account-a\"?)");
    }
}
