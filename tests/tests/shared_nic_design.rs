//! Issue 12's design (`docs/shared-nic.md`) checked on the strict simulated
//! SDN before it is built: a pod wired the shared way — a veth, a /32, the
//! node as next hop, source routing to the node's NIC in the vxnet and a
//! proxy neighbour entry there — talks with a pod on another VM through an
//! SDN that delivers only to the MACs it knows and drops spoofed sources.
//! The wiring is done here with `ip`, exactly as the note's table says;
//! the agent's shared mode will replace these commands with its own.

use std::time::Duration;

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::{CallEnv, Ns, require_root, wait_for};
use serde_json::json;

/// An address of the vxnet the simulated cloud does not hand out here
/// (it allocates from the bottom): what a node's block would give.
const SHARED: &str = "10.100.0.200";
/// The table of the node's NIC in the vxnet.
const TABLE: &str = "1001";

fn env<'a>(cid: &'a str, netns: &'a str) -> CallEnv<'a> {
    CallEnv {
        container_id: cid,
        netns,
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
    }
}

/// The MAC of link `dev` in `ns`.
fn mac_of(ns: &Ns, dev: &str) -> String {
    ns.ip(&["-o", "link", "show", dev])
        .unwrap()
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{dev} has no MAC"))
        .to_string()
}

#[test]
fn a_shared_mode_pod_reaches_another_vm_through_the_strict_sdn_only_by_its_proxy_entry() {
    if !require_root(
        "a_shared_mode_pod_reaches_another_vm_through_the_strict_sdn_only_by_its_proxy_entry",
    ) {
        return;
    }
    let bed = CloudBed::new(SimConfig::default()).unwrap();
    let timers = "warm_min = 0\nwarm_max = 2\nreconcile_seconds = 1\ncold_add_wait_seconds = 10";
    let _a0 = bed.start_agent(0, timers).unwrap();
    let _a1 = bed.start_agent(1, timers).unwrap();

    // Node 1: a pod with a NIC of its own (exclusive mode, today's).
    let other = Ns::new("shx").unwrap();
    let conf = bed.netconf(1, "1.0.0", json!([]));
    let r = bed
        .hostnic(1)
        .add_retrying(&conf, &env("x0", &other.path().display().to_string()))
        .unwrap();
    let exclusive = r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();

    // Node 0: its own NIC in the vxnet (the gateway NIC a `gw 0.0.0.0`
    // template makes), which shared pods will share.
    let anchor = Ns::new("sha").unwrap();
    let conf = bed.netconf(
        0,
        "1.0.0",
        json!([{"dst": "10.96.0.0/16", "gw": "0.0.0.0"}]),
    );
    bed.hostnic(0)
        .add_retrying(&conf, &env("a0", &anchor.path().display().to_string()))
        .unwrap();
    let node = &bed.sim.nodes[0].ns;
    let addrs = node.ip(&["-o", "-4", "addr", "show"]).unwrap();
    let gw_nic = addrs
        .lines()
        .find(|l| l.contains(" gw") && l.contains("10.100.0."))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no node NIC in the vxnet: {addrs}"))
        .to_string();

    // The shared pod, wired as the design note's table says.
    let pod = Ns::new("shp").unwrap();
    node.ip(&[
        "link",
        "add",
        "hs0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ])
    .unwrap();
    let host_mac = mac_of(node, "hs0");
    for args in [
        vec!["link", "set", "eth0", "up"],
        vec!["addr", "add", &format!("{SHARED}/32"), "dev", "eth0"],
        vec![
            "neigh",
            "add",
            "169.254.1.1",
            "lladdr",
            &host_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
        vec![
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
            "onlink",
        ],
    ] {
        pod.ip(&args).unwrap();
    }
    for args in [
        vec!["link", "set", "hs0", "up"],
        vec![
            "route",
            "add",
            &format!("{SHARED}/32"),
            "dev",
            "hs0",
            "scope",
            "link",
        ],
        vec![
            "rule", "add", "to", SHARED, "lookup", "main", "priority", "512",
        ],
        vec![
            "rule", "add", "from", SHARED, "lookup", TABLE, "priority", "1536",
        ],
        vec![
            "route",
            "add",
            "10.100.0.0/24",
            "dev",
            &gw_nic,
            "scope",
            "link",
            "table",
            TABLE,
        ],
        vec![
            "route",
            "add",
            "default",
            "via",
            "10.100.0.1",
            "dev",
            &gw_nic,
            "table",
            TABLE,
        ],
        vec!["neigh", "add", "proxy", SHARED, "dev", &gw_nic],
    ] {
        node.ip(&args).unwrap();
    }
    node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    node.exec(
        "sysctl",
        &["-qw", &format!("net.ipv4.conf.{gw_nic}.rp_filter=2")],
    )
    .unwrap();

    // Both ways across the SDN, and to the vxnet's gateway.
    assert!(
        pod.ping(&exclusive),
        "the shared pod cannot reach the pod on node 1"
    );
    assert!(
        other.ping(SHARED),
        "the pod on node 1 cannot reach the shared pod"
    );
    assert!(
        pod.ping("10.100.0.1"),
        "the shared pod cannot reach its vxnet's gateway"
    );
    // What answered for it on the vxnet was node 0's NIC, not a leaked
    // veth MAC (the SDN would have dropped that).
    let seen = other.ip(&["neigh", "show", SHARED]).unwrap();
    let nic_mac = mac_of(node, &gw_nic);
    assert!(
        seen.contains(&nic_mac),
        "{seen} (node 0's NIC is {nic_mac})"
    );

    // Without the proxy entry nothing on the vxnet answers for the
    // address: the SDN does not find the pod by itself.
    node.ip(&["neigh", "del", "proxy", SHARED, "dev", &gw_nic])
        .unwrap();
    other.ip(&["neigh", "flush", "all"]).unwrap();
    wait_for("the proxy entry gone", Duration::from_secs(5), || {
        !node
            .ip(&["neigh", "show", "proxy"])
            .unwrap_or_default()
            .contains(SHARED)
    })
    .unwrap();
    assert!(
        !other.ping(SHARED),
        "reached the shared pod without the node answering for it"
    );
}
