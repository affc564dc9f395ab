//! The CNI side of hostnic: spec versions, error codes, the network
//! configuration we accept, `CNI_ARGS`, and results encoded per version.
//!
//! The agent never sees a CNI version: it answers with a version-neutral
//! [`AddResult`] and the executable encodes it for whatever `cniVersion` the
//! runtime asked for, merging it into `prevResult` when we are chained.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The spec versions we speak, oldest first. 0.1.0 and 0.2.0 results have a
/// different shape (`ip4`/`ip6`) and no runtime still sends them.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A CNI spec version we support, ordered so comparisons read naturally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub const LATEST: Version = Version::V1_1_0;
    const ALL: [Version; 5] = [
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];

    pub fn parse(s: &str) -> Result<Self, CniError> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "cniVersion {s:?} is not supported; hostnic supports {}",
                        SUPPORTED_VERSIONS.join(", ")
                    ),
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        SUPPORTED_VERSIONS[self as usize]
    }

    /// Whether `verb` exists in this version of the spec: CHECK arrived in
    /// 0.4.0, GC and STATUS in 1.1.0.
    pub fn allows(self, verb: Verb) -> bool {
        match verb {
            Verb::Check => self >= Version::V0_4_0,
            Verb::Gc | Verb::Status => self >= Version::V1_1_0,
            Verb::Add | Verb::Del | Verb::Version => true,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verbs of `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Verb {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Verb::Add,
            "DEL" => Verb::Del,
            "CHECK" => Verb::Check,
            "GC" => Verb::Gc,
            "STATUS" => Verb::Status,
            "VERSION" => Verb::Version,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!(
                        "CNI_COMMAND {other:?} is not a CNI verb; expected ADD, DEL, CHECK, GC, STATUS or VERSION"
                    ),
                ));
            }
        })
    }
}

/// Error codes from the spec (1–99 are reserved by it) and ours (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing pods may have limited connectivity.
    pub const NOT_AVAILABLE_LIMITED: u32 = 51;
    /// The agent failed at something it should have been able to do
    /// (a netlink call, a write to its record). Details say what.
    pub const INTERNAL: u32 = 100;
    /// No NIC is free on this node for the pod.
    pub const NO_FREE_NIC: u32 = 101;
    /// The pod's interface no longer matches what ADD gave it (CHECK).
    pub const CHECK_FAILED: u32 = 102;
}

/// A CNI error: what goes to stdout as JSON with a non-zero exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The JSON the spec wants on stdout, stamped with the version in use.
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// A route template from `ipam.routes`, in the original plugin's syntax.
/// A `gw` of `0.0.0.0` means "the node's own NIC in the pod's vxnet"; until
/// the cloud pool exists the agent resolves it to the NIC's gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTemplate {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipam {
    #[serde(default)]
    pub routes: Vec<RouteTemplate>,
}

/// The parts of `runtimeConfig` we read. Everything else is for the other
/// plugins in the chain (portmap reads `portMappings`, bandwidth `bandwidth`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RuntimeConfig {
    /// containerd sends `null` for a sandbox without annotations: that is
    /// "none", not a malformed config.
    #[serde(
        default,
        rename = "io.kubernetes.cri.pod-annotations",
        deserialize_with = "null_as_empty"
    )]
    pub pod_annotations: BTreeMap<String, String>,
    /// Capabilities that would ask us for something we cannot give: the NIC's
    /// address and MAC are the cloud's, not the runtime's to choose.
    #[serde(default)]
    pub ips: Option<Value>,
    #[serde(default)]
    pub mac: Option<Value>,
}

/// Reads `null` as an empty map.
fn null_as_empty<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Our entry of the conflist, as the runtime hands it to us on stdin.
/// Unknown fields are ignored, as every CNI plugin does: conflists carry
/// fields for other tools.
#[derive(Clone, Debug, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The agent's socket; defaults to [`crate::rpc::DEFAULT_SOCKET`].
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// MTU for the pod's NIC; the agent's default when absent.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// How long to wait for the agent, in seconds.
    #[serde(default, rename = "timeoutSeconds")]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub ipam: Ipam,
    #[serde(default)]
    pub capabilities: BTreeMap<String, bool>,
    #[serde(default, rename = "runtimeConfig")]
    pub runtime_config: RuntimeConfig,
    #[serde(default, rename = "prevResult")]
    pub prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<AttachmentKey>>,
}

/// Largest MTU we accept; 68 is the IPv4 minimum.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

impl NetConf {
    /// Parses stdin. Syntax errors are "failed to decode content" (6); JSON
    /// that parses but is not a valid hostnic entry is "invalid network
    /// config" (7).
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let conf = Self::decode(bytes)?;
        conf.validate()?;
        Ok(conf)
    }

    /// Decodes without validating, so a caller can learn `cniVersion` (to
    /// stamp its errors with) before judging the rest. Exactly one JSON
    /// document: trailing bytes are an error, not something to ignore.
    pub fn decode(bytes: &[u8]) -> Result<Self, CniError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let conf: NetConf = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let code = if e.inner().is_data() {
                code::INVALID_CONFIG
            } else {
                code::DECODE
            };
            // The path names the offending field ("ipam.routes[0].dst").
            let at = match e.path().to_string().as_str() {
                "." => String::new(),
                p => format!(" at {p}"),
            };
            CniError::new(
                code,
                format!("network configuration on stdin{at}: {}", e.inner()),
            )
        })?;
        de.end().map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("network configuration on stdin: {e} after the JSON document"),
            )
        })?;
        Ok(conf)
    }

    /// Decodes for DEL, which must succeed whenever it can identify the
    /// attachment: the runtime needs only `cniVersion` and `name` (and the
    /// environment) for that. A field that does not parse is dropped and
    /// named in the returned warnings instead of failing the DEL — a failed
    /// DEL strands the pod and its NIC. Syntax errors and a missing or
    /// malformed `cniVersion`/`name`/`type` still fail.
    pub fn decode_for_del(bytes: &[u8]) -> Result<(Self, Vec<String>), CniError> {
        let mut warnings = Vec::new();
        let strict_err = match Self::decode(bytes) {
            Ok(conf) => return Ok((conf, warnings)),
            Err(e) if e.code == code::DECODE => return Err(e),
            Err(e) => e,
        };
        let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(bytes) else {
            return Err(strict_err);
        };
        // Drop every optional top-level field that does not decode on its
        // own; the required ones decide.
        const REQUIRED: [&str; 3] = ["cniVersion", "name", "type"];
        let optional: Vec<String> = fields
            .keys()
            .filter(|k| !REQUIRED.contains(&k.as_str()))
            .cloned()
            .collect();
        for key in optional {
            let alone: serde_json::Map<String, Value> = REQUIRED
                .iter()
                .filter_map(|r| fields.get(*r).map(|v| (r.to_string(), v.clone())))
                .chain(std::iter::once((key.clone(), fields[&key].clone())))
                .collect();
            if let Err(e) = serde_json::from_value::<NetConf>(Value::Object(alone))
                && !e.to_string().contains("missing field")
            {
                warnings.push(format!("ignored \"{key}\" on DEL: {e}"));
                fields.remove(&key);
            }
        }
        let conf =
            serde_json::from_value::<NetConf>(Value::Object(fields)).map_err(|_| strict_err)?;
        Ok((conf, warnings))
    }

    /// What every verb needs, DEL included: the attachment's network name
    /// and where the agent listens.
    pub fn validate_for_del(&self) -> Result<(), CniError> {
        let invalid = |msg: String| Err(CniError::new(code::INVALID_CONFIG, msg));
        if self.name.is_empty() {
            return invalid("network configuration: \"name\" is empty".into());
        }
        if let Some(socket) = &self.socket
            && !socket.is_absolute()
        {
            return invalid(format!(
                "network configuration: \"socket\" {} is a relative path; give the agent socket's absolute path",
                socket.display()
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), CniError> {
        self.validate_for_del()?;
        let invalid = |msg: String| Err(CniError::new(code::INVALID_CONFIG, msg));
        if let Some(mtu) = self.mtu
            && !MTU_RANGE.contains(&mtu)
        {
            return invalid(format!(
                "network configuration: \"mtu\" {mtu} is outside {}..={}",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            ));
        }
        if let Some(prev) = &self.prev_result {
            validate_prev_result(prev).map_err(|what| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("network configuration: \"prevResult\" {what}"),
                )
            })?;
        }
        if self.timeout_seconds == Some(0) {
            return invalid("network configuration: \"timeoutSeconds\" must be at least 1".into());
        }
        for r in &self.ipam.routes {
            if !r.dst.addr().is_ipv4() || r.gw.is_some_and(|g| !g.is_ipv4()) {
                return invalid(format!(
                    "network configuration: route template {} via {:?}: only IPv4 routes are supported",
                    r.dst, r.gw
                ));
            }
            if r.dst.trunc() != r.dst {
                return invalid(format!(
                    "network configuration: route template dst {} has host bits set; did you mean {}?",
                    r.dst,
                    r.dst.trunc()
                ));
            }
        }
        let unsupported = |what: &str| {
            Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!(
                    "runtimeConfig.{what} is not supported: a hostnic pod gets its cloud NIC's own {what}"
                ),
            ))
        };
        if self.runtime_config.ips.as_ref().is_some_and(not_empty) {
            return unsupported("ips");
        }
        if self.runtime_config.mac.as_ref().is_some_and(not_empty) {
            return unsupported("mac");
        }
        Ok(())
    }
}

/// A chained `prevResult` is a result object: we append to its lists, so a
/// malformed one must be refused, never silently replaced.
fn validate_prev_result(prev: &Value) -> Result<(), String> {
    let Value::Object(obj) = prev else {
        return Err(format!("must be a JSON object (a CNI result), not {prev}"));
    };
    for list in ["interfaces", "ips", "routes"] {
        match obj.get(list) {
            None | Some(Value::Array(_)) => {}
            Some(other) => return Err(format!("field \"{list}\" must be a list, not {other}")),
        }
    }
    Ok(())
}

fn not_empty(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// `CNI_ARGS`: `K=V;K=V`. Unknown keys are an error unless `IgnoreUnknown`
/// is set, as in libcni.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub infra_container_id: Option<String>,
}

impl CniArgs {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        let bad = |msg: String| Err(CniError::new(code::INVALID_ENV, msg));
        let mut args = CniArgs::default();
        let mut unknown = Vec::new();
        let mut ignore_unknown = false;
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return bad(format!("CNI_ARGS: {pair:?} is not KEY=VALUE"));
            };
            let slot = match k {
                "K8S_POD_NAMESPACE" => &mut args.pod_namespace,
                "K8S_POD_NAME" => &mut args.pod_name,
                "K8S_POD_UID" => &mut args.pod_uid,
                "K8S_POD_INFRA_CONTAINER_ID" => &mut args.infra_container_id,
                "IgnoreUnknown" => {
                    ignore_unknown = match v.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return bad(format!("CNI_ARGS: IgnoreUnknown={v:?} is not a boolean")),
                    };
                    continue;
                }
                _ => {
                    unknown.push(k.to_string());
                    continue;
                }
            };
            *slot = Some(v.to_string());
        }
        if !unknown.is_empty() && !ignore_unknown {
            return bad(format!(
                "CNI_ARGS: unknown key(s) {} (set IgnoreUnknown=1 to allow them)",
                unknown.join(", ")
            ));
        }
        Ok(args)
    }
}

/// Validates `CNI_CONTAINERID` as libcni does: alphanumerics plus `_.-`,
/// starting with an alphanumeric.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_CONTAINERID {id:?} has invalid characters (allowed: letters, digits, _ . -, starting with a letter or digit)"
            ),
        ))
    }
}

/// Validates `CNI_IFNAME` as the kernel will: at most 15 bytes, not `.` or
/// `..`, no `/`, `:` or white space.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is not a valid interface name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains '/', ':' or white space")
    } else {
        None
    };
    match problem {
        Some(p) => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_IFNAME {name:?} {p}"),
        )),
        None => Ok(()),
    }
}

/// The pod's interface as the agent configured it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`, lower case.
    pub mac: String,
    /// The netns path the runtime gave us.
    pub sandbox: String,
    pub mtu: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// What ADD gave a pod, independent of CNI version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddResult {
    pub interface: Interface,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
}

impl AddResult {
    /// Encodes the result for `version`. With a `prev` result (we are not
    /// first in the chain) our interface, addresses and routes are appended
    /// to it and everything else in it is kept.
    pub fn encode(&self, version: Version, prev: Option<&Value>) -> Value {
        let mut out = match prev {
            Some(Value::Object(p)) => Value::Object(p.clone()),
            _ => json!({}),
        };
        out["cniVersion"] = json!(version.as_str());

        let mut iface = json!({
            "name": self.interface.name,
            "mac": self.interface.mac,
            "sandbox": self.interface.sandbox,
        });
        if version >= Version::V1_1_0 {
            iface["mtu"] = json!(self.interface.mtu);
        }
        let interfaces = array_mut(&mut out, "interfaces");
        let index = interfaces.len();
        interfaces.push(iface);

        let ips = array_mut(&mut out, "ips");
        for ip in &self.ips {
            let mut entry = json!({ "interface": index, "address": ip.address.to_string() });
            if let Some(gw) = ip.gateway {
                entry["gateway"] = json!(gw.to_string());
            }
            // 1.0.0 dropped the per-address version field.
            if version < Version::V1_0_0 {
                entry["version"] = json!(if ip.address.addr().is_ipv4() {
                    "4"
                } else {
                    "6"
                });
            }
            ips.push(entry);
        }

        let routes = array_mut(&mut out, "routes");
        for r in &self.routes {
            let mut entry = json!({ "dst": r.dst.to_string() });
            if let Some(gw) = r.gw {
                entry["gw"] = json!(gw.to_string());
            }
            routes.push(entry);
        }
        if out.get("dns").is_none() {
            out["dns"] = json!({});
        }
        out
    }
}

/// The array under `key`, created if missing or not an array.
fn array_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    if !v.get(key).is_some_and(Value::is_array) {
        v[key] = json!([]);
    }
    match v.get_mut(key) {
        Some(Value::Array(a)) => a,
        // Just made it an array above.
        _ => unreachable!("{key} was set to an array"),
    }
}

