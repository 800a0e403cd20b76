//! Packet classification: every byte string the TUN could hand the daemon,
//! as a virtio-net frame and as a bare packet, trusted or not.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nsproxy::dataplane::{packet, vnet};

fuzz_target!(|data: &[u8]| {
    if let vnet::Frame::Packet { pkt, trusted } = vnet::parse(data) {
        let _ = packet::classify(pkt, true, trusted);
    }
    for trusted in [false, true] {
        let _ = packet::classify(data, true, trusted);
        let _ = packet::classify(data, false, trusted);
    }
    // The stack's own output path: whatever it is, offloading must not panic.
    let mut frame = vnet::PLAIN.to_vec();
    frame.extend_from_slice(data);
    vnet::offload_tcp(&mut frame);
});
