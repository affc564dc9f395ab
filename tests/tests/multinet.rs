//! Pods with several cloud NICs from several vxnets, as a multi-network
//! runtime (Multus, with hostnic as its delegate) asks for them: one CNI
//! call per network into the same pod, `eth0` for the cluster network, then
//! `net1`, `net2`, each with its own network config and vxnets.

use std::time::Duration;

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::{CallEnv, CniCall, Ns, PluginError, require_root, wait_for};
use serde_json::{Value, json};

const TIMERS: &str = "warm_min = 1\nwarm_max = 3\nreconcile_seconds = 1\ncold_add_wait_seconds = 10\nidle_seconds = 3600";

fn bed() -> CloudBed {
    CloudBed::new(SimConfig {
        nodes: 2,
        vxnets: vec![
            ("vxnet-pods".into(), "10.100.0.0/24".parse().unwrap()),
            ("vxnet-storage".into(), "10.101.0.0/24".parse().unwrap()),
            ("vxnet-admin".into(), "10.102.0.0/24".parse().unwrap()),
        ],
        ..SimConfig::default()
    })
    .unwrap()
}

/// A network's config on `node`: Multus hands a delegate its
/// NetworkAttachmentDefinition's `spec.config`, named after the NAD.
fn network(bed: &CloudBed, node: usize, name: &str, vxnet: &str) -> Value {
    let mut c = bed.netconf(node, "1.0.0", json!([]));
    c["name"] = json!(name);
    c["vxnets"] = json!([vxnet]);
    c
}

fn env<'a>(cid: &'a str, netns: &'a str, ifname: &'a str) -> CallEnv<'a> {
    CallEnv {
        container_id: cid,
        netns,
        ifname,
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=multi",
    }
}

fn add(cni: &CniCall, conf: &Value, e: &CallEnv) -> Result<Value, PluginError> {
    cni.add_retrying(conf, e)
}

