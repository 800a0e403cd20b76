//! `rules`: destinations sent to a given proxy or blocked.

use super::*;

pub(super) fn rules(
    ctx: &mut Ctx,
    m: &Mapping,
    path: &FieldPath,
    labels: &[String],
) -> Option<Vec<crate::rules::Rule>> {
    use crate::rules::{Action, Cidr, DomainPattern, Rule, parse_ports};
    let Some(v) = m.get("rules") else { return Some(Vec::new()) };
    let p = path.key("rules");
    let Some(seq) = v.as_sequence() else {
        ctx.problem(&p, "expected a list of rules");
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, rv) in seq.iter().enumerate() {
        let rp = p.index(i);
        let Some(rm) = ctx.mapping(rv, &rp, &["domain", "cidr", "port", "via", "block"]) else {
            ok = false;
            continue;
        };
        let mut parse = |key: &str, f: &dyn Fn(&str) -> Result<(), String>| -> Option<Option<String>> {
            let v = rm.get(key)?;
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => {
                    ctx.problem(&rp.key(key), "expected a string");
                    return Some(None);
                }
            };
            match f(&s) {
                Ok(()) => Some(Some(s)),
                Err(e) => {
                    ctx.problem(&rp.key(key), e);
                    Some(None)
                }
            }
        };
        let domain = parse("domain", &|s| DomainPattern::parse(s).map(|_| ()));
        let cidr = parse("cidr", &|s| Cidr::parse(s).map(|_| ()));
        let port = parse("port", &|s| parse_ports(s).map(|_| ()));
        let via: Option<String> = ctx.get(rm, "via", &rp, "a proxy label of this account");
        let block: Option<bool> = ctx.get(rm, "block", &rp, "true");
        if domain.is_none() && cidr.is_none() && port.is_none() {
            ctx.problem(&rp, "a rule needs at least one of domain, cidr, port");
            ok = false;
            continue;
        }
        let action = match (via, block) {
            (Some(l), None) => {
                if !labels.contains(&l) {
                    ctx.problem(
                        &rp.key("via"),
                        format!("no proxy labelled {l:?} in this account ({})", labels.join(", ")),
                    );
                    None
                } else {
                    Some(Action::Via(l))
                }
            }
            (None, Some(true)) => Some(Action::Block),
            (None, Some(false)) => {
                ctx.problem(&rp.key("block"), "block: false means nothing; give via: LABEL instead");
                None
            }
            (Some(_), Some(_)) => {
                ctx.problem(&rp, "give either via or block, not both");
                None
            }
            (None, None) if rm.contains_key("via") || rm.contains_key("block") => None,
            (None, None) => {
                ctx.problem(&rp, "missing via: LABEL or block: true");
                None
            }
        };
        let (Some(domain), Some(cidr), Some(port), Some(action)) = (
            domain.map_or(Some(None), |d| d.map(Some)),
            cidr.map_or(Some(None), |c| c.map(Some)),
            port.map_or(Some(None), |x| x.map(Some)),
            action,
        ) else {
            ok = false;
            continue;
        };
        out.push(Rule {
            domain: domain.and_then(|d| DomainPattern::parse(&d).ok()),
            cidr: cidr.and_then(|c| Cidr::parse(&c).ok()),
            ports: port.and_then(|x| parse_ports(&x).ok()),
            action,
        });
    }
    ok.then_some(out)
}
