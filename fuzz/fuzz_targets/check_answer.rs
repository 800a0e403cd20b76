//! A health check's answer as the exchange (or whatever the proxy reached)
//! sends it: classification, Retry-After in both forms, the body excerpt
//! kept in burn reasons, and the policy's body patterns.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nsproxy::proxy::verdict::{Answer, BodyMatch, Rules, classify, excerpt, retry_after_secs};

static RULES: std::sync::LazyLock<Rules> = std::sync::LazyLock::new(|| Rules {
    burn_body: [BodyMatch::parse("banned"), BodyMatch::parse("/code\":-10[0-9]+/")].into_iter().flatten().collect(),
    ..Rules::default()
});

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = u16::from_be_bytes([data[0], data[1]]) % 1000;
    let split = (data[2] as usize).min(data.len() - 3);
    let (head, body) = data[3..].split_at(split);
    let retry = std::str::from_utf8(head).ok();
    let now = 1_764_590_400;
    let _ = retry.map(|r| retry_after_secs(r, now));
    let _ = classify(&Answer { status, retry_after: retry, body }, &RULES, now);
    let _ = excerpt(&String::from_utf8_lossy(body));
    // A pattern from the policy: short ones (compiling is the costly part).
    if body.len() <= 32
        && let Ok(p) = std::str::from_utf8(body)
    {
        let _ = BodyMatch::parse(p);
    }
});
