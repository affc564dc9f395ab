//! The network configuration hostnic accepts: the conflist entry, its
//! `ipam.routes` templates, the `runtimeConfig` we read, and a chained
//! `prevResult`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Bandwidth, CniError, code};

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
/// plugins in the chain (portmap reads `portMappings`).
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
    /// The `ips` capability (Multus passes an annotation's `ips` here): the
    /// pod's address, "10.0.2.7" or "10.0.2.7/24". The NIC's prefix is its
    /// vxnet's, whatever length is written.
    #[serde(default, deserialize_with = "null_as_empty_list")]
    pub ips: Vec<String>,
    /// The `mac` capability: which of the node's NICs (a cloud NIC's id is
    /// its MAC); the runtime cannot give a cloud NIC another MAC.
    #[serde(default)]
    pub mac: Option<String>,
    /// The `bandwidth` capability, as the runtime sent it; checked by
    /// [`NetConf::requested_bandwidth`], so that its errors name the field
    /// and a DEL never fails on it.
    #[serde(default)]
    pub bandwidth: Option<Value>,
}

/// Reads `null` as an empty list.
fn null_as_empty_list<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
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

/// A network's configuration strings for the policy guests (its config's
/// `"hooks"`): each a string, passed as it is, or any other JSON value,
/// passed as compact JSON (the default guests read JSON objects). Which
/// hooks a network may configure is the agent's to say (`[hooks]
/// network_config`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkHooks {
    #[serde(
        default,
        deserialize_with = "config_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub vxnet: Option<String>,
    #[serde(
        default,
        deserialize_with = "config_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub ip: Option<String>,
    #[serde(
        default,
        deserialize_with = "config_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub routes: Option<String>,
}

impl NetworkHooks {
    pub fn is_empty(&self) -> bool {
        self == &NetworkHooks::default()
    }

    /// The hooks this network configures: (hook, config).
    pub fn set(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("vxnet", &self.vxnet),
            ("ip", &self.ip),
            ("routes", &self.routes),
        ]
        .into_iter()
        .filter_map(|(h, c)| Some((h, c.as_deref()?)))
    }
}

