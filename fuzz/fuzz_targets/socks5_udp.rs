//! Datagrams from a SOCKS5 UDP relay: the header parsed; what parses
//! wraps back to the same bytes (for IP senders) or to the same sender.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nsproxy::proxy::{Target, udp};

fuzz_target!(|data: &[u8]| {
    if let Ok((from, payload)) = udp::unwrap(data) {
        let again = udp::wrap(&from, payload);
        let (from2, payload2) = udp::unwrap(&again).expect("a wrapped datagram parses");
        assert_eq!(payload2, payload);
        match (&from, &from2) {
            (Target::Ip(a), Target::Ip(b)) => assert_eq!(a, b),
            (Target::Name(_, p), Target::Name(_, q)) => assert_eq!(p, q),
            _ => panic!("the sender changed kind"),
        }
    }
});
