//! DNS answered by nsproxy itself: message parsing and building (no I/O),
//! the fake-IP table, the answer cache and remembered names (pure), and the
//! server and forwarder that use them.

pub mod cache;
pub mod fakeip;
pub mod forward;
pub mod message;
pub mod names;
pub mod server;

use std::net::Ipv4Addr;

use fakeip::FakeIpTable;
use message::*;

/// TTL of fake-IP answers: short, though the mapping itself is stable.
pub const FAKE_TTL: u32 = 60;

/// The query in `msg`, or what to answer instead: FORMERR for a malformed
/// query, NOTIMP for another opcode, nothing for a response or a runt.
pub fn query_or_error(msg: &[u8]) -> Result<Query, Option<Vec<u8>>> {
    match parse_query(msg) {
        Ok(q) => Ok(q),
        Err(ParseError::Short) | Err(ParseError::NotQuery { flags: 0x8000.., .. }) => Err(None),
        Err(ParseError::NotQuery { id, flags }) => Err(Some(error_response(id, flags, RCODE_NOTIMP))),
        Err(ParseError::Malformed { id, flags, .. }) => Err(Some(error_response(id, flags, RCODE_FORMERR))),
    }
}

/// The answer to one query in fake-ip mode, and the table entry it created.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub reply: Vec<u8>,
    pub new_entry: Option<(Ipv4Addr, String)>,
}

/// Answers a DNS message in fake-ip mode: A gets a fake address, every other
/// type an empty NOERROR (so AAAA makes programs use IPv4). `None`: no
/// answer possible (too short, or not a query).
pub fn answer_fake_ip(table: &mut FakeIpTable, msg: &[u8]) -> Option<Answer> {
    let q = match query_or_error(msg) {
        Ok(q) => q,
        Err(reply) => return reply.map(|reply| Answer { reply, new_entry: None }),
    };
    if q.qclass != CLASS_IN {
        return Some(Answer { reply: response(&q, RCODE_REFUSED, &[], 0), new_entry: None });
    }
    if q.name.is_empty() {
        return Some(Answer { reply: response(&q, RCODE_NXDOMAIN, &[], 0), new_entry: None });
    }
    if q.qtype != TYPE_A {
        return Some(Answer { reply: response(&q, RCODE_NOERROR, &[], FAKE_TTL), new_entry: None });
    }
    let (ip, new) = table.assign(&q.name);
    Some(Answer { reply: response(&q, RCODE_NOERROR, &[ip], FAKE_TTL), new_entry: new.then(|| (ip, q.name.clone())) })
}

/// The names of the account's host services inside the namespace
/// (`NAME.host.nsproxy`) and their addresses.
pub type HostNames = std::sync::Arc<Vec<(String, Ipv4Addr)>>;

/// Answers a query for a name under `.host.nsproxy` itself (never through
/// the proxy): a listed service's address, NXDOMAIN for any other name
/// there. None: not such a name (or no query).
pub fn host_answer(hosts: &[(String, Ipv4Addr)], msg: &[u8]) -> Option<Vec<u8>> {
    let q = query_or_error(msg).ok()?;
    let name = q.name.trim_end_matches('.').to_ascii_lowercase();
    if !name.ends_with(crate::config::HOST_SUFFIX) && name != crate::config::HOST_SUFFIX[1..] {
        return None;
    }
    Some(match hosts.iter().find(|(n, _)| *n == name) {
        Some((_, ip)) if q.qtype == TYPE_A && q.qclass == CLASS_IN => response(&q, RCODE_NOERROR, &[*ip], 3600),
        Some(_) => response(&q, RCODE_NOERROR, &[], 3600),
        None => response(&q, RCODE_NXDOMAIN, &[], 60),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_ip_answers() {
        let mut t = FakeIpTable::default();
        let a = answer_fake_ip(&mut t, &build_query(1, "api.exchange.test", TYPE_A)).unwrap();
        let (ip, name) = a.new_entry.clone().unwrap();
        assert_eq!(name, "api.exchange.test");
        assert_eq!(&a.reply[a.reply.len() - 4..], &ip.octets());
        let again = answer_fake_ip(&mut t, &build_query(2, "api.exchange.test", TYPE_A)).unwrap();
        assert_eq!(again.new_entry, None);
        let aaaa = answer_fake_ip(&mut t, &build_query(3, "api.exchange.test", TYPE_AAAA)).unwrap();
        assert_eq!((&aaaa.reply[6..8], aaaa.reply[3] & 0xf), (&[0u8, 0][..], RCODE_NOERROR));
        assert!(answer_fake_ip(&mut t, &[1, 2, 3]).is_none());
        let mut resp = build_query(4, "x.test", TYPE_A);
        resp[2] |= 0x80;
        assert!(answer_fake_ip(&mut t, &resp).is_none(), "responses are never answered");
        let mut bad = build_query(5, "x.test", TYPE_A);
        bad.truncate(15);
        assert_eq!(answer_fake_ip(&mut t, &bad).unwrap().reply[3] & 0xf, RCODE_FORMERR);
    }
}

#[cfg(test)]
mod forward_tests {
    use super::message::*;
    use std::net::Ipv4Addr;

    #[test]
    fn ttl_limits_and_truncation() {
        let mut qb = build_query(9, "big.test", TYPE_A);
        let q = parse_query(&qb).unwrap();
        assert_eq!(udp_limit(&qb), 1232, "EDNS size from the OPT record");
        qb.truncate(qb.len() - 11);
        qb[11] = 0;
        assert_eq!(udp_limit(&qb), 512, "no OPT: 512");
        let ips: Vec<Ipv4Addr> = (0..60).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        let mut r = response(&q, RCODE_NOERROR, &ips, 300);
        // Lower one TTL: the minimum wins.
        let last_ttl = r.len() - 10;
        r[last_ttl..last_ttl + 4].copy_from_slice(&30u32.to_be_bytes());
        assert_eq!(min_ttl(&r), Some(30));
        let small = fit_udp(&r, &q, 512);
        assert!(small.len() <= 512);
        assert_eq!(small[2] & 0x02, 0x02, "TC set");
        assert_eq!(&small[6..8], &[0, 0]);
        assert_eq!(fit_udp(&r, &q, 4096), r);
        assert_eq!(&with_id(&r, 0x1234)[..2], &[0x12, 0x34]);
        assert_eq!(min_ttl(&r[..r.len() - 3]), None, "truncated record");
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;

    #[test]
    fn host_service_names_are_answered_here_and_others_are_not() {
        let hosts = vec![("db.host.nsproxy".to_string(), Ipv4Addr::new(198, 18, 0, 16))];
        let q = |name: &str, qtype: u16| build_query(0x1234, name, qtype);
        let r = host_answer(&hosts, &q("DB.host.nsproxy", TYPE_A)).expect("answered");
        assert_eq!(&r[r.len() - 4..], &[198, 18, 0, 16]);
        let r = host_answer(&hosts, &q("cache.host.nsproxy", TYPE_A)).expect("answered");
        assert_eq!(r[3] & 0x0f, RCODE_NXDOMAIN);
        assert!(host_answer(&hosts, &q("api.exchange.test", TYPE_A)).is_none(), "other names are not ours");
        assert!(host_answer(&hosts, &q("evilhost.nsproxy", TYPE_A)).is_none());
    }
}
