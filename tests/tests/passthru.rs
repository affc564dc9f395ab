//! The `passthru` wiring on a real kernel: the NIC stays on the node and
//! the pod gets a passthru macvlan of it, made in the pod's namespace.
//! What could break with it: the neighbours (the gateway learns the pod at
//! the NIC's MAC), two children of two NICs on one node reaching each
//! other through the wire, the lower's promiscuity after DEL, a DEL after
//! the namespace is gone, CHECK, an agent restarted or killed mid-ADD and
//! mid-DEL, and across two simulated VMs through the strict SDN, with
//! Services through the node and a NIC vanishing under its pod.

use std::collections::BTreeSet;
use std::time::Duration;

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::{
    CallEnv, GATEWAY, Ns, Testbed, err_code, ok, parked_name, require_root, wait_for,
};
use serde_json::{Value, json};

const SERVICE_ROUTES: &str = r#"[{"dst": "10.96.0.0/12", "gw": "0.0.0.0"}]"#;

fn env<'a>(cid: &'a str, netns: &'a str) -> CallEnv<'a> {
    CallEnv {
        container_id: cid,
        netns,
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=u1",
    }
}

/// A testbed whose agent wires `passthru`.
fn passthru_bed(n: usize) -> Testbed {
    let mut tb = Testbed::new(n).unwrap();
    tb.wiring = Some("passthru".into());
    tb
}

/// `ip -d -o link show dev NAME` in `ns` (empty if there is no such link).
fn link_details(ns: &Ns, name: &str) -> String {
    ns.ip(&["-d", "-o", "link", "show", "dev", name])
        .unwrap_or_default()
}

/// The lower's promiscuity count on the node, as the kernel reports it.
fn promiscuity(tb: &Testbed, mac: &str) -> u32 {
    let d = link_details(&tb.node, &parked_name(mac));
    d.split_whitespace()
        .skip_while(|w| *w != "promiscuity")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no promiscuity in {d:?}"))
}

/// The pod's interface is a passthru macvlan carrying the NIC's MAC, and
/// the NIC is on the node, up, unaddressed and held promiscuous by it.
fn assert_child_of(tb: &Testbed, pod: &Ns, mac: &str) {
    let child = link_details(pod, "eth0");
    assert!(
        child.contains("macvlan mode passthru") && child.contains(mac),
        "the pod's eth0 is not a passthru macvlan of {mac}: {child}"
    );
    let lower = link_details(&tb.node, &parked_name(mac));
    assert!(
        lower.contains(",UP") || lower.contains("<UP"),
        "the NIC is not up on the node: {lower}"
    );
    assert_eq!(promiscuity(tb, mac), 1, "{lower}");
    let addrs = tb
        .node
        .ip(&["-o", "addr", "show", "dev", &parked_name(mac)])
        .unwrap();
    assert!(
        addrs.trim().is_empty(),
        "the node keeps addresses on a lent NIC: {addrs}"
    );
}

/// The NIC is parked as `move` leaves it: down, no child, no promiscuity.
fn assert_parked(tb: &Testbed, mac: &str) {
    assert!(
        tb.parked_macs().unwrap().contains(&mac.to_string()),
        "{mac} is not parked"
    );
    let lower = link_details(&tb.node, &parked_name(mac));
    assert!(!lower.contains(",UP") && !lower.contains("<UP"), "{lower}");
    assert_eq!(promiscuity(tb, mac), 0, "{lower}");
}

/// Pod `c1` added in a namespace named `name` whose path then goes, so
/// only the returned descriptor keeps it (and the child in it) alive:
/// the pod's MAC and that descriptor.
fn pod_out_of_reach(
    cni: &hostnic_testbed::CniCall,
    conf: &Value,
    name: &str,
) -> (String, std::fs::File) {
    let pod = Ns::new(name).unwrap();
    let path = pod.path().display().to_string();
    let mac = mac_of(&ok(cni.call("ADD", conf, &env("c1", &path))));
    let held = std::fs::File::open(&path).unwrap();
    drop(pod);
    (mac, held)
}