/// A guest's config string from any JSON value (`null`: none).
fn config_string<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
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
    /// How long to wait for the agent's answer, in seconds.
    #[serde(default, rename = "timeoutSeconds")]
    pub timeout_seconds: Option<u64>,
    /// How long to keep trying to reach an agent that does not listen (it
    /// is restarting), in seconds; 0: try once. STATUS always tries once.
    #[serde(default, rename = "connectTimeoutSeconds")]
    pub connect_timeout_seconds: Option<u64>,
    #[serde(default)]
    pub ipam: Ipam,
    /// The vxnets this network's NICs come from, a subset of the agent's
    /// `vxnets`; absent: all of them. A NetworkAttachmentDefinition for a
    /// storage network names the storage vxnets here.
    #[serde(default)]
    pub vxnets: Option<Vec<String>>,
    /// Whether this network's attachment carries the pod's default route.
    /// Absent: it does when the pod has none yet (the first network a
    /// runtime or Multus attaches — the cluster network — gets it).
    #[serde(default, rename = "defaultRoute")]
    pub default_route: Option<bool>,
    /// This network's own configuration for the policy guests, in place of
    /// the agent's `[hooks.*] config`.
    #[serde(default)]
    pub hooks: NetworkHooks,
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
        if let Some(vxnets) = &self.vxnets {
            if vxnets.is_empty() {
                return invalid("network configuration: \"vxnets\" is empty; leave it out to use all of the agent's vxnets".into());
            }
            for (i, v) in vxnets.iter().enumerate() {
                if v.is_empty()
                    || v.len() > 64
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return invalid(format!(
                        "network configuration: \"vxnets\"[{i}] {v:?} is not a vxnet id"
                    ));
                }
                if vxnets[..i].contains(v) {
                    return invalid(format!("network configuration: \"vxnets\" names {v} twice"));
                }
            }
        }
        self.requested_ips()?;
        self.requested_mac()?;
        self.requested_bandwidth()?;
        Ok(())
    }

    /// The limits of the `bandwidth` capability, checked; `None`: none.
    pub fn requested_bandwidth(&self) -> Result<Option<Bandwidth>, CniError> {
        Bandwidth::from_runtime_config(self.runtime_config.bandwidth.as_ref())
    }

    /// The addresses of the `ips` capability, checked.
    pub fn requested_ips(&self) -> Result<Vec<Ipv4Addr>, CniError> {
        self.runtime_config
            .ips
            .iter()
            .map(|text| {
                let addr = text
                    .parse::<IpNet>()
                    .map(|n| n.addr())
                    .or_else(|_| text.parse::<IpAddr>());
                match addr {
                    Ok(IpAddr::V4(a)) => Ok(a),
                    _ => Err(CniError::new(
                        code::INVALID_CONFIG,
                        format!("runtimeConfig.ips: {text:?} is not an IPv4 address (hostnic NICs are IPv4)"),
                    )),
                }
            })
            .collect()
    }

    /// The MAC of the `mac` capability, in lowercase colon form, checked.
    pub fn requested_mac(&self) -> Result<Option<String>, CniError> {
        let Some(text) = self.runtime_config.mac.as_deref().filter(|m| !m.is_empty()) else {
            return Ok(None);
        };
        let parts: Vec<&str> = text.split([':', '-']).collect();
        if parts.len() != 6
            || !parts
                .iter()
                .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("runtimeConfig.mac: {text:?} is not a MAC address"),
            ));
        }
        Ok(Some(parts.join(":").to_ascii_lowercase()))
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let conf = |extra: &str| {
            NetConf::parse(
                format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"hostnic",{extra}}}"#)
                    .as_bytes(),
            )
        };
        let ips =
            conf(r#""runtimeConfig":{"ips":["10.0.0.1/24","10.0.0.2"],"mac":"52-54-00-AA-bb-01"}"#)
                .unwrap();
        assert_eq!(
            ips.requested_ips().unwrap(),
            [
                "10.0.0.1".parse::<Ipv4Addr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(
            ips.requested_mac().unwrap().as_deref(),
            Some("52:54:00:aa:bb:01")
        );
        for bad in [
            r#""runtimeConfig":{"ips":["fd00::1/64"]}"#,
            r#""runtimeConfig":{"ips":["ten"]}"#,
            r#""runtimeConfig":{"mac":"52:54:00:aa:bb"}"#,
            r#""vxnets":[]"#,
            r#""vxnets":["vxnet-a","vxnet-a"]"#,
            r#""vxnets":["vxnet a"]"#,
        ] {
            assert_eq!(conf(bad).unwrap_err().code, code::INVALID_CONFIG, "{bad}");
        }
        let storage =
            conf(r#""vxnets":["vxnet-b"],"defaultRoute":false,"runtimeConfig":{"ips":null}"#)
                .unwrap();
        assert_eq!(
            storage.vxnets.as_deref(),
            Some(&["vxnet-b".to_string()][..])
        );
        assert_eq!(storage.default_route, Some(false));
        // A network's guest configs: a string as it is, JSON as compact JSON.
        let hooks = conf(r#""hooks":{"vxnet":{"policy": "MostFree"},"routes":"{}","ip":null}"#)
            .unwrap()
            .hooks;
        assert_eq!(hooks.vxnet.as_deref(), Some(r#"{"policy":"MostFree"}"#));
        assert_eq!(hooks.routes.as_deref(), Some("{}"));
        assert_eq!(hooks.ip, None);
        assert_eq!(
            hooks.set().collect::<Vec<_>>(),
            [("vxnet", r#"{"policy":"MostFree"}"#), ("routes", "{}")]
        );
        let e = conf(r#""hooks":{"vxnets":{}}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("hooks") && e.msg.contains("vxnets"), "{e:?}");
        let ok = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"hostnic","ipam":{"routes":[{"dst":"10.96.0.0/12","gw":"0.0.0.0"}]},
                "runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":"b"},"portMappings":[]}}"#,
        )
        .unwrap();
        assert_eq!(ok.runtime_config.pod_annotations["a"], "b");
        assert_eq!(ok.ipam.routes[0].gw, Some("0.0.0.0".parse().unwrap()));
    }
}
