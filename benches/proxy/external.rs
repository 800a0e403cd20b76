//! `--client tools`: wrk and ab (Debian's) against a real nginx in the
//! origin namespace, as an outsider would measure. The baseline runs the
//! same tool through proxychains4 to the same dante; nsproxy's column runs
//! it inside the account, connecting directly.
//!
//! proxychains4 makes `connect()` blocking while it speaks SOCKS5, so ab's
//! single thread waits for each handshake: with 8 connections in parallel
//! the baseline is slower than a client doing SOCKS5 without blocking, and
//! that ratio flatters nsproxy. `--client python` and the Rust client do
//! not have that bias.

use std::path::PathBuf;

use super::common;

const PORT: u16 = 9005;
/// The bulk file: big enough that one response lasts tens of milliseconds.
const BIG: u64 = 64 << 20;
/// The body of each upload request. nginx reads it whole before it
/// answers (`proxy_pass` buffers it): with `return 200` it answered
/// first and wrk, still sending, stalled on the connection.
const BODY: usize = 1 << 20;

pub struct Tools {
    dir: PathBuf,
    _nginx: common::Proc,
}

impl Tools {
    pub fn start(topo: &common::Topology, px: &common::ProxyInfo, pw: &std::path::Path) -> Tools {
        for tool in ["nginx", "wrk", "ab", "proxychains4"] {
            assert!(
                common::sh(&format!("command -v {tool}")).status.success(),
                "{tool} is not installed (see scripts/install-deps.sh)"
            );
        }
        let dir = topo.dir.join("tools");
        let www = dir.join("www");
        std::fs::create_dir_all(&www).expect("tools dir");
        let big = std::fs::File::create(www.join("big")).expect("big file");
        big.set_len(BIG).expect("big file size");
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\nuser root;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nodelay on;\n  keepalive_requests 10000000;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen {PORT};\n    root {d}/www;\n\
                 location = /ok {{ return 200 \"ok\"; }}\n\
                 location = /up {{ client_max_body_size 0; client_body_buffer_size 2m; proxy_pass http://{ip}:{PORT}/ok; }}\n  }}\n}}\n",
            ip = px.origin_ip
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        let nginx = common::spawn_in(
            &topo.origin_ns,
            "nginx",
            &format!("nginx -c {d}/nginx.conf -e {d}/error.log"),
            &dir.join("nginx.log"),
        );
        // The proxychains configuration holds the password: root-only file
        // in the test's own directory, removed with it.
        let pass = std::fs::read_to_string(pw).expect("password file");
        let pc = dir.join("proxychains.conf");
        std::fs::write(
            &pc,
            format!("strict_chain\nquiet_mode\ntcp_connect_time_out 10000\ntcp_read_time_out 15000\n[ProxyList]\nsocks5 {} {} {} {}\n", px.listen, px.port, px.user, pass.trim()),
        )
        .expect("proxychains.conf");
        let _ = std::fs::set_permissions(&pc, std::os::unix::fs::PermissionsExt::from_mode(0o600));
        std::fs::write(dir.join("up.lua"), format!("wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {BODY})\n"))
            .expect("up.lua");
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        let me = Tools { dir, _nginx: nginx };
        common::wait_until("nginx", std::time::Duration::from_secs(10), || {
            common::sh(&format!("ip netns exec {} curl -sf http://{}:{PORT}/ok", topo.origin_ns, px.origin_ip))
                .status
                .success()
        });
        me
    }

    /// The command line for one figure (same modes as the Rust client).
    pub fn argv(&self, via_nsproxy: bool, target: &str, mode: &[&str], secs: u64) -> Vec<String> {
        let url = |path: &str| format!("http://{target}:{PORT}/{path}");
        let d = format!("{secs}s");
        let mut v: Vec<String> = match mode {
            ["down", n, _] => {
                vec![
                    "wrk".into(),
                    "-t".into(),
                    n.parse::<u32>().unwrap_or(1).min(2).to_string(),
                    "-c".into(),
                    n.to_string(),
                    "-d".into(),
                    d,
                    url("big"),
                ]
            }
            ["up", n, _] => vec![
                "wrk".into(),
                "-t1".into(),
                "-c".into(),
                n.to_string(),
                "-d".into(),
                d,
                "-s".into(),
                self.dir.join("up.lua").display().to_string(),
                url("up"),
            ],
            ["lat", _] => vec!["wrk".into(), "-t1".into(), "-c1".into(), "-d".into(), d, "--latency".into(), url("ok")],
            // No -k: a new connection for every request. The CSV of
            // percentiles (fractional ms) goes to a file the account's
            // user may write (the pipe to us is root's).
            ["conn", par, count] => {
                let csv = self.dir.join("ab.csv");
                std::fs::write(&csv, "").expect("ab.csv");
                let _ = std::fs::set_permissions(&csv, std::os::unix::fs::PermissionsExt::from_mode(0o666));
                vec![
                    "ab".into(),
                    "-q".into(),
                    "-n".into(),
                    count.to_string(),
                    "-c".into(),
                    par.to_string(),
                    "-e".into(),
                    csv.display().to_string(),
                    url("ok"),
                ]
            }
            m => panic!("--client tools: no tool for {m:?}"),
        };
        if !via_nsproxy {
            let mut pc = vec![
                "proxychains4".into(),
                "-q".into(),
                "-f".into(),
                self.dir.join("proxychains.conf").display().to_string(),
            ];
            pc.append(&mut v);
            v = pc;
        }
        v
    }

    /// Turns a tool's report into the Rust client's figures for `mode`:
    /// `MB/s`, `p50 p99` (µs), or `conn/s p50 p99 - -` (µs); NaN where the
    /// report lacks one.
    pub fn parse(&self, mode: &[&str], report: &str) -> String {
        let mut text = report.to_string();
        if mode.first() == Some(&"conn") {
            text.push_str(&std::fs::read_to_string(self.dir.join("ab.csv")).unwrap_or_default());
        }
        parse(mode, &text)
    }
}

fn parse(mode: &[&str], text: &str) -> String {
    let nan = || "NaN".to_string();
    match mode.first().copied() {
        Some("down") => wrk_summary(text).map_or_else(nan, |(_, s, b)| format!("{:.1}", b / s / 1e6)),
        Some("up") => wrk_summary(text).map_or_else(nan, |(r, s, _)| format!("{:.1}", r * BODY as f64 / s / 1e6)),
        Some("lat") => {
            let p = |q: &str| {
                text.lines()
                    .map(str::trim)
                    .find_map(|l| l.strip_prefix(q))
                    .and_then(|v| wrk_time_us(v.trim()))
                    .map_or_else(nan, |us| format!("{us:.0}"))
            };
            format!("{} {}", p("50%"), p("99%"))
        }
        Some("conn") => {
            let rate = text
                .lines()
                .find_map(|l| l.strip_prefix("Requests per second:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
            let csv = |q: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{q},")))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .map_or_else(nan, |ms| format!("{:.0}", ms * 1000.0))
            };
            let r = rate.map_or_else(nan, |r| format!("{r:.0}"));
            format!("{r} {} {} NaN NaN", csv("50"), csv("99"))
        }
        _ => nan(),
    }
}

/// wrk's summary line, "N requests in 10.00s, 1.23GB read" -> (requests,
/// seconds, bytes).
fn wrk_summary(text: &str) -> Option<(f64, f64, f64)> {
    let l = text.lines().find(|l| l.contains(" requests in "))?;
    let w: Vec<&str> = l.split_whitespace().collect();
    let n: f64 = w.first()?.parse().ok()?;
    let secs = wrk_time_us(w.get(3)?.trim_end_matches(','))? / 1e6;
    let size = w.get(4)?;
    let (num, unit) = size.split_at(size.find(|c: char| c.is_ascii_alphabetic())?);
    let mult = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some((n, secs, num.parse::<f64>().ok()? * mult))
}

/// wrk's "52.00us", "1.20ms", "10.00s", "1.00m" -> µs.
fn wrk_time_us(v: &str) -> Option<f64> {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e6)
    } else {
        return None;
    };
    Some(num.parse::<f64>().ok()? * mult)
}
