//! The fleet-mode proxy service (tests/fixtures/service.py).
#![allow(dead_code)]

use super::*;

/// The fleet-mode proxy service of the tests (see `SERVICE_PY`).
pub struct Service {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub url: String,
    pub mtls_url: String,
    pub dir: PathBuf,
    pub(super) procs: Vec<Proc>,
}

impl Service {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Starts both listeners (8443, and 8444 with client certificates).
    pub fn start(&mut self) {
        let d = self.dir.display().to_string();
        for (port, client_ca) in [(8443u16, "-".to_string()), (8444, format!("{d}/ca.pem"))] {
            let cmd =
                format!("/usr/bin/python3 {d}/service.py {} {port} {d}/srv.pem {d}/srv.key {client_ca} {d}", self.ip);
            self.procs.push(spawn_in(&self.ns, "service", &cmd, &self.dir.join(format!("service{port}.log"))));
            wait_port(&self.ns, self.ip, port);
        }
    }

    /// Stops both listeners (by PID): the service is down.
    pub fn stop(&mut self) {
        for p in self.procs.iter_mut() {
            p.stop();
        }
        self.procs.clear();
    }

    /// `ok`, `slow`, `garbage`, `500`.
    pub fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.join("mode"), mode).expect("mode");
    }

    /// What the service accepts: `bearer:TOKEN`, `apikey:KEY` or `mtls`.
    pub fn expect_auth(&self, auth: &str) {
        std::fs::write(self.dir.join("expect"), auth).expect("expect");
    }

    /// The allocation it hands out.
    pub fn set_answer(&self, answer: &serde_json::Value) {
        std::fs::write(self.dir.join("alloc.json"), answer.to_string()).expect("alloc");
    }

    /// Every request it received, in order.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn allocations(&self) -> Vec<serde_json::Value> {
        self.requests().into_iter().filter(|r| r["path"] == "/api/v1/proxy/request").collect()
    }

    pub fn feedback(&self) -> Vec<serde_json::Value> {
        self.requests().into_iter().filter(|r| r["path"] == "/api/v1/proxy/feedback").collect()
    }
}

/// The proxy service: HTTPS, records every request (path, auth headers,
/// whether a client certificate was shown, JSON body) to requests.jsonl;
/// answers according to the files `mode`, `expect` and `alloc.json` in its
/// directory, read per request.
pub const SERVICE_PY: &str = include_str!("../fixtures/service.py");
