//! Kill loops: `kill -9` of the agent at random moments during concurrent
//! ADD/DEL bursts, round after round, with the static inventory and with
//! the simulated cloud. After every round: every NIC is with a pod that was
//! told success (with the address it was told) or back in the pool; none is
//! in two places; the record agrees; and in the cloud nothing leaks.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sim::{Faults, SimConfig};
use hostnic_testbed::{Agent, CallEnv, CniCall, Ns, require_root, wait_for};
use serde_json::{Value, json};

/// What the runtime believes about one pod.
#[derive(Clone, Debug, PartialEq)]
enum Pod {
    /// No attachment (never added, or DEL succeeded).
    Empty,
    /// ADD succeeded with this MAC and address.
    Held { mac: String, ip: String },
    /// An ADD or DEL was cut: the runtime retries DEL until it succeeds.
    Unsure,
}

/// One round's burst: every pod at once, ADD if it is empty, DEL if it
/// holds a NIC; the agent is killed `kill_after` into it.
fn burst(
    cni: &CniCall,
    conf: &Value,
    pods: &[Ns],
    state: &mut [Pod],
    round: usize,
    kill_after: Duration,
    agent: &mut Agent,
) -> usize {
    let start = Arc::new(Barrier::new(pods.len() + 1));
    let handles: Vec<_> = pods
        .iter()
        .zip(state.iter())
        .enumerate()
        .map(|(i, (pod, st))| {
            let verb = if matches!(st, Pod::Empty) {
                "ADD"
            } else {
                "DEL"
            };
            let (cni, conf, path, start) = (
                cni.clone(),
                conf.clone(),
                pod.path().display().to_string(),
                start.clone(),
            );
            let id = format!("pod{i}");
            std::thread::spawn(move || {
                let env = CallEnv {
                    container_id: &id,
                    netns: &path,
                    ifname: "eth0",
                    args: "",
                };
                start.wait();
                (verb, cni.call(verb, &conf, &env).unwrap())
            })
        })
        .collect();
    start.wait();
    std::thread::sleep(kill_after);
    agent.kill9();
    let mut cut = 0;
    for (i, h) in handles.into_iter().enumerate() {
        let (verb, r) = h.join().unwrap();
        state[i] = match (verb, r) {
            ("ADD", Ok(v)) => Pod::Held {
                mac: v["interfaces"][0]["mac"].as_str().unwrap().to_string(),
                ip: v["ips"][0]["address"].as_str().unwrap().to_string(),
            },
            ("DEL", Ok(_)) => Pod::Empty,
            (_, Err(e)) => {
                // Cut by the kill: try again later (or the resource is
                // gone), never a wrong answer.
                assert!(
                    matches!(e.code, Some(11 | 5 | 101)),
                    "round {round}: pod {i}: {verb} failed with {e}"
                );
                cut += 1;
                Pod::Unsure
            }
            (v, r) => unreachable!("{v} {r:?}"),
        };
    }
    cut
}

/// The runtime's follow-up after the agent is back: DEL every pod it is
/// unsure about, which must now succeed.
fn follow_up(cni: &CniCall, conf: &Value, pods: &[Ns], state: &mut [Pod], round: usize) {
    for (i, pod) in pods.iter().enumerate() {
        if state[i] != Pod::Unsure {
            continue;
        }
        let id = format!("pod{i}");
        let path = pod.path().display().to_string();
        let env = CallEnv {
            container_id: &id,
            netns: &path,
            ifname: "eth0",
            args: "",
        };
        cni.call("DEL", conf, &env)
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: DEL of pod {i} after the restart: {e}"));
        state[i] = Pod::Empty;
    }
}

/// Where each MAC is: the node (parked) and every pod that has it.
fn census(node: &Ns, pods: &[Ns]) -> BTreeMap<String, Vec<String>> {
    let mut at: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let macs = |ns: &Ns| -> Vec<(String, String)> {
        ns.ip(&["-o", "link", "show"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let name = l.split(':').nth(1)?.trim().split('@').next()?.to_string();
                let mac = l.split("link/ether ").nth(1)?.split_whitespace().next()?;
                Some((name, mac.to_string()))
            })
            .collect()
    };
    // A NIC free on the node (a passthru NIC lent to a pod stays on the
    // node too, held by the pod's child: it counts where the child is).
    for mac in hostnic_testbed::free_on_node(node).unwrap_or_default() {
        at.entry(mac).or_default().push("node".into());
    }
    for (i, pod) in pods.iter().enumerate() {
        for (name, mac) in macs(pod) {
            if name == "eth0" {
                at.entry(mac).or_default().push(format!("pod{i}"));
            }
        }
    }
    at
}

/// The invariants after a round (releases settled).
fn check(round: usize, node: &Ns, pods: &[Ns], state: &[Pod], macs: &[String]) {
    let at = census(node, pods);
    for mac in macs {
        let places = at.get(mac).cloned().unwrap_or_default();
        assert!(
            places.len() <= 1,
            "round {round}: NIC {mac} is in {places:?}"
        );
    }
    for (i, st) in state.iter().enumerate() {
        let here: Vec<&String> = at
            .iter()
            .filter(|(_, p)| p.contains(&format!("pod{i}")))
            .map(|(m, _)| m)
            .collect();
        match st {
            Pod::Held { mac, ip } => {
                assert_eq!(here, vec![mac], "round {round}: pod {i} was told {mac}");
                let addr = pods[i].ip(&["-o", "addr", "show", "dev", "eth0"]).unwrap();
                assert!(
                    addr.contains(ip.as_str()),
                    "round {round}: pod {i} lost {ip}: {addr}"
                );
            }
            _ => assert!(
                here.is_empty(),
                "round {round}: pod {i} ({st:?}) has {here:?}"
            ),
        }
    }
}

