//! Native multi-network, no Multus (`[kubernetes] networks = true`): the
//! agent reads the pod's `k8s.v1.cni.cncf.io/networks` annotation and the
//! NetworkAttachmentDefinitions from a real API server, and one ADD from
//! the runtime attaches every network of the pod; one DEL releases all; a
//! failure on any attachment releases all of them.

use std::time::{Duration, Instant};

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::controlplane::ControlPlane;
use hostnic_testbed::multus::{hostnic_nad, install_crd};
use hostnic_testbed::sim::{Faults, SimConfig};
use hostnic_testbed::{Agent, CallEnv, Ns, PluginError, kubebed, log_tail, require_root, wait_for};
use serde_json::{Value, json};

fn bed() -> CloudBed {
    CloudBed::new(SimConfig {
        nodes: 1,
        vxnets: vec![
            ("vxnet-pods".into(), "10.100.0.0/24".parse().unwrap()),
            ("vxnet-storage".into(), "10.101.0.0/24".parse().unwrap()),
            ("vxnet-admin".into(), "10.102.0.0/24".parse().unwrap()),
            // One address (.2): the second pod asking for it finds the
            // vxnet exhausted.
            ("vxnet-tiny".into(), "10.103.0.0/30".parse().unwrap()),
        ],
        ..SimConfig::default()
    })
    .unwrap()
}

const TIMERS: &str =
    "warm_min = 1\nwarm_max = 2\nreconcile_seconds = 1\ncold_add_wait_seconds = 20\n";

/// No warm NICs: every ADD waits for its NICs to be made.
const COLD: &str =
    "warm_min = 0\nwarm_max = 2\nreconcile_seconds = 1\ncold_add_wait_seconds = 20\n";

fn start(bed: &CloudBed) -> (ControlPlane, Agent) {
    start_with(bed, TIMERS)
}

/// The control plane with the NADs, and the agent with `cloud` timers.
fn start_with(bed: &CloudBed, cloud: &str) -> (ControlPlane, Agent) {
    let cp = kubebed::control_plane(bed, None).unwrap();
    install_crd(&cp).unwrap();
    for (name, vxnet) in [
        ("storage", "vxnet-storage"),
        ("mgmt", "vxnet-admin"),
        ("tiny", "vxnet-tiny"),
    ] {
        cp.apply(&hostnic_nad(name, &[vxnet])).unwrap();
    }
    let agent = native_agent(bed, &cp, cloud);
    (cp, agent)
}

fn native_agent(bed: &CloudBed, cp: &ControlPlane, cloud: &str) -> Agent {
    kubebed::agent(bed, cp, 0, (cloud, "networks = true\n"), "").unwrap()
}

/// Pod `name` on node-0 with the networks annotation `networks`.
fn pod(cp: &ControlPlane, name: &str, networks: &str) {
    cp.apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                         "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
            "spec": {"nodeName": "node-0", "automountServiceAccountToken": false,
                     "containers": [{"name": "c", "image": "busybox"}]},
        })
        .to_string(),
    )
    .unwrap();
}

/// The cluster network's conflist entry: its own vxnet.
fn conf(bed: &CloudBed) -> Value {
    let mut c = bed.netconf(0, "1.1.0", json!([]));
    c["vxnets"] = json!(["vxnet-pods"]);
    c
}

/// One runtime call for pod `name` (no annotations sent: the agent reads
/// them from its pod watch).
fn call(bed: &CloudBed, verb: &str, name: &str, ns: &Ns) -> Result<Value, PluginError> {
    let path = ns.path().display().to_string();
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
    let env = CallEnv {
        container_id: name,
        netns: &path,
        ifname: "eth0",
        args: &args,
    };
    bed.hostnic(0).call(verb, &conf(bed), &env).unwrap()
}