/// What VERSION prints.
pub fn version_info(version: &str) -> Value {
    json!({ "cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AddResult {
        AddResult {
            interface: Interface {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                sandbox: "/var/run/netns/p".into(),
                mtu: 1500,
            },
            ips: vec![IpConfig {
                address: "10.0.1.5/24".parse().unwrap(),
                gateway: Some("10.0.1.1".parse().unwrap()),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.0.1.1".parse().unwrap()),
            }],
        }
    }

    #[test]
    fn every_version_round_trips_and_orders() {
        for (i, s) in SUPPORTED_VERSIONS.iter().enumerate() {
            let v = Version::parse(s).unwrap();
            assert_eq!(v.as_str(), *s);
            assert_eq!(v as usize, i);
        }
        for old in ["0.1.0", "0.2.0", "2.0.0", "", "1.1"] {
            assert_eq!(
                Version::parse(old).unwrap_err().code,
                code::INCOMPATIBLE_VERSION
            );
        }
        assert!(!Version::V0_3_1.allows(Verb::Check));
        assert!(Version::V0_4_0.allows(Verb::Check));
        assert!(!Version::V1_0_0.allows(Verb::Gc));
        assert!(Version::V1_1_0.allows(Verb::Status));
    }

    #[test]
    fn result_shape_follows_the_version() {
        let r = sample();
        let old = r.encode(Version::V0_3_1, None);
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["interfaces"][0].get("mtu"), None);
        let v1 = r.encode(Version::V1_0_0, None);
        assert_eq!(v1["ips"][0].get("version"), None);
        assert_eq!(v1["ips"][0]["address"], "10.0.1.5/24");
        let v11 = r.encode(Version::V1_1_0, None);
        assert_eq!(v11["interfaces"][0]["mtu"], 1500);
        assert_eq!(v11["cniVersion"], "1.1.0");
    }

    #[test]
    fn chained_result_appends_to_prev() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo"}],
            "ips": [{"interface": 0, "address": "127.0.0.1/8"}],
            "dns": {"nameservers": ["10.96.0.10"]},
            "custom": true
        });
        let out = sample().encode(Version::V1_0_0, Some(&prev));
        assert_eq!(out["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(out["ips"][1]["interface"], 1);
        assert_eq!(out["dns"]["nameservers"][0], "10.96.0.10");
        assert_eq!(out["custom"], true);
    }

    #[test]
    fn cni_args_as_containerd_sends_them() {
        let a = CniArgs::parse("K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;FOO=bar").unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("default"));
        assert_eq!(a.pod_name.as_deref(), Some("web"));
        assert_eq!(a.pod_uid.as_deref(), Some("u-1"));
        assert_eq!(a.infra_container_id.as_deref(), Some("abc"));
        assert_eq!(
            CniArgs::parse("FOO=bar").unwrap_err().code,
            code::INVALID_ENV
        );
        assert_eq!(CniArgs::parse("FOO").unwrap_err().code, code::INVALID_ENV);
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }

    #[test]
    fn names_are_validated_like_the_kernel_and_libcni() {
        assert!(validate_ifname("eth0").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert_eq!(
                validate_ifname(bad).unwrap_err().code,
                code::INVALID_ENV,
                "{bad}"
            );
        }
        assert!(validate_container_id("abc-1.2_3").is_ok());
        for bad in ["", "-abc", "a b", "a/b"] {
            assert!(validate_container_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_errors_carry_the_right_code() {
        let parse = |s: &str| NetConf::parse(s.as_bytes()).map(|_| ());
        assert_eq!(parse("{").unwrap_err().code, code::DECODE);
        assert_eq!(
            parse(r#"{"name":"n","type":"hostnic"}"#).unwrap_err().code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","type":"hostnic","mtu":10}"#)
                .unwrap_err()
                .code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","type":"hostnic","ipam":{"routes":[{"dst":"10.96.0.1/12"}]}}"#)
                .unwrap_err()
                .code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","type":"hostnic","runtimeConfig":{"ips":["10.0.0.1/24"]}}"#)
                .unwrap_err()
                .code,
            code::UNSUPPORTED_FIELD
        );
        let ok = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"hostnic","ipam":{"routes":[{"dst":"10.96.0.0/12","gw":"0.0.0.0"}]},
                "runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":"b"},"portMappings":[]}}"#,
        )
        .unwrap();
        assert_eq!(ok.runtime_config.pod_annotations["a"], "b");
        assert_eq!(ok.ipam.routes[0].gw, Some("0.0.0.0".parse().unwrap()));
    }
}
