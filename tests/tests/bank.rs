//! The NIC bank against a real API server and the simulated cloud: the
//! Lease holder keeps created, unattached NICs and publishes them on its
//! Lease; another node's cold ADDs claim them with AttachNics alone; the
//! bank grows with the claims and shrinks back when idle; the node's poll
//! and the holder's leak sweep leave the bank's NICs alone; and a holder
//! killed -9 while it makes the bank's NICs leaks none of them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::controlplane::ControlPlane;
use hostnic_testbed::kubebed;
use hostnic_testbed::sim::{Faults, SimConfig};
use hostnic_testbed::{Agent, CallEnv, Ns, require_root, wait_for};
use serde_json::{Value, json};

const BANK: &str = "hostnic-test-bank";

fn bed(faults: Faults) -> CloudBed {
    CloudBed::new(SimConfig {
        nodes: 2,
        faults,
        ..SimConfig::default()
    })
    .unwrap()
}

/// `[cloud]` keys: no warm NIC of the node's own, a bank of
/// `min..=max`, quick polls, idle after 6 s, leaks after 1 s.
fn cloud(min: usize, max: usize) -> String {
    format!(
        "warm_min = 0\nwarm_max = 2\nreconcile_seconds = 1\ncold_add_wait_seconds = 20\n\
         leak_sweep = \"cluster\"\nleak_grace_seconds = 1\ncloud_poll_seconds = 2\n\
         idle_seconds = 6\nbank_min = {min}\nbank_max = {max}\n"
    )
}

fn agent(bed: &CloudBed, cp: &ControlPlane, i: usize, cloud: &str) -> Agent {
    kubebed::agent(bed, cp, i, (cloud, ""), "").unwrap()
}

/// The simulator's NICs, secondary ones only.
fn nics(bed: &CloudBed) -> Vec<Value> {
    bed.sim.secondary_nics()
}