/// Waits until no child holds NIC `mac` (its namespace went with it).
fn wait_childless(tb: &Testbed, mac: &str) {
    wait_for(
        "the child to go with its namespace",
        Duration::from_secs(10),
        || promiscuity(tb, mac) == 0,
    )
    .unwrap();
}

fn mac_of(r: &Value) -> String {
    r["interfaces"][0]["mac"].as_str().unwrap().to_string()
}

fn ip_of(r: &Value) -> String {
    let a = r["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

#[test]
fn passthru_pods_reach_the_gateway_and_each_other_and_del_leaves_the_nic_as_found() {
    if !require_root(
        "passthru_pods_reach_the_gateway_and_each_other_and_del_leaves_the_nic_as_found",
    ) {
        return;
    }
    let tb = passthru_bed(3);
    let agent = tb.start_agent().unwrap();
    let default_before = tb.node_default_route().unwrap();
    let cni = tb.hostnic();
    let conf = tb.netconf("1.0.0", serde_json::from_str(SERVICE_ROUTES).unwrap());
    let p1 = Ns::new("pt1").unwrap();
    let p2 = Ns::new("pt2").unwrap();
    let p1path = p1.path().display().to_string();
    let p2path = p2.path().display().to_string();

    let r1 = ok(cni.call("ADD", &conf, &env("c1", &p1path)));
    let r2 = ok(cni.call("ADD", &conf, &env("c2", &p2path)));
    let (mac1, mac2) = (mac_of(&r1), mac_of(&r2));
    assert_ne!(mac1, mac2);
    assert_eq!(r1["interfaces"][0]["name"], "eth0");
    assert_eq!(r1["interfaces"][0]["sandbox"], p1path);
    assert_child_of(&tb, &p1, &mac1);
    assert_child_of(&tb, &p2, &mac2);
    let routes = p1.ip(&["route"]).unwrap();
    assert!(
        routes.contains(&format!("default via {GATEWAY} dev eth0"))
            && routes.contains(&format!("10.96.0.0/12 via {GATEWAY} dev eth0")),
        "{routes}"
    );
    let mtu = link_details(&p1, "eth0");
    assert!(mtu.contains("mtu 1500"), "{mtu}");

    // The gateway learns the pod at the NIC's MAC (the one the SDN knows).
    assert!(
        p1.ping(GATEWAY),
        "pod1 cannot ping its gateway\n{}",
        agent.log_text()
    );
    let neigh = tb.wire.ip(&["neigh", "show", &ip_of(&r1)]).unwrap();
    assert!(
        neigh.contains(&mac1),
        "the gateway has the pod at another MAC: {neigh}"
    );
    // Two children of two NICs on one node reach each other over the wire.
    assert!(
        p1.ping(&ip_of(&r2)),
        "pod1 cannot ping pod2 on the same node"
    );
    let neigh = p2.ip(&["neigh", "show", &ip_of(&r1)]).unwrap();
    assert!(neigh.contains(&mac1), "{neigh}");

    // CHECK passes, and fails once the pod's interface lost its address.
    let mut check = conf.clone();
    check["prevResult"] = r1.clone();
    ok(cni.call("CHECK", &check, &env("c1", &p1path)));
    p1.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
    assert_eq!(
        err_code(cni.call("CHECK", &check, &env("c1", &p1path))),
        102
    );

    // DEL deletes the child; the NIC is parked as found (promiscuity 0)
    // and warm again at once. DEL again and without a netns are fine.
    ok(cni.call("DEL", &conf, &env("c1", &p1path)));
    tb.settle();
    assert!(
        link_details(&p1, "eth0").is_empty(),
        "the child outlived DEL"
    );
    assert_parked(&tb, &mac1);
    ok(cni.call("DEL", &conf, &env("c1", &p1path)));
    ok(cni.call("DEL", &conf, &env("c1", "")));
    let p3 = Ns::new("pt3").unwrap();
    let p3path = p3.path().display().to_string();
    let r3 = ok(cni.call("ADD", &conf, &env("c3", &p3path)));
    assert_child_of(&tb, &p3, &mac_of(&r3));
    assert!(p3.ping(GATEWAY));

    // The pod's namespace goes first (the child with it): DEL finds the
    // child gone and parks the NIC.
    drop(p2);
    ok(cni.call("DEL", &conf, &env("c2", &p2path)));
    tb.settle();
    assert_parked(&tb, &mac2);

    // GC with nothing valid releases the last pod's NIC.
    let mut gc = tb.netconf("1.1.0", json!([]));
    gc["cni.dev/valid-attachments"] = json!([]);
    ok(cni.call("GC", &gc, &CallEnv::default()));
    tb.settle();
    assert!(link_details(&p3, "eth0").is_empty(), "GC left the child");
    for nic in &tb.nics {
        assert_parked(&tb, &nic.mac);
    }
    assert!(tb.records().is_empty(), "{:?}", tb.records());
    assert_eq!(tb.node_default_route().unwrap(), default_before);
}

/// DEL without a netns, while the pod's namespace lives on out of the
/// agent's reach (its path gone, someone still holding it), cannot delete
/// the child: DEL succeeds, the record goes, and the NIC is out of use —
/// never handed to a second pod while the first one's child holds it —
/// until that namespace goes. Then the next ADD finds it free.
#[test]
fn a_nic_held_by_a_child_out_of_reach_is_out_of_use_until_its_namespace_goes() {
    if !require_root("a_nic_held_by_a_child_out_of_reach_is_out_of_use_until_its_namespace_goes") {
        return;
    }
    let tb = passthru_bed(1);
    let _agent = tb.start_agent().unwrap();
    let cni = tb.hostnic();
    let conf = tb.netconf("1.0.0", json!([]));
    let (mac, held) = pod_out_of_reach(&cni, &conf, "ptr");
    ok(cni.call("DEL", &conf, &env("c1", "")));
    tb.settle();
    assert!(tb.records().is_empty(), "{:?}", tb.records());
    assert_eq!(promiscuity(&tb, &mac), 1, "the child should still hold it");
    let other = Ns::new("ptr2").unwrap();
    let other_path = other.path().display().to_string();
    assert_eq!(
        err_code(cni.call("ADD", &conf, &env("c2", &other_path))),
        101, // no free NIC
        "a NIC still held by a child was handed out"
    );
    // The namespace goes with its last holder, and the child with it.
    drop(held);
    wait_childless(&tb, &mac);
    let r = ok(cni.call("ADD", &conf, &env("c2", &other_path)));
    assert_eq!(mac_of(&r), mac);
    assert_child_of(&tb, &other, &mac);
}

/// An agent restarted while a pod's namespace lives on where it cannot
/// open it by path (a runtime keeping its namespaces outside the agent's
/// mounts, as containerd's `netns_mounts_under_state_dir` does) adopts the
/// pod's NIC: the child holding it promiscuous says the pod lives. Found
/// by the real cluster, whose restarted agents released live pods' NICs.
/// Once the namespace is gone and DEL comes, the NIC is free again.
#[test]
fn a_restart_adopts_a_pod_whose_namespace_path_it_cannot_open() {
    if !require_root("a_restart_adopts_a_pod_whose_namespace_path_it_cannot_open") {
        return;
    }
    let tb = passthru_bed(2);
    let agent = tb.start_agent().unwrap();
    let cni = tb.hostnic();
    let conf = tb.netconf("1.0.0", json!([]));
    let (mac, held) = pod_out_of_reach(&cni, &conf, "pta");
    drop(agent);
    let _agent = tb.start_agent().unwrap();
    assert_eq!(tb.records().len(), 1, "the live pod's record was dropped");
    assert_eq!(promiscuity(&tb, &mac), 1);
    // Its NIC is not handed out: the next pod gets the other one, and a
    // third finds none.
    let (p2, p3) = (Ns::new("ptb").unwrap(), Ns::new("ptc").unwrap());
    let p2path = p2.path().display().to_string();
    let p3path = p3.path().display().to_string();
    assert_ne!(
        mac_of(&ok(cni.call("ADD", &conf, &env("c2", &p2path)))),
        mac
    );
    assert_eq!(err_code(cni.call("ADD", &conf, &env("c3", &p3path))), 101);
    // The pod goes (its namespace with the child), then its DEL.
    drop(held);
    wait_childless(&tb, &mac);
    ok(cni.call("DEL", &conf, &env("c1", "")));
    tb.settle();
    assert_eq!(
        mac_of(&ok(cni.call("ADD", &conf, &env("c3", &p3path)))),
        mac
    );
}

/// Whatever the agent was doing when killed, after a restart and the
/// runtime's DEL retries every NIC is with the pod that was told success
/// or parked, never held promiscuous by a child nobody owns.
#[test]
fn passthru_survives_restarts_and_kills_mid_add_and_mid_del() {
    if !require_root("passthru_survives_restarts_and_kills_mid_add_and_mid_del") {
        return;
    }
    let tb = passthru_bed(3);
    let mut agent = tb.start_agent().unwrap();
    let cni = tb.hostnic();
    let conf = tb.netconf("1.0.0", json!([]));
    let keep = Ns::new("ptk").unwrap();
    let keep_path = keep.path().display().to_string();
    let r = ok(cni.call("ADD", &conf, &env("keep", &keep_path)));
    let kept = mac_of(&r);

    // A restart keeps the pod's child and its NIC (up, promiscuous, not
    // parked), and CHECK still passes.
    agent.kill9();
    let mut agent = tb.start_agent().unwrap();
    assert_child_of(&tb, &keep, &kept);
    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    ok(cni.call("CHECK", &check, &env("keep", &keep_path)));
    assert!(keep.ping(GATEWAY), "{}", agent.log_text());

    // Kills at different moments of an ADD, then of a DEL.
    let pod = Ns::new("ptv").unwrap();
    let path = pod.path().display().to_string();
    for (round, delay_ms) in [0u64, 1, 3, 6, 10, 20, 40].into_iter().enumerate() {
        let id = format!("v{round}");
        for verb in ["ADD", "DEL"] {
            if verb == "DEL" && link_details(&pod, "eth0").is_empty() {
                ok(cni.call("ADD", &conf, &env(&id, &path)));
            }
            let call = {
                let (cni, conf, path, id) = (cni.clone(), conf.clone(), path.clone(), id.clone());
                std::thread::spawn(move || cni.call(verb, &conf, &env(&id, &path)))
            };
            std::thread::sleep(Duration::from_millis(delay_ms));
            agent.kill9();
            // (The executable waits out the restart; cut or not, the
            // runtime retries DEL until it succeeds.)
            agent = tb.start_agent().unwrap();
            let _ = call.join();
            ok(cni.call("DEL", &conf, &env(&id, &path)));
            tb.settle();
            assert!(
                link_details(&pod, "eth0").is_empty(),
                "round {round} {verb}: a child outlived its DEL\n{}",
                agent.log_text()
            );
            for nic in tb.nics.iter().filter(|n| n.mac != kept) {
                assert_parked(&tb, &nic.mac);
            }
            assert_child_of(&tb, &keep, &kept);
            assert_eq!(
                tb.records().len(),
                1,
                "round {round} {verb}: {:?}",
                tb.records()
            );
        }
    }
    assert!(keep.ping(GATEWAY));
    ok(cni.call("DEL", &conf, &env("keep", &keep_path)));
    tb.settle();
    assert_parked(&tb, &kept);
}

const TIMERS: &str = "warm_min = 1\nwarm_max = 3\nreconcile_seconds = 1\ncold_add_wait_seconds = 10\nidle_seconds = 3600";

/// Two simulated VMs under the strict SDN (it forwards only the MACs the
/// cloud gave the NICs): pods on one node and across nodes, the vxnet
/// gateway, a Service through the node's gateway NIC, and a NIC vanishing
/// under its pod.
#[test]
fn passthru_pods_on_two_nodes_talk_over_the_sdn_and_a_vanished_nic_comes_back() {
    if !require_root("passthru_pods_on_two_nodes_talk_over_the_sdn_and_a_vanished_nic_comes_back") {
        return;
    }
    let mut bed = CloudBed::new(SimConfig {
        nodes: 2,
        ..SimConfig::default()
    })
    .unwrap();
    bed.wiring = Some("passthru".into());
    let a0 = bed.start_agent(0, TIMERS).unwrap();
    let _a1 = bed.start_agent(1, TIMERS).unwrap();
    let routes = json!([{"dst": "10.96.0.0/16", "gw": "0.0.0.0"}]);
    let placement = [0usize, 0, 1];
    let pods: Vec<Ns> = placement
        .iter()
        .map(|n| Ns::new(&format!("ptc{n}")).unwrap())
        .collect();
    let paths: Vec<String> = pods
        .iter()
        .map(|p| p.path().display().to_string())
        .collect();
    let mut results = Vec::new();
    for (i, &node) in placement.iter().enumerate() {
        let conf = bed.netconf(node, "1.0.0", routes.clone());
        let r = bed
            .hostnic(node)
            .add_retrying(&conf, &env(&format!("c{i}"), &paths[i]))
            .unwrap_or_else(|e| panic!("ADD pod {i}: {e}\n{}", a0.log_text()));
        let child = link_details(&pods[i], "eth0");
        assert!(
            child.contains("macvlan mode passthru") && child.contains(&mac_of(&r)),
            "{child}"
        );
        results.push(r);
    }
    let ips: Vec<String> = results.iter().map(ip_of).collect();
    assert_eq!(ips.iter().collect::<BTreeSet<_>>().len(), 3, "{ips:?}");

    assert!(pods[0].ping("10.100.0.1"), "pod 0 cannot reach its gateway");
    assert!(pods[0].ping(&ips[2]), "pod on node 0 cannot reach node 1's");
    assert!(pods[2].ping(&ips[1]), "pod on node 1 cannot reach node 0's");
    assert!(pods[0].ping(&ips[1]), "two pods of node 0 cannot talk");

    // A Service through the node: the template's 0.0.0.0 is the node's
    // gateway NIC, and a DNAT rule there (as kube-proxy's) answers.
    let node0 = &bed.sim.nodes[0];
    bed.service_on_node(0, "10.96.0.10").unwrap();
    assert!(
        pods[0].ping("10.96.0.10"),
        "the service IP is not reached through the node"
    );

    // The NIC vanishes under pod 1: the kernel takes its child with it,
    // the agent re-attaches the NIC, and the pod's DEL frees it.
    let victim = mac_of(&results[1]);
    bed.post("/control/vanish", json!({"nic": victim}));
    wait_for("the pod to lose its child", Duration::from_secs(10), || {
        link_details(&pods[1], "eth0").is_empty()
    })
    .unwrap();
    wait_for(
        "the vanished NIC re-attached",
        Duration::from_secs(20),
        || {
            node0
                .ns
                .ip(&["-o", "link", "show"])
                .is_ok_and(|l| l.contains(&victim))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", a0.log_text()));
    assert!(pods[0].ping(&ips[2]), "the other pods lost their links");

    for (i, &node) in placement.iter().enumerate() {
        let conf = bed.netconf(node, "1.0.0", routes.clone());
        ok(bed
            .hostnic(node)
            .call("DEL", &conf, &env(&format!("c{i}"), &paths[i])));
        bed.settle(node);
    }
    // Every NIC is back on its node and free: a fresh pod on node 0 gets
    // one and reaches the gateway.
    let again = Ns::new("ptc0").unwrap();
    let again_path = again.path().display().to_string();
    let conf = bed.netconf(0, "1.0.0", routes.clone());
    ok(Ok(bed
        .hostnic(0)
        .add_retrying(&conf, &env("again", &again_path))));
    assert!(again.ping("10.100.0.1"), "{}", a0.log_text());
    ok(bed
        .hostnic(0)
        .call("DEL", &conf, &env("again", &again_path)));
    assert!(bed.leaked_nics().is_empty(), "{:?}", bed.leaked_nics());
}
