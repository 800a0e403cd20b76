//! Policy files: any text must give accounts or problems, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = nsproxy::config::parse_str(std::path::Path::new("fuzz.yaml"), text);
    }
});
