//! NICs from the (simulated) cloud: agents on simulated VMs create, attach,
//! pool and return NICs through the signed API, and the simulated SDN
//! carries the pods' traffic.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sim::faults::ErrorRule;
use hostnic_testbed::sim::{Faults, SimConfig};
use hostnic_testbed::{CallEnv, CniCall, Ns, PluginError, require_root, wait_for};
use serde_json::{Value, json};

const TIMERS: &str = "warm_min = 1\nwarm_max = 3\nreconcile_seconds = 1\ncold_add_wait_seconds = 10\nidle_seconds = 3600";

fn env<'a>(cid: &'a str, netns: &'a str) -> CallEnv<'a> {
    CallEnv {
        container_id: cid,
        netns,
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
    }
}

fn add(cni: &CniCall, conf: &Value, e: &CallEnv) -> Result<Value, PluginError> {
    cni.add_retrying(conf, e)
}

/// A simulated cloud of one VM with `faults`.
fn one_node(faults: Faults) -> CloudBed {
    CloudBed::new(SimConfig {
        nodes: 1,
        faults,
        ..SimConfig::default()
    })
    .unwrap()
}

fn ip_of(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn pods_on_two_nodes_talk_over_the_sdn_and_reach_services_through_their_node() {
    if !require_root("pods_on_two_nodes_talk_over_the_sdn_and_reach_services_through_their_node") {
        return;
    }
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        ..SimConfig::default()
    })
    .unwrap();
    let a0 = bed.start_agent(0, TIMERS).unwrap();
    let _a1 = bed.start_agent(1, TIMERS).unwrap();
    let routes = json!([{"dst": "10.96.0.0/16", "gw": "0.0.0.0"}]);

    // Two pods on node 0, one on node 1.
    let placement = [0usize, 0, 1];
    let pods: Vec<Ns> = placement
        .iter()
        .map(|n| Ns::new(&format!("cp{n}")).unwrap())
        .collect();
    let paths: Vec<String> = pods
        .iter()
        .map(|p| p.path().display().to_string())
        .collect();
    let mut results = Vec::new();
    for (i, &node) in placement.iter().enumerate() {
        let conf = bed.netconf(node, "1.0.0", routes.clone());
        let r = add(&bed.hostnic(node), &conf, &env(&format!("c{i}"), &paths[i]))
            .unwrap_or_else(|e| panic!("ADD pod {i}: {e}\n{}", a0.log_text()));
        results.push(r);
    }
    let ips: Vec<String> = results.iter().map(ip_of).collect();
    assert_eq!(
        ips.iter().collect::<BTreeSet<_>>().len(),
        3,
        "one address per pod: {ips:?}"
    );
    assert!(ips.iter().all(|ip| ip.starts_with("10.100.0.")), "{ips:?}");

    // Pod to gateway, and pod to pod across nodes through the SDN bridge.
    assert!(
        pods[0].ping("10.100.0.1"),
        "pod 0 cannot reach its vxnet gateway"
    );
    assert!(
        pods[0].ping(&ips[2]),
        "pod on node 0 cannot reach the pod on node 1"
    );
    assert!(
        pods[2].ping(&ips[1]),
        "pod on node 1 cannot reach the second pod on node 0"
    );

    // Service traffic: the template's 0.0.0.0 is node 0's own NIC in the
    // vxnet, and a DNAT rule there (as kube-proxy installs) answers.
    let node0 = &bed.sim.nodes[0];
    let gw_addr = node0.ns.ip(&["-o", "-4", "addr", "show"]).unwrap();
    let gw_line = gw_addr
        .lines()
        .find(|l| l.contains(" gw") && l.contains("10.100.0."))
        .unwrap_or_else(|| panic!("no gateway NIC on node 0: {gw_addr}"));
    let gw_ip = gw_line
        .split_whitespace()
        .nth(3)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let pod_routes = pods[0].ip(&["route"]).unwrap();
    assert!(
        pod_routes.contains(&format!("10.96.0.0/16 via {gw_ip} dev eth0")),
        "{pod_routes}"
    );
    assert!(
        pod_routes.contains("default via 10.100.0.1 dev eth0"),
        "{pod_routes}"
    );
    bed.service_on_node(0, "10.96.0.10").unwrap();
    assert!(
        pods[0].ping("10.96.0.10"),
        "the service IP is not reached through the node"
    );
    let counters = node0
        .ns
        .exec(
            "iptables",
            &["-t", "nat", "-L", "PREROUTING", "-v", "-n", "-x"],
        )
        .unwrap();
    let hits: u64 = counters
        .lines()
        .find(|l| l.contains("10.96.0.10"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        hits > 0,
        "the DNAT rule on the node saw no packet: {counters}"
    );
    // The gateway NIC never takes the node's default route.
    assert!(
        node0
            .ns
            .ip(&["route", "show", "default"])
            .unwrap()
            .contains("dev eth0")
    );

    for (i, &node) in placement.iter().enumerate() {
        let conf = bed.netconf(node, "1.0.0", routes.clone());
        bed.hostnic(node)
            .call("DEL", &conf, &env(&format!("c{i}"), &paths[i]))
            .unwrap()
            .unwrap();
        bed.hostnic(node)
            .call("DEL", &conf, &env(&format!("c{i}"), ""))
            .unwrap()
            .unwrap();
    }
    assert!(
        bed.leaked_nics().is_empty(),
        "leaked: {:?}",
        bed.leaked_nics()
    );
    // Every NIC an agent made carries its cluster's and its node's tag,
    // added once its node has had no cold ADD waiting for a few seconds.
    let untagged = || -> Vec<String> {
        let inspect = bed.sim.inspect();
        inspect["nics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["role"] == 0)
            .filter(|nic| {
                let tags = nic["tag_names"].to_string();
                let node = nic["instance"].as_str().unwrap_or_default();
                !(tags.contains("\"hostnic-test\"")
                    && tags.contains(&format!("hostnic-test-{node}")))
            })
            .map(|n| n.to_string())
            .collect()
    };
    wait_for("every NIC tagged", Duration::from_secs(20), || {
        untagged().is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", untagged()));
}

/// The agent's log without its DEBUG lines, for a failure message.
fn quiet(agent: &hostnic_testbed::Agent) -> String {
    agent
        .log_text()
        .lines()
        .filter(|l| !l.contains(" DEBUG "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A node's first pods arrive together, none warm, and each wants the
/// node's gateway NIC (`gw 0.0.0.0`) while the others wait for theirs. The
/// node gets one gateway NIC, and no pod's NIC is ever taken for it — or
/// later re-attached out of the pod by a reconcile that mistook it for
/// the gateway NIC gone missing.
#[test]
fn a_burst_of_first_pods_makes_one_gateway_nic_and_keeps_every_pod_nic() {
    if !require_root("a_burst_of_first_pods_makes_one_gateway_nic_and_keeps_every_pod_nic") {
        return;
    }
    let bed = CloudBed::new(SimConfig {
        nodes: 1,
        ..SimConfig::default()
    })
    .unwrap();
    let agent = bed
        .start_agent(
            0,
            "warm_min = 0\nwarm_max = 8\nreconcile_seconds = 1\ncold_add_wait_seconds = 10\nidle_seconds = 3600",
        )
        .unwrap();
    let routes = json!([{"dst": "10.96.0.0/16", "gw": "0.0.0.0"}]);
    let conf = bed.netconf(0, "1.0.0", routes);
    let pods: Vec<Ns> = (0..6)
        .map(|i| Ns::new(&format!("gb{i}")).unwrap())
        .collect();
    let paths: Vec<String> = pods
        .iter()
        .map(|p| p.path().display().to_string())
        .collect();
    let ips: Vec<String> = std::thread::scope(|s| {
        let adds: Vec<_> = paths
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let (conf, cni) = (&conf, bed.hostnic(0));
                s.spawn(move || add(&cni, conf, &env(&format!("g{i}"), path)))
            })
            .collect();
        adds.into_iter()
            .map(|a| match a.join().unwrap() {
                Ok(r) => ip_of(&r),
                Err(e) => panic!("ADD: {e}\n{}", quiet(&agent)),
            })
            .collect()
    });
    assert_eq!(
        ips.iter().collect::<BTreeSet<_>>().len(),
        ips.len(),
        "{ips:?}"
    );

    let gateways = || {
        let addrs = bed.sim.nodes[0]
            .ns
            .ip(&["-o", "-4", "addr", "show"])
            .unwrap();
        addrs
            .lines()
            .filter(|l| l.contains("10.100.0."))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // Three reconcile periods: a NIC the agent thinks vanished from the
    // node would be re-attached, out of its pod, by now.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        gateways().len(),
        1,
        "one gateway NIC on the node: {:?}\n{}",
        gateways(),
        quiet(&agent)
    );
    for (pod, ip) in pods.iter().zip(&ips) {
        let addrs = pod
            .ip(&["-o", "-4", "addr", "show", "eth0"])
            .unwrap_or_default();
        assert!(
            addrs.contains(&format!("{ip}/")),
            "the pod lost its NIC {ip}: {addrs}\n{}",
            quiet(&agent)
        );
        assert!(pod.ping("10.100.0.1"), "pod {ip} cannot reach its gateway");
    }
    assert!(!quiet(&agent).contains("re-attaching"), "{}", quiet(&agent));

    for (i, path) in paths.iter().enumerate() {
        bed.hostnic(0)
            .call("DEL", &conf, &env(&format!("g{i}"), path))
            .unwrap()
            .unwrap();
    }
    assert!(bed.leaked_nics().is_empty(), "{:?}", bed.leaked_nics());
}

/// A batch made for cold ADDs also makes NICs for those the node's recent
/// cold ADDs say are coming, up to `warm_max`: kubelet starts a node's
/// pods a few at a time, and one batch now costs fewer of the account's
/// calls than one per pod later. Pods one after another: the first is
/// cold (1 recent: 1 + 1 made), the second warm, the third cold (2
/// recent: 1 + 2), two warm, the sixth cold (3 recent, warm_max 3: 1 +
/// 3), three warm. Without the look ahead, nine pods made nine batches.
#[test]
fn cold_adds_make_nics_ahead_for_the_pods_that_follow() {
    if !require_root("cold_adds_make_nics_ahead_for_the_pods_that_follow") {
        return;
    }
    let bed = one_node(Faults {
        attach_latency_ms: 100,
        ..Faults::default()
    });
    let agent = bed
        .start_agent(
            0,
            "warm_min = 0\nwarm_max = 3\nreconcile_seconds = 3600\ncold_add_wait_seconds = 10\nidle_seconds = 3600",
        )
        .unwrap();
    let conf = bed.netconf(0, "1.0.0", json!([]));
    let pods: Vec<Ns> = (0..9)
        .map(|i| Ns::new(&format!("la{i}")).unwrap())
        .collect();
    let creates = || bed.sim.calls().get("CreateNics").copied().unwrap_or(0);
    let ours = || bed.sim.secondary_nics().len();
    let mut made = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let path = pod.path().display().to_string();
        add(&bed.hostnic(0), &conf, &env(&format!("la{i}"), &path))
            .unwrap_or_else(|e| panic!("pod {i}: {e}\n{}", quiet(&agent)));
        made.push((creates(), ours()));
        // The batch's other NICs come up with this pod's (one attach, 100
        // ms): the next pod finds them free, not on their way.
        std::thread::sleep(Duration::from_millis(500));
    }
    let batches: Vec<u64> = made.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        batches,
        [1, 1, 2, 2, 2, 3, 3, 3, 3],
        "CreateNics after each pod"
    );
    let nics: Vec<usize> = made.iter().map(|(_, n)| *n).collect();
    assert_eq!(nics, [2, 2, 5, 5, 5, 9, 9, 9, 9], "NICs after each pod");

    for (i, pod) in pods.iter().enumerate() {
        let path = pod.path().display().to_string();
        bed.hostnic(0)
            .call("DEL", &conf, &env(&format!("la{i}"), &path))
            .unwrap()
            .unwrap();
    }
    assert!(bed.leaked_nics().is_empty(), "{:?}", bed.leaked_nics());
}

/// Tags wait for a quiet node and no pod waits for them. Tagging that
/// keeps failing (a key without tag rights) costs the node's timer one
/// try in ten minutes, not one per tick.
#[test]
fn tagging_that_keeps_failing_holds_no_pod_and_costs_no_call_per_tick() {
    if !require_root("tagging_that_keeps_failing_holds_no_pod_and_costs_no_call_per_tick") {
        return;
    }
    let bed = one_node(Faults {
        errors: vec![ErrorRule {
            action: Some("AttachTags".into()),
            code: 1400,
            rate: 1.0,
            count: None,
        }],
        attach_latency_ms: 100,
        ..Faults::default()
    });
    let agent = bed
        .start_agent(
            0,
            "warm_min = 0\nwarm_max = 2\nreconcile_seconds = 1\ncold_add_wait_seconds = 10",
        )
        .unwrap();
    let conf = bed.netconf(0, "1.0.0", json!([]));
    let pod = Ns::new("tf").unwrap();
    let path = pod.path().display().to_string();
    add(&bed.hostnic(0), &conf, &env("tf", &path))
        .unwrap_or_else(|e| panic!("{e}\n{}", quiet(&agent)));
    let tries = || bed.sim.calls().get("AttachTags").copied().unwrap_or(0);
    wait_for("a try to tag", Duration::from_secs(20), || tries() >= 1)
        .unwrap_or_else(|e| panic!("{e}\n{}", quiet(&agent)));
    let after_first = tries();
    // Five ticks of the node's timer.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(tries(), after_first, "{}", quiet(&agent));
    bed.hostnic(0)
        .call("DEL", &conf, &env("tf", &path))
        .unwrap()
        .unwrap();
    assert!(bed.leaked_nics().is_empty(), "{:?}", bed.leaked_nics());
}

/// The cold ADD's demand is per vxnet: a warm NIC in a vxnet the pod does
/// not take is no supply for it. (Counted as one, the provisioner created
/// nothing, and the pod waited for the warm-pool timer or answered "try
/// again later".)
#[test]
fn a_warm_nic_in_another_vxnet_does_not_hold_back_a_cold_add() {
    if !require_root("a_warm_nic_in_another_vxnet_does_not_hold_back_a_cold_add") {
        return;
    }
    let bed = CloudBed::new(SimConfig {
        nodes: 1,
        vxnets: vec![
            ("vxnet-pods".into(), "10.100.0.0/24".parse().unwrap()),
            ("vxnet-b".into(), "10.101.0.0/24".parse().unwrap()),
        ],
        ..SimConfig::default()
    })
    .unwrap();
    // One warm NIC per vxnet, and no top-up for a minute.
    let agent = bed
        .start_agent(
            0,
            "warm_min = 1\nwarm_max = 4\nreconcile_seconds = 60\ncold_add_wait_seconds = 10\nidle_seconds = 3600",
        )
        .unwrap();
    wait_for("a warm NIC in each vxnet", Duration::from_secs(20), || {
        bed.sim.inspect()["nics"]
            .as_array()
            .is_some_and(|n| n.iter().filter(|n| n["role"] == 0).count() == 2)
    })
    .unwrap();
    let conf = bed.netconf(0, "1.0.0", json!([]));
    let pods: Vec<Ns> = (0..2)
        .map(|i| Ns::new(&format!("wv{i}")).unwrap())
        .collect();
    let mut ips = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let path = pod.path().display().to_string();
        let started = Instant::now();
        // One call each, as the runtime makes it: no retry on 11.
        let r = bed
            .hostnic(0)
            .call("ADD", &conf, &env(&format!("w{i}"), &path))
            .unwrap()
            .unwrap_or_else(|e| panic!("ADD {i}: {e}\n{}", quiet(&agent)));
        eprintln!("cloud: ADD {i} answered in {:?}", started.elapsed());
        ips.push(ip_of(&r));
    }
    assert!(
        ips.iter().all(|ip| ip.starts_with("10.100.0.")),
        "both in the first vxnet: {ips:?}"
    );
    for (i, pod) in pods.iter().enumerate() {
        let path = pod.path().display().to_string();
        bed.hostnic(0)
            .call("DEL", &conf, &env(&format!("w{i}"), &path))
            .unwrap()
            .unwrap();
    }
    assert!(bed.leaked_nics().is_empty(), "{:?}", bed.leaked_nics());
}

#[test]
fn cloud_faults_leak_nothing_and_every_pod_that_got_success_works() {
    if !require_root("cloud_faults_leak_nothing_and_every_pod_that_got_success_works") {
        return;
    }
    // Every class of fault, each certain to land: the first two creates
    // fail (5000), the first attach is busy (5100), the first attach job
    // fails, describes fail at random, and the API throttles.
    let rule = |action: &str, code: u32, rate: f64, count: Option<u32>| ErrorRule {
        action: Some(action.into()),
        code,
        rate,
        count,
    };
    let faults = Faults {
        errors: vec![
            rule("CreateNics", 5000, 1.0, Some(2)),
            rule("AttachNics", 5100, 1.0, Some(1)),
            rule("DescribeNics", 5200, 0.2, None),
        ],
        fail_next_jobs: 1,
        attach_latency_ms: 100,
        // The API answers "busy" past 15 requests a second.
        throttle_per_second: Some(15),
        ..Faults::default()
    };
    let bed = one_node(faults);
    let agent = bed.start_agent(0, "warm_min = 0\nwarm_max = 8\nreconcile_seconds = 1\ncold_add_wait_seconds = 5\nidle_seconds = 3600").unwrap();
    let node = &bed.sim.nodes[0];
    let default_before = node.ns.ip(&["route", "show", "default"]).unwrap();
    let conf = bed.netconf(0, "1.0.0", json!([]));

    // A burst of cold ADDs through errors, throttling and failed jobs.
    const PODS: usize = 5;
    let pods: Vec<Ns> = (0..PODS)
        .map(|i| Ns::new(&format!("f{i}")).unwrap())
        .collect();
    let paths: Vec<String> = pods
        .iter()
        .map(|p| p.path().display().to_string())
        .collect();
    let handles: Vec<_> = (0..PODS)
        .map(|i| {
            let (cni, conf, path) = (bed.hostnic(0), conf.clone(), paths[i].clone());
            std::thread::spawn(move || add(&cni, &conf, &env(&format!("f{i}"), &path)))
        })
        .collect();
    let results: Vec<Value> = handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            h.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("pod {i} never got a NIC: {e}\n{}", agent.log_text()))
        })
        .collect();
    let ips: BTreeSet<String> = results.iter().map(ip_of).collect();
    assert_eq!(ips.len(), PODS, "no address twice");
    let injected = bed.sim.injected();
    println!("faults injected during the burst (ret_code: count, 0 = failed job): {injected:?}");
    for code in [5000, 5100, 0] {
        // (0: a failed attach job)
        assert!(
            injected.get(&code).copied().unwrap_or(0) > 0,
            "no {code} fault landed; the run proved nothing: {injected:?}"
        );
    }
    for (i, pod) in pods.iter().enumerate() {
        assert!(
            pod.ping("10.100.0.1"),
            "pod {i} got success but cannot reach its gateway"
        );
    }

    // A NIC vanishes from the node (the cloud still says attached): the
    // agent re-attaches it.
    bed.hostnic(0)
        .call("DEL", &conf, &env("f0", &paths[0]))
        .unwrap()
        .unwrap();
    bed.settle(0);
    let freed = results[0]["interfaces"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    bed.sim.set_faults(Faults {
        attach_latency_ms: 100,
        ..Faults::default()
    });
    bed.post("/control/vanish", json!({"nic": freed}));
    let on_node = |mac: &str| {
        node.ns
            .ip(&["-o", "link", "show"])
            .is_ok_and(|l| l.contains(mac))
    };
    wait_for(
        "the vanished NIC to be re-attached",
        Duration::from_secs(20),
        || on_node(&freed),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));

    // Something moves the node's default route to a NIC of ours: put back.
    // (The re-attached NIC is the only one on the node; the simulator can
    // configure it once its attach job has finished.)
    wait_for(
        "the simulator to move the default route",
        Duration::from_secs(10),
        || {
            bed.post(
                "/control/move-default-route",
                json!({"instance": node.instance}),
            )["ok"]
                == true
        },
    )
    .unwrap();
    assert_ne!(
        node.ns.ip(&["route", "show", "default"]).unwrap(),
        default_before,
        "the fault did not land"
    );
    // One default route again, via the original gateway on eth0 (restored
    // as a static route).
    let original = default_before
        .split(" proto")
        .next()
        .unwrap()
        .trim()
        .to_string();
    wait_for(
        "the default route to come back to eth0",
        Duration::from_secs(20),
        || {
            node.ns
                .ip(&["route", "show", "default"])
                .is_ok_and(|r| r.lines().count() == 1 && r.starts_with(&original))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));

    // Everything returned; nothing leaked in the cloud; the pods that are
    // left still work.
    for (i, path) in paths.iter().enumerate().skip(1) {
        assert!(
            pods[i].ping("10.100.0.1"),
            "pod {i} ({}) lost its network during the faults: {}\n{}\n{}",
            results[i]["interfaces"][0]["mac"],
            pods[i].ip(&["addr"]).unwrap_or_default(),
            diagnose(&bed, &pods[i]),
            agent.log_text()
        );
        bed.hostnic(0)
            .call("DEL", &conf, &env(&format!("f{i}"), path))
            .unwrap()
            .unwrap();
    }
    wait_for(
        "failed creates and attaches to be cleaned up",
        Duration::from_secs(20),
        || bed.leaked_nics().is_empty(),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", bed.leaked_nics(), agent.log_text()));
}

