//! What the cluster's NetworkPolicies allow one pod, as address and port
//! matches: pure, so the spec's semantics are tested without a kernel or
//! an API server.
//!
//! A pod is isolated in a direction when a policy of its namespace selects
//! it and lists that direction in `policyTypes`; then only what some such
//! policy's rules allow passes (policies add up). Peers become addresses
//! here: a pod or namespace selector becomes the addresses of the pods it
//! selects, an ipBlock stays a prefix (minus its excepts). Named ports are
//! resolved on the pod that owns them: for ingress that is this pod, for
//! egress each destination pod, so a named egress port becomes exact
//! (address, protocol, port) triples.
//!
//! Egress to a Service: the pod addresses its ClusterIP, and the node
//! translates it to a backend only after the packet left the pod's
//! namespace. So each allowed destination pod also allows the ClusterIP
//! and port of every Service that sends that port to it (`services`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::select::{Labels, matches};

/// A transport protocol a policy or a port names.
pub use hostnic_netlink::nftables::Proto;

/// The API's spelling of a protocol (TCP when it names none); `None` for
/// one it does not define.
pub fn protocol(s: Option<&str>) -> Option<Proto> {
    match s.unwrap_or("TCP") {
        "TCP" => Some(Proto::Tcp),
        "UDP" => Some(Proto::Udp),
        "SCTP" => Some(Proto::Sctp),
        _ => None,
    }
}

/// A container port a pod declares with a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub proto: Proto,
    pub port: u16,
}

/// A pod as the policies see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `None` until the kubelet reports it (the pod is no peer yet).
    pub ip: Option<Ipv4Addr>,
    pub ports: Vec<NamedPort>,
}

/// A Service with a ClusterIP and a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    pub namespace: String,
    pub cluster_ip: Ipv4Addr,
    pub selector: Labels,
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub proto: Proto,
    pub port: u16,
    /// The backend's port: a number, or the name of a container port.
    pub target: IntOrString,
}

/// The cluster as the policies of one moment see it.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Shared with the watch's store, not copied.
    pub policies: Vec<Arc<NetworkPolicy>>,
    /// Namespace name → its labels.
    pub namespaces: BTreeMap<String, Labels>,
    /// Every pod on the pod network (hostNetwork pods are left out: their
    /// addresses are their nodes').
    pub pods: Vec<PodView>,
    pub services: Vec<ServiceView>,
}

/// Which ports of which protocol a rule admits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub proto: Proto,
    /// `None`: every port of the protocol.
    pub ports: Option<(u16, u16)>,
}

/// Who a rule admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods' addresses.
    Addrs(BTreeSet<Ipv4Addr>),
    /// An ipBlock: the prefix, minus the excepts.
    Block { cidr: Ipv4Net, except: Vec<Ipv4Net> },
}

/// One rule of one policy, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow {
    /// `namespace/name` of the policy, and the rule's place in it.
    pub policy: String,
    pub index: usize,
    pub what: Admits,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admits {
    /// `None` peers: from (to) anywhere; `None` ports: every port.
    Match {
        peers: Option<Vec<Peer>>,
        ports: Option<Vec<PortRange>>,
    },
    /// Exact (address, protocol, port) triples: egress to named ports,
    /// and to the Services in front of allowed pods.
    Triples(BTreeSet<(Ipv4Addr, Proto, u16)>),
}

/// One direction of a pod: `None` when no policy isolates it.
pub type Direction = Option<Vec<Allow>>;

/// What the policies allow one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRules {
    pub ingress: Direction,
    pub egress: Direction,
    /// `namespace/name` of the policies that select the pod.
    pub policies: Vec<String>,
    /// With egress isolated: the ClusterIPs judged by their backends
    /// alone (the triples), never by their own address — an ipBlock that
    /// happens to hold the Service range admits no Service by that.
    pub services: BTreeSet<Ipv4Addr>,
}

