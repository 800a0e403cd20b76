//! Prometheus text exposition (format 0.0.4) of one account: flows, bytes,
//! DNS, the pool (states, health checks, failovers, rotations, the active
//! proxy and egress IP as info metrics). `render` is pure and reads only the
//! published schemas; `serve` answers any HTTP request on the listener the
//! daemon bound with it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::route::{BUCKETS, HistogramSnapshot};
use crate::published::pool::State;
use crate::published::stats::Snapshot;

/// One proxy's figures at the time of a scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyFigures {
    pub label: String,
    pub endpoint: String,
    pub state: Option<State>,
    pub egress_ip: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub flows: u64,
    pub failures: u64,
    pub checks_ok: u64,
    pub checks_failed: u64,
    pub check_latency: HistogramSnapshot,
    pub connect_time: HistogramSnapshot,
    pub handshake_time: HistogramSnapshot,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub account: String,
    pub dns_mode: String,
    pub stats: Snapshot,
    pub failovers: u64,
    pub rotations: u64,
    /// Burns found by health checks, by reason.
    pub burns: Vec<(String, u64)>,
    pub all_down: bool,
    pub active: Option<String>,
    pub proxies: Vec<ProxyFigures>,
}

/// A label value with `\`, `"` and newlines escaped.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn render(f: &Figures) -> String {
    let mut o = String::new();
    let a = esc(&f.account);
    let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, String)]| {
        let _ = writeln!(o, "# HELP nsproxy_{name} {help}");
        let _ = writeln!(o, "# TYPE nsproxy_{name} {kind}");
        for (labels, value) in rows {
            // Histograms: "@bucket labels" is a sample of nsproxy_NAME_bucket.
            let (suffix, labels) = match labels.strip_prefix('@').and_then(|l| l.split_once(' ')) {
                Some((s, l)) => (format!("_{s}"), l),
                None => (String::new(), labels.as_str()),
            };
            let sep = if labels.is_empty() { "" } else { "," };
            let _ = writeln!(o, "nsproxy_{name}{suffix}{{account=\"{a}\"{sep}{labels}}} {value}");
        }
    };
    let s = &f.stats;
    let one = |v: u64| vec![(String::new(), v.to_string())];
    metric("flows_opened_total", "counter", "Flows connected through a proxy.", &one(s.flows_opened));
    let refused = [
        ("proxy", s.flows_refused_proxy),
        ("limit", s.flows_refused_limit),
        ("stale_fake_ip", s.flows_refused_unknown_fake_ip),
        ("rule", s.flows_refused_rule),
        ("no_proxy", s.flows_refused_no_proxy),
    ];
    let rows: Vec<_> = refused.iter().map(|(r, v)| (format!("reason=\"{r}\""), v.to_string())).collect();
    metric("flows_refused_total", "counter", "Flows refused (reset), by reason.", &rows);
    metric("flows_active", "gauge", "Open flows.", &one(s.flows_active));
    metric("flows_connecting", "gauge", "Flows waiting for their proxy connection.", &one(s.flows_pending));
    let rows = vec![
        ("direction=\"up\"".to_string(), s.bytes_up.to_string()),
        ("direction=\"down\"".to_string(), s.bytes_down.to_string()),
    ];
    metric("bytes_total", "counter", "Payload bytes relayed, by direction.", &rows);
    let m = esc(&f.dns_mode);
    let rows: Vec<_> = [
        ("noerror", s.dns_noerror),
        ("nxdomain", s.dns_nxdomain),
        ("servfail", s.dns_servfail),
        ("other", s.dns_other),
    ]
    .iter()
    .map(|(r, v)| (format!("mode=\"{m}\",result=\"{r}\""), v.to_string()))
    .collect();
    metric("dns_answers_total", "counter", "DNS answers given, by mode and result.", &rows);
    metric("dns_queries_total", "counter", "DNS queries received.", &one(s.dns_queries));
    metric(
        "tun_writes_dropped_total",
        "counter",
        "Packets to the program the TUN refused (its queue full; TCP sends again).",
        &one(s.tun_writes_dropped),
    );
    metric("udp_refused_total", "counter", "UDP packets refused (ICMP unreachable).", &one(s.udp_refused));
    metric(
        "udp_associations_total",
        "counter",
        "SOCKS5 UDP associations opened (udp: proxy).",
        &one(s.udp_associations),
    );
    let rows = vec![
        ("direction=\"up\"".to_string(), s.udp_datagrams_up.to_string()),
        ("direction=\"down\"".to_string(), s.udp_datagrams_down.to_string()),
    ];
    metric("udp_datagrams_total", "counter", "UDP datagrams relayed through the proxy, by direction.", &rows);
    let rows = vec![
        ("reason=\"queue_or_header\"".to_string(), s.udp_dropped.to_string()),
        ("reason=\"fragment\"".to_string(), s.udp_fragments_dropped.to_string()),
    ];
    metric(
        "udp_dropped_total",
        "counter",
        "UDP datagrams dropped (a full queue or a bad header; fragments from the relay).",
        &rows,
    );
    metric("failovers_total", "counter", "Switches to another proxy after a failure.", &one(f.failovers));
    metric("rotations_total", "counter", "Manual rotations.", &one(f.rotations));
    let rows: Vec<_> = f.burns.iter().map(|(r, v)| (format!("reason=\"{}\"", esc(r)), v.to_string())).collect();
    metric(
        "burns_total",
        "counter",
        "Proxies burned because a health check saw the exchange refuse their IP, by reason.",
        &rows,
    );
    metric("pool_down", "gauge", "1 while every proxy is unusable (flows refused).", &one(f.all_down as u64));

    // Per proxy: the label alone (the proxy service hands out new
    // endpoints; a series per endpoint would grow without end); the
    // endpoint is on `proxy_info`.
    let p = |x: &ProxyFigures| format!("proxy=\"{}\"", esc(&x.label));
    let per = |g: &dyn Fn(&ProxyFigures) -> String| -> Vec<(String, String)> {
        f.proxies.iter().map(|x| (p(x), g(x))).collect()
    };
    let info: Vec<_> =
        f.proxies.iter().map(|x| (format!("{},endpoint=\"{}\"", p(x), esc(&x.endpoint)), "1".to_string())).collect();
    metric("proxy_info", "gauge", "Each pool member's proxy as scheme://host:port (never credentials).", &info);
    metric("proxy_bytes_total", "counter", "Payload bytes relayed per proxy, both directions.", &{
        let mut v = Vec::new();
        for x in &f.proxies {
            v.push((format!("{},direction=\"up\"", p(x)), x.bytes_up.to_string()));
            v.push((format!("{},direction=\"down\"", p(x)), x.bytes_down.to_string()));
        }
        v
    });
    metric("proxy_flows_total", "counter", "Flows connected per proxy.", &per(&|x| x.flows.to_string()));
    metric(
        "proxy_failures_total",
        "counter",
        "Proxy-level flow failures per proxy.",
        &per(&|x| x.failures.to_string()),
    );
    metric("health_checks_total", "counter", "Health checks per proxy and result.", &{
        let mut v = Vec::new();
        for x in &f.proxies {
            v.push((format!("{},result=\"ok\"", p(x)), x.checks_ok.to_string()));
            v.push((format!("{},result=\"failed\"", p(x)), x.checks_failed.to_string()));
        }
        v
    });
    let histogram = |pick: fn(&ProxyFigures) -> &HistogramSnapshot| -> Vec<(String, String)> {
        let mut v = Vec::new();
        for x in &f.proxies {
            let h = pick(x);
            for (i, le) in BUCKETS.iter().map(|b| b.to_string()).chain(["+Inf".to_string()]).enumerate() {
                let n = h.cumulative.get(i).copied().unwrap_or(0);
                v.push((format!("@bucket {},le=\"{le}\"", p(x)), n.to_string()));
            }
            v.push((format!("@sum {}", p(x)), format!("{}", h.sum_seconds)));
            v.push((format!("@count {}", p(x)), h.count().to_string()));
        }
        v
    };
    metric(
        "health_check_duration_seconds",
        "histogram",
        "Latency of successful health checks per proxy (through the proxy to the check's target).",
        &histogram(|x| &x.check_latency),
    );
    metric(
        "proxy_connect_duration_seconds",
        "histogram",
        "Flows' TCP connect to the proxy, per proxy.",
        &histogram(|x| &x.connect_time),
    );
    metric(
        "proxy_handshake_duration_seconds",
        "histogram",
        "Flows' SOCKS5 or HTTP CONNECT handshake with the proxy, per proxy.",
        &histogram(|x| &x.handshake_time),
    );
    metric("proxy_state", "gauge", "1 for the state each proxy is in.", &{
        let mut v = Vec::new();
        for x in &f.proxies {
            for st in [State::Active, State::Standby, State::Unhealthy, State::Burned] {
                v.push((format!("{},state=\"{st}\"", p(x)), ((x.state == Some(st)) as u8).to_string()));
            }
        }
        v
    });
    let active: Vec<_> = f
        .proxies
        .iter()
        .filter(|x| f.active.as_deref() == Some(x.label.as_str()))
        .map(|x| (format!("{},egress_ip=\"{}\"", p(x), esc(x.egress_ip.as_deref().unwrap_or(""))), "1".to_string()))
        .collect();
    metric("active_proxy_info", "gauge", "The active proxy and its last egress IP.", &active);
    let egress: Vec<_> = f
        .proxies
        .iter()
        .filter_map(|x| x.egress_ip.as_ref().map(|ip| (format!("{},egress_ip=\"{}\"", p(x), esc(ip)), "1".to_string())))
        .collect();
    metric("egress_ip_info", "gauge", "The last egress IP seen through each proxy.", &egress);
    let version = [("version", env!("CARGO_PKG_VERSION")), ("rust_version", env!("CARGO_PKG_RUST_VERSION"))]
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
        .collect::<Vec<_>>()
        .join(",");
    metric("build_info", "gauge", "The nsproxy build serving these metrics.", &[(version, "1".to_string())]);
    o
}

