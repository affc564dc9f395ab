//! hostnic as the delegate of the real Multus (the thin plugin, built from
//! source) in a real cluster: a pod annotated
//! `k8s.v1.cni.cncf.io/networks: storage@net1, mgmt@net2` gets three cloud
//! NICs from three vxnets — the cluster network's through the conflist,
//! the others through NetworkAttachmentDefinitions whose config is
//! hostnic's with vxnets of its own — and gives all three back.

use std::time::{Duration, Instant};

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::cluster::{BUSYBOX_IMAGE, Cluster, Install};
use hostnic_testbed::multus::hostnic_nad;
use hostnic_testbed::require_root;
use hostnic_testbed::sim::SimConfig;
use serde_json::json;

/// A busybox pod pinned to `node` with the networks annotation `networks`.
fn pod(name: &str, node: &str, networks: &str) -> String {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "multi"},
                     "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                            "command": ["sleep", "3600"]}],
        },
    })
    .to_string()
}

/// The pod's IPv4 address on `ifname`, as `ip` inside it says.
fn address(cluster: &Cluster, pod: &str, ifname: &str) -> String {
    let out = cluster
        .kubectl(&[
            "exec", pod, "--", "ip", "-4", "-o", "addr", "show", "dev", ifname,
        ])
        .unwrap_or_else(|e| panic!("{pod} {ifname}: {e}"));
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("{pod} has no address on {ifname}: {out}"))
        .to_string()
}

#[test]
fn multus_delegates_two_networks_to_hostnic_and_a_pod_gets_three_cloud_nics() {
    if !require_root("multus_delegates_two_networks_to_hostnic_and_a_pod_gets_three_cloud_nics") {
        return;
    }
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        vxnets: vec![
            ("vxnet-pods".into(), "10.100.0.0/24".parse().unwrap()),
            ("vxnet-storage".into(), "10.101.0.0/24".parse().unwrap()),
            ("vxnet-admin".into(), "10.102.0.0/24".parse().unwrap()),
        ],
        ..SimConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    // The cluster network keeps to the first vxnet; the NADs name theirs.
    let cluster = Cluster::start(bed, Install::Multus(String::new())).unwrap();
    eprintln!("multus: cluster Ready in {:?}", started.elapsed());
    for (name, vxnet) in [("storage", "vxnet-storage"), ("mgmt", "vxnet-admin")] {
        cluster.cp.apply(&hostnic_nad(name, &[vxnet])).unwrap();
    }

    let created = Instant::now();
    cluster
        .cp
        .apply(&pod("multi", "node-0", "storage@net1, mgmt@net2"))
        .unwrap();
    cluster.cp.apply(&pod("peer", "node-1", "storage")).unwrap();
    cluster
        .wait("both pods Running", Duration::from_secs(180), || {
            cluster.running_pods("app=multi").len() == 2
        })
        .unwrap();
    eprintln!(
        "multus: pods Running {:?} after creation",
        created.elapsed()
    );

    // Three NICs from three vxnets, and the cloud says each is attached to
    // node-0's VM.
    let ips: Vec<String> = ["eth0", "net1", "net2"]
        .iter()
        .map(|i| address(&cluster, "multi", i))
        .collect();
    for (ip, prefix) in ips.iter().zip(["10.100.0.", "10.101.0.", "10.102.0."]) {
        assert!(ip.starts_with(prefix), "{ips:?}");
    }
    let inspect = cluster.bed.sim.inspect();
    let instance = &cluster.bed.sim.nodes[0].instance;
    for ip in &ips {
        let nic = inspect["nics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["ip"] == ip.as_str())
            .unwrap_or_else(|| panic!("no cloud NIC has {ip}"));
        assert_eq!(nic["instance"], instance.as_str(), "{nic}");
    }

    // One default route, the cluster network's; each vxnet's gateway is
    // reached, and the peer on the other node over the storage network.
    let routes = cluster
        .kubectl(&["exec", "multi", "--", "ip", "-4", "route"])
        .unwrap();
    assert_eq!(routes.matches("default").count(), 1, "{routes}");
    assert!(
        routes.contains("default via 10.100.0.1 dev eth0"),
        "{routes}"
    );
    for gw in ["10.100.0.1", "10.101.0.1", "10.102.0.1"] {
        cluster
            .kubectl(&["exec", "multi", "--", "ping", "-c", "1", "-W", "2", gw])
            .unwrap_or_else(|e| panic!("gateway {gw}: {e}\n{routes}"));
    }
    let peer_storage = address(&cluster, "peer", "net1");
    assert!(peer_storage.starts_with("10.101.0."), "{peer_storage}");
    cluster
        .kubectl(&[
            "exec",
            "multi",
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            &peer_storage,
        ])
        .unwrap_or_else(|e| panic!("peer over net1: {e}"));

    // network-status names the three interfaces with their addresses
    // (Multus writes it; hostnic's agent merges its own entries by
    // interface).
    cluster
        .wait(
            "network-status lists three interfaces",
            Duration::from_secs(30),
            || {
                let status = cluster.cp.network_status("multi");
                ips.iter().all(|ip| {
                    status.iter().any(|e| {
                        e["ips"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x == ip.as_str()))
                    })
                })
            },
        )
        .unwrap();

    // Deleting the pods gives every NIC back to its node's pool.
    cluster
        .kubectl(&[
            "delete",
            "pod",
            "multi",
            "peer",
            "--wait=true",
            "--timeout=60s",
        ])
        .unwrap();
    cluster.bed.settle(0);
    cluster.bed.settle(1);
    let inspect = cluster.bed.sim.inspect();
    for ip in &ips {
        let nic = inspect["nics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["ip"] == ip.as_str());
        // Back in the pool (attached to the VM, parked) or given back to
        // the cloud by the pool's trimming; never stranded.
        if let Some(nic) = nic {
            assert_eq!(nic["instance"], instance.as_str(), "{nic}");
        }
    }
    assert!(
        cluster.bed.leaked_nics().is_empty(),
        "{:?}",
        cluster.bed.leaked_nics()
    );
}