#[test]
fn an_agent_killed_mid_attach_adopts_the_nic_after_restart() {
    if !require_root("an_agent_killed_mid_attach_adopts_the_nic_after_restart") {
        return;
    }
    let faults = Faults {
        attach_latency_ms: 1500,
        ..Faults::default()
    };
    let bed = one_node(faults);
    let timers = "warm_min = 0\nwarm_max = 4\nreconcile_seconds = 1\ncold_add_wait_seconds = 10";
    let mut agent = bed.start_agent(0, timers).unwrap();
    let conf = bed.netconf(0, "1.0.0", json!([]));
    let pod = Ns::new("k").unwrap();
    let path = pod.path().display().to_string();

    let (cni, c, p) = (bed.hostnic(0), conf.clone(), path.clone());
    let first = std::thread::spawn(move || cni.call("ADD", &c, &env("k1", &p)).unwrap());
    // The NIC is created and its attach is on its way when the agent dies.
    wait_for("the attach to start", Duration::from_secs(10), || {
        bed.sim.calls().contains_key("AttachNics")
    })
    .unwrap();
    agent.kill9();
    assert!(
        first.join().unwrap().is_err(),
        "the cut ADD cannot have succeeded"
    );

    // The restarted agent adopts the NICs once the cloud attaches them
    // (the batch has one made ahead, for a pod that may follow); the
    // runtime's retried ADD gets one of them, and nothing new is made.
    let ours = || -> Vec<Value> {
        bed.sim
            .secondary_nics()
            .iter()
            .map(|n| n["id"].clone())
            .collect()
    };
    let made_before = ours();
    agent = bed.start_agent(0, timers).unwrap();
    let r = add(&bed.hostnic(0), &conf, &env("k1", &path))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    assert!(pod.ping("10.100.0.1"));
    assert_eq!(ours(), made_before, "a NIC made again after the restart");
    assert!(
        made_before.contains(&r["interfaces"][0]["mac"]),
        "{made_before:?}"
    );
    bed.hostnic(0)
        .call("DEL", &conf, &env("k1", &path))
        .unwrap()
        .unwrap();
    assert!(bed.leaked_nics().is_empty());
}

