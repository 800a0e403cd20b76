//! Packet captures on the host's links (leak probes).
#![allow(dead_code)]

use super::*;

/// A packet capture (tcpdump on every interface of a namespace).
pub struct Capture {
    proc: Proc,
    file: PathBuf,
}

impl Capture {
    pub fn start(ns: &str, file: PathBuf) -> Capture {
        let log = file.with_extension("log");
        let proc =
            spawn_in(ns, "tcpdump", &format!("tcpdump -i any -nn -U --immediate-mode -w {}", file.display()), &log);
        wait_until("tcpdump listening", Duration::from_secs(10), || {
            std::fs::read_to_string(&log).unwrap_or_default().contains("listening on")
        });
        Capture { proc, file }
    }

    /// Stops it and returns every IPv4/IPv6 packet as `(source address, line)`.
    pub fn stop(mut self) -> Vec<(String, String)> {
        std::thread::sleep(Duration::from_millis(300));
        self.proc.stop();
        let text = out(&sh(&format!("tcpdump -nn -r {} 2>/dev/null", self.file.display())));
        text.lines()
            .filter_map(|l| {
                let rest = l.split_once(" IP ").or_else(|| l.split_once(" IP6 "))?.1;
                let src = rest.split_whitespace().next()?;
                // a.b.c.d.port or a.b.c.d (ICMP); IPv6 likewise with ':'.
                let addr = if src.contains(':') {
                    src.rsplit_once('.').map(|(a, _)| a).unwrap_or(src)
                } else {
                    let parts: Vec<&str> = src.trim_end_matches(':').split('.').collect();
                    if parts.len() >= 4 { return Some((parts[..4].join("."), l.to_string())) } else { src }
                };
                Some((addr.trim_end_matches(':').to_string(), l.to_string()))
            })
            .collect()
    }
}
