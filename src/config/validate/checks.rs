//! `health_check` (one mapping, or a list of them: one per exchange) and
//! `egress_check`.

use super::*;

const CHECK_KEYS: &[&str] = &[
    "name",
    "target",
    "interval",
    "timeout",
    "failures_before_unhealthy",
    "method",
    "headers",
    "expect_status",
    "burn_on",
    "burn_for",
    "ca_file",
];

pub(super) fn health_checks(ctx: &mut Ctx, v: Option<&Value>, p: &FieldPath) -> Option<Vec<HealthCheck>> {
    match v {
        None => Some(Vec::new()),
        Some(Value::Sequence(seq)) => {
            let checks: Vec<Option<HealthCheck>> =
                seq.iter().enumerate().map(|(i, c)| health(ctx, c, &p.index(i))).collect();
            let checks: Option<Vec<HealthCheck>> = checks.into_iter().collect();
            let checks = checks?;
            for (i, c) in checks.iter().enumerate() {
                if checks[..i].iter().any(|o| o.name == c.name) {
                    ctx.problem(&p.index(i).key("name"), format!("two checks are named {:?}", c.name));
                }
            }
            Some(checks)
        }
        Some(v) => health(ctx, v, p).map(|h| vec![h]),
    }
}

fn statuses(ctx: &mut Ctx, m: &Mapping, key: &str, p: &FieldPath) -> Option<Vec<u16>> {
    if !m.contains_key(key) {
        return Some(Vec::new());
    }
    let v: Vec<u16> = ctx.get(m, key, p, "a list of HTTP statuses such as [200, 204]")?;
    if let Some(bad) = v.iter().find(|s| !(100..=599).contains(*s)) {
        ctx.problem(&p.key(key), format!("{bad} is not an HTTP status (100-599)"));
        return None;
    }
    Some(v)
}

fn ca_file(ctx: &mut Ctx, m: &Mapping, p: &FieldPath) -> Option<Option<PathBuf>> {
    match ctx.get::<String>(m, "ca_file", p, "a path to PEM certificates") {
        Some(f) if !f.starts_with('/') => {
            ctx.problem(&p.key("ca_file"), format!("expected an absolute path, got {f:?}"));
            None
        }
        Some(f) => Some(Some(PathBuf::from(f))),
        None if m.contains_key("ca_file") => None,
        None => Some(None),
    }
}

fn burn_on(ctx: &mut Ctx, m: &Mapping, p: &FieldPath) -> Option<BurnOn> {
    let Some(v) = m.get("burn_on") else {
        let d = crate::proxy::verdict::Rules::default();
        return Some(BurnOn { status: d.burn_status, body: Vec::new() });
    };
    let p = p.key("burn_on");
    let bm = ctx.mapping(v, &p, &["status", "body"])?;
    let status = statuses(ctx, bm, "status", &p);
    let body: Option<Vec<String>> = if bm.contains_key("body") {
        ctx.get(bm, "body", &p, "a list of texts, or /regular expressions/")
    } else {
        Some(Vec::new())
    };
    let body = body.and_then(|b| {
        let bad: Vec<String> = b
            .iter()
            .filter_map(|t| crate::proxy::verdict::BodyMatch::parse(t).err().map(|e| format!("{t:?}: {e}")))
            .collect();
        if bad.is_empty() {
            Some(b)
        } else {
            ctx.problem(&p.key("body"), bad.join("; "));
            None
        }
    });
    Some(BurnOn { status: status?, body: body? })
}

