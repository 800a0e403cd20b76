//! What a proxy answers: SOCKS5 (method choice, auth status, CONNECT
//! reply) and HTTP CONNECT responses, split at a fuzzed point as TCP could;
//! the SOCKS5 handshake one message at a time, pipelined, and the
//! pipelining probe.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nsproxy::proxy::socks5::{Handshake, Step};
use nsproxy::proxy::{Target, http};

fuzz_target!(|data: &[u8]| {
    let _ = http::parse_response(data);
    let target = || Target::Name("api.exchange.test".into(), 443);
    let shakes = [
        Handshake::new(target(), None),
        Handshake::new(target(), Some(("user", "pass"))),
        Handshake::pipelined(target(), ("user", "pass")),
        Handshake::auth_probe(("user", "pass")),
    ];
    for mut hs in shakes {
        let _ = hs.first_flight();
        let mut buf: Vec<u8> = Vec::new();
        let mut rest = data;
        for _ in 0..16 {
            // Feed the input in two pieces: the parser must cope with partial replies.
            let take = rest.len().min(1 + rest.first().copied().unwrap_or(0) as usize % 8);
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            match hs.feed(&buf) {
                Ok(Step::Need) if rest.is_empty() => break,
                Ok(Step::Need) => {}
                Ok(Step::Send(_, used) | Step::Consumed(used)) => {
                    assert!(used <= buf.len());
                    buf.drain(..used);
                }
                Ok(Step::Done(used)) => {
                    assert!(used <= buf.len());
                    break;
                }
                Err(_) => break,
            }
        }
    }
});
