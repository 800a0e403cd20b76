//! DNS answered by nsproxy itself: message parsing and building (no I/O)
//! and the fake-IP table.

pub mod fakeip;
pub mod message;

use std::net::Ipv4Addr;

use fakeip::FakeIpTable;
use message::*;

/// TTL of fake-IP answers: short, though the mapping itself is stable.
pub const FAKE_TTL: u32 = 60;

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
    let q = match parse_query(msg) {
        Ok(q) => q,
        Err(ParseError::Short) | Err(ParseError::NotQuery { flags: 0x8000.., .. }) => return None,
        Err(ParseError::NotQuery { id, flags }) => {
            return Some(Answer { reply: error_response(id, flags, RCODE_NOTIMP), new_entry: None });
        }
        Err(ParseError::Malformed { id, flags, .. }) => {
            return Some(Answer { reply: error_response(id, flags, RCODE_FORMERR), new_entry: None });
        }
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
