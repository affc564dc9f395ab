//! DEL answers once the release is recorded and brings the NIC back in the
//! background: the guarantees stay those of a synchronous DEL.

use std::time::Duration;

use hostnic_testbed::{Ns, Testbed, ok, pod_env, require_root, wait_for};
use serde_json::json;

/// The runtime destroys the pod's namespace right after DEL answered: the
/// agent's descriptor keeps it alive until the NIC is out, so the NIC comes
/// back parked and serves the next pod.
#[test]
fn the_nic_comes_back_after_the_runtime_destroys_the_namespace() {
    if !require_root("the_nic_comes_back_after_the_runtime_destroys_the_namespace") {
        return;
    }
    let tb = Testbed::new(2).unwrap();
    let _agent = tb.start_agent().unwrap();
    let conf = tb.netconf("1.0.0", json!([]));
    let cni = tb.hostnic();
    let mut pods = Vec::new();
    for i in 0..2 {
        let pod = Ns::new(&format!("p{i}")).unwrap();
        ok(cni.call(
            "ADD",
            &conf,
            &pod_env(&format!("c{i}"), &pod.path().display().to_string()),
        ));
        pods.push(pod);
    }
    for (i, pod) in pods.drain(..).enumerate() {
        ok(cni.call(
            "DEL",
            &conf,
            &pod_env(&format!("c{i}"), &pod.path().display().to_string()),
        ));
        // The runtime tears the sandbox down at once.
        drop(pod);
    }
    wait_for(
        "both NICs parked on the node",
        Duration::from_secs(10),
        || tb.parked_macs().unwrap().len() == 2,
    )
    .unwrap();
    wait_for("no records left", Duration::from_secs(5), || {
        tb.records().is_empty()
    })
    .unwrap();
    // A second DEL (no netns) of a released attachment is fine.
    ok(cni.call("DEL", &conf, &pod_env("c0", "")));
    // Both NICs serve new pods.
    let again: Vec<Ns> = (0..2).map(|i| Ns::new(&format!("q{i}")).unwrap()).collect();
    for (i, pod) in again.iter().enumerate() {
        ok(cni.call(
            "ADD",
            &conf,
            &pod_env(&format!("d{i}"), &pod.path().display().to_string()),
        ));
    }
}

/// kill -9 right after a burst of DELs answered: the releases the agent did
/// not finish are finished at start; every NIC is parked and free, no record
/// is left, no pod keeps a NIC.
#[test]
fn a_kill_after_dels_answered_is_finished_at_start() {
    if !require_root("a_kill_after_dels_answered_is_finished_at_start") {
        return;
    }
    let tb = Testbed::new(6).unwrap();
    let mut agent = tb.start_agent().unwrap();
    let conf = tb.netconf("1.0.0", json!([]));
    let cni = tb.hostnic();
    let pods: Vec<Ns> = (0..6).map(|i| Ns::new(&format!("p{i}")).unwrap()).collect();
    let path = |p: &Ns| p.path().display().to_string();
    for (i, pod) in pods.iter().enumerate() {
        ok(cni.call("ADD", &conf, &pod_env(&format!("c{i}"), &path(pod))));
    }
    for (i, pod) in pods.iter().enumerate() {
        ok(cni.call("DEL", &conf, &pod_env(&format!("c{i}"), &path(pod))));
    }
    agent.kill9();
    let left = tb.records().len();
    let parked = tb.parked_macs().unwrap().len();
    eprintln!("at the kill: {left} releases recorded but unfinished, {parked} of 6 NICs parked");
    let _agent = tb.start_agent().unwrap();
    assert_eq!(
        tb.parked_macs().unwrap().len(),
        6,
        "every NIC parked after the restart"
    );
    assert!(tb.records().is_empty(), "{:?}", tb.records());
    for pod in &pods {
        assert!(
            pod.ip(&["link", "show", "dev", "eth0"]).is_err(),
            "a pod kept its NIC"
        );
    }
    // All six free: six new pods get one each.
    let again: Vec<Ns> = (0..6).map(|i| Ns::new(&format!("q{i}")).unwrap()).collect();
    for (i, pod) in again.iter().enumerate() {
        ok(cni.call("ADD", &conf, &pod_env(&format!("d{i}"), &path(pod))));
    }
}

/// A runtime that re-connects a running container (podman's network
/// disconnect + connect) sends ADD into the same namespace, with the same
/// interface name, right after DEL answered: the ADD waits for the NIC that
/// is still on its way out instead of meeting its interface. Driven over
/// the socket so the ADD arrives within microseconds of the DEL's answer.
#[test]
fn an_add_right_after_del_into_the_same_namespace_succeeds() {
    if !require_root("an_add_right_after_del_into_the_same_namespace_succeeds") {
        return;
    }
    use hostnic_testbed::rawclient::{self, add_request, frame};
    use std::os::fd::AsRawFd;
    let tb = Testbed::new(2).unwrap();
    let _agent = tb.start_agent_with("[hooks]\nenabled = false\n").unwrap();
    let pod = Ns::new("again").unwrap();
    let ns = std::fs::File::open(pod.path()).unwrap();
    let add = frame(&add_request("hostnic-test", "c"));
    let mut del = add_request("hostnic-test", "c");
    del["op"] = json!("del");
    let del = frame(&del);
    for round in 0..20 {
        let a = rawclient::call(&tb.socket(), &add, &[ns.as_raw_fd()]).unwrap();
        assert!(a["result"]["Ok"].is_object(), "round {round}: ADD {a}");
        let d = rawclient::call(&tb.socket(), &del, &[ns.as_raw_fd()]).unwrap();
        assert!(d["result"]["Ok"].is_string(), "round {round}: DEL {d}");
    }
    let _ = rawclient::call(&tb.socket(), &del, &[ns.as_raw_fd()]).unwrap();
    tb.settle();
    assert_eq!(tb.parked_macs().unwrap().len(), 2);
    assert!(tb.records().is_empty(), "{:?}", tb.records());
}
