//! A hook call as JSON: the facts a guest decides on and the answer it
//! gave. One shape serves three purposes, so that a decision the agent
//! recorded can be saved and run again by hand:
//!
//! - the input file of `hostnic-agent policy run` and `policy bench --input`;
//! - the agent's decision log (`policy decisions`), one record per call;
//! - `policy replay`, which runs a candidate module on recorded facts.
//!
//! ```json
//! {"pod": {"namespace": "default", "name": "web-0", "annotations": {}},
//!  "node": {"instance": "i-node1", "nics_in_use": 2, "nic_limit": 64},
//!  "candidates": [{"id": "vxnet-a", "cidr": "10.0.1.0/24", "gateway": "10.0.1.1"}],
//!  "random": 7}
//! ```
//!
//! The vxnet hook reads `pod`, `node`, `candidates` (in the order of the
//! agent's `vxnets`) and `random`; the ip hook `pod` and `vxnet`; the routes
//! hook `pod`, `vxnet`, `nic`, `node_gateway` and `templates`. A vxnet in
//! shared-NIC mode carries its `"shared_range"` (contract 0.1.3); without
//! one it is exclusive, as in every record written before.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::Context;
use hostnic_policy::{
    Attachment, IpRequest, Nic, Node, Owner, Pod, Route, RouteTemplate, Vxnet, VxnetLive,
};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Which of the three decisions.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum HookName {
    Vxnet,
    Ip,
    Routes,
}

impl HookName {
    pub fn name(self) -> &'static str {
        match self {
            HookName::Vxnet => "vxnet",
            HookName::Ip => "ip",
            HookName::Routes => "routes",
        }
    }
}

