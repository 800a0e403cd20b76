//! What a proxy answers: SOCKS5 (method choice, auth status, CONNECT
//! reply) and HTTP CONNECT responses, split at a fuzzed point as TCP could.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nsproxy::proxy::socks5::{Handshake, Step};
use nsproxy::proxy::{Target, http};

fuzz_target!(|data: &[u8]| {
    let _ = http::parse_response(data);
    for creds in [None, Some(("user", "pass"))] {
        let mut hs = Handshake::new(Target::Name("api.exchange.test".into(), 443), creds);
        let _ = hs.greeting();
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
                Ok(Step::Send(_, used)) => {
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