fn health(ctx: &mut Ctx, v: &Value, p: &FieldPath) -> Option<HealthCheck> {
    let hm = ctx.mapping(v, p, CHECK_KEYS)?;
    let interval = ctx.duration(hm, "interval", p, Duration::from_secs(30));
    let timeout = ctx.duration(hm, "timeout", p, Duration::from_secs(5));
    let target: Option<String> = ctx.require(hm, "target", p, "tcp://host:port, http://host/path or https://host/path");
    let target = target.and_then(|t| {
        let parsed = if let Some(rest) = t.strip_prefix("tcp://") {
            match host_port(rest, None) {
                Ok((host, port)) => Ok(HealthTarget::Tcp { host, port }),
                Err(e) => Err(format!("expected tcp://host:port, got {t:?}: {e}")),
            }
        } else {
            parse_http_url(&t).map(HealthTarget::Http)
        };
        parsed.map_err(|e| ctx.problem(&p.key("target"), e)).ok()
    });
    let failures = ctx.ranged(hm, "failures_before_unhealthy", p, 1, 100, 3);
    let name = match ctx.get::<String>(hm, "name", p, "a short name") {
        Some(n) if n.is_empty() || n.len() > 64 || n.chars().any(|c| c.is_control()) => {
            ctx.problem(&p.key("name"), "expected 1 to 64 printable characters");
            None
        }
        Some(n) => Some(Some(n)),
        None if hm.contains_key("name") => None,
        None => Some(None),
    };
    let method = match ctx.get::<String>(hm, "method", p, "GET or HEAD").as_deref() {
        None if hm.contains_key("method") => None,
        None => Some(CheckMethod::Get),
        Some(m) if m.eq_ignore_ascii_case("get") => Some(CheckMethod::Get),
        Some(m) if m.eq_ignore_ascii_case("head") => Some(CheckMethod::Head),
        Some(m) => {
            ctx.problem(&p.key("method"), format!("expected GET or HEAD, got {m:?}"));
            None
        }
    };
    let headers = if hm.contains_key("headers") {
        ctx.get::<std::collections::BTreeMap<String, String>>(hm, "headers", p, "a mapping of header names to values")
            .and_then(|h| {
                let bad: Vec<&String> = h
                    .iter()
                    .filter(|(k, v)| {
                        k.is_empty()
                            || !k.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
                            || v.chars().any(|c| c.is_control())
                    })
                    .map(|(k, _)| k)
                    .collect();
                if !bad.is_empty() {
                    ctx.problem(&p.key("headers"), format!("invalid header name or value: {bad:?}"));
                    return None;
                }
                let reserved = ["host", "connection", "content-length", "transfer-encoding"];
                if let Some(k) = h.keys().find(|k| reserved.contains(&k.to_ascii_lowercase().as_str())) {
                    ctx.problem(&p.key("headers"), format!("{k} is set by nsproxy"));
                    return None;
                }
                Some(h.into_iter().map(|(name, value)| Header { name, value }).collect::<Vec<_>>())
            })
    } else {
        Some(Vec::new())
    };
    let expect_status = statuses(ctx, hm, "expect_status", p);
    let burn_on = burn_on(ctx, hm, p);
    let burn_for = match hm.get("burn_for") {
        Some(Value::String(s)) if s == "forever" => Some(None),
        Some(_) => ctx.duration(hm, "burn_for", p, Duration::ZERO).map(Some),
        None => Some(Some(Duration::from_secs(24 * 3600))),
    };
    let ca_file = ca_file(ctx, hm, p);
    let target = target?;
    if let HealthTarget::Tcp { .. } = &target {
        for k in ["method", "headers", "expect_status", "burn_on", "burn_for", "ca_file"] {
            if hm.contains_key(k) {
                ctx.problem(&p.key(k), "applies to http:// and https:// targets only");
            }
        }
    }
    let name = name?.unwrap_or_else(|| match &target {
        HealthTarget::Tcp { host, .. } => host.clone(),
        HealthTarget::Http(u) => u.host.clone(),
    });
    Some(HealthCheck {
        interval: interval?,
        timeout: timeout?,
        target,
        failures_before_unhealthy: failures? as u32,
        name,
        method: method?,
        headers: headers?,
        expect_status: expect_status?,
        burn_on: burn_on?,
        burn_for: burn_for?,
        ca_file: ca_file?,
    })
}

pub(super) fn egress(ctx: &mut Ctx, v: &Value, p: &FieldPath) -> Option<EgressCheck> {
    let em = ctx.mapping(v, p, &["url", "timeout", "ca_file"])?;
    let url: Option<String> = ctx.require(em, "url", p, "an http:// or https:// URL that answers with your IP");
    let url = url.and_then(|u| match parse_http_url(&u) {
        Ok(h) => Some(h),
        Err(e) => {
            ctx.problem(&p.key("url"), e);
            None
        }
    });
    let timeout = ctx.duration(em, "timeout", p, Duration::from_secs(10));
    let ca_file = ca_file(ctx, em, p);
    Some(EgressCheck { url: url?, timeout: timeout?, ca_file: ca_file? })
}
