//! The proxy service's HTTP answers and JSON allocations.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nsproxy::fleet::client::parse_http(data);
    let _ = nsproxy::fleet::protocol::parse_answer(data);
});
