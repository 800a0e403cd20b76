//! Just enough DNS (RFC 1035) to answer queries: parse the header and the
//! first question, build a response with A records or an empty answer.

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_PTR: u16 = 12;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    /// Lower-case, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section as received (echoed in the answer).
    pub question: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Too short to even hold an id: no answer possible.
    Short,
    /// Malformed, but with an id and flags we can answer FORMERR to.
    Malformed { id: u16, flags: u16, reason: &'static str },
    /// Not a query (QR set, or an opcode other than QUERY).
    NotQuery { id: u16, flags: u16 },
}

pub fn parse_query(msg: &[u8]) -> Result<Query, ParseError> {
    if msg.len() < 12 {
        return Err(ParseError::Short);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let malformed = |reason| ParseError::Malformed { id, flags, reason };
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 {
        return Err(ParseError::NotQuery { id, flags });
    }
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if qdcount != 1 {
        return Err(malformed("expected exactly one question"));
    }
    let mut pos = 12;
    let mut name = String::new();
    loop {
        let len = *msg.get(pos).ok_or(malformed("truncated name"))? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return Err(malformed("compressed or extended label in question"));
        }
        let label = msg.get(pos..pos + len).ok_or(malformed("truncated label"))?;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(malformed("unsupported character in name"));
            }
            name.push(b.to_ascii_lowercase() as char);
        }
        if name.len() > 253 {
            return Err(malformed("name longer than 253 bytes"));
        }
        pos += len;
    }
    let tail = msg.get(pos..pos + 4).ok_or(malformed("truncated question"))?;
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    Ok(Query { id, flags, name, qtype, qclass, question: msg[12..pos + 4].to_vec() })
}

/// A response to `q`: `answers` become A records with `ttl`.
pub fn response(q: &Query, rcode: u8, answers: &[std::net::Ipv4Addr], ttl: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + q.question.len() + answers.len() * 16);
    v.extend_from_slice(&q.id.to_be_bytes());
    // QR=1, opcode 0, AA=1, RD copied, RA=1.
    let flags: u16 = 0x8000 | 0x0400 | (q.flags & 0x0100) | 0x0080 | (rcode as u16 & 0xf);
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(&q.question);
    for ip in answers {
        v.extend_from_slice(&[0xc0, 12]); // pointer to the question name
        v.extend_from_slice(&TYPE_A.to_be_bytes());
        v.extend_from_slice(&CLASS_IN.to_be_bytes());
        v.extend_from_slice(&ttl.to_be_bytes());
        v.extend_from_slice(&4u16.to_be_bytes());
        v.extend_from_slice(&ip.octets());
    }
    v
}

/// An error response when only the header could be read.
pub fn error_response(id: u16, flags: u16, rcode: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&id.to_be_bytes());
    let f: u16 = 0x8000 | (flags & 0x7900) | 0x0080 | (rcode as u16 & 0xf);
    v.extend_from_slice(&f.to_be_bytes());
    v.extend_from_slice(&[0; 8]);
    v
}

/// A query with an EDNS OPT record (tests and the benchmark use it).
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 1]); // RD, 1 question, 1 additional (OPT)
    for l in name.split('.') {
        v.push(l.len() as u8);
        v.extend_from_slice(l.as_bytes());
    }
    v.push(0);
    v.extend_from_slice(&qtype.to_be_bytes());
    v.extend_from_slice(&CLASS_IN.to_be_bytes());
    v.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]); // EDNS OPT
    v
}

/// Skips a (possibly compressed) name starting at `pos`; returns the
/// position after it.
fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *msg.get(pos)? as usize;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(pos + 1),
            0x00 => pos += 1 + len,
            0xc0 => return msg.get(pos + 1).map(|_| pos + 2),
            _ => return None,
        }
    }
    None
}

/// The records of a message after its question: (type, ttl offset, end).
fn records(msg: &[u8]) -> Option<Vec<(u16, usize)>> {
    if msg.len() < 12 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]) as usize;
    let (qd, rr) = (count(4), count(6) + count(8) + count(10));
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut out = Vec::with_capacity(rr);
    for _ in 0..rr {
        pos = skip_name(msg, pos)?;
        let fixed = msg.get(pos..pos + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        out.push((rtype, pos + 4));
        pos += 10 + rdlen;
        if pos > msg.len() {
            return None;
        }
    }
    Some(out)
}

