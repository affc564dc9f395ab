//! Sticky NICs: the NIC of a sticky identity follows it from node to node
//! with its address and MAC; the cloud's attach is the only lock between
//! nodes; a killed agent finishes taking the NIC off its node at start; the
//! release TTL frees it. On the simulated cloud with the real `hostnic`,
//! and in a real cluster, where a StatefulSet's pod moves to another node
//! and its NIC goes with it, and goes for good when the set scales down.

use std::time::{Duration, Instant};

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::cluster::{self, Cluster, Install};
use hostnic_testbed::sim::{Faults, SimConfig};
use hostnic_testbed::{CallEnv, Ns, PluginError, bin, kubebed, require_root, wait_for};
use serde_json::{Value, json};

const TIMERS: &str = "warm_min = 0\nwarm_max = 2\nreconcile_seconds = 1\ncold_add_wait_seconds = 10\n\
                      cloud_poll_seconds = 2\nleak_grace_seconds = 0\nsticky_release_seconds = 4";
/// The cluster's agents: a warm NIC each, kept NICs kept for ever (only
/// the StatefulSet's scale-down releases them), a quick cloud poll.
const CLUSTER_TIMERS: &str = "warm_min = 1\nwarm_max = 4\nreconcile_seconds = 2\n\
                              cold_add_wait_seconds = 20\ncloud_poll_seconds = 2\n\
                              sticky_release_seconds = 0";
/// The default ip guest, making StatefulSet pods sticky.
const STATEFULSETS: &str = "[hooks.ip]\nconfig = '{\"statefulsets\": true}'\n";
/// The identity the default ip guest makes of the annotation below.
const IDENTITY: &str = "key/default/db-0@hostnic-cloud";

fn env<'a>(cid: &'a str, netns: &'a str) -> CallEnv<'a> {
    CallEnv {
        container_id: cid,
        netns,
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=db-0",
    }
}

/// Node `node`'s netconf for a pod with `hostnic.io/sticky: db-0`, as
/// containerd sends its annotations.
fn conf(bed: &CloudBed, node: usize) -> Value {
    let mut c = bed.netconf(node, "1.0.0", json!([]));
    c["runtimeConfig"] =
        json!({"io.kubernetes.cri.pod-annotations": {"hostnic.io/sticky": "db-0"}});
    c
}

fn add(bed: &CloudBed, node: usize, cid: &str, ns: &Ns) -> Result<Value, PluginError> {
    let path = ns.path().display().to_string();
    bed.hostnic(node)
        .call("ADD", &conf(bed, node), &env(cid, &path))
        .expect("exec hostnic")
}

fn del(bed: &CloudBed, node: usize, cid: &str, ns: &Ns) {
    let path = ns.path().display().to_string();
    bed.hostnic(node)
        .call("DEL", &conf(bed, node), &env(cid, &path))
        .expect("exec hostnic")
        .expect("DEL succeeds");
}

/// (address, MAC) of an ADD's answer.
fn nic_of(r: &Value) -> (String, String) {
    (
        r["ips"][0]["address"].as_str().unwrap().to_string(),
        r["interfaces"][0]["mac"].as_str().unwrap().to_string(),
    )
}