/// The rules of pod `namespace/labels` (its own ports resolve ingress's
/// named ports).
pub fn compile(cluster: &Cluster, pod: &PodView) -> PodRules {
    let mut out = PodRules::default();
    for policy in &cluster.policies {
        let meta = &policy.metadata;
        let Some(spec) = &policy.spec else { continue };
        if meta.namespace.as_deref() != Some(&pod.namespace)
            || !spec
                .pod_selector
                .as_ref()
                .is_none_or(|sel| matches(sel, &pod.labels))
        {
            continue;
        }
        let id = format!(
            "{}/{}",
            pod.namespace,
            meta.name.as_deref().unwrap_or_default()
        );
        let has_egress = spec.egress.is_some();
        let types: Vec<&str> = match &spec.policy_types {
            Some(t) if !t.is_empty() => t.iter().map(String::as_str).collect(),
            _ if has_egress => vec!["Ingress", "Egress"],
            _ => vec!["Ingress"],
        };
        if types.contains(&"Ingress") {
            let rules = out.ingress.get_or_insert_with(Vec::new);
            for (index, rule) in spec.ingress.iter().flatten().enumerate() {
                let ports = listed(rule.ports.as_deref()).map(|l| ranges(l, Some(pod)));
                rules.push(Allow {
                    policy: id.clone(),
                    index,
                    what: Admits::Match {
                        peers: peers(cluster, &pod.namespace, rule.from.as_deref()),
                        ports,
                    },
                });
            }
        }
        if types.contains(&"Egress") {
            let rules = out.egress.get_or_insert_with(Vec::new);
            for (index, rule) in spec.egress.iter().flatten().enumerate() {
                let to = peers(cluster, &pod.namespace, rule.to.as_deref());
                rules.extend(
                    egress(cluster, to, listed(rule.ports.as_deref()))
                        .into_iter()
                        .map(|what| Allow {
                            policy: id.clone(),
                            index,
                            what,
                        }),
                );
            }
        }
        out.policies.push(id);
    }
    if out.egress.is_some() {
        out.services = cluster.services.iter().map(|s| s.cluster_ip).collect();
    }
    out
}

/// An egress rule: its own match (numbered ports), exact triples for
/// its named ports, and the triples of the Services in front of the pods
/// and ports it admits.
fn egress(
    cluster: &Cluster,
    peers: Option<Vec<Peer>>,
    list: Option<&[NetworkPolicyPort]>,
) -> Vec<Admits> {
    let peer_ok = |ip: Ipv4Addr| {
        peers
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.admits(ip)))
    };
    let admits = |pod: &PodView, proto: Proto, port: u16| -> bool {
        pod.ip.is_some_and(peer_ok)
            && list.is_none_or(|l| ranges(l, Some(pod)).iter().any(|r| r.admits(proto, port)))
    };
    let mut out = Vec::new();
    let numbered: Vec<NetworkPolicyPort> = list
        .iter()
        .copied()
        .flatten()
        .filter(|p| !named(p))
        .cloned()
        .collect();
    if list.is_none() || !numbered.is_empty() {
        out.push(Admits::Match {
            peers: peers.clone(),
            ports: list.map(|_| ranges(&numbered, None)),
        });
    }
    let names: Vec<NetworkPolicyPort> = list
        .iter()
        .copied()
        .flatten()
        .filter(|p| named(p))
        .cloned()
        .collect();
    if !names.is_empty() {
        let triples: BTreeSet<_> = cluster
            .pods
            .iter()
            .filter_map(|pod| Some((pod, pod.ip.filter(|ip| peer_ok(*ip))?)))
            .flat_map(|(pod, ip)| {
                ranges(&names, Some(pod))
                    .into_iter()
                    .filter_map(move |r| Some((ip, r.proto, r.ports?.0)))
            })
            .collect();
        out.push(Admits::Triples(triples));
    }
    // A rule that admits everything needs no Service triples.
    if peers.is_none() && list.is_none() {
        return out;
    }
    let mut services = BTreeSet::new();
    for svc in &cluster.services {
        let backends: Vec<&PodView> = cluster
            .pods
            .iter()
            .filter(|p| p.namespace == svc.namespace && selects(&svc.selector, &p.labels))
            .collect();
        for sp in &svc.ports {
            let through = backends
                .iter()
                .any(|pod| target_port(pod, sp).is_some_and(|port| admits(pod, sp.proto, port)));
            if through {
                services.insert((svc.cluster_ip, sp.proto, sp.port));
            }
        }
    }
    if !services.is_empty() {
        out.push(Admits::Triples(services));
    }
    out
}

