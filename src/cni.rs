//! CNI, the plugin side (spec 1.0.0; the 0.3.x and 0.4.0 results that
//! podman 4.3 asks for; STATUS and GC of 1.1): what the runtime hands the
//! plugin (its environment and the network configuration on stdin) and
//! what the plugin answers (a result, a version list or an error), parsed
//! and built with no I/O.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// The versions whose configurations and results this plugin speaks.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The pod annotation (containerd's `io.kubernetes.cri.pod-annotations`
/// capability) and the `CNI_ARGS` key that name the account.
pub const ANNOTATION: &str = "nsproxy.io/account";
pub const CNI_ARG: &str = "NSPROXY_ACCOUNT";

/// CNI's error codes (spec 1.0.0, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    /// Plugin-specific (100+): the account's daemon could not attach.
    pub const ATTACH: u32 = 100;
}

/// A CNI error: printed as JSON on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    pub fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// The runtime's environment (`CNI_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container: String,
    /// Empty for DEL when the namespace is gone.
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS`: `K=V;K=V`.
    pub args: BTreeMap<String, String>,
}

/// A container id as the spec allows it (alphanumerics, `_`, `.`, `-`,
/// starting with an alphanumeric), and short enough for a file name.
fn valid_container(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An interface name Linux accepts.
fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && s != "."
        && s != ".."
        && !s.contains(['/', ':'])
        && !s.contains(char::is_whitespace)
}

/// Reads the environment through `var` and checks what `command` needs.
pub fn parse_env(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let get = |k: &str| var(k).unwrap_or_default();
    let command = match get("CNI_COMMAND").as_str() {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "VERSION" => Command::Version,
        "STATUS" => Command::Status,
        "GC" => Command::Gc,
        "" => {
            return Err(CniError::new(
                code::INVALID_ENV,
                "CNI_COMMAND is not set (this is a CNI plugin: the container runtime runs it)",
            ));
        }
        other => {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK, VERSION, STATUS or GC"),
            ));
        }
    };
    let mut args = BTreeMap::new();
    for kv in get("CNI_ARGS").split(';').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("CNI_ARGS: {kv:?} is not KEY=VALUE")))?;
        args.insert(k.to_string(), v.to_string());
    }
    let env =
        Env { command, container: get("CNI_CONTAINERID"), netns: get("CNI_NETNS"), ifname: get("CNI_IFNAME"), args };
    let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
    if per_container && !valid_container(&env.container) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_CONTAINERID {:?} is missing or not a valid container id", env.container),
        ));
    }
    if matches!(command, Command::Add | Command::Check) {
        if !env.netns.starts_with('/') {
            return Err(CniError::new(code::INVALID_ENV, format!("CNI_NETNS {:?} is not an absolute path", env.netns)));
        }
        if !valid_ifname(&env.ifname) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_IFNAME {:?} is not a valid interface name", env.ifname),
            ));
        }
    }
    Ok(env)
}

/// The network configuration's fields nsproxy reads.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// Fixed for the whole network, or None: from the pod or CNI_ARGS.
    pub account: Option<String>,
    /// With no `account`: the pod's Kubernetes namespace names it.
    pub account_from_pod_namespace: bool,
    pub policies: Option<std::path::PathBuf>,
    pub log_level: Option<String>,
    pub runtime_config: Value,
    /// GC: the attachments the runtime still knows (`cni.dev/valid-attachments`).
    pub valid_attachments: Option<Vec<String>>,
}

/// Fields of the spec a configuration may carry; nsproxy's own are
/// `account`, `account_from_pod_namespace`, `policies`, `log_level`.
const STANDARD: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "args",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "ipMasq",
    "ipam",
    "dns",
    "disableCheck",
    "disableGC",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
];
const OWN: &[&str] = &["account", "account_from_pod_namespace", "policies", "log_level"];

/// Parses the network configuration on stdin.
pub fn parse_conf(input: &[u8]) -> Result<NetConf, CniError> {
    let v: Value = serde_json::from_slice(input)
        .map_err(|e| CniError::new(code::DECODE, format!("the network configuration is not valid JSON: {e}")))?;
    let obj =
        v.as_object().ok_or_else(|| CniError::new(code::DECODE, "the network configuration is not a JSON object"))?;
    for k in obj.keys() {
        if !STANDARD.contains(&k.as_str()) && !OWN.contains(&k.as_str()) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("network configuration: unknown field {k:?} (nsproxy reads: {})", OWN.join(", ")),
            ));
        }
    }
    let text = |k: &str| -> Result<Option<String>, CniError> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(CniError::new(code::INVALID_CONFIG, format!("network configuration: {k} must be a string"))),
        }
    };
    let cni_version = text("cniVersion")?.unwrap_or_else(|| "0.4.0".into());
    if !SUPPORTED.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {cni_version} is not supported (supported: {})", SUPPORTED.join(", ")),
        ));
    }
    let account = text("account")?;
    if let Some(a) = &account
        && a.trim().is_empty()
    {
        return Err(CniError::new(code::INVALID_CONFIG, "network configuration: account is empty"));
    }
    let account_from_pod_namespace = match obj.get("account_from_pod_namespace") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "network configuration: account_from_pod_namespace must be true or false",
            ));
        }
    };
    let valid_attachments = obj
        .get("cni.dev/valid-attachments")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.get("containerID").and_then(Value::as_str).map(str::to_string)).collect());
    Ok(NetConf {
        cni_version,
        name: text("name")?.unwrap_or_default(),
        account,
        account_from_pod_namespace,
        policies: text("policies")?.map(Into::into),
        log_level: text("log_level")?,
        runtime_config: obj.get("runtimeConfig").cloned().unwrap_or(Value::Null),
        valid_attachments,
    })
}

/// The account a container belongs to: the configuration's `account`, the
/// pod's annotation, `CNI_ARGS` `NSPROXY_ACCOUNT`, or (when the
/// configuration says so) the pod's Kubernetes namespace.
pub fn account_of(conf: &NetConf, env: &Env) -> Result<String, CniError> {
    if let Some(a) = &conf.account {
        return Ok(a.clone());
    }
    let annotations = conf.runtime_config.get("io.kubernetes.cri.pod-annotations");
    if let Some(a) = annotations.and_then(|m| m.get(ANNOTATION)).and_then(Value::as_str) {
        return Ok(a.to_string());
    }
    if let Some(a) = env.args.get(CNI_ARG) {
        return Ok(a.clone());
    }
    if conf.account_from_pod_namespace
        && let Some(ns) = env.args.get("K8S_POD_NAMESPACE")
    {
        return Ok(ns.clone());
    }
    Err(CniError::new(
        code::INVALID_CONFIG,
        format!(
            "network {:?}: no account for container {}: set \"account\" in the network configuration, the pod annotation {ANNOTATION}, CNI_ARGS {CNI_ARG}=..., or account_from_pod_namespace",
            conf.name, env.container
        ),
    ))
}

/// Whether results of `version` carry the IP `version` field (0.3.x, 0.4.0).
fn old(version: &str) -> bool {
    version.starts_with("0.")
}

/// The ADD (and CHECK) result: the TUN (no MAC: a TUN has none, podman
/// wants the field), its address, the one default route and the DNS
/// address that the runtime writes into the container's resolv.conf.
pub fn result(version: &str, ifname: &str, sandbox: &str, addr: Ipv4Addr, dns: Ipv4Addr) -> Value {
    let mut ip = json!({"address": format!("{addr}/32"), "interface": 0});
    if old(version) {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": [{"name": ifname, "mac": "00:00:00:00:00:00", "sandbox": sandbox}],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": [dns.to_string()]},
    })
}

/// The VERSION answer.
pub fn version_answer(version: &str) -> Value {
    json!({"cniVersion": version, "supportedVersions": SUPPORTED})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse_env(|k| m.get(k).cloned())
    }

    #[test]
    fn the_environment_is_checked_for_what_each_command_needs() {
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=bots"),
        ];
        let e = env(&add).expect("add");
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.args.get("K8S_POD_NAMESPACE").map(String::as_str), Some("bots"));
        let e = env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "abc123"), ("CNI_NETNS", "")])
            .expect("del without netns");
        assert_eq!(e.netns, "");
        assert_eq!(env(&[("CNI_COMMAND", "VERSION")]).expect("version").command, Command::Version);
        for (bad, want) in [
            (
                vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "../x"), ("CNI_NETNS", "/n"), ("CNI_IFNAME", "eth0")],
                "CNI_CONTAINERID",
            ),
            (
                vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a"), ("CNI_NETNS", "n"), ("CNI_IFNAME", "eth0")],
                "CNI_NETNS",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_NETNS", "/n"),
                    ("CNI_IFNAME", "a-very-long-ifname"),
                ],
                "CNI_IFNAME",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_NETNS", "/n"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_ARGS", "nokey"),
                ],
                "CNI_ARGS",
            ),
            (vec![("CNI_COMMAND", "FROB")], "FROB"),
            (vec![], "CNI_COMMAND"),
        ] {
            let e = env(&bad).expect_err(want);
            assert_eq!(e.code, code::INVALID_ENV);
            assert!(e.msg.contains(want), "{e}");
        }
    }

    #[test]
    fn configurations_are_strict_about_nsproxys_fields_and_versions() {
        let c = parse_conf(br#"{"cniVersion":"1.0.0","name":"acct-a","type":"nsproxy-cni","account":"a","policies":"/etc/nsproxy/policies"}"#).expect("conf");
        assert_eq!(c.account.as_deref(), Some("a"));
        assert_eq!(c.policies.as_deref(), Some(std::path::Path::new("/etc/nsproxy/policies")));
        let e =
            parse_conf(br#"{"cniVersion":"1.0.0","name":"n","type":"nsproxy-cni","acount":"a"}"#).expect_err("typo");
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("\"acount\""), "{e}");
        let e = parse_conf(br#"{"cniVersion":"9.9.9","name":"n","type":"nsproxy-cni"}"#).expect_err("version");
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert_eq!(parse_conf(b"{nope").expect_err("json").code, code::DECODE);
        assert_eq!(parse_conf(br#"{"account": 5}"#).expect_err("type").code, code::INVALID_CONFIG);
        let gc = parse_conf(br#"{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#).expect("gc");
        assert_eq!(gc.valid_attachments, Some(vec!["c1".to_string()]));
    }

    #[test]
    fn the_account_comes_from_the_config_the_pod_or_the_arguments() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/n"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=bots;NSPROXY_ACCOUNT=from-args"),
        ])
        .expect("env");
        let conf = |j: &str| parse_conf(j.as_bytes()).expect("conf");
        assert_eq!(account_of(&conf(r#"{"account":"fixed"}"#), &e).expect("fixed"), "fixed");
        let ann = r#"{"runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"nsproxy.io/account":"from-pod"}}}"#;
        assert_eq!(account_of(&conf(ann), &e).expect("annotation"), "from-pod");
        assert_eq!(account_of(&conf("{}"), &e).expect("args"), "from-args");
        let e2 = Env { args: [("K8S_POD_NAMESPACE".to_string(), "bots".to_string())].into(), ..e.clone() };
        assert_eq!(account_of(&conf(r#"{"account_from_pod_namespace":true}"#), &e2).expect("ns"), "bots");
        let err = account_of(&conf(r#"{"name":"net1"}"#), &e2).expect_err("none");
        assert!(err.msg.contains("no account for container c") && err.msg.contains(ANNOTATION), "{err}");
    }

    #[test]
    fn results_match_the_version_asked_for() {
        let a = Ipv4Addr::new(198, 18, 0, 1);
        let d = Ipv4Addr::new(198, 18, 0, 2);
        let r = result("0.4.0", "eth0", "/run/netns/cni-1", a, d);
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["interfaces"][0]["mac"], "00:00:00:00:00:00");
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(r["dns"]["nameservers"][0], "198.18.0.2");
        let r = result("1.0.0", "eth0", "/proc/1/ns/net", a, d);
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["ips"][0]["address"], "198.18.0.1/32");
        assert_eq!(version_answer("1.0.0")["supportedVersions"][3], "1.0.0");
        let e = CniError::new(7, "bad").to_json("1.0.0");
        assert_eq!(e["code"], 7);
        assert_eq!(e["msg"], "bad");
    }
}