/// ADD, retried while a NIC is still on its way (code 11), as kubelet does.
fn add(bed: &CloudBed, name: &str, ns: &Ns) -> Result<Value, PluginError> {
    let start = Instant::now();
    loop {
        match call(bed, "ADD", name, ns) {
            Err(e) if e.code == Some(11) && start.elapsed() < Duration::from_secs(60) => {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

fn links(ns: &Ns) -> Vec<String> {
    ns.ip(&["-o", "link"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

#[test]
fn one_add_attaches_every_network_of_the_pod_and_one_del_releases_them() {
    if !require_root("one_add_attaches_every_network_of_the_pod_and_one_del_releases_them") {
        return;
    }
    let bed = bed();
    let (cp, agent) = start(&bed);
    pod(&cp, "multi", "storage@net1, mgmt@net2");
    let ns = Ns::new("nn").unwrap();
    let r = add(&bed, "multi", &ns).unwrap_or_else(|e| panic!("ADD: {e}\n{}", agent.log_text()));
    // The runtime's answer is the cluster network's, as Multus answers.
    assert_eq!(r["interfaces"][0]["name"], "eth0", "{r}");
    assert_eq!(links(&ns), ["lo", "eth0", "net1", "net2"]);
    let routes = ns.ip(&["-4", "route"]).unwrap();
    assert_eq!(routes.matches("default").count(), 1, "{routes}");
    assert!(
        routes.contains("default via 10.100.0.1 dev eth0"),
        "{routes}"
    );
    let addrs = ns.ip(&["-4", "-o", "addr"]).unwrap();
    for (ifname, prefix, gw) in [
        ("eth0", "10.100.0.", "10.100.0.1"),
        ("net1", "10.101.0.", "10.101.0.1"),
        ("net2", "10.102.0.", "10.102.0.1"),
    ] {
        assert!(
            addrs
                .lines()
                .any(|l| l.contains(ifname) && l.contains(prefix)),
            "{ifname}: {addrs}"
        );
        assert!(ns.ping(gw), "{ifname}: gateway {gw}");
    }

    // network-status lists every interface, each under its network.
    let mut status: Vec<Value> = Vec::new();
    wait_for(
        "network-status with three interfaces",
        Duration::from_secs(15),
        || {
            status = cp.network_status("multi");
            status.len() == 3
        },
    )
    .unwrap();
    let named: Vec<(String, String)> = status
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["interface"].as_str().unwrap().into(),
            )
        })
        .collect();
    for want in [("default/storage", "net1"), ("default/mgmt", "net2")] {
        assert!(
            named.contains(&(want.0.to_string(), want.1.to_string())),
            "{named:?}"
        );
    }

    // A retried ADD answers as before and makes nothing new.
    let again = add(&bed, "multi", &ns).unwrap();
    assert_eq!(again, r);
    assert_eq!(links(&ns).len(), 4);

    // CHECK covers every network of the pod: a broken net1 fails it,
    // naming the network.
    call(&bed, "CHECK", "multi", &ns).unwrap();
    ns.ip(&["link", "set", "net1", "down"]).unwrap();
    let e = call(&bed, "CHECK", "multi", &ns).unwrap_err();
    assert_eq!(e.code, Some(102), "{e:?}");
    assert!(
        e.msg.contains("default/storage (net1)") && e.msg.contains("down"),
        "{e:?}"
    );
    ns.ip(&["link", "set", "net1", "up"]).unwrap();
    call(&bed, "CHECK", "multi", &ns).unwrap();

    // One DEL from the runtime releases all three.
    call(&bed, "DEL", "multi", &ns).unwrap();
    bed.settle(0);
    assert_eq!(links(&ns), ["lo"]);
    assert!(bed.leaked_nics().is_empty(), "{:?}", bed.leaked_nics());
}

#[test]
fn an_exhausted_second_network_rolls_back_the_whole_pod() {
    if !require_root("an_exhausted_second_network_rolls_back_the_whole_pod") {
        return;
    }
    let bed = bed();
    let (cp, agent) = start(&bed);
    // The first pod takes vxnet-tiny's one address.
    pod(&cp, "first", "tiny");
    let first = Ns::new("nt1").unwrap();
    add(&bed, "first", &first).unwrap_or_else(|e| panic!("ADD first: {e}\n{}", agent.log_text()));
    assert_eq!(links(&first), ["lo", "eth0", "net1"]);

    // The second gets its cluster NIC, then finds tiny exhausted: the ADD
    // fails naming the network and the vxnet, and the pod has no NIC left.
    pod(&cp, "second", "storage, tiny");
    let second = Ns::new("nt2").unwrap();
    let e = call(&bed, "ADD", "second", &second).unwrap_err();
    assert!(
        e.msg.contains("network default/tiny (net2)")
            && e.msg.contains("vxnet-tiny")
            && e.msg.contains("other NICs were released"),
        "{e:?}"
    );
    bed.settle(0);
    assert_eq!(links(&second), ["lo"], "a half-wired pod");
    // The runtime's DEL after the failure is fine, and nothing is held for
    // the pod: its NICs are free for the next one.
    call(&bed, "DEL", "second", &second).unwrap();
    let status: Value = serde_json::from_str(
        &std::process::Command::new(hostnic_testbed::bin("hostnic-agent"))
            .args(["status", "--json", "--socket"])
            .arg(bed.socket(0))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap(),
    )
    .unwrap();
    let held_by = |c: &str| {
        status["nics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["container"] == c)
            .count()
    };
    assert_eq!((held_by("first"), held_by("second")), (2, 0), "{status:#}");

    call(&bed, "DEL", "first", &first).unwrap();
    bed.settle(0);
    assert!(bed.leaked_nics().is_empty(), "{:?}", bed.leaked_nics());
}

#[test]
fn a_pod_naming_a_network_that_is_not_there_gets_nothing() {
    if !require_root("a_pod_naming_a_network_that_is_not_there_gets_nothing") {
        return;
    }
    let bed = bed();
    let (cp, _agent) = start(&bed);
    pod(&cp, "lost", "storage, nowhere@net7");
    let ns = Ns::new("nl").unwrap();
    let e = add(&bed, "lost", &ns).unwrap_err();
    assert_eq!(e.code, Some(7), "{e:?}");
    assert!(
        e.msg
            .contains("NetworkAttachmentDefinition default/nowhere does not exist"),
        "{e:?}"
    );
    // Refused before anything was made.
    assert_eq!(links(&ns), ["lo"]);
}

#[test]
fn an_agent_killed_mid_multi_attach_leaves_the_retry_a_whole_pod_and_the_del_nothing() {
    if !require_root(
        "an_agent_killed_mid_multi_attach_leaves_the_retry_a_whole_pod_and_the_del_nothing",
    ) {
        return;
    }
    let bed = bed();
    // No warm NICs and slow attaches: every attachment of the ADD is a
    // cold one, and the kill lands while net1's NIC is on its way. (An
    // agent with a warm target started first would leave its first
    // create in flight when stopped: a NIC the leak sweep takes only
    // after its grace period.)
    bed.sim.set_faults(Faults {
        attach_latency_ms: 1500,
        ..Faults::default()
    });
    let (cp, mut agent) = start_with(&bed, COLD);
    pod(&cp, "killed", "storage@net1, mgmt@net2");
    let ns = Ns::new("nk").unwrap();
    let runtime = {
        let path = ns.path().display().to_string();
        let cni = bed.hostnic(0);
        let conf = conf(&bed);
        std::thread::spawn(move || {
            let env = CallEnv {
                container_id: "killed",
                netns: &path,
                ifname: "eth0",
                args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=killed",
            };
            cni.call("ADD", &conf, &env).unwrap()
        })
    };
    wait_for("eth0 in the pod", Duration::from_secs(30), || {
        links(&ns).contains(&"eth0".to_string())
    })
    .unwrap();
    assert!(
        !links(&ns).contains(&"net1".to_string()),
        "too late to kill mid-attach"
    );
    agent.kill9();
    let before = agent.log_text();
    let answer = runtime.join().unwrap();
    assert!(answer.is_err(), "the runtime was told success: {answer:?}");

    // The agent comes back; the runtime retries the ADD, as kubelet does
    // after a failed sandbox: the whole set, the NIC made for net1 before
    // the kill adopted rather than leaked.
    let agent = native_agent(&bed, &cp, COLD);
    add(&bed, "killed", &ns).unwrap();
    assert_eq!(links(&ns), ["lo", "eth0", "net1", "net2"]);
    let routes = ns.ip(&["-4", "route"]).unwrap();
    assert_eq!(routes.matches("default").count(), 1, "{routes}");

    // And its DEL leaves nothing.
    call(&bed, "DEL", "killed", &ns).unwrap();
    bed.settle(0);
    assert_eq!(links(&ns), ["lo"]);
    if let Err(e) = wait_for("no leaked NIC", Duration::from_secs(20), || {
        bed.leaked_nics().is_empty()
    }) {
        panic!(
            "{e}: {:#?}\n{}{}",
            bed.leaked_nics(),
            log_tail("the agent killed", &before, 150),
            log_tail("the agent after the restart", &agent.log_text(), 150)
        );
    }
}
