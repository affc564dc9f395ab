//! Sticky identities in shared-NIC mode: the address is pinned for the
//! identity as a `/32` `HostnicBlock` in a real API server (built from
//! source) and follows it to another node; the vxnet learns the new MAC at
//! once (gratuitous ARP); no other pod gets the address while it is
//! pinned; a key's address is not taken from a live pod; the pin goes
//! after its TTL, or when its StatefulSet scales down. On the simulated
//! cloud with the real `hostnic`, then with a StatefulSet on real kubelets.

use std::time::Duration;

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::cluster;
use hostnic_testbed::controlplane::ControlPlane;
use hostnic_testbed::sharedbed::{
    self, NOTHING, Pod, bed, blocks, nic_in_a, pieces, pins, routing,
};
use hostnic_testbed::{Agent, CallEnv, Ns, PluginError, kubebed, require_root, wait_for};
use serde_json::{Value, json};

/// A pinned address kept 3 s after its pod is gone.
const TIMERS: &str = "warm_min = 0\nwarm_max = 0\nreconcile_seconds = 1\ncold_add_wait_seconds = 10\n\
                      sticky_release_seconds = 3";
/// The identity the default ip guest makes of `hostnic.io/sticky: db-0`.
const IDENTITY: &str = "key/default/db-0@hostnic-cloud";

/// Node `i`'s agent with vxnet-a shared between the nodes in /29 blocks.
fn agent(bed: &CloudBed, cp: &ControlPlane, i: usize) -> Agent {
    let shared = "[[shared]]\nvxnet = \"vxnet-a\"\nrange = \"10.100.0.128/25\"\n\
                  block_prefix = 29\nblock_idle_seconds = 60\n";
    kubebed::agent(bed, cp, i, (TIMERS, ""), shared).unwrap()
}

fn env<'a>(cid: &'a str, netns: &'a str) -> CallEnv<'a> {
    CallEnv {
        container_id: cid,
        netns,
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=db-0",
    }
}

/// The network config of pod db-0, annotated `hostnic.io/sticky: db-0`.
fn conf(bed: &CloudBed, node: usize) -> Value {
    let mut c = sharedbed::conf(bed, node, "vxnet-a");
    c["runtimeConfig"] =
        json!({"io.kubernetes.cri.pod-annotations": {"hostnic.io/sticky": "db-0"}});
    c
}

fn add(bed: &CloudBed, node: usize, cid: &str) -> Result<Pod, PluginError> {
    let ns = Ns::new("shs").unwrap();
    let path = ns.path().display().to_string();
    let result = bed
        .hostnic(node)
        .call("ADD", &conf(bed, node), &env(cid, &path))
        .expect("exec hostnic")?;
    Ok(Pod {
        ns,
        cid: cid.to_string(),
        result,
    })
}

fn del(bed: &CloudBed, node: usize, pod: &Pod) {
    bed.hostnic(node)
        .call("DEL", &conf(bed, node), &env(&pod.cid, &pod.path()))
        .expect("exec hostnic")
        .unwrap_or_else(|e| panic!("DEL {}: {e:?}", pod.cid));
}

/// The MAC of node `i`'s NIC in vxnet-a (its name is `gw` + the MAC).
fn nic_mac(bed: &CloudBed, i: usize) -> String {
    let hex = nic_in_a(&bed.sim.nodes[i].ns)[2..].to_string();
    (0..6)
        .map(|k| &hex[2 * k..2 * k + 2])
        .collect::<Vec<_>>()
        .join(":")
}

/// The MAC the vxnet's gateway has for `ip` in its neighbour table.
fn gateway_knows(bed: &CloudBed, ip: &str) -> Option<String> {
    let out = bed.sim.sdn_ns().ip(&["neigh", "show", ip]).unwrap();
    let words: Vec<&str> = out.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "lladdr")?;
    words.get(at + 1).map(|m| m.to_string())
}

fn the_pin(cp: &ControlPlane) -> Option<Value> {
    pins(cp).remove(IDENTITY)
}

