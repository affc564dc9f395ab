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

use std::net::Ipv4Addr;

use anyhow::Context;
use hostnic_policy::{IpRequest, Nic, Node, Pod, Route, RouteTemplate, Vxnet};
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

/// The facts of one hook call, in the policy runtime's own types (their
/// JSON shape is theirs: `hostnic_policy::Pod` and friends).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    #[serde(default)]
    pub pod: Pod,
    /// `nic_limit` 0 in an input file means the VM maximum, 64.
    #[serde(default, skip_serializing_if = "is_default")]
    pub node: Node,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Vxnet>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub random: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxnet: Option<Vxnet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<Nic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<RouteTemplate>,
}

impl Facts {
    pub fn for_vxnet(pod: &Pod, node: &Node, candidates: &[Vxnet], random: u64) -> Facts {
        Facts {
            pod: pod.clone(),
            node: node.clone(),
            candidates: candidates.to_vec(),
            random,
            ..Facts::default()
        }
    }

    pub fn for_ip(pod: &Pod, vxnet: &Vxnet) -> Facts {
        Facts {
            pod: pod.clone(),
            vxnet: Some(vxnet.clone()),
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
            pod: pod.clone(),
            vxnet: Some(vxnet.clone()),
            nic: Some(nic.clone()),
            node_gateway,
            templates: templates.to_vec(),
            ..Facts::default()
        }
    }

    pub fn pod(&self) -> Pod {
        self.pod.clone()
    }

    pub fn node(&self) -> Node {
        let n = &self.node;
        Node {
            nic_limit: if n.nic_limit == 0 { 64 } else { n.nic_limit },
            ..n.clone()
        }
    }

    pub fn candidates(&self) -> Vec<Vxnet> {
        self.candidates.iter().map(without_host_bits).collect()
    }

    pub fn vxnet(&self) -> anyhow::Result<Vxnet> {
        self.vxnet
            .as_ref()
            .map(without_host_bits)
            .context("the facts need \"vxnet\" (the pod's vxnet, shaped like a candidate)")
    }