/// The network config of a runtime that does not wait for the agent: each
/// round restarts it only once every call of the burst returned, so a call
/// waiting for it would wait in vain.
fn gives_up_at_once(mut conf: Value) -> Value {
    conf["connectTimeoutSeconds"] = json!(0);
    conf
}

fn rounds() -> usize {
    std::env::var("HOSTNIC_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn fifty_kills_during_add_del_bursts_with_the_static_inventory() {
    if !require_root("fifty_kills_during_add_del_bursts_with_the_static_inventory") {
        return;
    }
    const PODS: usize = 8;
    let rounds = rounds().max(50);
    let tb = hostnic_testbed::Testbed::new(PODS).unwrap();
    let conf = gives_up_at_once(tb.netconf("1.0.0", json!([])));
    let cni = tb.hostnic();
    let macs: Vec<String> = tb.nics.iter().map(|n| n.mac.clone()).collect();
    let pods: Vec<Ns> = (0..PODS)
        .map(|i| Ns::new(&format!("k{i}")).unwrap())
        .collect();
    let mut state = vec![Pod::Empty; PODS];
    let mut agent = tb.start_agent().unwrap();
    let mut cut = 0;
    for round in 0..rounds {
        // Random moments: before, during and after the device moves (eight
        // moves take ~160 ms).
        let kill_after = Duration::from_millis(fastrand::u64(0..200));
        cut += burst(
            &cni, &conf, &pods, &mut state, round, kill_after, &mut agent,
        );
        agent = tb.start_agent().unwrap();
        follow_up(&cni, &conf, &pods, &mut state, round);
        tb.settle();
        check(round, &tb.node, &pods, &state, &macs);
        // Every NIC not with a pod is parked and free.
        let held = state
            .iter()
            .filter(|s| matches!(s, Pod::Held { .. }))
            .count();
        assert_eq!(
            tb.parked_macs().unwrap().len(),
            PODS - held,
            "round {round}"
        );
    }
    eprintln!("{rounds} kills; {cut} calls cut short, each retried to a clean state");
    assert!(
        cut > 0,
        "no kill ever landed mid-call: the loop tests nothing"
    );
}

#[test]
fn thirty_kills_during_provisioning_attach_detach_and_trim_in_the_cloud() {
    if !require_root("thirty_kills_during_provisioning_attach_detach_and_trim_in_the_cloud") {
        return;
    }
    const PODS: usize = 6;
    let rounds = rounds().max(30);
    let bed = CloudBed::new(SimConfig {
        nodes: 1,
        faults: Faults {
            attach_latency_ms: 60,
            detach_latency_ms: 40,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .unwrap();
    // A pool that creates on demand and trims at once: every round
    // provisions, attaches, detaches and deletes.
    let timers = "warm_min = 0\nwarm_max = 0\nidle_seconds = 1\nleak_grace_seconds = 2\nreconcile_seconds = 1\ncloud_poll_seconds = 1\ncold_add_wait_seconds = 5";
    let conf = gives_up_at_once(bed.netconf(0, "1.0.0", json!([])));
    let cni = bed.hostnic(0);
    let node = &bed.sim.nodes[0].ns;
    let pods: Vec<Ns> = (0..PODS)
        .map(|i| Ns::new(&format!("c{i}")).unwrap())
        .collect();
    let mut state = vec![Pod::Empty; PODS];
    let mut agent = bed.start_agent(0, timers).unwrap();
    let mut cut = 0;
    let ours = |b: &CloudBed| -> Vec<String> {
        b.sim
            .secondary_nics()
            .iter()
            .filter_map(|n| n["id"].as_str().map(str::to_string))
            .collect()
    };
    // A round whose calls all finish before the kill tests only the
    // restart; a fast machine (warm ADDs and DELs in a few milliseconds)
    // can see thirty such in a row. Rounds go on, up to three times as
    // many, until a kill has landed mid-call.
    let mut round = 0;
    while round < rounds || (cut == 0 && round < 3 * rounds) {
        // Every other round within the provisioning and attaches; the others
        // up to 1.5 s, past the start-up tick that trims idle NICs.
        let limit = if round % 2 == 0 { 250 } else { 1500 };
        let kill_after = Duration::from_millis(fastrand::u64(0..limit));
        cut += burst(
            &cni, &conf, &pods, &mut state, round, kill_after, &mut agent,
        );
        agent = bed.start_agent(0, timers).unwrap();
        follow_up(&cni, &conf, &pods, &mut state, round);
        bed.settle(0);
        check(round, node, &pods, &state, &ours(&bed));
        round += 1;
    }
    eprintln!("{round} kills; {cut} calls cut short, each retried to a clean state");
    assert!(
        cut > 0,
        "no kill ever landed mid-call: the loop tests nothing"
    );
    // Release everything: after the grace and the trim, no NIC of ours is
    // left in the cloud but what the pool keeps (warm_max = 0: none).
    for s in state.iter_mut().filter(|s| **s != Pod::Empty) {
        *s = Pod::Unsure;
    }
    follow_up(&cni, &conf, &pods, &mut state, rounds);
    wait_for(
        "every NIC released and deleted",
        Duration::from_secs(30),
        || ours(&bed).is_empty(),
    )
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", bed.sim.inspect(), agent.log_text()));
}
