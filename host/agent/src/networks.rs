//! Native multi-network (`[kubernetes] networks = true`), the words of it:
//! a pod's `k8s.v1.cni.cncf.io/networks` annotation as the Network
//! Plumbing Working Group's spec writes it, and a
//! NetworkAttachmentDefinition's config made into one more ADD for the
//! pod. The API server part is `apiserver/nads.rs`, the ADD and DEL of
//! every network `service/networks.rs`.

use std::net::{IpAddr, Ipv4Addr};

use hostnic_proto::cni::{self, NetConf, RouteTemplate};
use hostnic_proto::rpc::{AddRequest, Target};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

/// The pod annotation naming its extra networks.
pub const ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

/// The most extra networks one pod may ask for (a VM has 64 NICs).
const MAX_NETWORKS: usize = 16;

/// One network the annotation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The NetworkAttachmentDefinition's namespace (the pod's unless named).
    pub namespace: String,
    pub name: String,
    /// The pod's interface for it: asked for, or `net<i>` by position.
    pub interface: String,
    /// The addresses asked for (`ips`).
    pub ips: Vec<Ipv4Addr>,
    /// The NIC asked for (`mac`).
    pub mac: Option<String>,
    /// `default-route`: this network carries the pod's default route, via
    /// this gateway (none: its vxnet's).
    pub default_route: Option<Option<Ipv4Addr>>,
}

impl Selection {
    /// `namespace/name`: the attachment's network.
    pub fn network(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// An element of the annotation's JSON form. Keys hostnic has no use for
/// (`cni-args`, `portMappings`, `bandwidth`, ...) are ignored, as other
/// implementations of the spec ignore what they do not support.
#[derive(Debug, Deserialize)]
struct Element {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default, rename = "default-route")]
    default_route: Option<Vec<String>>,
}

