//! Packet classification: every byte string the TUN could hand the daemon.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nsproxy::dataplane::packet::classify(data, true);
    let _ = nsproxy::dataplane::packet::classify(data, false);
});
