//! Shared-NIC mode (issue 12, `docs/shared-nic.md`) with the real
//! `hostnic`, real agents and the simulated cloud, whose strict SDN
//! delivers only to NICs it knows and drops spoofed source MACs: many pods
//! share the node's NIC in their vxnet, reach pods on other VMs (shared and
//! exclusive), and every piece is undone by DEL, checked by CHECK and
//! reconciled by a restart, also after `kill -9` in the middle of ADDs.

use std::collections::BTreeSet;
use std::time::Duration;

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sharedbed::{
    NOTHING, Pieces, Pod, add, bed, check, conf, del, env, nic_in_a, nics_on, own_network, pieces,
    routing, status,
};
use hostnic_testbed::{Agent, Ns, require_root};
use serde_json::{Value, json};

const TIMERS: &str =
    "warm_min = 0\nwarm_max = 0\nreconcile_seconds = 1\ncold_add_wait_seconds = 10";
/// Node 0 shares both vxnets; node 1 shares vxnet-a from another range and
/// gives vxnet-b pods NICs of their own.
const SHARED_0: &str = "[[shared]]\nvxnet = \"vxnet-a\"\nrange = \"10.100.0.128/25\"\n\
                        [[shared]]\nvxnet = \"vxnet-b\"\nrange = \"10.101.0.128/25\"\n";
/// Node 1's range starts at the vxnet's bottom, where the cloud gives its
/// NICs their addresses (a misconfiguration the agent must survive).
const SHARED_1: &str = "[[shared]]\nvxnet = \"vxnet-a\"\nrange = \"10.100.0.0/26\"\n";

fn start(bed: &CloudBed, node: usize) -> Agent {
    let shared = [SHARED_0, SHARED_1][node];
    bed.start_agent(node, &format!("{TIMERS}\n{shared}"))
        .unwrap()
}

