//! The result of an ADD, version-neutral as the agent answers it, and
//! encoded for the `cniVersion` the runtime asked for (appended to
//! `prevResult` when chained).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{SUPPORTED_VERSIONS, Version};

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
}