fn ip_of(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

#[test]
fn a_pod_gets_a_nic_from_each_of_three_vxnets_with_one_default_route() {
    if !require_root("a_pod_gets_a_nic_from_each_of_three_vxnets_with_one_default_route") {
        return;
    }
    let bed = bed();
    let agent = bed.start_agent(0, TIMERS).unwrap();
    let _a1 = bed.start_agent(1, TIMERS).unwrap();
    let pod = Ns::new("mn").unwrap();
    let path = pod.path().display().to_string();
    let cluster = network(&bed, 0, "hostnic-cloud", "vxnet-pods");
    let storage = network(&bed, 0, "default/storage", "vxnet-storage");
    let mut mgmt = network(&bed, 0, "default/admin", "vxnet-admin");
    // Multus passes an annotation's `ips` as the `ips` capability.
    mgmt["runtimeConfig"] = json!({"ips": ["10.102.0.77/24"]});
    let calls = [
        (&cluster, "eth0", "10.100.0."),
        (&storage, "net1", "10.101.0."),
        (&mgmt, "net2", "10.102.0.77"),
    ];
    let cni = bed.hostnic(0);
    let mut macs = Vec::new();
    for (conf, ifname, want) in calls {
        let r = add(&cni, conf, &env("multi", &path, ifname))
            .unwrap_or_else(|e| panic!("ADD {ifname}: {e}\n{}", agent.log_text()));
        assert_eq!(r["interfaces"][0]["name"], ifname, "{r}");
        let ip = ip_of(&r);
        assert!(ip.starts_with(want), "{ifname} got {ip}, wanted {want}*");
        let default_routes = r["routes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|rt| rt["dst"] == "0.0.0.0/0")
            .count();
        assert_eq!(
            default_routes,
            usize::from(ifname == "eth0"),
            "{ifname}: {r}"
        );
        macs.push(r["interfaces"][0]["mac"].as_str().unwrap().to_string());
    }
    let distinct: std::collections::BTreeSet<_> = macs.iter().collect();
    assert_eq!(distinct.len(), 3, "three NICs: {macs:?}");

    // One default route, via the cluster network; each extra network has
    // its vxnet's connected route.
    let routes = pod.ip(&["-4", "route"]).unwrap();
    assert_eq!(routes.matches("default").count(), 1, "{routes}");
    assert!(
        routes.contains("default via 10.100.0.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("10.101.0.0/24 dev net1"), "{routes}");
    assert!(routes.contains("10.102.0.0/24 dev net2"), "{routes}");
    for gw in ["10.100.0.1", "10.101.0.1", "10.102.0.1"] {
        assert!(pod.ping(gw), "the pod cannot reach gateway {gw}\n{routes}");
    }

    // A pod on the other node in the storage vxnet is reached over net1.
    let peer = Ns::new("mnpeer").unwrap();
    let peer_path = peer.path().display().to_string();
    let peer_storage = network(&bed, 1, "default/storage", "vxnet-storage");
    let peer_cluster = network(&bed, 1, "hostnic-cloud", "vxnet-pods");
    let cni1 = bed.hostnic(1);
    add(&cni1, &peer_cluster, &env("peer", &peer_path, "eth0")).unwrap();
    let peer_ip = ip_of(&add(&cni1, &peer_storage, &env("peer", &peer_path, "net1")).unwrap());
    assert!(peer_ip.starts_with("10.101.0."), "{peer_ip}");
    assert!(pod.ping(&peer_ip), "no path over net1 to {peer_ip}");
    let via = pod.ip(&["-4", "route", "get", &peer_ip]).unwrap();
    assert!(via.contains("dev net1"), "{via}");

    // Each DEL releases its own attachment only. DEL answers before the
    // NIC is out of the pod (the release finishes in the background).
    cni.call("DEL", &storage, &env("multi", &path, "net1"))
        .unwrap()
        .unwrap();
    bed.settle(0);
    let links = pod.ip(&["-o", "link"]).unwrap();
    assert!(
        !links.contains("net1") && links.contains("net2") && links.contains("eth0"),
        "{links}"
    );
    for (conf, ifname, _) in [calls[0], calls[2]] {
        cni.call("DEL", conf, &env("multi", &path, ifname))
            .unwrap()
            .unwrap();
    }
    for (conf, ifname) in [(&peer_cluster, "eth0"), (&peer_storage, "net1")] {
        cni1.call("DEL", conf, &env("peer", &peer_path, ifname))
            .unwrap()
            .unwrap();
    }
    bed.settle(0);
    bed.settle(1);
    no_nic_left_unattached(&bed);
}

#[test]
fn a_network_cannot_reach_past_the_agents_vxnets_or_its_own() {
    if !require_root("a_network_cannot_reach_past_the_agents_vxnets_or_its_own") {
        return;
    }
    let bed = bed();
    let _agent = bed.start_agent(0, TIMERS).unwrap();
    let pod = Ns::new("mnbad").unwrap();
    let path = pod.path().display().to_string();
    let cni = bed.hostnic(0);

    // A NetworkAttachmentDefinition is a namespace's to write; the vxnets
    // it may use are the agent's, from the operator's config.
    let stranger = network(&bed, 0, "default/elsewhere", "vxnet-not-ours");
    let e = cni
        .call("ADD", &stranger, &env("bad", &path, "net1"))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(7), "{e}");
    assert!(
        e.msg.contains("vxnet-not-ours") && e.msg.contains("default/elsewhere"),
        "{e}"
    );

    // An address outside the network's vxnets.
    let mut wrong = network(&bed, 0, "default/storage", "vxnet-storage");
    wrong["runtimeConfig"] = json!({"ips": ["10.100.0.50"]});
    let e = cni
        .call("ADD", &wrong, &env("bad", &path, "net1"))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(7), "{e}");
    assert!(
        e.msg.contains("10.100.0.50") && e.msg.contains("vxnet-storage"),
        "{e}"
    );

    // A NIC the runtime names by MAC must be free on this node.
    let mut by_mac = network(&bed, 0, "default/storage", "vxnet-storage");
    by_mac["runtimeConfig"] = json!({"mac": "52:54:00:ee:ee:ee"});
    let e = cni
        .call("ADD", &by_mac, &env("bad", &path, "net1"))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(101), "{e}");
    assert!(
        e.msg.contains("52:54:00:ee:ee:ee") && e.msg.contains("vxnet-storage"),
        "{e}"
    );

    // Nothing was wired, recorded or leaked. The agent's warm NICs may
    // still be on their way (created, their attach waiting for the node's
    // next slot in the account's rate): a leak is a NIC that stays
    // unattached.
    let links = pod.ip(&["-o", "link"]).unwrap();
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    no_nic_left_unattached(&bed);
}

/// A network configures the vxnet guest its own way (its config's
/// `hooks`), within what the agent lets a network configure: two networks
/// over the same two vxnets, one on the agent's policy (FailRotate, which
/// stays on the first), one rotating on its own (RoundRotate), each with
/// its own rotation index.
#[test]
fn each_network_configures_its_own_vxnet_policy_within_what_the_agent_allows() {
    if !require_root("each_network_configures_its_own_vxnet_policy_within_what_the_agent_allows") {
        return;
    }
    let bed = bed();
    let agent = bed.start_agent(0, TIMERS).unwrap();
    let cni = bed.hostnic(0);
    let two = json!(["vxnet-storage", "vxnet-admin"]);
    let mut plain = network(&bed, 0, "default/plain", "vxnet-storage");
    plain["vxnets"] = two.clone();
    let mut spread = plain.clone();
    spread["name"] = json!("default/spread");
    spread["hooks"] = json!({"vxnet": {"policy": "RoundRotate"}});

    let pods: Vec<Ns> = (0..4)
        .map(|i| Ns::new(&format!("pn{i}")).unwrap())
        .collect();
    let mut got = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let path = pod.path().display().to_string();
        let cid = format!("pn{i}");
        let mut subnets = Vec::new();
        for (conf, ifname) in [(&spread, "net1"), (&plain, "net2")] {
            let r = add(&cni, conf, &env(&cid, &path, ifname))
                .unwrap_or_else(|e| panic!("pod {i} {ifname}: {e}\n{}", agent.log_text()));
            subnets.push(ip_of(&r).rsplit_once('.').unwrap().0.to_string());
        }
        got.push(subnets);
    }
    let want: Vec<Vec<&str>> = [
        ["10.101.0", "10.101.0"],
        ["10.102.0", "10.101.0"],
        ["10.101.0", "10.101.0"],
        ["10.102.0", "10.101.0"],
    ]
    .iter()
    .map(|p| p.to_vec())
    .collect();
    assert_eq!(got, want, "(spread, plain) subnets per pod");

    // The ip hook holds the tenant pools: the agent keeps it for itself.
    let pod = Ns::new("pnbad").unwrap();
    let path = pod.path().display().to_string();
    let mut own_ip = plain.clone();
    own_ip["hooks"] = json!({"ip": {"pools": {}}});
    let e = cni
        .call("ADD", &own_ip, &env("pnbad", &path, "net1"))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(7), "{e}");
    assert!(
        e.msg.contains("default/plain")
            && e.msg.contains("hooks.ip")
            && e.msg.contains("network_config"),
        "{e}"
    );
    // A config the guest refuses is refused with the guest's reason.
    let mut bad = plain.clone();
    bad["hooks"] = json!({"routes": {"metric": 5}});
    let e = cni
        .call("ADD", &bad, &env("pnbad", &path, "net1"))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(7), "{e}");
    assert!(
        e.msg.contains("hooks.routes") && e.msg.contains("metric"),
        "{e}"
    );
    let links = pod.ip(&["-o", "link"]).unwrap();
    assert_eq!(links.lines().count(), 1, "only lo: {links}");

    for (i, pod) in pods.iter().enumerate() {
        let path = pod.path().display().to_string();
        let cid = format!("pn{i}");
        for (conf, ifname) in [(&spread, "net1"), (&plain, "net2")] {
            cni.call("DEL", conf, &env(&cid, &path, ifname))
                .unwrap()
                .unwrap();
        }
    }
    bed.settle(0);
    no_nic_left_unattached(&bed);
}

/// No NIC the cloud has stays unattached: a leak. A warm NIC the agent
/// is still bringing (created, its attach waiting for the node's next
/// slot in the account's rate) is given up to 10 s.
fn no_nic_left_unattached(bed: &CloudBed) {
    wait_for("no NIC left unattached", Duration::from_secs(10), || {
        bed.leaked_nics().is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", bed.leaked_nics()));
}