/// Several accounts' expositions as one: each family's HELP and TYPE once,
/// then its samples from every account in turn (the text format refuses a
/// family announced twice). Every sample carries its `account` label, so
/// none collide. `scraped` adds `nsproxy_account_scraped` (1: the account's
/// daemon answered, 0: it did not, its figures are missing).
pub fn merge(expositions: &[String], scraped: &[(String, bool)]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: std::collections::HashMap<String, (Vec<String>, Vec<String>)> = Default::default();
    for text in expositions {
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
                let name = rest.split(' ').next().unwrap_or_default().to_string();
                let fam = families.entry(name.clone()).or_insert_with(|| {
                    order.push(name.clone());
                    Default::default()
                });
                // The first account's HELP and TYPE stand for all.
                let kind = &line[..6];
                if !fam.0.iter().any(|h| h.starts_with(kind)) {
                    fam.0.push(line.to_string());
                }
                current = Some(name);
            } else if !line.is_empty()
                && !line.starts_with('#')
                && let Some(fam) = current.as_ref().and_then(|c| families.get_mut(c))
            {
                fam.1.push(line.to_string());
            }
        }
    }
    let mut o = String::new();
    for name in &order {
        let (head, samples) = &families[name];
        for l in head.iter().chain(samples) {
            o.push_str(l);
            o.push('\n');
        }
    }
    if !scraped.is_empty() {
        o.push_str("# HELP nsproxy_account_scraped 1 if the account's daemon answered this scrape, 0 if not.\n");
        o.push_str("# TYPE nsproxy_account_scraped gauge\n");
        for (a, ok) in scraped {
            let _ = writeln!(o, "nsproxy_account_scraped{{account=\"{}\"}} {}", esc(a), u8::from(*ok));
        }
    }
    o
}

