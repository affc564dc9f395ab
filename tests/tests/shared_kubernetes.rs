//! Shared-NIC mode with Kubernetes: nodes sharing one range claim blocks
//! of it as `HostnicBlock` objects in a real API server (built from source),
//! and a Deployment of shared-mode pods on real kubelets talks across nodes
//! and reaches a ClusterIP Service through the real kube-proxy.

use std::collections::BTreeSet;
use std::time::Duration;

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::cluster;
use hostnic_testbed::controlplane::ControlPlane;
use hostnic_testbed::kubebed;
use hostnic_testbed::sharedbed::{
    NOTHING, Pod, add, bed, blocks, del, in_block, kubelet_cluster, nics_on, pieces, routing,
};
use hostnic_testbed::{Agent, require_root};

const TIMERS: &str =
    "warm_min = 0\nwarm_max = 0\nreconcile_seconds = 1\ncold_add_wait_seconds = 10";

/// Node `i`'s agent as the DaemonSet runs it, against the API server, with
/// both nodes sharing one range of vxnet-a in /28 blocks given back after
/// 2 s unused.
fn kube_agent(bed: &CloudBed, cp: &ControlPlane, i: usize) -> Agent {
    let shared =
        "[[shared]]\nvxnet = \"vxnet-a\"\nrange = \"10.100.0.128/25\"\nblock_idle_seconds = 2\n";
    kubebed::agent(bed, cp, i, (TIMERS, ""), shared).unwrap()
}

#[test]
fn nodes_sharing_a_range_claim_blocks_in_the_api_server_and_never_share_an_address() {
    if !require_root(
        "nodes_sharing_a_range_claim_blocks_in_the_api_server_and_never_share_an_address",
    ) {
        return;
    }
    let bed = bed();
    let cp = kubebed::control_plane(&bed, None).unwrap();
    let mut a0 = kube_agent(&bed, &cp, 0);
    let _a1 = kube_agent(&bed, &cp, 1);

    // Both nodes add pods at once, from an empty range.
    let (mut on0, mut on1) = (Vec::new(), Vec::new());
    std::thread::scope(|s| {
        let bed = &bed;
        let t0 = s.spawn(move || {
            (0..20)
                .map(|i| add(bed, 0, "vxnet-a", &format!("b0-{i}")))
                .collect()
        });
        let t1 = s.spawn(move || {
            (0..5)
                .map(|i| add(bed, 1, "vxnet-a", &format!("b1-{i}")))
                .collect()
        });
        on0 = t0.join().unwrap();
        on1 = t1.join().unwrap();
    });
    let claimed = blocks(&cp);
    let of = |node: &str| -> Vec<String> {
        claimed
            .iter()
            .filter(|(_, n)| n == node)
            .map(|(c, _)| c.clone())
            .collect()
    };
    assert_eq!(
        of("node-0").len(),
        2,
        "20 pods take two /28 blocks: {claimed:?}"
    );
    assert_eq!(
        of("node-1").len(),
        1,
        "5 pods take one /28 block: {claimed:?}"
    );
    let ips: BTreeSet<String> = on0.iter().chain(&on1).map(Pod::ip).collect();
    assert_eq!(ips.len(), 25, "two pods share an address");
    for (pods, node) in [(&on0, "node-0"), (&on1, "node-1")] {
        for p in pods {
            assert!(
                of(node).iter().any(|b| in_block(&p.ip(), b)),
                "{} on {node} got {}, outside its blocks {:?}",
                p.cid,
                p.ip(),
                of(node)
            );
        }
    }
    assert!(on0[19].ns.ping(&on1[4].ip()), "{}", routing(&bed));
    // The claims belong to their Node: the garbage collector takes them
    // with it.
    let owner = cp
        .kubectl(&[
            "get",
            "hostnicblocks",
            "-o",
            "jsonpath={.items[0].metadata.ownerReferences[0].kind}",
        ])
        .unwrap();
    assert_eq!(owner.trim(), "Node");

    // A restarted agent finds its blocks and claims no new one for a pod
    // that fits.
    a0.stop().unwrap();
    let _a0 = kube_agent(&bed, &cp, 0);
    let p = del_and_add(&bed, &on0[3]);
    assert_eq!(blocks(&cp), claimed, "the restart changed the claims");
    assert!(of("node-0").iter().any(|b| in_block(&p.ip(), b)));

    // Node 1's pods go; its block is given back once unused for 2 s.
    for p in &on1 {
        del(&bed, 1, "vxnet-a", p);
    }
    wait_for_blocks(&cp, |b| b.iter().all(|(_, n)| n == "node-0"));
    assert_eq!(blocks(&cp).len(), 2);
}