/// What the pod and the SDN know, for a failed connectivity check.
fn diagnose(bed: &CloudBed, pod: &Ns) -> String {
    let sdn = bed.sim.sdn_ns();
    format!(
        "pod route:\n{}\npod neigh:\n{}\nsdn neigh:\n{}\nsdn links:\n{}\nsdn fdb:\n{}",
        pod.ip(&["route"]).unwrap_or_default(),
        pod.ip(&["neigh"]).unwrap_or_default(),
        sdn.ip(&["neigh"]).unwrap_or_default(),
        sdn.ip(&["-br", "link"]).unwrap_or_default(),
        sdn.exec("bridge", &["fdb", "show", "br", "br1"])
            .unwrap_or_default(),
    )
}

#[test]
fn limits_trimming_leak_collection_and_a_cheap_restart() {
    if !require_root("limits_trimming_leak_collection_and_a_cheap_restart") {
        return;
    }
    let bed = one_node(Faults {
        attach_latency_ms: 50,
        ..Faults::default()
    });
    // max_nics 4: the primary, and three for pods (no gateway NIC here).
    let timers = "warm_min = 0\nwarm_max = 1\nmax_nics = 4\nidle_seconds = 1\nleak_grace_seconds = 1\nreconcile_seconds = 1\ncloud_poll_seconds = 1\ncold_add_wait_seconds = 10";
    let mut agent = bed.start_agent(0, timers).unwrap();
    let conf = bed.netconf(0, "1.1.0", json!([]));
    let pods: Vec<Ns> = (0..4).map(|i| Ns::new(&format!("l{i}")).unwrap()).collect();
    let paths: Vec<String> = pods
        .iter()
        .map(|p| p.path().display().to_string())
        .collect();
    for (i, path) in paths.iter().enumerate().take(3) {
        add(&bed.hostnic(0), &conf, &env(&format!("l{i}"), path))
            .unwrap_or_else(|e| panic!("pod {i}: {e}\n{}", agent.log_text()));
    }
    // The VM is full: the fourth pod is refused with the reason, and STATUS
    // says no ADD can succeed.
    let e = bed
        .hostnic(0)
        .call("ADD", &conf, &env("l3", &paths[3]))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(101), "{e}");
    assert!(e.msg.contains("of its 4 NICs"), "{e}");
    let status = bed
        .hostnic(0)
        .call("STATUS", &conf, &CallEnv::default())
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code, Some(50));

    // A restart with pods in place serves again at once, after only the
    // calls reconciliation needs.
    let before = bed.sim.calls().values().sum::<u64>();
    agent.stop().unwrap();
    let t = Instant::now();
    agent = bed.start_agent(0, timers).unwrap();
    let ready = t.elapsed();
    let calls = bed.sim.calls().values().sum::<u64>() - before;
    assert!(
        ready < Duration::from_secs(5),
        "serving again took {ready:?}"
    );
    // DescribeVxNets, DescribeNics, and the vxnets' count (one
    // DescribeNics each); a timer tick may add one more DescribeNics by the
    // time we look, and tags the previous agent had not added yet two more
    // (DescribeTags, AttachTags).
    let vxnets = bed.sim.config().vxnets.len() as u64;
    assert!(
        calls <= 5 + vxnets,
        "a restart made {calls} cloud calls: {:?}",
        bed.sim.calls()
    );
    println!("restart: serving after {ready:?} and {calls} cloud calls");

    // Pods leave; free NICs above warm_max (1) go back to the cloud.
    for (i, path) in paths.iter().enumerate().take(3) {
        bed.hostnic(0)
            .call("DEL", &conf, &env(&format!("l{i}"), path))
            .unwrap()
            .unwrap();
    }
    let ours = |b: &CloudBed| {
        b.sim.inspect()["nics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["role"] == 0)
            .count()
    };
    wait_for(
        "idle NICs above warm_max to be deleted",
        Duration::from_secs(20),
        || ours(&bed) == 1,
    )
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", bed.sim.inspect(), agent.log_text()));

    // Leaks: a NIC this node created and lost (its name, detached), one of
    // a node that died (the cluster's name), and somebody else's. Every
    // node sweeps its own; only the node doing the cluster's sweep
    // (leak_sweep = "cluster") takes the dead node's; nobody takes the
    // foreign one.
    let own_name = format!("hostnic-test-{}", bed.sim.nodes[0].instance);
    let own = create_detached(&bed, &own_name);
    let leak = create_detached(&bed, "hostnic-test-i-deadnode");
    let foreign = create_detached(&bed, "someone-elses-nic");
    let exists = |id: &str| nic_exists(&bed, id);
    wait_for(
        "this node's leaked NIC to be collected",
        Duration::from_secs(30),
        || !exists(&own),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    // A few more polls: the dead node's NIC is not this node's to take.
    std::thread::sleep(Duration::from_secs(3));
    assert!(exists(&leak), "a node swept another node's NIC");
    agent.stop().unwrap();
    let agent = bed
        .start_agent(0, &format!("{timers}\nleak_sweep = \"cluster\""))
        .unwrap();
    wait_for(
        "the dead node's leaked NIC to be collected",
        Duration::from_secs(30),
        || !exists(&leak),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    assert!(
        exists(&foreign),
        "the collector deleted a NIC that is not ours"
    );
}

/// A detached NIC named `name` in vxnet-pods, made straight through the
/// cloud API; its id.
fn create_detached(bed: &CloudBed, name: &str) -> String {
    let client = hostnic_iaas::Client::new(
        hostnic_iaas::Credentials::from_yaml(&bed.sim.local_credentials_yaml()).unwrap(),
        hostnic_iaas::Options::default(),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let nics = rt
        .block_on(client.create_nics("vxnet-pods", name, 1, &[]))
        .unwrap();
    nics[0].nic_id.clone()
}

fn nic_exists(bed: &CloudBed, id: &str) -> bool {
    bed.sim.inspect()["nics"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["id"] == id)
}

/// An agent killed between a create and its attach leaves a detached NIC
/// named for its node. The next agent on the node deletes it at start,
/// without waiting out the leak grace period (ten minutes here, the
/// default): it has created nothing yet, so the NIC cannot be one of its
/// own creates on the way to an attach. Another node's NIC it leaves.
#[test]
fn a_nic_a_dead_agent_left_detached_is_deleted_at_the_next_start() {
    if !require_root("a_nic_a_dead_agent_left_detached_is_deleted_at_the_next_start") {
        return;
    }
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        ..SimConfig::default()
    })
    .unwrap();
    let timers = "warm_min = 0\nleak_grace_seconds = 600";
    let own = create_detached(&bed, &format!("hostnic-test-{}", bed.sim.nodes[0].instance));
    let other = create_detached(&bed, &format!("hostnic-test-{}", bed.sim.nodes[1].instance));
    let agent = bed.start_agent(0, timers).unwrap();
    wait_for(
        "the stranded NIC to be deleted",
        Duration::from_secs(10),
        || !nic_exists(&bed, &own),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    assert_eq!(bed.sim.calls().get("DeleteNics"), Some(&1));
    assert!(
        nic_exists(&bed, &other),
        "node-0 deleted node-1's NIC: {}",
        bed.sim.inspect()
    );
    assert!(agent.log_text().contains("deleting leaked NICs"));
}

/// A node at rest asks the cloud nothing between its slow polls, and sees
/// kernel changes (a NIC gone, the default route taken) from netlink
/// notifications, not from a timer: both timers here are an hour.
#[test]
fn at_rest_no_cloud_calls_and_kernel_changes_are_seen_from_netlink() {
    if !require_root("at_rest_no_cloud_calls_and_kernel_changes_are_seen_from_netlink") {
        return;
    }
    let bed = one_node(Faults {
        attach_latency_ms: 50,
        ..Faults::default()
    });
    let node = &bed.sim.nodes[0];
    let default_before = node.ns.ip(&["route", "show", "default"]).unwrap();
    let agent = bed
        .start_agent(
            0,
            "warm_min = 1\nwarm_max = 2\nreconcile_seconds = 3600\ncloud_poll_seconds = 3600\ncold_add_wait_seconds = 10",
        )
        .unwrap();
    let total = |b: &CloudBed| b.sim.calls().values().sum::<u64>();
    let parked = |n: &Ns| {
        n.ip(&["-o", "link", "show"])
            .map(|l| l.lines().filter(|l| l.contains(": hn")).count())
            .unwrap_or(0)
    };
    // The start-up tick warms the pool: one NIC per vxnet.
    let vxnets = bed.sim.config().vxnets.len();
    wait_for("the warm pool", Duration::from_secs(20), || {
        parked(&node.ns) == vxnets
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    std::thread::sleep(Duration::from_millis(500));
    let settled = total(&bed);
    std::thread::sleep(Duration::from_secs(5));
    let at_rest = total(&bed) - settled;
    eprintln!("cloud calls in 5 s at rest: {at_rest} (after {settled} to start and warm up)");
    assert_eq!(at_rest, 0, "calls at rest: {:?}", bed.sim.calls());

    // The default route taken: put back at once (the timer is an hour).
    assert_eq!(
        bed.post(
            "/control/move-default-route",
            json!({"instance": node.instance})
        )["ok"],
        true
    );
    let original = default_before
        .split(" proto")
        .next()
        .unwrap()
        .trim()
        .to_string();
    wait_for(
        "the default route back on eth0",
        Duration::from_secs(5),
        || {
            node.ns
                .ip(&["route", "show", "default"])
                .is_ok_and(|r| r.lines().count() == 1 && r.starts_with(&original))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    assert_eq!(total(&bed), settled, "restoring the route asked the cloud");

    // A NIC vanishes from the node: the cloud is asked then, and only then,
    // and the NIC is re-attached.
    let inspect = bed.sim.inspect();
    let victim = inspect["nics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["role"] == 0 && n["state"] == "in-use")
        .and_then(|n| n["id"].as_str())
        .unwrap()
        .to_string();
    bed.post("/control/vanish", json!({"nic": victim}));
    wait_for(
        "the vanished NIC re-attached",
        Duration::from_secs(10),
        || {
            node.ns
                .ip(&["-o", "link", "show"])
                .is_ok_and(|l| l.contains(&victim))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    assert!(total(&bed) > settled, "re-attaching made no cloud call?");
}

/// A whole cluster starting at once can meet the account's rate limit: an
/// agent whose start-up calls stay throttled past the client's own retries
/// keeps trying (with backoff) and serves, instead of exiting into a crash
/// loop. Found by hostnic-scale-bench (50 agents, 20 calls/s).
#[test]
fn a_throttled_start_keeps_trying_and_serves() {
    if !require_root("a_throttled_start_keeps_trying_and_serves") {
        return;
    }
    let bed = one_node(Faults {
        // More refusals in a row than the client retries (4 attempts).
        errors: vec![ErrorRule {
            action: Some("DescribeVxNets".into()),
            code: 5100,
            rate: 1.0,
            count: Some(6),
        }],
        ..Faults::default()
    });
    let agent = bed
        .start_agent_within(0, "warm_min = 0", Duration::from_secs(60))
        .unwrap();
    let log = agent.log_text();
    assert!(log.contains("the cloud is busy; retrying"), "{log}");
    assert_eq!(bed.sim.injected().get(&5100), Some(&6));
}

/// A NIC made with the address an ADD asked for is that ADD's from the
/// moment it comes up (Attaching to Reserved, never Free): a cold ADD
/// waiting for any NIC at the same time, which counts that NIC as on its
/// way and is woken by every change of the pool, must not take it.
#[test]
fn a_nic_made_for_an_address_goes_to_the_add_that_asked() {
    if !require_root("a_nic_made_for_an_address_goes_to_the_add_that_asked") {
        return;
    }
    let bed = CloudBed::new(SimConfig::default()).unwrap();
    // Every NIC is cold and takes a while to attach, so both ADDs wait.
    bed.sim.set_faults(Faults {
        attach_latency_ms: 1500,
        ..Faults::default()
    });
    let _agent = bed
        .start_agent(
            0,
            "warm_min = 0\nwarm_max = 0\nreconcile_seconds = 1\ncold_add_wait_seconds = 20",
        )
        .unwrap();
    let wanted = "10.100.0.77";
    let run = |cid: &'static str, ips: Option<&str>| {
        let mut conf = bed.netconf(0, "1.0.0", json!([]));
        if let Some(ip) = ips {
            conf["runtimeConfig"] = json!({"ips": [ip]});
        }
        let cni = bed.hostnic(0);
        std::thread::spawn(move || {
            let ns = Ns::new("addr").unwrap();
            let r = cni.add_retrying(&conf, &env(cid, &ns.path().display().to_string()));
            (ns, r)
        })
    };
    let pinned = run("pinned", Some(wanted));
    // The other ADD starts while the pinned one's NIC is on its way.
    std::thread::sleep(Duration::from_millis(300));
    let any = run("any", None);
    let (_pns, pinned) = pinned.join().unwrap();
    let (_ans, any) = any.join().unwrap();
    let pinned = pinned.unwrap_or_else(|e| panic!("the pinned ADD: {e:?}"));
    let any = any.unwrap_or_else(|e| panic!("the other ADD: {e:?}"));
    assert_eq!(ip_of(&pinned), wanted);
    assert_ne!(ip_of(&any), wanted);
}

/// With `[cni] conf_dir` the agent writes the network config only once it
/// serves and its pool has its first NIC: until then the runtime reports
/// the network not ready, and kubelet the node, so no pod is sent to it.
#[test]
fn the_network_config_appears_only_once_the_pool_has_its_first_nic() {
    if !require_root("the_network_config_appears_only_once_the_pool_has_its_first_nic") {
        return;
    }
    let bed = one_node(Faults {
        attach_latency_ms: 3000,
        ..Faults::default()
    });
    let site = bed.dir.path().join("site");
    let conf_dir = bed.dir.path().join("net.d");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conflist = site.join("10-hostnic.conflist");
    let text = json!({
        "cniVersion": "1.0.0",
        "name": "hostnic-cloud",
        "plugins": [bed.netconf(0, "1.0.0", json!([]))],
    });
    std::fs::write(&conflist, text.to_string()).unwrap();
    let installed = conf_dir.join("10-hostnic.conflist");
    let config = format!(
        "warm_min = 1\nwarm_max = 2\nreconcile_seconds = 1\ncold_add_wait_seconds = 10\n\
         [cni]\nconf_dir = {conf_dir:?}\nconflist = {conflist:?}\n"
    );
    let _agent = bed.start_agent(0, &config).unwrap();
    let serving = Instant::now();
    // Serving, its first NIC still attaching (3 s): no network config.
    assert!(
        !installed.exists(),
        "the conflist was installed before the pool had a NIC"
    );
    wait_for("the conflist", Duration::from_secs(30), || {
        installed.exists()
    })
    .unwrap();
    // It came with the attach, not before: an agent that installed it on
    // serving would have done so within milliseconds.
    let after = serving.elapsed();
    assert!(
        after >= Duration::from_secs(2),
        "installed {after:?} after serving"
    );
    assert!(bed.sim.calls().contains_key("AttachNics"));
    assert_eq!(
        std::fs::read_to_string(&installed).unwrap(),
        text.to_string()
    );
    // Nothing else in the directory: no temporary file left behind.
    assert_eq!(std::fs::read_dir(&conf_dir).unwrap().count(), 1);
}
