//! A DNS answer cache keyed by question, with time passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

#[derive(Debug)]
pub struct Cache {
    entries: HashMap<Key, (Vec<u8>, Instant)>,
    max: usize,
}

impl Cache {
    pub fn new(max: usize) -> Cache {
        Cache { entries: HashMap::new(), max }
    }

    pub fn get(&self, k: &Key, now: Instant) -> Option<&[u8]> {
        self.entries.get(k).filter(|(_, exp)| *exp > now).map(|(m, _)| m.as_slice())
    }

    /// Stores a response for `ttl` (capped at one hour; zero is not stored).
    pub fn put(&mut self, k: Key, msg: Vec<u8>, ttl: u32, now: Instant) {
        if ttl == 0 {
            return;
        }
        if self.entries.len() >= self.max {
            self.entries.retain(|_, (_, exp)| *exp > now);
            if self.entries.len() >= self.max {
                self.entries.clear();
            }
        }
        let ttl = Duration::from_secs(ttl.min(3600) as u64);
        self.entries.insert(k, (msg, now + ttl));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn expires_by_ttl_and_stays_bounded() {
        let mut c = Cache::new(2);
        let t0 = Instant::now();
        let k = |n: &str| Key { name: n.into(), qtype: 1, qclass: 1 };
        c.put(k("a"), vec![1], 10, t0);
        c.put(k("z"), vec![9], 0, t0);
        assert_eq!(c.get(&k("a"), t0 + Duration::from_secs(9)), Some(&[1u8][..]));
        assert_eq!(c.get(&k("a"), t0 + Duration::from_secs(10)), None);
        assert_eq!(c.get(&k("z"), t0), None, "TTL 0 is not cached");
        c.put(k("b"), vec![2], 10, t0);
        c.put(k("c"), vec![3], 10, t0);
        assert!(c.len() <= 2);
    }
}