fn named(p: &NetworkPolicyPort) -> bool {
    matches!(p.port, Some(IntOrString::String(_)))
}

/// A rule's list of peers or ports; `None` (anyone, any port) for none.
fn listed<T>(list: Option<&[T]>) -> Option<&[T]> {
    list.filter(|l| !l.is_empty())
}

/// A Service's selector: its pairs must all hold; an empty one (a Service
/// without a selector) selects no pod.
fn selects(selector: &Labels, labels: &Labels) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The port a Service port sends to on `pod`.
fn target_port(pod: &PodView, sp: &ServicePort) -> Option<u16> {
    match &sp.target {
        IntOrString::Int(0) => Some(sp.port),
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => pod
            .ports
            .iter()
            .find(|p| &p.name == name && p.proto == sp.proto)
            .map(|p| p.port),
    }
}

/// A rule's peers as addresses; `None` (anyone) when it lists none.
fn peers(
    cluster: &Cluster,
    namespace: &str,
    list: Option<&[NetworkPolicyPeer]>,
) -> Option<Vec<Peer>> {
    let list = listed(list)?;
    Some(
        list.iter()
            .filter_map(|peer| {
                if let Some(block) = &peer.ip_block {
                    // An IPv6 block, or one the API server would refuse,
                    // admits no IPv4 address.
                    let cidr: Ipv4Net = block.cidr.parse().ok()?;
                    let except = block
                        .except
                        .iter()
                        .flatten()
                        .filter_map(|e| e.parse().ok())
                        .collect();
                    return Some(Peer::Block { cidr, except });
                }
                let in_namespace = |ns: &str| match &peer.namespace_selector {
                    Some(sel) => cluster
                        .namespaces
                        .get(ns)
                        .is_some_and(|labels| matches(sel, labels)),
                    None => ns == namespace,
                };
                let addrs = cluster
                    .pods
                    .iter()
                    .filter(|p| in_namespace(&p.namespace))
                    .filter(|p| {
                        peer.pod_selector
                            .as_ref()
                            .is_none_or(|sel| matches(sel, &p.labels))
                    })
                    .filter_map(|p| p.ip)
                    .collect();
                Some(Peer::Addrs(addrs))
            })
            .collect(),
    )
}

/// A rule's ports as ranges. Named ports resolve on `owner` (a name it
/// lacks, or no owner, admits nothing); a protocol the API does not
/// define admits nothing.
fn ranges(list: &[NetworkPolicyPort], owner: Option<&PodView>) -> Vec<PortRange> {
    let mut out = Vec::new();
    for p in list {
        let Some(proto) = protocol(p.protocol.as_deref()) else {
            continue;
        };
        match &p.port {
            None => out.push(PortRange { proto, ports: None }),
            Some(IntOrString::Int(n)) => {
                let Ok(first) = u16::try_from(*n) else {
                    continue;
                };
                let last = p
                    .end_port
                    .and_then(|e| u16::try_from(e).ok())
                    .filter(|e| *e >= first)
                    .unwrap_or(first);
                out.push(PortRange {
                    proto,
                    ports: Some((first, last)),
                });
            }
            Some(IntOrString::String(name)) => out.extend(
                owner
                    .iter()
                    .flat_map(|o| o.ports.iter())
                    .filter(|np| &np.name == name && np.proto == proto)
                    .map(|np| PortRange {
                        proto,
                        ports: Some((np.port, np.port)),
                    }),
            ),
        }
    }
    out
}

impl Peer {
    pub fn admits(&self, ip: Ipv4Addr) -> bool {
        match self {
            Peer::Addrs(a) => a.contains(&ip),
            Peer::Block { cidr, except } => {
                cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
            }
        }
    }
}

impl PortRange {
    fn admits(&self, proto: Proto, port: u16) -> bool {
        self.proto == proto && self.ports.is_none_or(|(a, b)| (a..=b).contains(&port))
    }
}

#[cfg(test)]
mod tests;
