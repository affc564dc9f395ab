//! hostnic in a real Kubernetes cluster built from source: real kubelets
//! (through containerd's CRI plugin) call the real `hostnic` executable for
//! every pod of a Deployment, pods get NICs from the simulated cloud, talk
//! across nodes, reach a ClusterIP Service through the real kube-proxy, and
//! give their NICs back when the Deployment scales to zero.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::cluster::{self, BUSYBOX_IMAGE, Cluster, Install};
use hostnic_testbed::kubebed;
use hostnic_testbed::require_root;
use hostnic_testbed::sim::SimConfig;
use serde_json::{Value, json};

const REPLICAS: usize = 10;

#[test]
fn a_deployment_gets_cloud_nics_talks_across_nodes_and_reaches_a_service() {
    if !require_root("a_deployment_gets_cloud_nics_talks_across_nodes_and_reaches_a_service") {
        return;
    }
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        vxnets: vec![("vxnet-pods".into(), "10.100.0.0/24".parse().unwrap())],
        ..SimConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    let mut cluster = Cluster::start(bed, Install::Agents(String::new())).unwrap();
    // The agents as the DaemonSet runs them (with the API server), so the
    // pods get their Service answers' return path as on a real cluster.
    kubebed::watching_agents(&mut cluster, cluster::AGENT_TIMERS, "").unwrap();
    eprintln!(
        "cluster: control plane and 2 nodes Ready in {:?}",
        started.elapsed()
    );

    let created = Instant::now();
    let pods = cluster.deploy_web(REPLICAS).unwrap();
    eprintln!(
        "cluster: {REPLICAS} pods Running {:?} after the Deployment was created",
        created.elapsed()
    );
    // Cloud NICs: addresses of the vxnet, each once, on both nodes, and the
    // cloud says each is attached to its pod's VM.
    let ips: BTreeSet<&str> = pods.values().map(|(_, ip)| ip.as_str()).collect();
    assert_eq!(ips.len(), REPLICAS, "{pods:?}");
    assert!(ips.iter().all(|ip| ip.starts_with("10.100.0.")), "{pods:?}");
    let nodes: BTreeSet<&str> = pods.values().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes.len(), 2, "{pods:?}");
    let inspect = cluster.bed.sim.inspect();
    for (node, ip) in pods.values() {
        let i: usize = node.strip_prefix("node-").unwrap().parse().unwrap();
        let instance = &cluster.bed.sim.nodes[i].instance;
        let nic = inspect["nics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["ip"] == ip.as_str())
            .unwrap_or_else(|| panic!("no cloud NIC has {ip}"));
        assert_eq!(nic["instance"], instance.as_str(), "{nic}");
    }

    // Across nodes, over the SDN.
    let (a, _) = cluster::pod_on(&pods, "node-0");
    let (_, b_ip) = cluster::pod_on(&pods, "node-1");
    cluster
        .kubectl(&["exec", &a, "--", "ping", "-c", "1", "-W", "2", &b_ip])
        .unwrap();

    // A ClusterIP Service through kube-proxy: pods route the Service CIDR
    // through their node's own NIC in the vxnet (gw 0.0.0.0).
    let cluster_ip = cluster.expose("web").unwrap();
    let answered = cluster
        .fetch_within(
            &a,
            &format!("http://{cluster_ip}/"),
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(
        pods.contains_key(answered.trim()),
        "the Service answered {answered:?}, not one of the pods"
    );

    // A pod that asks for its address gets it (the ip policy's
    // hostnic.io/ip annotation, from containerd's pod annotations).
    let pinned = "10.100.0.200";
    cluster
        .cp
        .apply(
            &json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "pinned", "namespace": "default",
                             "annotations": {"hostnic.io/ip": pinned}},
                "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false,
                         "containers": [{"name": "c", "image": BUSYBOX_IMAGE,
                                         "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]},
            })
            .to_string(),
        )
        .unwrap();
    let pod_ip = || {
        cluster
            .kubectl(&["get", "pod", "pinned", "-o", "jsonpath={.status.podIP}"])
            .unwrap_or_default()
    };
    cluster
        .wait("the pinned pod's address", Duration::from_secs(60), || {
            !pod_ip().is_empty()
        })
        .unwrap();
    assert_eq!(pod_ip(), pinned);
    cluster
        .kubectl(&["delete", "pod", "pinned", "--wait=true"])
        .unwrap();

    // Draining a node: its pods move, and its NICs go back to its pool.
    cluster
        .kubectl(&[
            "drain",
            "node-1",
            "--ignore-daemonsets",
            "--force",
            "--grace-period=1",
            "--timeout=90s",
        ])
        .unwrap();
    cluster
        .wait(
            "the pods to run on node-0 only",
            Duration::from_secs(120),
            || {
                let now = cluster.running_pods("app=web");
                now.len() == REPLICAS && now.values().all(|(n, _)| n == "node-0")
            },
        )
        .unwrap();
    cluster.bed.settle(1);
    let held_on_1 = std::fs::read_dir(cluster.bed.state_dir(1).join("allocations"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        held_on_1, 0,
        "node-1 still records attachments after the drain"
    );

    // Scale to zero: every NIC goes back to its node's warm pool, none is
    // left in a pod, none leaks in the cloud.
    cluster.cp.apply(&cluster::deployment("web", 0)).unwrap();
    cluster
        .wait_gone("app=web", Duration::from_secs(120))
        .unwrap();
    for i in 0..2 {
        cluster.bed.settle(i);
    }
    let inspect = cluster.bed.sim.inspect();
    let still_used: Vec<&Value> = inspect["nics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| ips.contains(n["ip"].as_str().unwrap_or_default()))
        .filter(|n| n["instance"].as_str().unwrap_or_default().is_empty())
        .collect();
    assert!(still_used.is_empty(), "detached pod NICs: {still_used:?}");
    assert!(
        cluster.bed.leaked_nics().is_empty(),
        "{:?}",
        cluster.bed.leaked_nics()
    );
}
