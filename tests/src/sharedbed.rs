//! Shared-NIC mode's tests' common parts (`tests/tests/shared_*.rs`): a
//! bed of two VMs and two vxnets, pods as the runtime makes them through
//! the real `hostnic`, and what hostnic leaves on a node, read with `ip`.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::cloudbed::CloudBed;
use crate::cluster::{Cluster, Install};
use crate::controlplane::ControlPlane;
use crate::sim::SimConfig;
use crate::{CallEnv, Ns};

pub fn bed() -> CloudBed {
    CloudBed::new(SimConfig {
        vxnets: vec![
            ("vxnet-a".into(), "10.100.0.0/24".parse().unwrap()),
            ("vxnet-b".into(), "10.101.0.0/24".parse().unwrap()),
        ],
        ..SimConfig::default()
    })
    .unwrap()
}

/// Two VMs with kubelets, one vxnet `vxnet-pods` (10.100.0.0/24), and the
/// agents as the test run installs them (a test replaces them with
/// `kubebed::watching_agents` and its `[[shared]]`).
pub fn kubelet_cluster() -> Cluster {
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        vxnets: vec![("vxnet-pods".into(), "10.100.0.0/24".parse().unwrap())],
        ..SimConfig::default()
    })
    .unwrap();
    Cluster::start(bed, Install::Agents(String::new())).unwrap()
}

pub fn env<'a>(cid: &'a str, netns: &'a str) -> CallEnv<'a> {
    CallEnv {
        container_id: cid,
        netns,
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
    }
}

/// The network config of a pod in `vxnet` on `node`.
pub fn conf(bed: &CloudBed, node: usize, vxnet: &str) -> Value {
    let mut c = bed.netconf(node, "1.0.0", json!([]));
    c["vxnets"] = json!([vxnet]);
    c
}

/// A pod: its namespace, container id, and what ADD answered.
#[derive(Debug)]
pub struct Pod {
    pub ns: Ns,
    pub cid: String,
    pub result: Value,
}

impl Pod {
    pub fn ip(&self) -> String {
        self.result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    }

    pub fn path(&self) -> String {
        self.ns.path().display().to_string()
    }
}

pub fn add(bed: &CloudBed, node: usize, vxnet: &str, cid: &str) -> Pod {
    let ns = Ns::new("shm").unwrap();
    let path = ns.path().display().to_string();
    let result = bed
        .hostnic(node)
        .add_retrying(&conf(bed, node, vxnet), &env(cid, &path))
        .unwrap_or_else(|e| panic!("ADD {cid} in {vxnet} on node {node}: {e:?}"));
    Pod {
        ns,
        cid: cid.to_string(),
        result,
    }
}

pub fn del(bed: &CloudBed, node: usize, vxnet: &str, pod: &Pod) {
    bed.hostnic(node)
        .call("DEL", &conf(bed, node, vxnet), &env(&pod.cid, &pod.path()))
        .unwrap()
        .unwrap_or_else(|e| panic!("DEL {}: {e:?}", pod.cid));
}

pub fn check(bed: &CloudBed, node: usize, vxnet: &str, pod: &Pod) -> Result<Value, String> {
    let mut c = conf(bed, node, vxnet);
    c["prevResult"] = pod.result.clone();
    bed.hostnic(node)
        .call("CHECK", &c, &env(&pod.cid, &pod.path()))
        .unwrap()
        .map_err(|e| e.msg)
}

/// hostnic's pieces on a node: its veths, rules, host routes and proxy
/// entries, as `ip` lists them.
#[derive(Debug, PartialEq, Eq)]
pub struct Pieces {
    pub veths: usize,
    pub rules: usize,
    pub host_routes: usize,
    pub proxies: usize,
}

/// What a node has of hostnic's once every pod is gone.
pub const NOTHING: Pieces = Pieces {
    veths: 0,
    rules: 0,
    host_routes: 0,
    proxies: 0,
};

pub fn pieces(node: &Ns) -> Pieces {
    let count = |out: String, f: &dyn Fn(&str) -> bool| out.lines().filter(|l| f(l)).count();
    Pieces {
        veths: count(node.ip(&["-o", "link", "show"]).unwrap(), &|l| {
            l.split(": ").nth(1).is_some_and(|n| n.starts_with("hs"))
        }),
        rules: count(node.ip(&["rule", "show"]).unwrap(), &|l| {
            l.contains("proto 213")
        }),
        host_routes: count(
            node.ip(&["route", "show", "table", "main", "proto", "213"])
                .unwrap(),
            &|l| !l.trim().is_empty(),
        ),
        proxies: count(node.ip(&["neigh", "show", "proxy"]).unwrap(), &|l| {
            !l.trim().is_empty()
        }),
    }
}

/// The node's own network as the machine set it up: what hostnic must
/// never change.
pub fn own_network(node: &Ns) -> (String, String) {
    (
        node.ip(&["-4", "-o", "addr", "show", "dev", "eth0"])
            .unwrap(),
        node.ip(&["route", "show", "table", "main", "default"])
            .unwrap(),
    )
}

/// Both nodes' rules, routes and neighbours, for a failed ping's message.
pub fn routing(bed: &CloudBed) -> String {
    let mut out = String::new();
    for (n, node) in bed.sim.nodes.iter().enumerate() {
        for args in [
            &["rule"][..],
            &["route", "show", "table", "all", "proto", "213"],
            &["neigh"],
            &["neigh", "show", "proxy"],
        ] {
            out += &format!(
                "node {n}: ip {}\n{}\n",
                args.join(" "),
                node.ns.ip(args).unwrap_or_default()
            );
        }
    }
    out
}

/// The cloud NICs attached to `node`'s VM besides its primary.
pub fn nics_on(bed: &CloudBed, node: usize) -> usize {
    let instance = &bed.sim.nodes[node].instance;
    bed.sim.inspect()["nics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["instance"].as_str() == Some(instance.as_str()) && n["vxnet"] != "vxnet-mgmt")
        .count()
}

/// The name of `node`'s NIC in vxnet-a.
pub fn nic_in_a(node: &Ns) -> String {
    node.ip(&["-o", "-4", "addr", "show"])
        .unwrap()
        .lines()
        .find(|l| l.contains(" gw") && l.contains("10.100.0."))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("the node's NIC in vxnet-a")
        .to_string()
}

/// The HostnicBlocks in the API server that are blocks: (cidr, node).
pub fn blocks(cp: &ControlPlane) -> BTreeSet<(String, String)> {
    claims(cp)
        .iter()
        .filter(|b| b["spec"]["identity"].is_null())
        .map(|b| {
            (
                b["spec"]["cidr"].as_str().unwrap().to_string(),
                b["spec"]["node"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The HostnicBlocks that pin an address for a sticky identity, by
/// identity: their specs.
pub fn pins(cp: &ControlPlane) -> std::collections::BTreeMap<String, Value> {
    claims(cp)
        .into_iter()
        .filter_map(|b| {
            Some((
                b["spec"]["identity"].as_str()?.to_string(),
                b["spec"].clone(),
            ))
        })
        .collect()
}

fn claims(cp: &ControlPlane) -> Vec<Value> {
    let out = cp.kubectl(&["get", "hostnicblocks", "-o", "json"]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v["items"].as_array().unwrap().clone()
}

pub fn in_block(ip: &str, cidr: &str) -> bool {
    let net: ipnet::Ipv4Net = cidr.parse().unwrap();
    net.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap())
}

/// `hostnic-agent status --json` of node `node`'s agent.
pub fn status(bed: &CloudBed, node: usize) -> Value {
    bed.status(node).expect("hostnic-agent status --json")
}