#[test]
fn a_sticky_identitys_shared_address_follows_it_to_another_node_and_is_released_after_its_ttl() {
    if !require_root(
        "a_sticky_identitys_shared_address_follows_it_to_another_node_and_is_released_after_its_ttl",
    ) {
        return;
    }
    let bed = bed();
    let cp = kubebed::control_plane(&bed, None).unwrap();
    let _a0 = agent(&bed, &cp, 0);
    let mut a1 = agent(&bed, &cp, 1);

    // db-0's first ADD, on node 0: its address is pinned for it there.
    let first = add(&bed, 0, "db-0-a").unwrap();
    let ip = first.ip();
    let pin = the_pin(&cp).expect("db-0's address pinned");
    assert_eq!(pin["cidr"], format!("{ip}/32"), "{pin}");
    assert_eq!(
        (pin["node"].as_str(), pin["pod"].as_str()),
        (Some("node-0"), Some("default/db-0"))
    );
    // The vxnet's gateway talks to it, and knows it at node 0's NIC.
    assert!(bed.sim.sdn_ns().ping(&ip), "{}", routing(&bed));
    assert_eq!(gateway_knows(&bed, &ip), Some(nic_mac(&bed, 0)));

    // A `hostnic.io/sticky` key promises no single pod: node 1 does not
    // take the address from a live one.
    let e = add(&bed, 1, "db-0-b").expect_err("the address is held on node 0");
    assert_eq!(e.code, Some(11), "{e:?}");
    assert!(
        e.msg.contains("held by pod default/db-0 on node node-0"),
        "{}",
        e.msg
    );
    assert_eq!(
        pieces(&bed.sim.nodes[1].ns),
        NOTHING,
        "the refused ADD left pieces"
    );

    // Gone from node 0, db-0 comes back on node 1 with its address.
    del(&bed, 0, &first);
    let mut moved = None;
    wait_for("db-0's ADD on node 1", Duration::from_secs(10), || {
        moved = add(&bed, 1, "db-0-b").ok();
        moved.is_some()
    })
    .unwrap();
    let moved = moved.unwrap();
    assert_eq!(moved.ip(), ip, "db-0 lost its address");
    let pin = the_pin(&cp).unwrap();
    assert_eq!(
        (pin["node"].as_str(), pin["pod"].as_str()),
        (Some("node-1"), Some("default/db-0"))
    );
    // The gateway learnt the new MAC from the node's announcement, not by
    // waiting for its entry to age out.
    assert_eq!(
        gateway_knows(&bed, &ip),
        Some(nic_mac(&bed, 1)),
        "{}",
        routing(&bed)
    );
    assert!(bed.sim.sdn_ns().ping(&ip), "{}", routing(&bed));
    assert_eq!(
        pieces(&bed.sim.nodes[0].ns),
        NOTHING,
        "node 0 still wires db-0"
    );
    // The node's status names the identity, and the decision how it came
    // by the address.
    let status = sharedbed::status(&bed, 1);
    assert_eq!(status["shared"][0]["sticky"], IDENTITY, "{status}");
    let how = status["decisions"].as_array().unwrap().last().unwrap()["how"].clone();
    assert_eq!(
        how,
        "the address pinned for its sticky identity, on the node's NIC"
    );

    // Node 0 holds the block around the address and fills it: none of
    // its pods gets the pinned address, and one of them reaches db-0.
    let others: Vec<Pod> = (0..8)
        .map(|i| sharedbed::add(&bed, 0, "vxnet-a", &format!("o-{i}")))
        .collect();
    assert!(
        others.iter().all(|p| p.ip() != ip),
        "a pod on node 0 got db-0's pinned {ip}"
    );
    assert!(
        blocks(&cp).iter().all(|(_, n)| n == "node-0"),
        "{:?}",
        blocks(&cp)
    );
    assert!(others[0].ns.ping(&ip), "{}", routing(&bed));
    for p in &others {
        sharedbed::del(&bed, 0, "vxnet-a", p);
    }

    // Node 1's agent killed, its record of db-0 lost and the pod gone
    // meanwhile: the restart sweeps db-0's wiring and lets go of the pin,
    // which stays db-0's, kept 3 s, then released.
    a1.kill9();
    std::fs::remove_file(bed.state_dir(1).join("shared").join(format!("{ip}.json"))).unwrap();
    drop(moved);
    let _a1 = agent(&bed, &cp, 1);
    wait_for(
        "db-0's pin kept without a pod",
        Duration::from_secs(10),
        || the_pin(&cp).is_some_and(|p| p["pod"].is_null() && p["released"].is_string()),
    )
    .unwrap();
    wait_for("db-0's pin released", Duration::from_secs(20), || {
        the_pin(&cp).is_none()
    })
    .unwrap();
    for i in 0..2 {
        bed.settle(i);
        assert_eq!(pieces(&bed.sim.nodes[i].ns), NOTHING);
    }
}

