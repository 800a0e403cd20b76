//! Control-socket requests.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nsproxy::published::control::parse_request(data);
});
