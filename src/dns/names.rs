//! DNS mode `tcp`: the names behind the real addresses nsproxy handed out,
//! so per-domain rules can match a flow to an IP. Bounded: the oldest
//! entries go first. When several names share an address (CDNs), the last
//! answer wins.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

#[derive(Debug)]
pub struct Names {
    map: HashMap<IpAddr, String>,
    order: VecDeque<IpAddr>,
    max: usize,
}

impl Names {
    pub fn new(max: usize) -> Names {
        Names { map: HashMap::new(), order: VecDeque::new(), max: max.max(1) }
    }

    pub fn remember(&mut self, name: &str, addrs: &[IpAddr]) {
        for ip in addrs {
            if self.map.insert(*ip, name.to_string()).is_none() {
                self.order.push_back(*ip);
            }
        }
        while self.map.len() > self.max {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<&str> {
        self.map.get(&ip).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_last_answer_and_stays_bounded() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut n = Names::new(2);
        n.remember("a.test", &[ip("192.0.2.1")]);
        n.remember("b.test", &[ip("192.0.2.1")]);
        assert_eq!(n.lookup(ip("192.0.2.1")), Some("b.test"));
        n.remember("c.test", &[ip("192.0.2.2"), ip("2001:db8::2")]);
        assert_eq!(n.len(), 2);
        assert_eq!(n.lookup(ip("192.0.2.1")), None, "oldest dropped");
        assert_eq!(n.lookup(ip("2001:db8::2")), Some("c.test"));
    }
}