impl std::fmt::Display for HookName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// The facts of one hook call.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    #[serde(default)]
    pub pod: FactPod,
    #[serde(default, skip_serializing_if = "is_default")]
    pub node: FactNode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<FactVxnet>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub random: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxnet: Option<FactVxnet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<FactNic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<FactTemplate>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FactPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<FactOwner>,
    /// The attachment decided for; absent: the pod's only one (`eth0`,
    /// with the default route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachment: Option<FactAttachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactAttachment {
    pub network: String,
    pub interface: String,
    pub default_route: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FactOwner {
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<u32>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FactNode {
    pub instance: String,
    pub zone: String,
    pub nics_in_use: u32,
    /// 0 in an input file means the VM maximum, 64.
    pub nic_limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactVxnet {
    pub id: String,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub free_ips: u32,
    #[serde(default)]
    pub warm_nics: u32,
    #[serde(default)]
    pub used_nics: u32,
    #[serde(default)]
    pub recent_failures: u32,
    /// What the host had measured of it (`vxnet-facts`, 0.1.2); absent:
    /// nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_latency_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_failure_codes: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_ips_age_s: Option<u32>,
    /// The shared range its pods are addressed from, in shared-NIC mode
    /// (`vxnet-shared-range`, 0.1.3); absent: exclusive mode, as in every
    /// record written before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_range: Option<Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactNic {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactTemplate {
    pub dst: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<Ipv4Addr>,
}

impl Facts {
    pub fn for_vxnet(pod: &Pod, node: &Node, candidates: &[Vxnet], random: u64) -> Facts {
        Facts {
            pod: FactPod::from(pod),
            node: FactNode {
                instance: node.instance.clone(),
                zone: node.zone.clone(),
                nics_in_use: node.nics_in_use,
                nic_limit: node.nic_limit,
            },
            candidates: candidates.iter().map(FactVxnet::from).collect(),
            random,
            ..Facts::default()
        }
    }

    pub fn for_ip(pod: &Pod, vxnet: &Vxnet) -> Facts {
        Facts {
            pod: FactPod::from(pod),
            vxnet: Some(FactVxnet::from(vxnet)),
            ..Facts::default()
        }
    }

    pub fn for_routes(
        pod: &Pod,
        nic: &Nic,
        vxnet: &Vxnet,
        node_gateway: Option<Ipv4Addr>,
        templates: &[RouteTemplate],
    ) -> Facts {
        Facts {
            pod: FactPod::from(pod),
            vxnet: Some(FactVxnet::from(vxnet)),
            nic: Some(FactNic {
                mac: nic.mac.clone(),
                ip: nic.ip,
                prefix_len: nic.prefix_len,
            }),
            node_gateway,
            templates: templates
                .iter()
                .map(|t| FactTemplate {
                    dst: t.dst,
                    gw: t.gw,
                })
                .collect(),
            ..Facts::default()
        }
    }

    pub fn pod(&self) -> Pod {
        let p = &self.pod;
        Pod {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            uid: p.uid.clone(),
            labels: p.labels.clone(),
            annotations: p.annotations.clone(),
            owner: p.owner.as_ref().map(|o| Owner {
                kind: o.kind.clone(),
                name: o.name.clone(),
                ordinal: o.ordinal,
            }),
            attachment: p
                .attachment
                .as_ref()
                .map(|a| Attachment {
                    network: a.network.clone(),
                    interface: a.interface.clone(),
                    default_route: a.default_route,
                })
                .unwrap_or_default(),
        }
    }

    pub fn node(&self) -> Node {
        let n = &self.node;
        Node {
            instance: n.instance.clone(),
            zone: n.zone.clone(),
            nics_in_use: n.nics_in_use,
            nic_limit: if n.nic_limit == 0 { 64 } else { n.nic_limit },
        }
    }

    pub fn candidates(&self) -> Vec<Vxnet> {
        self.candidates.iter().map(FactVxnet::to_domain).collect()
    }

    pub fn vxnet(&self) -> anyhow::Result<Vxnet> {
        self.vxnet
            .as_ref()
            .map(FactVxnet::to_domain)
            .context("the facts need \"vxnet\" (the pod's vxnet, shaped like a candidate)")
    }

    pub fn nic(&self) -> anyhow::Result<Nic> {
        let n = self
            .nic
            .as_ref()
            .context("the facts need \"nic\": {\"mac\", \"ip\", \"prefix_len\"}")?;
        Ok(Nic {
            mac: n.mac.clone(),
            ip: n.ip,
            prefix_len: n.prefix_len,
        })
    }

    pub fn templates(&self) -> Vec<RouteTemplate> {
        self.templates
            .iter()
            .map(|t| RouteTemplate {
                dst: t.dst.trunc(),
                gw: t.gw,
            })
            .collect()
    }

    /// "namespace/name", or "-" for a pod the runtime did not name.
    pub fn pod_name(&self) -> String {
        match (self.pod.namespace.as_str(), self.pod.name.as_str()) {
            ("", "") => "-".to_string(),
            (ns, name) => format!("{ns}/{name}"),
        }
    }
}

impl From<&Pod> for FactPod {
    fn from(p: &Pod) -> Self {
        FactPod {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            uid: p.uid.clone(),
            labels: p.labels.clone(),
            annotations: p.annotations.clone(),
            owner: p.owner.as_ref().map(|o| FactOwner {
                kind: o.kind.clone(),
                name: o.name.clone(),
                ordinal: o.ordinal,
            }),
            attachment: (p.attachment != Attachment::default()).then(|| FactAttachment {
                network: p.attachment.network.clone(),
                interface: p.attachment.interface.clone(),
                default_route: p.attachment.default_route,
            }),
        }
    }
}

impl From<&Vxnet> for FactVxnet {
    fn from(v: &Vxnet) -> Self {
        FactVxnet {
            id: v.id.clone(),
            cidr: v.cidr,
            gateway: v.gateway,
            free_ips: v.free_ips,
            warm_nics: v.warm_nics,
            used_nics: v.used_nics,
            recent_failures: v.recent_failures,
            attach_latency_ms: v.live.attach_latency_ms,
            recent_failure_codes: v.live.recent_failure_codes.clone(),
            free_ips_age_s: v.live.free_ips_counted_s_ago,
            shared_range: v.live.shared_range,
        }
    }
}

impl FactVxnet {
    fn to_domain(&self) -> Vxnet {
        Vxnet {
            id: self.id.clone(),
            cidr: self.cidr.trunc(),
            gateway: self.gateway,
            free_ips: self.free_ips,
            warm_nics: self.warm_nics,
            used_nics: self.used_nics,
            recent_failures: self.recent_failures,
            live: VxnetLive {
                attach_latency_ms: self.attach_latency_ms,
                recent_failure_codes: self.recent_failure_codes.clone(),
                free_ips_counted_s_ago: self.free_ips_age_s,
                shared_range: self.shared_range.map(|r| r.trunc()),
            },
        }
    }
}

/// The vxnet hook's answer as JSON: the ids, best first.
pub fn vxnets_json(order: &[String]) -> Value {
    json!(order)
}

/// The ip hook's answer as JSON: `"any"`, `{"exact": ip}`, `{"one_of":
/// [ip…]}`, `{"range": {"first", "last"}}` or `{"sticky": key}`.
pub fn ip_json(r: &IpRequest) -> Value {
    match r {
        IpRequest::Any => json!("any"),
        IpRequest::Exact(ip) => json!({ "exact": ip }),
        IpRequest::OneOf(ips) => json!({ "one_of": ips }),
        IpRequest::Range { first, last } => json!({"range": {"first": first, "last": last}}),
        IpRequest::Sticky(key) => json!({ "sticky": key }),
    }
}

/// The routes hook's answer as JSON: `[{"dst", "gw"}]`.
pub fn routes_json(routes: &[Route]) -> Value {
    Value::Array(
        routes
            .iter()
            .map(|r| match r.gw {
                Some(gw) => json!({"dst": r.dst, "gw": gw}),
                None => json!({ "dst": r.dst }),
            })
            .collect(),
    )
}

/// An answer in one line, for people: `vxnet-a, vxnet-b`, `exact
/// 10.0.1.5`, `0.0.0.0/0 via 10.0.1.1; 10.96.0.0/12 via 10.0.1.9`.
pub fn show_answer(hook: HookName, answer: &Value) -> String {
    match (hook, answer) {
        (HookName::Vxnet, Value::Array(ids)) => ids
            .iter()
            .map(|i| i.as_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
            .join(", "),
        (HookName::Routes, Value::Array(routes)) => routes
            .iter()
            .map(|r| match r["gw"].as_str() {
                Some(gw) => format!("{} via {gw}", r["dst"].as_str().unwrap_or("?")),
                None => format!("{} on-link", r["dst"].as_str().unwrap_or("?")),
            })
            .collect::<Vec<_>>()
            .join("; "),
        (_, Value::String(s)) => s.clone(),
        (_, Value::Object(m)) if m.len() == 1 => {
            let (k, v) = m.iter().next().expect("one entry");
            format!("{} {}", k.replace('_', " "), compact(v))
        }
        _ => compact(answer),
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(compact).collect::<Vec<_>>().join(", "),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k} {}", compact(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vx(id: &str) -> Vxnet {
        Vxnet {
            id: id.into(),
            cidr: "10.0.1.0/24".parse().unwrap(),
            gateway: "10.0.1.1".parse().unwrap(),
            free_ips: 3,
            warm_nics: 1,
            used_nics: 2,
            recent_failures: 0,
            live: VxnetLive {
                attach_latency_ms: Some(1200),
                recent_failure_codes: vec![1400],
                free_ips_counted_s_ago: None,
                shared_range: None,
            },
        }
    }

    fn shared(id: &str) -> Vxnet {
        let mut v = vx(id);
        v.live.shared_range = Some("10.0.1.64/26".parse().unwrap());
        v
    }

    #[test]
    fn facts_round_trip_through_json() {
        let pod = Pod {
            namespace: "default".into(),
            name: "web-0".into(),
            annotations: [("a".to_string(), "b".to_string())].into(),
            owner: Some(Owner {
                kind: "StatefulSet".into(),
                name: "web".into(),
                ordinal: Some(0),
            }),
            attachment: Attachment {
                network: "storage".into(),
                interface: "net1".into(),
                default_route: false,
            },
            ..Pod::default()
        };
        let node = Node {
            instance: "i-1".into(),
            zone: "pek3".into(),
            nics_in_use: 3,
            nic_limit: 64,
        };
        let facts = Facts::for_vxnet(&pod, &node, &[vx("vxnet-a"), shared("vxnet-b")], 7);
        let text = serde_json::to_string(&facts).unwrap();
        let back: Facts = serde_json::from_str(&text).unwrap();
        assert_eq!(back, facts);
        assert_eq!(back.pod(), pod);
        assert_eq!(back.node(), node);
        assert_eq!(back.candidates(), vec![vx("vxnet-a"), shared("vxnet-b")]);
        assert!(back.vxnet().is_err());
        // A record from before 0.1.3 has no shared_range: exclusive mode.
        let old = r#"{"vxnet": {"id": "vxnet-a", "cidr": "10.0.1.0/24", "gateway": "10.0.1.1", "free_ips": 3}}"#;
        let old: Facts = serde_json::from_str(old).unwrap();
        assert_eq!(old.vxnet().unwrap().live.shared_range, None);
        let ip = Facts::for_ip(&pod, &shared("vxnet-b"));
        let text = serde_json::to_string(&ip).unwrap();
        assert!(text.contains(r#""shared_range":"10.0.1.64/26""#), "{text}");
        assert_eq!(
            serde_json::from_str::<Facts>(&text)
                .unwrap()
                .vxnet()
                .unwrap(),
            shared("vxnet-b")
        );
        // A typo in an input file is an error, not a silently empty field.
        let typo = r#"{"pod": {"nmae": "x"}}"#;
        assert!(serde_json::from_str::<Facts>(typo).is_err());
    }

    #[test]
    fn answers_read_as_one_line() {
        assert_eq!(
            show_answer(HookName::Vxnet, &vxnets_json(&["a".into(), "b".into()])),
            "a, b"
        );
        let ip = ip_json(&IpRequest::Exact("10.0.1.5".parse().unwrap()));
        assert_eq!(show_answer(HookName::Ip, &ip), "exact 10.0.1.5");
        assert_eq!(show_answer(HookName::Ip, &ip_json(&IpRequest::Any)), "any");
        let routes = routes_json(&[
            Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.0.1.1".parse().unwrap()),
            },
            Route {
                dst: "172.16.0.0/16".parse().unwrap(),
                gw: None,
            },
        ]);
        assert_eq!(
            show_answer(HookName::Routes, &routes),
            "0.0.0.0/0 via 10.0.1.1; 172.16.0.0/16 on-link"
        );
    }
}
