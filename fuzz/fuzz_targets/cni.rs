//! The CNI plugin's input: the network configuration on stdin, and the
//! `CNI_*` environment (the input's first line, as KEY=VALUE pairs).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, conf) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let head = String::from_utf8_lossy(head);
    let vars: Vec<(String, String)> = head
        .split('\x1f')
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let env = nsproxy::cni::parse_env(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()));
    if let Ok(c) = nsproxy::cni::parse_conf(conf)
        && let Ok(e) = env
    {
        let _ = nsproxy::cni::account_of(&c, &e);
    }
});