    pub fn nic(&self) -> anyhow::Result<Nic> {
        self.nic
            .clone()
            .context("the facts need \"nic\": {\"mac\", \"ip\", \"prefix_len\"}")
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

/// A vxnet as a facts file may give it (`10.0.1.5/24`), as the hooks take
/// it: prefixes without host bits.
fn without_host_bits(v: &Vxnet) -> Vxnet {
    let mut v = v.clone();
    v.cidr = v.cidr.trunc();
    v.live.shared_range = v.live.shared_range.map(|r| r.trunc());
    v
}

/// The vxnet hook's answer as JSON: the ids, best first.
pub fn vxnets_json(order: &[String]) -> Value {
    json!(order)
}

/// The ip hook's answer as JSON: `"any"`, `{"exact": ip}`, `{"one_of":
/// [ip…]}`, `{"range": {"first", "last"}}` or `{"sticky": key}` (the
/// serde shape of [`IpRequest`]).
pub fn ip_json(r: &IpRequest) -> Value {
    serde_json::to_value(r).expect("an IpRequest is strings and addresses")
}

/// The routes hook's answer as JSON: `[{"dst", "gw"}]`, `gw` left out for
/// an on-link route (the serde shape of [`Route`]).
pub fn routes_json(routes: &[Route]) -> Value {
    serde_json::to_value(routes).expect("a route is addresses")
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
    use hostnic_policy::{Attachment, Owner, VxnetLive};

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

    /// Facts with every field, as the agent wrote them (decision log,
    /// `policy run` files) when it had its own copies of the policy types;
    /// these bytes are what those copies serialised.
    const EVERY_FIELD: &str = r#"{"pod":{"namespace":"default","name":"web-0","uid":"1111-2222","labels":{"app":"web"},"annotations":{"example.com/ip":"10.0.1.7"},"owner":{"kind":"StatefulSet","name":"web","ordinal":0},"attachment":{"network":"storage","interface":"net1","default_route":false}},"node":{"instance":"i-node1","zone":"pek3","nics_in_use":3,"nic_limit":64},"candidates":[{"id":"vxnet-a","cidr":"10.0.1.0/24","gateway":"10.0.1.1","free_ips":20,"warm_nics":1,"used_nics":2,"recent_failures":1,"attach_latency_ms":1200,"recent_failure_codes":[1400,2100],"free_ips_age_s":30,"shared_range":"10.0.1.64/26"},{"id":"vxnet-b","cidr":"10.0.2.0/24","gateway":"10.0.2.1","free_ips":0,"warm_nics":0,"used_nics":0,"recent_failures":0}],"random":7,"vxnet":{"id":"vxnet-a","cidr":"10.0.1.0/24","gateway":"10.0.1.1","free_ips":20,"warm_nics":1,"used_nics":2,"recent_failures":1,"attach_latency_ms":1200,"recent_failure_codes":[1400],"free_ips_age_s":30},"nic":{"mac":"52:54:00:12:34:56","ip":"10.0.1.7","prefix_len":24},"node_gateway":"10.0.1.9","templates":[{"dst":"10.96.0.0/12","gw":"0.0.0.0"},{"dst":"169.254.169.254/32"}]}"#;

    #[test]
    fn facts_in_the_recorded_format_round_trip_unchanged() {
        let facts: Facts = serde_json::from_str(EVERY_FIELD).unwrap();
        assert_eq!(serde_json::to_string(&facts).unwrap(), EVERY_FIELD);
        // And mean what they meant.
        assert_eq!(
            facts.pod().attachment,
            Attachment {
                network: "storage".into(),
                interface: "net1".into(),
                default_route: false,
            }
        );
        assert_eq!(facts.pod().owner.unwrap().ordinal, Some(0));
        let a = &facts.candidates()[0];
        assert_eq!(a.live.attach_latency_ms, Some(1200));
        assert_eq!(a.live.recent_failure_codes, [1400, 2100]);
        assert_eq!(a.live.free_ips_counted_s_ago, Some(30));
        assert_eq!(a.live.shared_range, Some("10.0.1.64/26".parse().unwrap()));
        assert_eq!(facts.candidates()[1].live, VxnetLive::default());
        assert_eq!(facts.nic().unwrap().prefix_len, 24);
        assert_eq!(facts.templates()[1].gw, None);

        // A decision-log record carries them unchanged too.
        let line = format!(
            r#"{{"at_ms":1,"container_id":"c1","ifname":"net1","hook":"routes","guest":"g","sha256":"ab","fallback":false,"facts":{EVERY_FIELD},"answer":[{{"dst":"10.96.0.0/12","gw":"10.0.1.9"}}],"elapsed_us":30}}"#
        );
        let record: crate::decisions::Recorded = serde_json::from_str(&line).unwrap();
        assert_eq!(serde_json::to_string(&record).unwrap(), line);

        // Written and read as before: empty facts, and a hand-written
        // file without most fields (a pod's only attachment, no measured
        // facts; a prefix with host bits, which the hooks get without).
        for (written, rewritten) in [
            (
                "{}",
                r#"{"pod":{"namespace":"","name":"","uid":"","annotations":{}}}"#,
            ),
            (
                r#"{"pod":{"name":"web-0","attachment":null},"vxnet":{"id":"vxnet-a","cidr":"10.0.1.5/24","gateway":"10.0.1.1"}}"#,
                r#"{"pod":{"namespace":"","name":"web-0","uid":"","annotations":{}},"vxnet":{"id":"vxnet-a","cidr":"10.0.1.5/24","gateway":"10.0.1.1","free_ips":0,"warm_nics":0,"used_nics":0,"recent_failures":0}}"#,
            ),
        ] {
            let facts: Facts = serde_json::from_str(written).unwrap();
            assert_eq!(serde_json::to_string(&facts).unwrap(), rewritten);
            assert_eq!(facts.pod().attachment, Attachment::default());
        }
        let minimal: Facts = serde_json::from_str(
            r#"{"vxnet":{"id":"vxnet-a","cidr":"10.0.1.5/24","gateway":"10.0.1.1"}}"#,
        )
        .unwrap();
        assert_eq!(
            minimal.vxnet().unwrap().cidr,
            "10.0.1.0/24".parse().unwrap()
        );
        assert_eq!(minimal.node().nic_limit, 64);
    }

    #[test]
    fn unknown_fields_are_errors_at_every_level() {
        let vxnet = r#""id":"v","cidr":"10.0.1.0/24","gateway":"10.0.1.1""#;
        for bad in [
            r#"{"pods":{}}"#.to_string(),
            r#"{"pod":{"owner":{"knd":"Job"}}}"#.to_string(),
            r#"{"pod":{"attachment":{"network":"n","interface":"net1","default_route":true,"x":1}}}"#.to_string(),
            r#"{"node":{"nic_limt":3}}"#.to_string(),
            format!(r#"{{"vxnet":{{{vxnet},"free_ip":3}}}}"#),
            // The measured facts go by the contract's names.
            format!(r#"{{"vxnet":{{{vxnet},"free_ips_counted_s_ago":3}}}}"#),
            r#"{"nic":{"mac":"m","ip":"10.0.1.7","prefix_len":24,"gw":"10.0.1.1"}}"#.to_string(),
            r#"{"templates":[{"dst":"10.96.0.0/12","via":"0.0.0.0"}]}"#.to_string(),
        ] {
            assert!(serde_json::from_str::<Facts>(&bad).is_err(), "{bad}");
        }
        // An attachment is all of it or nothing.
        let partial = r#"{"pod":{"attachment":{"network":"n"}}}"#;
        assert!(serde_json::from_str::<Facts>(partial).is_err());
    }

    #[test]
    fn answers_are_json_as_before() {
        let ip = |s: &str| -> Ipv4Addr { s.parse().unwrap() };
        for (answer, json) in [
            (IpRequest::Any, r#""any""#),
            (IpRequest::Exact(ip("10.0.1.5")), r#"{"exact":"10.0.1.5"}"#),
            (
                IpRequest::OneOf(vec![ip("10.0.1.5"), ip("10.0.1.6")]),
                r#"{"one_of":["10.0.1.5","10.0.1.6"]}"#,
            ),
            (
                IpRequest::Range {
                    first: ip("10.0.1.5"),
                    last: ip("10.0.1.9"),
                },
                r#"{"range":{"first":"10.0.1.5","last":"10.0.1.9"}}"#,
            ),
            (
                IpRequest::Sticky("default/web-0".into()),
                r#"{"sticky":"default/web-0"}"#,
            ),
        ] {
            assert_eq!(ip_json(&answer).to_string(), json);
        }
        let routes = [
            Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some(ip("10.0.1.1")),
            },
            Route {
                dst: "172.16.0.0/16".parse().unwrap(),
                gw: None,
            },
        ];
        assert_eq!(
            routes_json(&routes).to_string(),
            r#"[{"dst":"0.0.0.0/0","gw":"10.0.1.1"},{"dst":"172.16.0.0/16"}]"#
        );
        assert_eq!(routes_json(&[]).to_string(), "[]");
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