/// Answers one HTTP request (any path) with `body`; the request head is
/// read with a size cap and a deadline.
pub async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S, body: impl FnOnce() -> String) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) || !head.starts_with(b"GET ") {
        let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
        return;
    }
    let body = body();
    let resp = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

pub type Source = Arc<dyn Fn() -> String + Send + Sync>;

/// Answers every connection `accept` yields, until dropped.
async fn accept_loop<S, F, Fut>(mut accept: F, source: Source)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
{
    loop {
        match accept().await {
            Ok(s) => {
                let src = source.clone();
                tokio::spawn(answer(s, move || src()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A bound metrics listener.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Binds the policy's metrics address (a Unix socket: mode 0600, a stale
/// socket replaced).
pub async fn bind(listen: &crate::config::MetricsListen) -> std::io::Result<Listener> {
    use crate::config::MetricsListen;
    match listen {
        MetricsListen::Tcp(addr) => tokio::net::TcpListener::bind(addr).await.map(Listener::Tcp),
        MetricsListen::Unix(path) => crate::host::rundir::bind_unix(path).map(Listener::Unix),
    }
}

/// Serves metrics on `listener` until dropped.
pub async fn serve(listener: Listener, source: Source) {
    match listener {
        Listener::Tcp(l) => accept_loop(|| async { l.accept().await.map(|(s, _)| s) }, source).await,
        Listener::Unix(l) => accept_loop(|| async { l.accept().await.map(|(s, _)| s) }, source).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family_and_escapes_labels() {
        let f = Figures {
            account: "acct".into(),
            dns_mode: "fake-ip".into(),
            stats: Snapshot {
                flows_opened: 7,
                bytes_up: 10,
                bytes_down: 20,
                dns_nxdomain: 2,
                tun_writes_dropped: 4,
                ..Default::default()
            },
            failovers: 1,
            rotations: 2,
            burns: vec![("status_418".into(), 3)],
            all_down: false,
            active: Some("b".into()),
            proxies: vec![
                ProxyFigures {
                    label: "a".into(),
                    endpoint: "socks5://10.0.0.1:1080".into(),
                    state: Some(State::Burned),
                    ..Default::default()
                },
                ProxyFigures {
                    label: "b".into(),
                    endpoint: "http://[::1]:3128".into(),
                    state: Some(State::Active),
                    egress_ip: Some("192.0.2.9".into()),
                    bytes_down: 99,
                    checks_ok: 3,
                    check_latency: HistogramSnapshot {
                        cumulative: vec![0, 0, 0, 0, 0, 1, 2, 3, 3, 3, 3, 3, 3],
                        sum_seconds: 0.25,
                    },
                    ..Default::default()
                },
            ],
        };
        let t = render(&f);
        for want in [
            "nsproxy_flows_opened_total{account=\"acct\"} 7",
            "nsproxy_bytes_total{account=\"acct\",direction=\"down\"} 20",
            "nsproxy_dns_answers_total{account=\"acct\",mode=\"fake-ip\",result=\"nxdomain\"} 2",
            "nsproxy_failovers_total{account=\"acct\"} 1",
            "nsproxy_tun_writes_dropped_total{account=\"acct\"} 4",
            "nsproxy_rotations_total{account=\"acct\"} 2",
            "nsproxy_burns_total{account=\"acct\",reason=\"status_418\"} 3",
            "nsproxy_proxy_info{account=\"acct\",proxy=\"a\",endpoint=\"socks5://10.0.0.1:1080\"} 1",
            "nsproxy_proxy_info{account=\"acct\",proxy=\"b\",endpoint=\"http://[::1]:3128\"} 1",
            "nsproxy_proxy_state{account=\"acct\",proxy=\"a\",state=\"burned\"} 1",
            "nsproxy_proxy_state{account=\"acct\",proxy=\"a\",state=\"active\"} 0",
            "nsproxy_active_proxy_info{account=\"acct\",proxy=\"b\",egress_ip=\"192.0.2.9\"} 1",
            "nsproxy_proxy_bytes_total{account=\"acct\",proxy=\"b\",direction=\"down\"} 99",
            "nsproxy_health_check_duration_seconds_bucket{account=\"acct\",proxy=\"b\",le=\"0.05\"} 1",
            "nsproxy_health_check_duration_seconds_bucket{account=\"acct\",proxy=\"b\",le=\"+Inf\"} 3",
            "nsproxy_health_check_duration_seconds_sum{account=\"acct\",proxy=\"b\"} 0.25",
            "nsproxy_health_check_duration_seconds_count{account=\"acct\",proxy=\"b\"} 3",
            "nsproxy_proxy_connect_duration_seconds_count{account=\"acct\",proxy=\"a\"} 0",
            "nsproxy_flows_refused_total{account=\"acct\",reason=\"no_proxy\"} 0",
        ] {
            assert!(t.contains(want), "missing {want}\n{t}");
        }
        assert!(t.contains(&format!("nsproxy_build_info{{account=\"acct\",version=\"{}\"", env!("CARGO_PKG_VERSION"))));
        assert!(!t.contains("endpoint=\"socks5://10.0.0.1:1080\","), "the endpoint is only on proxy_info:\n{t}");
        // Every sample line belongs to a family announced with HELP and TYPE.
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| t.contains(&format!("# TYPE {f} histogram"))))
                .unwrap_or(name);
            assert!(t.contains(&format!("# TYPE {family} ")), "{name} has no TYPE");
        }
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn accounts_merge_into_one_exposition_with_each_family_once() {
        let one = |a: &str, flows: u64| {
            render(&Figures {
                account: a.into(),
                dns_mode: "fake-ip".into(),
                stats: Snapshot { flows_opened: flows, ..Default::default() },
                proxies: vec![ProxyFigures {
                    label: "p".into(),
                    endpoint: "socks5://h:1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
        };
        let (a, b) = (one("a", 1), one("b", 2));
        let m = merge(&[a.clone(), b], &[("a".into(), true), ("b".into(), true), ("c".into(), false)]);
        assert_eq!(m.matches("# TYPE nsproxy_flows_opened_total counter").count(), 1, "{m}");
        assert_eq!(m.matches("# HELP nsproxy_flows_opened_total ").count(), 1);
        assert!(
            m.contains("nsproxy_flows_opened_total{account=\"a\"} 1\nnsproxy_flows_opened_total{account=\"b\"} 2\n")
        );
        assert!(m.contains("nsproxy_account_scraped{account=\"c\"} 0"));
        // Every sample of one account survives, in its family.
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples(&m), 2 * samples(&a) + 3);
        // A family's samples follow its own TYPE line.
        let t = m.find("# TYPE nsproxy_bytes_total").unwrap();
        let next = m[t + 1..].find("# HELP").map(|i| i + t + 1).unwrap_or(m.len());
        assert_eq!(m[t..next].matches("nsproxy_bytes_total{").count(), 4, "{}", &m[t..next]);
        assert_eq!(merge(&[], &[]), "");
    }
}