/// The cloud's view of NIC `mac`, if it exists.
fn cloud_nic(bed: &CloudBed, mac: &str) -> Option<Value> {
    bed.sim.inspect()["nics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == mac)
        .cloned()
}

/// Waits until NIC `mac` is detached and kept (available in the cloud).
fn wait_kept(bed: &CloudBed, mac: &str) {
    wait_for(
        "the sticky NIC detached and kept",
        Duration::from_secs(20),
        || cloud_nic(bed, mac).is_some_and(|n| n["state"] == "available"),
    )
    .unwrap();
}

#[test]
fn a_sticky_nic_follows_its_identity_to_another_node_and_is_released_after_its_ttl() {
    if !require_root(
        "a_sticky_nic_follows_its_identity_to_another_node_and_is_released_after_its_ttl",
    ) {
        return;
    }
    let bed = CloudBed::new(SimConfig::default()).unwrap();
    let a0 = bed.start_agent(0, TIMERS).unwrap();
    let a1 = bed.start_agent(1, TIMERS).unwrap();
    let logs = || format!("node 0:\n{}\nnode 1:\n{}", a0.log_text(), a1.log_text());
    let instance = |i: usize| bed.sim.nodes[i].instance.clone();

    // db-0 on node 0: a NIC tagged with its identity.
    let p0 = Ns::new("st0").unwrap();
    let first = bed
        .hostnic(0)
        .add_retrying(&conf(&bed, 0), &env("c0", &p0.path().display().to_string()))
        .unwrap_or_else(|e| panic!("first ADD: {e}\n{}", logs()));
    let (ip, mac) = nic_of(&first);
    let nic = cloud_nic(&bed, &mac).unwrap();
    assert!(
        nic["tag_names"]
            .to_string()
            .contains(&format!("hostnic:test:sticky:{IDENTITY}")),
        "{nic}"
    );

    // A second pod with the key, on node 1, while db-0 holds the NIC on a
    // running VM: not taken (a key promises no single holder), code 11.
    let rival = Ns::new("st1").unwrap();
    let refused = add(&bed, 1, "r0", &rival).unwrap_err();
    assert_eq!(refused.code, Some(11), "{refused:?}");
    assert!(refused.msg.contains("where a pod holds it"), "{refused:?}");
    assert_eq!(
        cloud_nic(&bed, &mac).unwrap()["instance"],
        instance(0).as_str()
    );

    // DEL: the NIC leaves node 0 and is kept in the cloud, not deleted and
    // not back in node 0's pool.
    del(&bed, 0, "c0", &p0);
    wait_kept(&bed, &mac);

    // db-0 again, on node 1: the same NIC, moved.
    let p1 = Ns::new("st2").unwrap();
    let started = Instant::now();
    let moved =
        add(&bed, 1, "c1", &p1).unwrap_or_else(|e| panic!("ADD on node 1: {e}\n{}", logs()));
    eprintln!(
        "sticky ADD on the other node: {:?} (the simulator's attach: 200 ms)",
        started.elapsed()
    );
    assert_eq!(
        nic_of(&moved),
        (ip.clone(), mac.clone()),
        "db-0 lost its NIC"
    );
    assert_eq!(
        cloud_nic(&bed, &mac).unwrap()["instance"],
        instance(1).as_str()
    );
    assert!(
        p1.ping("10.100.0.1"),
        "the moved NIC does not reach its gateway"
    );

    // Both nodes race for the identity: the cloud accepts one attach.
    del(&bed, 1, "c1", &p1);
    wait_kept(&bed, &mac);
    let (q0, q1) = (Ns::new("st3").unwrap(), Ns::new("st4").unwrap());
    let (r0, r1) = std::thread::scope(|s| {
        let h0 = s.spawn(|| add(&bed, 0, "c2", &q0));
        let h1 = s.spawn(|| add(&bed, 1, "c3", &q1));
        (h0.join().unwrap(), h1.join().unwrap())
    });
    let (won, lost, winner) = match (r0, r1) {
        (Ok(w), Err(l)) => (w, l, 0),
        (Err(l), Ok(w)) => (w, l, 1),
        other => panic!("exactly one node must win: {other:?}\n{}", logs()),
    };
    assert_eq!(lost.code, Some(11), "{lost:?}");
    assert_eq!(nic_of(&won), (ip.clone(), mac.clone()));
    assert_eq!(
        cloud_nic(&bed, &mac).unwrap()["instance"],
        instance(winner).as_str()
    );
    let (ns, cid) = if winner == 0 {
        (&q0, "c2")
    } else {
        (&q1, "c3")
    };
    del(&bed, winner, cid, ns);
    del(
        &bed,
        1 - winner,
        if winner == 0 { "c3" } else { "c2" },
        if winner == 0 { &q1 } else { &q0 },
    );
    wait_kept(&bed, &mac);

    // The release TTL: kept 4 s, then the leak sweep deletes it.
    wait_for(
        "the sticky NIC released after its TTL",
        Duration::from_secs(30),
        || cloud_nic(&bed, &mac).is_none(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert!(bed.leaked_nics().is_empty(), "{:?}", bed.leaked_nics());
}

#[test]
fn agents_killed_mid_move_neither_free_the_sticky_nic_nor_lose_it() {
    if !require_root("agents_killed_mid_move_neither_free_the_sticky_nic_nor_lose_it") {
        return;
    }
    let bed = CloudBed::new(SimConfig::default()).unwrap();
    let timers = TIMERS.replace("sticky_release_seconds = 4", "sticky_release_seconds = 0");
    let mut a0 = bed.start_agent(0, &timers).unwrap();
    let mut a1 = bed.start_agent(1, &timers).unwrap();
    let p0 = Ns::new("sk0").unwrap();
    let first = bed
        .hostnic(0)
        .add_retrying(&conf(&bed, 0), &env("c0", &p0.path().display().to_string()))
        .unwrap();
    let (ip, mac) = nic_of(&first);
    // DEL answers before the NIC is out of the pod; the agent dies right
    // after, before it detached the NIC in the cloud.
    del(&bed, 0, "c0", &p0);
    a0.kill9();
    assert_eq!(
        cloud_nic(&bed, &mac).unwrap()["instance"],
        bed.sim.nodes[0].instance.as_str(),
        "the kill came too late to test anything"
    );
    let _a0 = bed.start_agent(0, &timers).unwrap();
    wait_kept(&bed, &mac);
    // Node 0 never handed it to another pod meanwhile, and db-0 finds it
    // on node 1. Kept for ever (TTL 0): still there after a few polls.
    let other = Ns::new("sk1").unwrap();
    let path = other.path().display().to_string();
    let plain = bed.netconf(0, "1.0.0", json!([]));
    let r = bed
        .hostnic(0)
        .add_retrying(&plain, &env("o0", &path))
        .unwrap();
    assert_ne!(nic_of(&r).1, mac, "node 0 gave the kept NIC to another pod");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(cloud_nic(&bed, &mac).unwrap()["state"], "available");

    // Node 1's agent killed while the cloud attaches the NIC to its VM for
    // db-0: its successor does not adopt it as a free NIC, and the
    // runtime's retried ADD gets it.
    bed.sim.set_faults(Faults {
        attach_latency_ms: 2000,
        ..Faults::default()
    });
    let p1 = Ns::new("sk2").unwrap();
    let path1 = p1.path().display().to_string();
    std::thread::scope(|s| {
        let adding = s.spawn(|| add(&bed, 1, "c1", &p1));
        wait_for(
            "the attach to node 1 under way",
            Duration::from_secs(10),
            || {
                cloud_nic(&bed, &mac)
                    .is_some_and(|n| n["instance"] == bed.sim.nodes[1].instance.as_str())
            },
        )
        .unwrap();
        a1.kill9();
        assert!(adding.join().unwrap().is_err(), "the killed agent answered");
    });
    let a1 = bed.start_agent(1, &timers).unwrap();
    bed.sim.set_faults(Faults::default());
    let moved = bed
        .hostnic(1)
        .add_retrying(&conf(&bed, 1), &env("c1", &path1))
        .unwrap();
    assert_eq!(nic_of(&moved), (ip, mac.clone()));
    assert!(p1.ping("10.100.0.1"));
    del(&bed, 1, "c1", &p1);
    bed.hostnic(0)
        .call("DEL", &plain, &env("o0", &path))
        .unwrap()
        .unwrap();
    // Kept again (also when the DEL comes before the cloud reports the
    // attach done: the link shows first).
    if wait_for("kept again", Duration::from_secs(20), || {
        cloud_nic(&bed, &mac).is_some_and(|n| n["state"] == "available")
    })
    .is_err()
    {
        panic!("not kept: {:?}\n{}", cloud_nic(&bed, &mac), a1.log_text());
    }
}

/// The NIC (id = MAC) the cloud has with address `ip`, and its VM.
fn nic_with_ip(bed: &CloudBed, ip: &str) -> Option<(String, String)> {
    bed.sim.inspect()["nics"]
        .as_array()?
        .iter()
        .find(|n| n["ip"] == ip)
        .map(|n| {
            let s = |k: &str| n[k].as_str().unwrap_or_default().to_string();
            (s("id"), s("instance"))
        })
}

/// db-0's MAC, as its eth0 has it.
fn pod_mac(cluster: &Cluster) -> String {
    cluster
        .kubectl(&["exec", "db-0", "--", "cat", "/sys/class/net/eth0/address"])
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Node `node`'s latest ADD decisions, from its agent's status.
fn decisions(bed: &CloudBed, node: usize) -> Vec<Value> {
    let out = std::process::Command::new(bin("hostnic-agent"))
        .args(["status", "--json", "--socket"])
        .arg(bed.socket(node))
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    status["decisions"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_statefulset_pod_keeps_its_address_and_mac_on_another_node_until_scaled_down() {
    if !require_root(
        "a_statefulset_pod_keeps_its_address_and_mac_on_another_node_until_scaled_down",
    ) {
        return;
    }
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        ..SimConfig::default()
    })
    .unwrap();
    let mut cluster = Cluster::start(bed, Install::Agents(String::new())).unwrap();
    // Agents that watch their pods (the owner makes the identity) and hold
    // the Lease for the sticky release, as the DaemonSet runs them.
    kubebed::watching_agents(&mut cluster, CLUSTER_TIMERS, STATEFULSETS).unwrap();
    cluster.cp.apply(&cluster::statefulset("db", 1)).unwrap();
    cluster
        .wait("db-0 Running", Duration::from_secs(120), || {
            cluster.running_pods("app=db").len() == 1
        })
        .unwrap();
    let (node, ip) = cluster.running_pods("app=db")["db-0"].clone();
    let (mac, vm) = nic_with_ip(&cluster.bed, &ip).unwrap();
    assert_eq!(pod_mac(&cluster), mac);
    let from: usize = node.strip_prefix("node-").unwrap().parse().unwrap();
    let to = 1 - from;
    assert_eq!(vm, cluster.bed.sim.nodes[from].instance);

    // Its node cordoned and the pod deleted: db-0 comes back on the other
    // node with the same NIC, moved there by the cloud.
    cluster.kubectl(&["cordon", &node]).unwrap();
    let deleted = Instant::now();
    cluster
        .kubectl(&["delete", "pod", "db-0", "--wait=false"])
        .unwrap();
    let target = format!("node-{to}");
    cluster
        .wait(
            "db-0 Running on the other node",
            Duration::from_secs(120),
            || {
                cluster
                    .running_pods("app=db")
                    .get("db-0")
                    .is_some_and(|(n, _)| *n == target)
            },
        )
        .unwrap();
    let rescheduled = deleted.elapsed();
    let (_, moved_ip) = cluster.running_pods("app=db")["db-0"].clone();
    assert_eq!(moved_ip, ip, "db-0 lost its address");
    assert_eq!(pod_mac(&cluster), mac, "db-0 lost its MAC");
    assert_eq!(
        nic_with_ip(&cluster.bed, &ip).unwrap(),
        (mac.clone(), cluster.bed.sim.nodes[to].instance.clone())
    );
    // The agent's own work around the cloud's detach and attach: the
    // decision's whole time less the time it waited for the NIC.
    let decided = decisions(&cluster.bed, to);
    let d = decided
        .iter()
        .rev()
        .find(|d| d["pod"] == "db-0" && d["error"].is_null())
        .unwrap_or_else(|| panic!("no decision for db-0 on {target}: {decided:?}"));
    assert_eq!(d["how"], "the NIC kept for its sticky identity", "{d}");
    let (total, acquire) = (
        d["total_us"].as_u64().unwrap(),
        d["acquire_us"].as_u64().unwrap(),
    );
    eprintln!(
        "sticky reschedule: deleted to Running on {target} in {rescheduled:?}; the ADD {:.1} ms, of which getting the NIC (detach, attach, link) {:.1} ms",
        total as f64 / 1000.0,
        acquire as f64 / 1000.0
    );
    assert!(
        total - acquire < 100_000,
        "more than 100 ms of agent work around the move: {d}"
    );

    // Back again, the holding node's agent dead and the pod force-deleted
    // (a node lost, as an operator handles it): nobody there takes the NIC
    // off, so the other node takes it from that VM — Kubernetes runs one
    // pod per ordinal, so what holds it there is the pod that is gone.
    cluster.kubectl(&["uncordon", &node]).unwrap();
    cluster.kubectl(&["cordon", &target]).unwrap();
    cluster.agents[to].kill9();
    cluster
        .kubectl(&["delete", "pod", "db-0", "--force", "--grace-period=0"])
        .unwrap();
    cluster
        .wait(
            "db-0 Running back on its first node",
            Duration::from_secs(120),
            || {
                cluster
                    .running_pods("app=db")
                    .get("db-0")
                    .is_some_and(|(n, _)| *n == node)
            },
        )
        .unwrap();
    assert_eq!(cluster.running_pods("app=db")["db-0"].1, ip);
    assert_eq!(pod_mac(&cluster), mac);
    // The dead agent's replacement finds the NIC gone from its VM and
    // leaves it where it is; its old sandbox's DEL finds nothing to free.
    cluster.agents[to] = kubebed::agent(
        &cluster.bed,
        &cluster.cp,
        to,
        (CLUSTER_TIMERS, ""),
        STATEFULSETS,
    )
    .unwrap();
    let records = || {
        std::fs::read_dir(cluster.bed.state_dir(to).join("allocations"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0)
    };
    cluster
        .wait(
            "the old node to let go of db-0's record",
            Duration::from_secs(60),
            || records() == 0,
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        nic_with_ip(&cluster.bed, &ip).unwrap(),
        (mac.clone(), cluster.bed.sim.nodes[from].instance.clone()),
        "the restarted agent took the NIC back"
    );
    assert_eq!(pod_mac(&cluster), mac);
    cluster.kubectl(&["uncordon", &target]).unwrap();

    // Scaled to zero: the NIC is kept (TTL 0: for ever) only while the
    // StatefulSet has the ordinal; the Lease holder releases it.
    cluster.cp.apply(&cluster::statefulset("db", 0)).unwrap();
    cluster
        .wait_gone("app=db", Duration::from_secs(60))
        .unwrap();
    cluster
        .wait(
            "the NIC released by the sweep",
            Duration::from_secs(60),
            || nic_with_ip(&cluster.bed, &ip).is_none(),
        )
        .unwrap();
    assert!(
        cluster.bed.leaked_nics().is_empty(),
        "{:?}",
        cluster.bed.leaked_nics()
    );
}