/// The bank's NICs in the cloud: named for it and attached nowhere.
fn banked(bed: &CloudBed) -> BTreeSet<String> {
    nics(bed)
        .iter()
        .filter(|n| n["name"] == BANK && n["state"] == "available" && n["instance"].is_null())
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

/// The bank's NICs as the Lease lists them.
fn published(cp: &ControlPlane) -> BTreeSet<String> {
    let out = kubebed::lease(cp, "{.metadata.annotations.hostnic\\.io/nic-bank}");
    let listing: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    listing
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(|v| v.as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["nic"].as_str().map(str::to_string))
        .collect()
}

fn holder(cp: &ControlPlane) -> Option<usize> {
    kubebed::lease(cp, "{.spec.holderIdentity}")
        .strip_prefix("node-")?
        .parse()
        .ok()
}

/// Brings pod `name` up on `node` (retrying "try again later" as kubelet
/// does): the MAC of its NIC.
fn add(bed: &CloudBed, node: usize, name: &str, ns: &Ns) -> String {
    let start = Instant::now();
    loop {
        match call(bed, "ADD", node, name, ns) {
            Ok(r) => return r["interfaces"][0]["mac"].as_str().unwrap().to_string(),
            Err(e) if e.code == Some(11) && start.elapsed() < Duration::from_secs(40) => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => panic!("ADD {name} on node {node}: {e}"),
        }
    }
}

fn call(
    bed: &CloudBed,
    verb: &str,
    node: usize,
    name: &str,
    ns: &Ns,
) -> Result<Value, hostnic_testbed::plugin::PluginError> {
    let path = ns.path().display().to_string();
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
    let env = CallEnv {
        container_id: name,
        netns: &path,
        ifname: "eth0",
        args: &args,
    };
    let conf = bed.netconf(node, "1.1.0", json!([]));
    bed.hostnic(node).call(verb, &conf, &env).unwrap()
}

/// Every secondary NIC in the cloud is either attached to a node or in the
/// bank as the Lease lists it: nothing detached outside the bank, nothing
/// in the bank the Lease does not list.
fn nothing_leaked(bed: &CloudBed, cp: &ControlPlane) {
    let loose: Vec<Value> = nics(bed)
        .into_iter()
        .filter(|n| n["state"] == "available" && n["instance"].is_null())
        .filter(|n| n["name"] != BANK)
        .collect();
    assert!(
        loose.is_empty(),
        "detached NICs outside the bank: {loose:?}"
    );
    assert_eq!(
        published(cp),
        banked(bed),
        "the Lease lists the bank as it is"
    );
}

#[test]
fn a_new_nodes_pods_claim_bank_nics_and_the_bank_follows_the_claims() {
    if !require_root("a_new_nodes_pods_claim_bank_nics_and_the_bank_follows_the_claims") {
        return;
    }
    let bed = bed(Faults::default());
    let cp = kubebed::control_plane(&bed, None).unwrap();
    let cloud = cloud(4, 12);
    let _holder = agent(&bed, &cp, 0, &cloud);
    wait_for("node-0 to hold the Lease", Duration::from_secs(20), || {
        holder(&cp) == Some(0)
    })
    .unwrap();
    wait_for(
        "a bank of 4 NICs, listed on the Lease",
        Duration::from_secs(20),
        || banked(&bed).len() == 4 && published(&cp) == banked(&bed),
    )
    .unwrap();
    let first = banked(&bed);

    // A node joins and brings up three pods: their NICs come from the
    // bank, attached to it; it creates none of its own.
    let node = agent(&bed, &cp, 1, &cloud);
    let pods: Vec<Ns> = (0..3)
        .map(|i| Ns::new(&format!("bank{i}")).unwrap())
        .collect();
    let macs: Vec<String> = pods
        .iter()
        .enumerate()
        .map(|(i, ns)| add(&bed, 1, &format!("p{i}"), ns))
        .collect();
    let instance = &bed.sim.nodes[1].instance;
    let own_name = format!("hostnic-test-{instance}");
    for mac in &macs {
        assert!(
            first.contains(mac),
            "pod NIC {mac} is not from the bank {first:?}"
        );
        let nic = nics(&bed)
            .into_iter()
            .find(|n| n["id"] == mac.as_str())
            .unwrap();
        assert_eq!(nic["instance"], instance.as_str(), "{nic}");
    }
    assert!(
        !nics(&bed).iter().any(|n| n["name"] == own_name.as_str()),
        "the node created NICs of its own: {}",
        node.log_text()
    );

    // One pod goes: its bank NIC stays on the node, warm (warm_max 2).
    call(&bed, "DEL", 1, "p2", &pods[2]).unwrap();

    // The holder sees the claims and grows the bank past its minimum.
    wait_for(
        "the bank to grow with the claims",
        Duration::from_secs(20),
        || banked(&bed).len() > 4,
    )
    .unwrap();
    // No claim for idle_seconds: back to the minimum, through several of
    // the node's polls and the holder's leak sweeps, which leave the
    // claimed NICs attached and the bank's own NICs alone.
    wait_for(
        "the idle bank to shrink back to 4",
        Duration::from_secs(40),
        || banked(&bed).len() == 4 && published(&cp) == banked(&bed),
    )
    .unwrap();
    for mac in &macs {
        let nic = nics(&bed)
            .into_iter()
            .find(|n| n["id"] == mac.as_str())
            .unwrap();
        assert_eq!(nic["state"], "in-use", "{nic}");
        assert_eq!(nic["instance"], instance.as_str(), "{nic}");
    }
    // The node's polls found its bank NICs, the warm one too: none was
    // taken for detached behind its back.
    let log = node.log_text();
    assert!(
        !log.contains("no longer attached to this node in the cloud"),
        "{log}"
    );
    let in_pods = pods[..2]
        .iter()
        .filter(|ns| {
            ns.ip(&["-br", "link", "show", "eth0"])
                .is_ok_and(|o| o.contains("UP") || o.contains("UNKNOWN"))
        })
        .count();
    assert_eq!(in_pods, 2, "{}", node.log_text());
    nothing_leaked(&bed, &cp);
}

#[test]
fn killing_the_lease_holder_while_it_fills_the_bank_leaks_nothing() {
    if !require_root("killing_the_lease_holder_while_it_fills_the_bank_leaks_nothing") {
        return;
    }
    // The cloud answers a CreateNics 2 s after making the NICs: a holder
    // killed in between never hears of them.
    let bed = bed(Faults {
        answer_latency_ms_by_action: [("CreateNics".to_string(), 2000)].into(),
        ..Faults::default()
    });
    let cp = kubebed::control_plane(&bed, None).unwrap();
    let cloud = cloud(5, 10);
    let mut agents: Vec<Agent> = (0..2).map(|i| agent(&bed, &cp, i, &cloud)).collect();
    let mut pods = Vec::new();
    for round in 0..3 {
        // The bank is being filled (round 0) or refilled after claims: the
        // NICs exist, the holder has not heard yet. Kill it then.
        let unheard =
            || -> BTreeSet<String> { banked(&bed).difference(&published(&cp)).cloned().collect() };
        wait_for(
            "the holder to make bank NICs it has not heard of",
            Duration::from_secs(30),
            || !unheard().is_empty(),
        )
        .unwrap();
        let h = holder(&cp).expect("a holder");
        let unheard = unheard();
        agents[h].kill9();
        eprintln!(
            "round {round}: killed node-{h} with {} bank NICs it had not heard of",
            unheard.len()
        );
        assert!(!unheard.is_empty(), "the kill did not land within the fill");

        // The other node takes the Lease and adopts what the dead one
        // made: the Lease lists it, and no NIC is made twice over.
        let other = 1 - h;
        wait_for(
            "the other node to hold the Lease",
            Duration::from_secs(20),
            || holder(&cp) == Some(other),
        )
        .unwrap();
        wait_for(
            "the new holder to list the bank, the dead one's NICs included",
            Duration::from_secs(20),
            || {
                let p = published(&cp);
                p == banked(&bed) && unheard.is_subset(&p)
            },
        )
        .unwrap();
        assert!(
            banked(&bed).len() <= 10,
            "more than bank_max: {:?}",
            banked(&bed)
        );
        agents[h] = agent(&bed, &cp, h, &cloud);
        // Claims on the new holder's node make the next round's refill.
        for i in 0..3 {
            let ns = Ns::new(&format!("kb{round}x{i}")).unwrap();
            add(&bed, other, &format!("k{round}x{i}"), &ns);
            pods.push(ns);
        }
    }
    // Idle again: the bank settles at its minimum and nothing else is
    // detached in the cloud.
    wait_for("the bank to settle at 5", Duration::from_secs(60), || {
        banked(&bed).len() == 5 && published(&cp) == banked(&bed)
    })
    .unwrap();
    nothing_leaked(&bed, &cp);
}