#[test]
fn a_node_serves_150_shared_pods_in_two_vxnets_on_two_nics_and_they_reach_other_vms() {
    if !require_root(
        "a_node_serves_150_shared_pods_in_two_vxnets_on_two_nics_and_they_reach_other_vms",
    ) {
        return;
    }
    let bed = bed();
    let node0 = &bed.sim.nodes[0].ns;
    let before = own_network(node0);
    let _a0 = start(&bed, 0);
    let _a1 = start(&bed, 1);

    // A cloud NIC with an address of node 0's vxnet-b range (node 1 gives
    // its vxnet-b pods NICs; this one asks for the address): no shared pod
    // may get it.
    let squatter = Ns::new("shq").unwrap();
    let mut pinned = conf(&bed, 1, "vxnet-b");
    pinned["runtimeConfig"] = json!({"ips": ["10.101.0.129/24"]});
    bed.hostnic(1)
        .add_retrying(
            &pinned,
            &env("n1-pinned", &squatter.path().display().to_string()),
        )
        .unwrap();

    // 150 pods on node 0, alternately in the two vxnets.
    let mut pods: Vec<(&str, Pod)> = Vec::new();
    for i in 0..150 {
        let vxnet = ["vxnet-a", "vxnet-b"][i % 2];
        pods.push((vxnet, add(&bed, 0, vxnet, &format!("s{i:03}"))));
    }
    let ips: BTreeSet<String> = pods.iter().map(|(_, p)| p.ip()).collect();
    assert_eq!(ips.len(), 150, "two pods share an address");
    assert!(
        !ips.contains("10.101.0.129"),
        "a pod got the cloud NIC's address"
    );
    for (vxnet, p) in &pods {
        let prefix = if *vxnet == "vxnet-a" {
            "10.100.0."
        } else {
            "10.101.0."
        };
        let last: u8 = p.ip().rsplit('.').next().unwrap().parse().unwrap();
        assert!(
            p.ip().starts_with(prefix) && last > 128 && last < 255,
            "{} got {} outside its shared range",
            p.cid,
            p.ip()
        );
        assert_eq!(p.result["ips"][0]["address"], format!("{}/32", p.ip()));
    }
    // `status` lists them, each with its pod and veth.
    let st = status(&bed, 0);
    let rows = st["shared"].as_array().unwrap();
    assert_eq!(rows.len(), 150, "{st:#}");
    // The vxnets as the guests see them: each one's range, and as its free
    // addresses the range's 126 less the node's pods there (and, in
    // vxnet-b, the address node 1's pinned NIC holds).
    for (vxnet, range, cloud) in [
        ("vxnet-a", "10.100.0.128/25", 0),
        ("vxnet-b", "10.101.0.128/25", 1),
    ] {
        let row = st["vxnets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == vxnet)
            .unwrap();
        let pods = rows.iter().filter(|r| r["vxnet"] == vxnet).count() as u64;
        assert_eq!(row["shared_range"], range, "{row}");
        assert_eq!(row["free_ips"], 126 - pods - cloud, "{row}");
    }
    assert!(
        rows.iter()
            .all(|r| r["state"] == "committed" && r["veth"].as_str().unwrap().starts_with("hs")),
        "{rows:#?}"
    );
    // The node has one NIC per shared vxnet, not one per pod.
    assert_eq!(nics_on(&bed, 0), 2, "{:#}", bed.sim.inspect()["nics"]);
    assert_eq!(
        pieces(node0),
        Pieces {
            veths: 150,
            rules: 300,
            host_routes: 150,
            proxies: 150
        }
    );

    // Node 1: two shared pods in vxnet-a (node 1 shares it from a range of
    // its own) and, besides the pinned one, a pod with a NIC of its own in
    // vxnet-b.
    let s1 = add(&bed, 1, "vxnet-a", "n1-shared");
    let xa = add(&bed, 1, "vxnet-a", "n1-shared-2");
    let xb = add(&bed, 1, "vxnet-b", "n1-excl-b");
    let cloud_ips: BTreeSet<String> = bed.sim.inspect()["nics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["ip"].as_str().map(str::to_string))
        .collect();
    for p in [&s1, &xa] {
        assert!(
            p.ip().starts_with("10.100.0.") && !cloud_ips.contains(&p.ip()),
            "{} got {}, which a cloud NIC holds: {cloud_ips:?}",
            p.cid,
            p.ip()
        );
    }
    // Its NIC in vxnet-a and the two vxnet-b pods' NICs.
    assert_eq!(nics_on(&bed, 1), 3, "{:#}", bed.sim.inspect()["nics"]);

    let (a, b) = (&pods[0].1, &pods[1].1);
    for (from, to, what) in [
        (
            a,
            &xb,
            "shared vxnet-a pod → exclusive vxnet-b pod on node 1",
        ),
        (&xb, b, "exclusive pod on node 1 → shared vxnet-b pod"),
        (a, &s1, "shared pod → shared pod on node 1"),
        (&s1, a, "shared pod on node 1 → shared pod on node 0"),
        (&xa, &pods[148].1, "node 1 → the 149th pod"),
        (a, b, "shared pods of two vxnets on one node"),
    ] {
        assert!(
            from.ns.ping(&to.ip()),
            "{what}: {} cannot reach {}\n{}",
            from.ip(),
            to.ip(),
            routing(&bed)
        );
    }
    assert!(
        b.ns.ping("10.101.0.1"),
        "a shared pod cannot reach its vxnet's gateway"
    );

    // CHECK passes, and names what is missing once a piece is gone.
    check(&bed, 0, "vxnet-a", a).unwrap();
    node0
        .ip(&["rule", "del", "from", &a.ip(), "priority", "1536"])
        .unwrap();
    let e = check(&bed, 0, "vxnet-a", a).unwrap_err();
    assert!(e.contains("rule") && e.contains(&a.ip()), "{e}");

    // DEL frees everything of the pod, and the address goes to the next.
    let (gone_vxnet, gone) = pods.remove(10);
    let freed = gone.ip();
    del(&bed, 0, gone_vxnet, &gone);
    // DEL answered; the veth goes in the background.
    bed.settle(0);
    let ns = gone.ns;
    assert!(
        ns.ip(&["-o", "link", "show", "eth0"]).is_err(),
        "eth0 is still in the pod"
    );
    assert!(
        !node0
            .ip(&["neigh", "show", "proxy"])
            .unwrap()
            .contains(&format!("{freed} "))
    );
    assert!(
        !node0
            .ip(&["rule", "show"])
            .unwrap()
            .contains(&format!("{freed} "))
    );
    let again = add(&bed, 0, gone_vxnet, "s-again");
    assert_eq!(again.ip(), freed, "the freed address is not given again");
    // An ADD into a pod that already has the interface fails cleanly:
    // nothing of it stays on the node, and it holds no address.
    let busy = Ns::new("shb").unwrap();
    busy.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "x0"])
        .unwrap();
    let before_fail = pieces(node0);
    let e = bed
        .hostnic(0)
        .call(
            "ADD",
            &conf(&bed, 0, "vxnet-a"),
            &env("s-busy", &busy.path().display().to_string()),
        )
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(4), "{e:?}");
    assert!(e.msg.contains("eth0"), "{e:?}");
    assert_eq!(pieces(node0), before_fail);
    let rows = status(&bed, 0)["shared"].as_array().unwrap().clone();
    assert!(
        rows.iter().all(|r| r["container"] != "s-busy"),
        "the failed ADD still holds an address: {rows:#?}"
    );
    assert_eq!(rows.len(), 150);

    // DEL of something already gone succeeds.
    del(
        &bed,
        0,
        gone_vxnet,
        &Pod {
            ns,
            cid: gone.cid,
            result: Value::Null,
        },
    );

    // The node's own address and default route are as they were.
    assert_eq!(own_network(node0), before);
    for (vxnet, p) in &pods {
        del(&bed, 0, vxnet, p);
    }
    del(&bed, 0, gone_vxnet, &again);
    bed.settle(0);
    assert_eq!(pieces(node0), NOTHING, "hostnic left pieces on the node");
    assert!(bed.leaked_nics().is_empty(), "{:?}", bed.leaked_nics());
}

