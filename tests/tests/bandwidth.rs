//! The `bandwidth` capability (Kubernetes' `kubernetes.io/ingress-bandwidth`
//! and `egress-bandwidth`), honoured by hostnic itself on the pod's own
//! interface, in every wiring: a NIC of its own (`move`) and a shared
//! address behind a veth (`shared`). Measured with iperf3 between two pods
//! of one node: the limited pod's traffic each way against the asked rate,
//! and CHECK and DEL as they must be.

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sharedbed::{Pod, bed, conf, env};
use hostnic_testbed::{Ns, iperf, require_root};
use serde_json::{Value, json};

/// Node 0 shares vxnet-a; vxnet-b pods get NICs of their own.
const AGENT: &str = "warm_min = 2\nwarm_max = 2\nreconcile_seconds = 1\n\
                     cold_add_wait_seconds = 20\n\
                     [[shared]]\nvxnet = \"vxnet-a\"\nrange = \"10.100.0.128/25\"\n";
const INGRESS: f64 = 10e6;
const EGRESS: f64 = 20e6;

fn limited(bed: &CloudBed, vxnet: &str) -> Value {
    let mut c = conf(bed, 0, vxnet);
    // As containerd sends it: rates in bit/s, bursts in bits.
    c["runtimeConfig"] = json!({"bandwidth": {
        "IngressRate": INGRESS as u64, "IngressBurst": 4294967295u64,
        "EgressRate": EGRESS as u64, "EgressBurst": 4294967295u64,
    }});
    c
}

fn add(bed: &CloudBed, conf: &Value, cid: &str) -> Pod {
    let ns = Ns::new("bw").unwrap();
    let path = ns.path().display().to_string();
    let result = bed
        .hostnic(0)
        .add_retrying(conf, &env(cid, &path))
        .unwrap_or_else(|e| panic!("ADD {cid}: {e:?}"));
    Pod {
        ns,
        cid: cid.to_string(),
        result,
    }
}

/// Within what a shaper can be held to: TCP over a tbf shows at most
/// ~96% of the rate (iperf3 counts payload, tbf whole frames), and a few
/// seconds' run sees some of the bucket's burst.
fn near(measured: f64, asked: f64, what: &str) {
    let ratio = measured / asked;
    eprintln!(
        "{what}: {:.2} Mbit/s of {:.0} asked ({ratio:.2})",
        measured / 1e6,
        asked / 1e6
    );
    assert!(
        (0.7..=1.1).contains(&ratio),
        "{what}: {:.2} Mbit/s, asked {:.0}",
        measured / 1e6,
        asked / 1e6
    );
}

fn shaped_each_way_then_checked_and_deleted(bed: &CloudBed, vxnet: &str) {
    let slow = add(bed, &limited(bed, vxnet), &format!("slow-{vxnet}"));
    let fast = add(bed, &conf(bed, 0, vxnet), &format!("fast-{vxnet}"));
    // What the limited pod sends, then what it receives.
    let up = iperf::bits_per_second(&slow.ns, &fast.ns, &fast.ip(), 3, false).unwrap();
    near(up, EGRESS, &format!("{vxnet}: egress"));
    let down = iperf::bits_per_second(&slow.ns, &fast.ns, &fast.ip(), 3, true).unwrap();
    near(down, INGRESS, &format!("{vxnet}: ingress"));

    // CHECK sees the limits; taken off by hand, it says so.
    let mut check = limited(bed, vxnet);
    check["prevResult"] = slow.result.clone();
    let call = |c: &Value| {
        bed.hostnic(0)
            .call("CHECK", c, &env(&slow.cid, &slow.path()))
            .unwrap()
    };
    call(&check).unwrap_or_else(|e| panic!("{vxnet}: CHECK {e:?}"));
    slow.ns.ip(&["link", "del", "ifb-eth0"]).unwrap();
    let e = call(&check).unwrap_err();
    assert_eq!(e.code, Some(102), "{vxnet}: {e:?}");
    assert!(e.msg.contains("shaped"), "{vxnet}: {e:?}");

    // DEL takes the ifb out of the pod with everything else.
    let limits = limited(bed, vxnet);
    let ifb_again = slow.ns.ip(&["link", "add", "ifb-eth0", "type", "ifb"]);
    ifb_again.unwrap();
    for pod in [&slow, &fast] {
        bed.hostnic(0)
            .call("DEL", &limits, &env(&pod.cid, &pod.path()))
            .unwrap()
            .unwrap_or_else(|e| panic!("{vxnet}: DEL {e:?}"));
    }
    hostnic_testbed::wait_for_releases(&bed.state_dir(0)).unwrap();
    let left = slow.ns.ip(&["-o", "link"]).unwrap();
    assert!(!left.contains("ifb"), "{vxnet}: {left}");
}

#[test]
fn a_pods_limits_are_kept_each_way_in_both_wirings() {
    if !require_root("a_pods_limits_are_kept_each_way_in_both_wirings") {
        return;
    }
    let bed = bed();
    let _agent = bed.start_agent(0, AGENT).unwrap();
    shaped_each_way_then_checked_and_deleted(&bed, "vxnet-b");
    shaped_each_way_then_checked_and_deleted(&bed, "vxnet-a");
}

/// Limits the interface cannot honour refuse the ADD by name (code 7)
/// and leave nothing behind.
#[test]
fn limits_that_cannot_be_kept_refuse_the_add_and_leave_nothing() {
    if !require_root("limits_that_cannot_be_kept_refuse_the_add_and_leave_nothing") {
        return;
    }
    let bed = bed();
    let _agent = bed.start_agent(0, AGENT).unwrap();
    for vxnet in ["vxnet-b", "vxnet-a"] {
        let mut c = conf(&bed, 0, vxnet);
        // A burst smaller than one full frame at the interface's MTU.
        c["runtimeConfig"] = json!({"bandwidth": {"EgressRate": 1_000_000, "EgressBurst": 800}});
        let ns = Ns::new("bwx").unwrap();
        let e = bed
            .hostnic(0)
            .call("ADD", &c, &env("tiny", &ns.path().display().to_string()))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, Some(7), "{vxnet}: {e:?}");
        assert!(e.msg.contains("bandwidth"), "{vxnet}: {e:?}");
        hostnic_testbed::wait_for_releases(&bed.state_dir(0)).unwrap();
        let left = ns.ip(&["-o", "link"]).unwrap();
        assert_eq!(left.lines().count(), 1, "{vxnet}: {left}");
        let st = bed.status(0).unwrap();
        assert!(st["shared"].as_array().unwrap().is_empty(), "{st}");
        let held = st["nics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["state"] == "held" || n["state"] == "reserved")
            .count();
        assert_eq!(held, 0, "{vxnet}: {st}");
    }
}