/// The smallest TTL of a response's records (OPT excluded), for caching.
/// `None` for a malformed message.
pub fn min_ttl(msg: &[u8]) -> Option<u32> {
    let recs = records(msg)?;
    Some(
        recs.iter()
            .filter(|(t, _)| *t != 41)
            .map(|(_, off)| u32::from_be_bytes([msg[*off], msg[off + 1], msg[off + 2], msg[off + 3]]))
            .min()
            .unwrap_or(0),
    )
}

/// The A and AAAA addresses in a response's records (any section).
pub fn answer_addrs(msg: &[u8]) -> Vec<std::net::IpAddr> {
    let Some(recs) = records(msg) else { return Vec::new() };
    recs.iter()
        .filter_map(|&(t, off)| {
            let len = u16::from_be_bytes([*msg.get(off + 4)?, *msg.get(off + 5)?]) as usize;
            let data = msg.get(off + 6..off + 6 + len)?;
            match (t, len) {
                (1, 4) => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
                (28, 16) => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
                _ => None,
            }
        })
        .collect()
}

/// The UDP payload size the client accepts: its EDNS OPT size, else 512.
pub fn udp_limit(query: &[u8]) -> usize {
    let Some(recs) = records(query) else { return 512 };
    recs.iter()
        .find(|(t, _)| *t == 41)
        .map(|(_, off)| u16::from_be_bytes([query[off - 2], query[off - 1]]) as usize)
        .unwrap_or(512)
        .clamp(512, 65535)
}

/// `msg` with its id replaced.
pub fn with_id(msg: &[u8], id: u16) -> Vec<u8> {
    let mut v = msg.to_vec();
    if v.len() >= 2 {
        v[..2].copy_from_slice(&id.to_be_bytes());
    }
    v
}

/// A response that fits `limit` bytes over UDP: as is, or header and
/// question only with TC set (the client retries over TCP).
pub fn fit_udp(resp: &[u8], q: &Query, limit: usize) -> Vec<u8> {
    if resp.len() <= limit {
        return resp.to_vec();
    }
    let mut v = response(q, resp.get(3).map(|b| b & 0xf).unwrap_or(RCODE_SERVFAIL), &[], 0);
    v[2] |= 0x02; // TC
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn parses_and_answers() {
        let q = parse_query(&build_query(0xbeef, "API.Exchange.test", TYPE_A)).unwrap();
        assert_eq!((q.id, q.name.as_str(), q.qtype), (0xbeef, "api.exchange.test", TYPE_A));
        let r = response(&q, RCODE_NOERROR, &[Ipv4Addr::new(198, 18, 1, 0)], 60);
        assert_eq!(&r[0..2], &[0xbe, 0xef]);
        assert_eq!(r[2] & 0x80, 0x80, "QR set");
        assert_eq!(r[2] & 0x01, 0x01, "RD copied");
        assert_eq!(&r[6..8], &[0, 1], "one answer");
        assert_eq!(&r[r.len() - 4..], &[198, 18, 1, 0]);
        let empty = response(&q, RCODE_NOERROR, &[], 60);
        assert_eq!(&empty[6..8], &[0, 0]);
    }

    #[test]
    fn answer_addresses() {
        let q = parse_query(&build_query(7, "api.exchange.test", TYPE_A)).unwrap();
        let r = response(&q, RCODE_NOERROR, &[Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)], 60);
        let want: Vec<std::net::IpAddr> = vec![Ipv4Addr::new(192, 0, 2, 1).into(), Ipv4Addr::new(192, 0, 2, 2).into()];
        assert_eq!(answer_addrs(&r), want);
        assert!(answer_addrs(&r[..r.len() - 2]).is_empty(), "truncated record");
        assert!(answer_addrs(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse_query(&[0; 5]), Err(ParseError::Short));
        let mut resp = build_query(1, "a.test", TYPE_A);
        resp[2] |= 0x80;
        assert!(matches!(parse_query(&resp), Err(ParseError::NotQuery { .. })));
        let mut trunc = build_query(1, "a.test", TYPE_A);
        trunc.truncate(16);
        assert!(matches!(parse_query(&trunc), Err(ParseError::Malformed { .. })));
        let mut ptr = build_query(1, "a.test", TYPE_A);
        ptr[12] = 0xc0;
        assert!(matches!(parse_query(&ptr), Err(ParseError::Malformed { .. })));
        let mut two = build_query(1, "a.test", TYPE_A);
        two[5] = 2;
        assert!(matches!(parse_query(&two), Err(ParseError::Malformed { .. })));
        let e = error_response(7, 0x0100, RCODE_FORMERR);
        assert_eq!((e[0], e[1], e[3] & 0xf), (0, 7, RCODE_FORMERR));
    }
}