#[test]
fn a_restart_puts_back_what_is_missing_and_sweeps_the_rest_also_after_kill_9_mid_add() {
    if !require_root(
        "a_restart_puts_back_what_is_missing_and_sweeps_the_rest_also_after_kill_9_mid_add",
    ) {
        return;
    }
    let bed = bed();
    let node0 = &bed.sim.nodes[0].ns;
    let mut a0 = start(&bed, 0);
    let _a1 = start(&bed, 1);
    let p0 = add(&bed, 0, "vxnet-a", "r0");
    let p1 = add(&bed, 0, "vxnet-a", "r1");
    let p2 = add(&bed, 0, "vxnet-a", "r2");
    // A shared pod on node 1 in the same vxnet: node 1 asks the vxnet for
    // p0's MAC itself, so its cache can be flushed.
    let x = add(&bed, 1, "vxnet-a", "rx");
    let gw = nic_in_a(node0);
    assert!(x.ns.ping(&p0.ip()), "{}", routing(&bed));

    // Without its proxy entry the vxnet no longer finds p0: the entry is
    // what answers for it, not the SDN.
    node0
        .ip(&["neigh", "del", "proxy", &p0.ip(), "dev", &gw])
        .unwrap();
    let node1 = &bed.sim.nodes[1].ns;
    node1
        .ip(&["neigh", "flush", "dev", &nic_in_a(node1)])
        .unwrap();
    assert!(
        !x.ns.ping(&p0.ip()),
        "p0 is reachable without its proxy entry"
    );

    // The agent dies; meanwhile p1's pod goes, p2 loses a rule, and pieces
    // no record explains appear.
    a0.kill9();
    let freed = p1.ip();
    drop(p1);
    node0
        .ip(&["rule", "del", "from", &p2.ip(), "priority", "1536"])
        .unwrap();
    for args in [
        &[
            "rule",
            "add",
            "from",
            "10.100.0.250",
            "lookup",
            "1001",
            "priority",
            "1536",
            "proto",
            "213",
        ][..],
        &[
            "route",
            "add",
            "10.100.0.250/32",
            "dev",
            &gw,
            "proto",
            "213",
        ],
        &["neigh", "add", "proxy", "10.100.0.251", "dev", &gw],
        &[
            "link",
            "add",
            "hs00000000beef",
            "type",
            "veth",
            "peer",
            "name",
            "strayp",
        ],
    ] {
        node0.ip(args).unwrap();
    }
    let mut a0 = start(&bed, 0);

    assert!(
        x.ns.ping(&p0.ip()),
        "p0's proxy entry is not back\n{}",
        routing(&bed)
    );
    check(&bed, 0, "vxnet-a", &p2).expect("p2's rule is back");
    check(&bed, 0, "vxnet-a", &p0).expect("p0 is whole");
    let rules = node0.ip(&["rule", "show"]).unwrap();
    let proxies = node0.ip(&["neigh", "show", "proxy"]).unwrap();
    for gone in [&freed, "10.100.0.250", "10.100.0.251"] {
        assert!(
            !rules.contains(&format!("{gone} ")),
            "{gone} still has a rule: {rules}"
        );
        assert!(
            !proxies.contains(&format!("{gone} ")),
            "{gone} still has a proxy entry: {proxies}"
        );
    }
    assert!(
        node0.ip(&["link", "show", "hs00000000beef"]).is_err(),
        "the stray veth is still there"
    );
    assert!(node0.ip(&["link", "show", "strayp"]).is_err());
    let p1b = add(&bed, 0, "vxnet-a", "r1b");
    assert_eq!(p1b.ip(), freed, "the gone pod's address is not free");

    // kill -9 while 24 ADDs run at once: after the restart every retried
    // ADD succeeds, each pod is reachable, no two share an address, and
    // once all are deleted nothing of hostnic's is left on the node.
    let netns: Vec<Ns> = (0..24).map(|_| Ns::new("shk").unwrap()).collect();
    let cids: Vec<String> = (0..24).map(|i| format!("k{i:02}")).collect();
    let answered = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for (ns, cid) in netns.iter().zip(&cids) {
            let (bed, path, answered) = (&bed, ns.path().display().to_string(), &answered);
            s.spawn(move || {
                // Answers or connection errors: whatever the kill leaves.
                // Not waiting for the agent: it comes back only once all
                // of these returned.
                let mut c = conf(bed, 0, "vxnet-b");
                c["connectTimeoutSeconds"] = json!(0);
                let r = bed.hostnic(0).call("ADD", &c, &env(cid, &path));
                if matches!(r, Ok(Ok(_))) {
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        // Killed once a few ADDs have recorded their reservations.
        let records = bed.state_dir(0).join("shared");
        let count = || std::fs::read_dir(&records).map_or(0, |d| d.count());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while count() < 3 + 6 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        a0.kill9();
    });
    let answered = answered.into_inner();
    eprintln!("{answered} of 24 ADDs answered before the kill");
    assert!(
        answered < 24,
        "the kill came after every ADD; nothing was interrupted"
    );
    let a0 = start(&bed, 0);
    let reconciled = a0
        .log_text()
        .lines()
        .rfind(|l| l.contains("shared attachments reconciled"))
        .map(str::to_string);
    eprintln!("{reconciled:?}");
    assert!(
        reconciled.is_some(),
        "the restart found nothing to reconcile"
    );
    let pods: Vec<Pod> = netns
        .into_iter()
        .zip(&cids)
        .map(|(ns, cid)| {
            let path = ns.path().display().to_string();
            let result = bed
                .hostnic(0)
                .add_retrying(&conf(&bed, 0, "vxnet-b"), &env(cid, &path))
                .unwrap_or_else(|e| panic!("the retried ADD of {cid}: {e:?}"));
            Pod {
                ns,
                cid: cid.clone(),
                result,
            }
        })
        .collect();
    let ips: BTreeSet<String> = pods.iter().map(Pod::ip).collect();
    assert_eq!(ips.len(), pods.len(), "two pods share an address: {ips:?}");
    for p in &pods {
        check(&bed, 0, "vxnet-b", p).unwrap_or_else(|e| panic!("{}: {e}", p.cid));
    }
    assert!(x.ns.ping(&pods[23].ip()), "{}", routing(&bed));
    assert_eq!(
        pieces(node0),
        Pieces {
            veths: 27,
            rules: 54,
            host_routes: 27,
            proxies: 27
        }
    );
    // kill -9 right after DELs answered, their veths still going: the
    // restart finishes the releases.
    for p in &pods {
        del(&bed, 0, "vxnet-b", p);
    }
    let mut a0 = a0;
    a0.kill9();
    let _a0 = start(&bed, 0);
    bed.settle(0);
    assert_eq!(
        pieces(node0),
        Pieces {
            veths: 3,
            rules: 6,
            host_routes: 3,
            proxies: 3
        }
    );
    // GC: the runtime lists p0 only, so p2 and p1b are released.
    let mut gc = conf(&bed, 0, "vxnet-a");
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": p0.cid, "ifname": "eth0"}]);
    bed.hostnic(0)
        .call("GC", &gc, &hostnic_testbed::CallEnv::default())
        .unwrap()
        .unwrap_or_else(|e| panic!("GC: {e:?}"));
    assert_eq!(
        pieces(node0),
        Pieces {
            veths: 1,
            rules: 2,
            host_routes: 1,
            proxies: 1
        }
    );
    check(&bed, 0, "vxnet-a", &p0).expect("GC kept the listed pod whole");
    del(&bed, 0, "vxnet-a", &p0);
    bed.settle(0);
    assert_eq!(pieces(node0), NOTHING, "hostnic left pieces on the node");
    assert!(bed.leaked_nics().is_empty(), "{:?}", bed.leaked_nics());
}

#[test]
fn a_pod_pinned_outside_the_shared_range_is_refused_by_the_ip_guest_naming_the_range() {
    if !require_root(
        "a_pod_pinned_outside_the_shared_range_is_refused_by_the_ip_guest_naming_the_range",
    ) {
        return;
    }
    let bed = bed();
    let node0 = &bed.sim.nodes[0].ns;
    let _a0 = start(&bed, 0);
    let pinned = |address: &str| {
        let mut c = conf(&bed, 0, "vxnet-a");
        c["runtimeConfig"] =
            json!({"io.kubernetes.cri.pod-annotations": {"hostnic.io/ip": address}});
        c
    };
    let nics_before = nics_on(&bed, 0);

    // 10.100.0.7 is vxnet-a's, but node 0 shares vxnet-a from
    // 10.100.0.128/25: the default ip guest refuses, saying why.
    let outside = Ns::new("sho").unwrap();
    let e = bed
        .hostnic(0)
        .call(
            "ADD",
            &pinned("10.100.0.7"),
            &env("pin-out", &outside.path().display().to_string()),
        )
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(7), "{e:?}");
    for part in [
        "annotation hostnic.io/ip",
        "10.100.0.7",
        "vxnet-a",
        "10.100.0.128/25",
    ] {
        assert!(e.msg.contains(part), "{:?} lacks {part:?}", e.msg);
    }
    // The guest was told the range and the node's share of it: the
    // range's 126 hosts, none held yet.
    let calls = bed.decisions(0).unwrap();
    let ip_call = calls
        .iter()
        .find(|c| c["hook"] == "ip" && c["container_id"] == "pin-out")
        .unwrap_or_else(|| panic!("no ip call recorded: {calls:#?}"));
    let told = &ip_call["facts"]["vxnet"];
    assert_eq!(told["shared_range"], "10.100.0.128/25", "{ip_call:#}");
    assert_eq!(told["free_ips"], 126, "{ip_call:#}");
    // Nothing of it is left: no veth, rule, route or proxy entry, no
    // address held, no record, no NIC made for it.
    assert_eq!(pieces(node0), NOTHING);
    assert!(
        status(&bed, 0)["shared"].as_array().unwrap().is_empty(),
        "the refused ADD holds an address"
    );
    assert_eq!(
        std::fs::read_dir(bed.state_dir(0).join("shared")).map_or(0, |d| d.count()),
        0,
        "the refused ADD left a record"
    );
    assert_eq!(nics_on(&bed, 0), nics_before);
    // Its DEL, as a runtime sends after a failed ADD, succeeds.
    del(
        &bed,
        0,
        "vxnet-a",
        &Pod {
            ns: outside,
            cid: "pin-out".to_string(),
            result: Value::Null,
        },
    );

    // An address inside the range is what the pod gets; the next call is
    // told one address fewer.
    let inside = Ns::new("shi").unwrap();
    let result = bed
        .hostnic(0)
        .add_retrying(
            &pinned("10.100.0.200"),
            &env("pin-in", &inside.path().display().to_string()),
        )
        .unwrap_or_else(|e| panic!("ADD pinned inside the range: {e:?}"));
    let pod = Pod {
        ns: inside,
        cid: "pin-in".to_string(),
        result,
    };
    assert_eq!(pod.ip(), "10.100.0.200");
    let other = add(&bed, 0, "vxnet-a", "after-pin");
    let calls = bed.decisions(0).unwrap();
    let told = &calls
        .iter()
        .find(|c| c["hook"] == "ip" && c["container_id"] == "after-pin")
        .unwrap()["facts"]["vxnet"];
    assert_eq!(told["free_ips"], 125, "{told:#}");
    del(&bed, 0, "vxnet-a", &pod);
    del(&bed, 0, "vxnet-a", &other);
    bed.settle(0);
    assert_eq!(pieces(node0), NOTHING, "hostnic left pieces on the node");
}
