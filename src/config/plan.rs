//! The address plan of an account's namespace, carved out of one IPv4 range
//! (`dns.fake_ip_range`, 198.18.0.0/15 unless the policy moves it): the TUN
//! (first address + 1), the stack and its DNS server (+ 2), host services
//! (+ 16 to + 79) and, from the 257th address to the one before the last,
//! the fake IPs answered for names. Every other address of the range is
//! reserved: a connection to it is refused, never proxied. Each account has
//! a namespace of its own, so accounts may share a range.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Name of the TUN device inside the namespace.
pub const TUN_NAME: &str = "tun0";
/// The namespace side of the TUN (IPv6 is not part of the range).
pub const TUN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 1);
pub const STACK_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2);
/// Host services: at most this many, from the 17th address of the range.
pub const HOST_SERVICES_MAX: usize = 64;
const HOST_SERVICES_FROM: u32 = 16;
/// The fake-IP pool starts here (the addresses below are nsproxy's own).
const FAKE_FROM: u32 = 256;
/// The widest and narrowest ranges a policy may give: a /23 leaves 255
/// fake IPs; a range wider than /8 is not a reserved corner any more.
pub const PREFIX_MIN: u8 = 8;
pub const PREFIX_MAX: u8 = 23;

/// An account's reserved IPv4 range and the addresses it derives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    base: u32,
    prefix: u8,
}

impl Default for Addresses {
    fn default() -> Addresses {
        Addresses::DEFAULT
    }
}

impl fmt::Display for Addresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl serde::Serialize for Addresses {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Addresses {
    /// 198.18.0.0/15, the benchmarking range of RFC 2544.
    pub const DEFAULT: Addresses = Addresses { base: 0xC612_0000, prefix: 15 };

    /// `a.b.c.d/n`: IPv4, a network address (no host bits), n between
    /// `PREFIX_MIN` and `PREFIX_MAX`. The error says what to write instead.
    pub fn parse(text: &str) -> Result<Addresses, String> {
        let Some((ip, len)) = text.trim().split_once('/') else {
            return Err(format!("expected an IPv4 range such as 198.18.0.0/15, got {text:?}"));
        };
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{ip:?} is not an IPv4 address (the range is IPv4 only)"))?;
        let prefix: u8 = len.parse().map_err(|_| format!("{len:?} is not a prefix length"))?;
        if !(PREFIX_MIN..=PREFIX_MAX).contains(&prefix) {
            return Err(format!(
                "/{prefix} is not allowed: the range needs /{PREFIX_MIN} to /{PREFIX_MAX} (a /{PREFIX_MAX} holds nsproxy's own 256 addresses and 255 fake IPs)"
            ));
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        let base = u32::from(ip);
        if base & !mask != 0 {
            return Err(format!("{text} has host bits set: did you mean {}/{prefix}?", Ipv4Addr::from(base & mask)));
        }
        Ok(Addresses { base, prefix })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    fn offset(&self, ip: IpAddr) -> Option<u32> {
        match ip {
            IpAddr::V4(v4) => {
                let off = u32::from(v4).wrapping_sub(self.base);
                (off < self.size()).then_some(off)
            }
            IpAddr::V6(_) => None,
        }
    }

    /// Whether `ip` lies in the range (nsproxy's, never a destination).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.offset(ip).is_some()
    }

    /// The namespace side of the TUN.
    pub fn tun_v4(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// The stack's own address: the DNS server named in resolv.conf.
    pub fn dns_v4(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 2)
    }

    /// The address of the `i`th host service inside the namespace.
    pub fn host_service_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(self.base + HOST_SERVICES_FROM + i.min(HOST_SERVICES_MAX - 1) as u32)
    }

    /// Which host service an address inside is (its index), if any.
    pub fn host_service_index(&self, ip: IpAddr) -> Option<usize> {
        let off = self.offset(ip)?;
        (HOST_SERVICES_FROM..HOST_SERVICES_FROM + HOST_SERVICES_MAX as u32)
            .contains(&off)
            .then(|| (off - HOST_SERVICES_FROM) as usize)
    }

    /// The first and last fake IP (the range's last address is left out).
    pub fn fake_pool(&self) -> (Ipv4Addr, Ipv4Addr) {
        (Ipv4Addr::from(self.base + FAKE_FROM), Ipv4Addr::from(self.base + self.size() - 2))
    }

    /// Whether `ip` is in the fake-IP pool.
    pub fn is_fake(&self, ip: IpAddr) -> bool {
        self.offset(ip).is_some_and(|off| off >= FAKE_FROM && off <= self.size() - 2)
    }
}

/// The namespace of an account whose policy names none.
pub fn default_namespace(account: &str) -> String {
    format!("nsp-{account}")
}

/// The namespace of an account known by name (`down`, `status`): the
/// running daemon's (from its state), else the policy's, else the
/// default name.
pub fn namespace_of(account: &str, from_state: Option<String>, from_policy: impl FnOnce() -> Option<String>) -> String {
    from_state.or_else(from_policy).unwrap_or_else(|| default_namespace(account))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_plan_is_the_one_nsproxy_always_had() {
        let a = Addresses::DEFAULT;
        assert_eq!(a.to_string(), "198.18.0.0/15");
        assert_eq!(a.tun_v4(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(a.dns_v4(), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(a.host_service_addr(1), Ipv4Addr::new(198, 18, 0, 17));
        assert_eq!(a.host_service_index(ip("198.18.0.17")), Some(1));
        assert_eq!(a.host_service_index(ip("198.18.0.80")), None);
        assert_eq!(a.host_service_index(ip("198.18.1.0")), None);
        assert_eq!(a.fake_pool(), (Ipv4Addr::new(198, 18, 1, 0), Ipv4Addr::new(198, 19, 255, 254)));
        assert!(a.is_fake(ip("198.19.255.254")) && !a.is_fake(ip("198.19.255.255")));
        assert!(!a.is_fake(ip("198.18.0.255")) && a.contains(ip("198.18.0.255")));
        assert!(!a.contains(ip("198.20.0.0")) && !a.contains(ip("198.17.255.255")) && !a.contains(ip("fd00:18::1")));
    }

    #[test]
    fn a_moved_range_moves_every_address() {
        let a = Addresses::parse("10.99.0.0/23").unwrap();
        assert_eq!((a.tun_v4(), a.dns_v4()), (Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 2)));
        assert_eq!(a.host_service_addr(0), Ipv4Addr::new(10, 99, 0, 16));
        assert_eq!(a.fake_pool(), (Ipv4Addr::new(10, 99, 1, 0), Ipv4Addr::new(10, 99, 1, 254)));
        assert!(!a.contains(ip("198.18.1.0")), "198.18.0.0/15 is an ordinary destination now");
        assert!(a.is_fake(ip("10.99.1.7")) && !a.contains(ip("10.99.2.0")));
    }

    #[test]
    fn bad_ranges_say_what_to_write() {
        for (text, says) in [
            ("198.18.0.1/15", "did you mean 198.18.0.0/15"),
            ("198.18.0.0", "expected an IPv4 range"),
            ("fd00::/64", "IPv4 only"),
            ("10.0.0.0/24", "/24 is not allowed"),
            ("10.0.0.0/7", "/7 is not allowed"),
            ("10.0.0.0/x", "not a prefix length"),
            ("10.0.0.0/99", "/99 is not allowed"),
        ] {
            let e = Addresses::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        assert_eq!(Addresses::parse(" 100.64.0.0/10 ").unwrap().to_string(), "100.64.0.0/10");
    }
}