#[test]
fn a_statefulset_pod_in_shared_mode_keeps_its_address_on_another_node_until_scaled_down() {
    if !require_root(
        "a_statefulset_pod_in_shared_mode_keeps_its_address_on_another_node_until_scaled_down",
    ) {
        return;
    }
    let mut cluster = sharedbed::kubelet_cluster();
    // The default ip guest makes StatefulSet pods sticky; pins are kept
    // for ever (only the scale-down releases them).
    let extra = "[[shared]]\nvxnet = \"vxnet-pods\"\nrange = \"10.100.0.128/25\"\n\
                 [hooks.ip]\nconfig = '{\"statefulsets\": true}'\n";
    let timers = TIMERS.replace("sticky_release_seconds = 3", "sticky_release_seconds = 0");
    kubebed::watching_agents(&mut cluster, &timers, extra).unwrap();
    cluster.cp.apply(&cluster::statefulset("db", 1)).unwrap();
    cluster.cp.apply(&cluster::deployment("web", 2)).unwrap();
    cluster
        .wait(
            "db-0 and two web pods Running",
            Duration::from_secs(180),
            || {
                cluster.running_pods("app=db").len() == 1
                    && cluster.running_pods("app=web").len() == 2
            },
        )
        .unwrap();
    let (node, ip) = cluster.running_pods("app=db")["db-0"].clone();
    let pinned = |cp: &ControlPlane| {
        pins(cp)
            .into_iter()
            .find(|(id, _)| id.starts_with("statefulset/default/db/0"))
            .map(|(_, p)| p)
    };
    assert_eq!(
        pinned(&cluster.cp).map(|p| (p["cidr"].clone(), p["node"].clone())),
        Some((json!(format!("{ip}/32")), json!(node))),
        "{:?}",
        pins(&cluster.cp)
    );

    // Its node cordoned and the pod deleted: db-0 comes back on the other
    // node with its address; the pin went with it.
    let target = if node == "node-0" { "node-1" } else { "node-0" };
    cluster.kubectl(&["cordon", &node]).unwrap();
    cluster
        .kubectl(&["delete", "pod", "db-0", "--wait=false"])
        .unwrap();
    cluster
        .wait(
            "db-0 Running on the other node",
            Duration::from_secs(120),
            || {
                cluster
                    .running_pods("app=db")
                    .get("db-0")
                    .is_some_and(|(n, _)| n == target)
            },
        )
        .unwrap();
    assert_eq!(
        cluster.running_pods("app=db")["db-0"].1,
        ip,
        "db-0 lost its address"
    );
    assert_eq!(pinned(&cluster.cp).unwrap()["node"], target);
    let to: usize = target.strip_prefix("node-").unwrap().parse().unwrap();
    let decisions = sharedbed::status(&cluster.bed, to)["decisions"].clone();
    let d = decisions
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|d| d["pod"] == "db-0" && d["error"].is_null())
        .unwrap_or_else(|| panic!("no decision for db-0 on {target}: {decisions}"))
        .clone();
    assert_eq!(
        d["how"],
        "the address pinned for its sticky identity, on the node's NIC"
    );
    eprintln!(
        "sticky shared reschedule: the ADD on {target} {:.1} ms, of which taking the pin and the address {:.1} ms",
        d["total_us"].as_f64().unwrap() / 1000.0,
        d["acquire_us"].as_f64().unwrap() / 1000.0
    );
    // Pods on both nodes reach it at its old address.
    for name in cluster.running_pods("app=web").keys() {
        cluster
            .kubectl(&["exec", name, "--", "ping", "-c", "1", "-W", "2", &ip])
            .unwrap_or_else(|e| {
                panic!(
                    "{name} cannot reach db-0 at {ip}: {e}\n{}",
                    routing(&cluster.bed)
                )
            });
    }
    cluster.kubectl(&["uncordon", &node]).unwrap();

    // Scaled to zero: the set no longer has the ordinal, and the node
    // holding the pin lets it go (TTL 0 would keep it for ever).
    cluster.cp.apply(&cluster::statefulset("db", 0)).unwrap();
    cluster
        .wait_gone("app=db", Duration::from_secs(60))
        .unwrap();
    cluster
        .wait("db-0's pin released", Duration::from_secs(30), || {
            pinned(&cluster.cp).is_none()
        })
        .unwrap();
}