/// Reads the annotation: the JSON list of selection elements, or the short
/// form `[namespace/]name[@interface], ...`. `pod_namespace` is the default
/// namespace. Errors name the problem in the annotation's terms.
pub fn parse(text: &str, pod_namespace: &str) -> Result<Vec<Selection>, String> {
    let text = text.trim();
    let elements: Vec<Element> = if text.starts_with('[') {
        serde_json::from_str(text).map_err(|e| format!("annotation {ANNOTATION}: {e}"))?
    } else {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                let (rest, interface) = match item.split_once('@') {
                    Some((r, i)) => (r, Some(i.to_string())),
                    None => (item, None),
                };
                let (namespace, name) = match rest.split_once('/') {
                    Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
                    None => (None, rest.to_string()),
                };
                Element {
                    name,
                    namespace,
                    interface,
                    ips: Vec::new(),
                    mac: None,
                    default_route: None,
                }
            })
            .collect()
    };
    if elements.len() > MAX_NETWORKS {
        return Err(format!(
            "annotation {ANNOTATION} names {} networks; at most {MAX_NETWORKS}",
            elements.len()
        ));
    }
    let mut out: Vec<Selection> = Vec::with_capacity(elements.len());
    for (i, e) in elements.into_iter().enumerate() {
        let namespace = e.namespace.unwrap_or_else(|| pod_namespace.to_string());
        for (what, v) in [("name", &e.name), ("namespace", &namespace)] {
            if !is_dns_label(v) {
                return Err(format!(
                    "annotation {ANNOTATION}: network {}: {what} {v:?} is not a Kubernetes object name",
                    i + 1
                ));
            }
        }
        let interface = e.interface.unwrap_or_else(|| format!("net{}", i + 1));
        cni::validate_ifname(&interface)
            .map_err(|err| format!("annotation {ANNOTATION}: network {}: {}", e.name, err.msg))?;
        if interface == "eth0" || out.iter().any(|s| s.interface == interface) {
            return Err(format!(
                "annotation {ANNOTATION}: interface {interface} is asked for twice"
            ));
        }
        let ips = e
            .ips
            .iter()
            .map(|t| {
                ipv4(t).ok_or_else(|| {
                    format!(
                        "annotation {ANNOTATION}: network {}: ips {t:?} is not an IPv4 address",
                        e.name
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let default_route = match e.default_route {
            None => None,
            Some(gws) if gws.is_empty() => Some(None),
            Some(gws) if gws.len() == 1 => Some(Some(ipv4(&gws[0]).ok_or_else(|| {
                format!(
                    "annotation {ANNOTATION}: network {}: default-route {:?} is not an IPv4 address",
                    e.name, gws[0]
                )
            })?)),
            Some(_) => {
                return Err(format!(
                    "annotation {ANNOTATION}: network {}: default-route lists several gateways; a pod has one default route",
                    e.name
                ));
            }
        };
        if default_route.is_some() && out.iter().any(|s| s.default_route.is_some()) {
            return Err(format!(
                "annotation {ANNOTATION}: default-route is asked for on two networks; a pod has one default route"
            ));
        }
        out.push(Selection {
            namespace,
            name: e.name,
            interface,
            ips,
            mac: e.mac,
            default_route,
        });
    }
    Ok(out)
}

fn ipv4(text: &str) -> Option<Ipv4Addr> {
    let addr = text
        .parse::<IpNet>()
        .map(|n| n.addr())
        .or_else(|_| text.parse::<IpAddr>())
        .ok()?;
    match addr {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// An RFC 1123 label, as namespaces and most object names are.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// A NetworkAttachmentDefinition's `spec.config` as hostnic's network
/// config: a single plugin config of `"type": "hostnic"`, or a conflist of
/// exactly that one plugin. Anything else is another plugin's network,
/// which hostnic does not run (Multus does).
pub fn netconf(nad: &str, config: &str) -> Result<NetConf, String> {
    let refuse = |what: String| format!("NetworkAttachmentDefinition {nad}: {what}");
    let mut v: Value = serde_json::from_str(config)
        .map_err(|e| refuse(format!("spec.config is not JSON: {e}")))?;
    let Value::Object(top) = &mut v else {
        return Err(refuse("spec.config is not a JSON object".into()));
    };
    let mut conf = match top.remove("plugins") {
        Some(Value::Array(mut plugins)) if plugins.len() == 1 => {
            let mut plugin = plugins.remove(0);
            for key in ["cniVersion", "name"] {
                if let (Some(val), Value::Object(p)) = (top.get(key), &mut plugin) {
                    p.entry(key).or_insert_with(|| val.clone());
                }
            }
            plugin
        }
        Some(_) => {
            return Err(refuse(
                "spec.config is a conflist of several plugins; hostnic's own multi-network attaches single hostnic networks (chain plugins through Multus)".into(),
            ));
        }
        None => v,
    };
    let Value::Object(c) = &mut conf else {
        return Err(refuse("the plugin config is not a JSON object".into()));
    };
    match c.get("type").and_then(Value::as_str) {
        Some("hostnic") => {}
        other => {
            return Err(refuse(format!(
                "its config is of type {}, not hostnic; hostnic's own multi-network attaches hostnic networks only (use Multus for others)",
                other.unwrap_or("(none)")
            )));
        }
    }
    let short = nad.rsplit('/').next().unwrap_or(nad);
    c.entry("name").or_insert_with(|| Value::from(short));
    let bytes = serde_json::to_vec(&conf).expect("a JSON value serialises");
    NetConf::parse(&bytes).map_err(|e| refuse(e.msg))
}

/// The ADD for `sel` in the pod of `primary`, with the network's config.
/// A `default-route` gateway becomes a prefix-0 route template.
pub fn request(primary: &AddRequest, sel: &Selection, conf: &NetConf) -> AddRequest {
    let mut routes = conf.ipam.routes.clone();
    if let Some(Some(gw)) = sel.default_route {
        routes.retain(|t| t.dst.prefix_len() != 0);
        routes.insert(
            0,
            RouteTemplate {
                dst: "0.0.0.0/0".parse().expect("a valid literal"),
                gw: Some(IpAddr::V4(gw)),
            },
        );
    }
    AddRequest {
        target: Target {
            network: sel.network(),
            container_id: primary.target.container_id.clone(),
            ifname: sel.interface.clone(),
            netns: primary.target.netns.clone(),
        },
        pod: primary.pod.clone(),
        mtu: conf.mtu.or(primary.mtu),
        routes,
        vxnets: conf.vxnets.clone(),
        default_route: Some(sel.default_route.is_some()),
        ips: sel.ips.clone(),
        mac: sel.mac.clone(),
        // The runtime's limits are the cluster network's interface's.
        bandwidth: None,
        hooks: conf.hooks.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_form_names_networks_and_interfaces() {
        let s = parse(" storage@net1, team-b/mgmt , data", "team-a").unwrap();
        let got: Vec<(String, String)> = s
            .iter()
            .map(|s| (s.network(), s.interface.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("team-a/storage".to_string(), "net1".to_string()),
                ("team-b/mgmt".to_string(), "net2".to_string()),
                ("team-a/data".to_string(), "net3".to_string()),
            ]
        );
        assert!(
            s.iter()
                .all(|s| s.default_route.is_none() && s.ips.is_empty())
        );
    }

    #[test]
    fn the_json_form_carries_ips_mac_and_the_default_route() {
        let s = parse(
            r#"[{"name": "storage", "interface": "stor0", "ips": ["10.101.0.7/24"], "mac": "52:54:00:aa:bb:cc",
                 "cni-args": {"x": 1}},
                {"name": "mgmt", "namespace": "ops", "default-route": ["10.102.0.254"]}]"#,
            "default",
        )
        .unwrap();
        assert_eq!(s[0].interface, "stor0");
        assert_eq!(s[0].ips, ["10.101.0.7".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(s[0].mac.as_deref(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(s[1].network(), "ops/mgmt");
        assert_eq!(s[1].interface, "net2");
        assert_eq!(
            s[1].default_route,
            Some(Some("10.102.0.254".parse().unwrap()))
        );
    }

    #[test]
    fn bad_annotations_are_refused_naming_the_problem() {
        for (text, want) in [
            ("Storage", "is not a Kubernetes object name"),
            ("a@net1, b@net1", "net1 is asked for twice"),
            ("a@eth0", "eth0 is asked for twice"),
            (
                r#"[{"name": "a", "ips": ["fd00::1"]}]"#,
                "is not an IPv4 address",
            ),
            (
                r#"[{"name": "a", "default-route": []}, {"name": "b", "default-route": []}]"#,
                "two networks",
            ),
            (
                r#"[{"name": "a", "default-route": ["10.0.0.1", "10.0.0.2"]}]"#,
                "several gateways",
            ),
            (r#"[{"nam": "a"}]"#, "missing field `name`"),
            ("a@this-name-is-far-too-long", "longer than 15 bytes"),
        ] {
            let e = parse(text, "default").unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let many = (0..17)
            .map(|i| format!("n{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse(&many, "default").unwrap_err().contains("at most 16"));
    }

    #[test]
    fn a_nad_config_is_a_hostnic_network_or_refused() {
        let conf = netconf(
            "default/storage",
            r#"{"cniVersion": "1.0.0", "type": "hostnic", "vxnets": ["vxnet-s"], "ipam": {"routes": [{"dst": "10.8.0.0/16"}]}}"#,
        )
        .unwrap();
        assert_eq!(conf.name, "storage");
        assert_eq!(conf.vxnets.as_deref(), Some(&["vxnet-s".to_string()][..]));
        let list = netconf(
            "default/storage",
            r#"{"cniVersion": "1.0.0", "name": "stor", "plugins": [{"type": "hostnic"}]}"#,
        )
        .unwrap();
        assert_eq!(
            (list.name.as_str(), list.cni_version.as_str()),
            ("stor", "1.0.0")
        );
        for (config, want) in [
            (
                r#"{"cniVersion": "1.0.0", "type": "macvlan"}"#,
                "of type macvlan",
            ),
            (
                r#"{"cniVersion": "1.0.0", "plugins": [{"type": "hostnic"}, {"type": "tuning"}]}"#,
                "several plugins",
            ),
            ("{", "not JSON"),
            (
                r#"{"cniVersion": "1.0.0", "type": "hostnic", "vxnets": []}"#,
                "\"vxnets\" is empty",
            ),
        ] {
            let e = netconf("default/x", config).unwrap_err();
            assert!(
                e.starts_with("NetworkAttachmentDefinition default/x: ") && e.contains(want),
                "{e}"
            );
        }
    }

    #[test]
    fn a_selection_becomes_an_add_of_its_own() {
        let primary: AddRequest = serde_json::from_value(serde_json::json!({
            "target": {"network": "hostnic", "container_id": "c1", "ifname": "eth0", "netns": "/run/netns/p"},
            "mtu": 1500,
        }))
        .unwrap();
        let sel = &parse(
            r#"[{"name": "mgmt", "default-route": ["10.102.0.254"]}]"#,
            "ops",
        )
        .unwrap()[0];
        let conf = netconf(
            "ops/mgmt",
            r#"{"cniVersion": "1.0.0", "type": "hostnic", "ipam": {"routes": [{"dst": "0.0.0.0/0", "gw": "10.102.0.1"}]},
                "hooks": {"vxnet": {"policy": "RoundRotate"}}}"#,
        )
        .unwrap();
        let req = request(&primary, sel, &conf);
        assert_eq!(req.target.network, "ops/mgmt");
        assert_eq!(
            (req.target.container_id.as_str(), req.target.ifname.as_str()),
            ("c1", "net1")
        );
        assert_eq!(req.default_route, Some(true));
        assert_eq!(req.mtu, Some(1500));
        // The annotation's gateway replaces the config's default route.
        assert_eq!(req.routes.len(), 1);
        assert_eq!(req.routes[0].gw, Some("10.102.0.254".parse().unwrap()));
        // The NAD's own guest config goes with its attachment.
        assert_eq!(
            req.hooks.vxnet.as_deref(),
            Some(r#"{"policy":"RoundRotate"}"#)
        );
    }
}
