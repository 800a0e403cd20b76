//! The proxy service's JSON allocations (its HTTP answers are parsed by hyper).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nsproxy::fleet::protocol::parse_answer(data);
});
