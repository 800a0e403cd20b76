//! DNS: queries from programs, answers from the resolver (tcp mode).
#![no_main]
use libfuzzer_sys::fuzz_target;
use nsproxy::dns::message as m;

fuzz_target!(|data: &[u8]| {
    let _ = m::min_ttl(data);
    let _ = m::answer_addrs(data);
    let _ = m::udp_limit(data);
    if let Ok(q) = m::parse_query(data) {
        let _ = m::response(&q, 0, &[std::net::Ipv4Addr::new(198, 18, 1, 1)], 60);
        let _ = m::fit_udp(data, &q, 512);
        let _ = m::with_id(data, 7);
    }
});