/// DEL of `p` on node 0, then an ADD of a new pod there.
fn del_and_add(bed: &CloudBed, p: &Pod) -> Pod {
    del(bed, 0, "vxnet-a", p);
    add(bed, 0, "vxnet-a", &format!("{}-again", p.cid))
}

fn wait_for_blocks(cp: &ControlPlane, cond: impl Fn(&BTreeSet<(String, String)>) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cond(&blocks(cp)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the blocks are not as expected: {:?}",
            blocks(cp)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_shared_mode_deployment_on_kubelets_talks_across_nodes_and_reaches_a_service() {
    if !require_root(
        "a_shared_mode_deployment_on_kubelets_talks_across_nodes_and_reaches_a_service",
    ) {
        return;
    }
    let mut cluster = kubelet_cluster();
    let shared =
        "[[shared]]\nvxnet = \"vxnet-pods\"\nrange = \"10.100.0.128/25\"\nblock_idle_seconds = 2\n";
    kubebed::watching_agents(&mut cluster, TIMERS, shared).unwrap();

    let replicas = 10;
    let pods = cluster.deploy_web(replicas).unwrap();
    let ips: BTreeSet<&str> = pods.values().map(|(_, ip)| ip.as_str()).collect();
    assert_eq!(ips.len(), replicas, "{pods:?}");
    let claimed = blocks(&cluster.cp);
    for (node, ip) in pods.values() {
        assert!(
            claimed.iter().any(|(b, n)| n == node && in_block(ip, b)),
            "{ip} on {node} is in none of its node's blocks {claimed:?}"
        );
    }
    let nodes: BTreeSet<&str> = pods.values().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes.len(), 2, "{pods:?}");
    // Each node keeps one cloud NIC for its pods, whatever their number
    // (the first agents' warm NICs go back as warm_max = 0 says).
    cluster
        .wait("one cloud NIC per node", Duration::from_secs(30), || {
            (0..2).all(|i| nics_on(&cluster.bed, i) == 1)
        })
        .unwrap();

    let (a, _) = cluster::pod_on(&pods, "node-0");
    let (_, b_ip) = cluster::pod_on(&pods, "node-1");
    cluster
        .kubectl(&["exec", &a, "--", "ping", "-c", "1", "-W", "2", &b_ip])
        .unwrap();

    // A ClusterIP Service through kube-proxy: the pod's traffic reaches the
    // node through its veth, where kube-proxy translates it.
    let cluster_ip = cluster.expose("web").unwrap();
    let mut answered = BTreeSet::new();
    cluster
        .wait(
            "the Service to answer from pods on both nodes",
            Duration::from_secs(90),
            || {
                if let Ok(out) = cluster.fetch(&a, &cluster_ip) {
                    answered.insert(out.trim().to_string());
                }
                let by: BTreeSet<&str> = answered
                    .iter()
                    .filter_map(|p| pods.get(p).map(|(n, _)| n.as_str()))
                    .collect();
                by.len() == 2
            },
        )
        .unwrap();
    assert!(
        answered.iter().all(|p| pods.contains_key(p)),
        "the Service answered {answered:?}, not only the pods"
    );

    // Scale to zero: no veth, rule or proxy entry is left on either node,
    // and the idle blocks are given back.
    cluster.cp.apply(&cluster::deployment("web", 0)).unwrap();
    cluster
        .wait_gone("app=web", Duration::from_secs(120))
        .unwrap();
    for i in 0..2 {
        let node = &cluster.bed.sim.nodes[i].ns;
        cluster
            .wait("the node's pieces to go", Duration::from_secs(30), || {
                pieces(node) == NOTHING
            })
            .unwrap();
    }
    wait_for_blocks(&cluster.cp, |b| b.is_empty());
}
