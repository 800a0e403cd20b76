//! The fake-IP table: each name asked for gets an address from the reserved
//! pool; a connection to that address is opened through the proxy by name.
//! Pure: time is passed in, persistence is a text log the caller stores.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::config::plan;

#[derive(Debug)]
pub struct FakeIpTable {
    first: u32,
    size: u32,
    /// Next offset to hand out; wraps, recycling the oldest address.
    next: u32,
    by_name: HashMap<String, u32>,
    by_ip: HashMap<u32, String>,
}

impl Default for FakeIpTable {
    fn default() -> Self {
        FakeIpTable::of(&plan::Addresses::DEFAULT)
    }
}

impl FakeIpTable {
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Self {
        let (f, l) = (u32::from(first), u32::from(last));
        FakeIpTable { first: f, size: l.saturating_sub(f) + 1, next: 0, by_name: HashMap::new(), by_ip: HashMap::new() }
    }

    /// An empty table over the fake-IP pool of `range`.
    pub fn of(range: &plan::Addresses) -> Self {
        let (first, last) = range.fake_pool();
        FakeIpTable::new(first, last)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The address of `name`, allocating one if new. The bool says whether
    /// the table changed (so the caller persists it).
    pub fn assign(&mut self, name: &str) -> (Ipv4Addr, bool) {
        if let Some(&ip) = self.by_name.get(name) {
            return (Ipv4Addr::from(ip), false);
        }
        let ip = self.first + self.next;
        self.next = (self.next + 1) % self.size;
        if let Some(old) = self.by_ip.remove(&ip) {
            self.by_name.remove(&old);
        }
        self.by_name.insert(name.to_string(), ip);
        self.by_ip.insert(ip, name.to_string());
        (Ipv4Addr::from(ip), true)
    }

    pub fn lookup(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_ip.get(&u32::from(ip)).map(|s| s.as_str())
    }

    /// One `ip name` line per entry, oldest first (for persistence).
    pub fn to_text(&self) -> String {
        let mut entries: Vec<(&u32, &String)> = self.by_ip.iter().collect();
        let (first, next, size) = (self.first, self.next, self.size);
        // Oldest = the one the cursor reaches first.
        entries.sort_by_key(|(ip, _)| (**ip - first + size - next) % size);
        entries.iter().map(|(ip, n)| format!("{} {n}\n", Ipv4Addr::from(**ip))).collect()
    }

    /// Restores a table written by `to_text` into this empty one; bad
    /// lines, and entries outside this table's pool (written before the
    /// range moved), are skipped and counted.
    pub fn restore(self, text: &str) -> (FakeIpTable, usize) {
        let mut t = self;
        let mut bad = 0;
        for line in text.lines() {
            let mut it = line.split(' ');
            let (Some(ip), Some(name), None) = (it.next(), it.next(), it.next()) else {
                bad += 1;
                continue;
            };
            let Ok(ip) = ip.parse::<Ipv4Addr>() else {
                bad += 1;
                continue;
            };
            let n = u32::from(ip);
            if n < t.first || n >= t.first + t.size || name.is_empty() || name.len() > 253 {
                bad += 1;
                continue;
            }
            if let Some(old) = t.by_ip.insert(n, name.to_string()) {
                t.by_name.remove(&old);
            }
            t.by_name.insert(name.to_string(), n);
            t.next = (n - t.first + 1) % t.size;
        }
        (t, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigns_stable_addresses() {
        let mut t = FakeIpTable::default();
        let (a, new) = t.assign("a.test");
        assert!(new);
        assert_eq!(a, plan::Addresses::DEFAULT.fake_pool().0);
        assert_eq!(t.assign("a.test"), (a, false));
        let (b, _) = t.assign("b.test");
        assert_ne!(a, b);
        assert_eq!(t.lookup(b), Some("b.test"));
        assert!(plan::Addresses::DEFAULT.is_fake(a.into()));
    }

    #[test]
    fn wraps_and_recycles_the_oldest() {
        let mut t = FakeIpTable::new(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let (a, _) = t.assign("a");
        t.assign("b");
        let (c, _) = t.assign("c");
        assert_eq!(c, a);
        assert_eq!(t.lookup(a), Some("c"));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn survives_a_round_trip_and_bad_lines() {
        let mut t = FakeIpTable::default();
        t.assign("a.test");
        let (b, _) = t.assign("b.test");
        let text = format!("{}garbage\n1.2.3.4 outside.pool\n", t.to_text());
        let (mut r, bad) = FakeIpTable::default().restore(&text);
        assert_eq!(bad, 2);
        assert_eq!(r.lookup(b), Some("b.test"));
        // New names continue after the restored ones.
        let (c, _) = r.assign("c.test");
        assert_eq!(u32::from(c), u32::from(b) + 1);
    }

    #[test]
    fn a_moved_range_forgets_the_old_answers() {
        let mut old = FakeIpTable::default();
        old.assign("a.test");
        let moved = plan::Addresses::parse("10.99.0.0/23").unwrap();
        let (mut t, skipped) = FakeIpTable::of(&moved).restore(&old.to_text());
        assert_eq!((t.len(), skipped), (0, 1));
        let (ip, _) = t.assign("a.test");
        assert_eq!(ip, Ipv4Addr::new(10, 99, 1, 0));
    }
}
