//! The agent against a real Kubernetes API server (built from source, see
//! `tests/src/controlplane.rs`), running under exactly the ServiceAccount
//! and RBAC of `deploy/namespace-rbac.yaml`: its VM from its Node's
//! `spec.providerID`, its pods' labels from a watch reaching the policy
//! guests, and one node at a time holding the cluster-duties Lease; what
//! the agent tells an operator: each pod's decision as annotations, failed
//! ADDs as events, `hostnic-agent status` and the metrics.

use std::time::{Duration, Instant};

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::controlplane::ControlPlane;
use hostnic_testbed::kubebed;
use hostnic_testbed::plugin::PluginError;
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::{Agent, CallEnv, Ns, bin, guest_wasm, require_root, sha256_file, wait_for};
use serde_json::{Value, json};

const LEASE: &str = "hostnic-cluster-duties";

fn bed() -> CloudBed {
    CloudBed::new(SimConfig {
        nodes: 2,
        vxnets: vec![
            ("vxnet-a".into(), "10.100.0.0/24".parse().unwrap()),
            ("vxnet-b".into(), "10.101.0.0/24".parse().unwrap()),
        ],
        ..SimConfig::default()
    })
    .unwrap()
}

fn cluster(bed: &CloudBed, bare: bool) -> ControlPlane {
    kubebed::control_plane(bed, bare.then_some(1)).unwrap()
}

fn agent(bed: &CloudBed, cp: &ControlPlane, i: usize, extra: &str) -> anyhow::Result<Agent> {
    kubebed::agent(
        bed,
        cp,
        i,
        (
            "warm_min = 1\nwarm_max = 2\nreconcile_seconds = 1\ncold_add_wait_seconds = 20\n",
            "",
        ),
        extra,
    )
}

fn add(bed: &CloudBed, cid: &str, ns: &Ns, pod: &str) -> Value {
    let start = Instant::now();
    loop {
        match add_once(bed, cid, ns, pod) {
            Ok(r) => return r,
            Err(e) if e.code == Some(11) && start.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("ADD {pod}: {e}"),
        }
    }
}

/// One ADD of pod `pod` (namespace default) as containerd sends it.
fn add_once(bed: &CloudBed, cid: &str, ns: &Ns, pod: &str) -> Result<Value, PluginError> {
    call(bed, "ADD", cid, ns, pod)
}

/// One `verb` call for pod `pod` (namespace default) as containerd sends it.
fn call(bed: &CloudBed, verb: &str, cid: &str, ns: &Ns, pod: &str) -> Result<Value, PluginError> {
    let path = ns.path().display().to_string();
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}");
    let env = CallEnv {
        container_id: cid,
        netns: &path,
        ifname: "eth0",
        args: &args,
    };
    let conf = bed.netconf(0, "1.1.0", json!([]));
    bed.hostnic(0).call(verb, &conf, &env).unwrap()
}

/// `hostnic-agent ARGS --socket <node 0's>`'s output; it must succeed.
fn agent_cli(bed: &CloudBed, args: &[&str]) -> String {
    let out = std::process::Command::new(bin("hostnic-agent"))
        .args(args)
        .arg("--socket")
        .arg(bed.socket(0))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hostnic-agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn decisions(bed: &CloudBed) -> Vec<Value> {
    bed.decisions(0).unwrap()
}

#[test]
fn an_agent_on_a_kubernetes_node_learns_its_vm_and_its_pods_from_the_api_server() {
    if !require_root("an_agent_on_a_kubernetes_node_learns_its_vm_and_its_pods_from_the_api_server")
    {
        return;
    }
    let bed = bed();
    let cp = cluster(&bed, true);

    // What the ServiceAccount may do: exactly what the agent needs.
    let sa = "system:serviceaccount:kube-system:hostnic";
    let can = |args: &[&str]| -> bool {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--as", sa]);
        match cp.kubectl(&all) {
            Ok(out) => out.trim() == "yes",
            Err(e) if e.to_string().contains("kubectl auth can-i") => false,
            Err(e) => panic!("{e}"),
        }
    };
    for allowed in [
        &["get", "nodes/node-0"][..],
        // Its gateway NICs on its Node, every Node's read (Service answers
        // back through the node that translated them).
        &["patch", "nodes/node-0"],
        &["list", "nodes"],
        &["watch", "nodes"],
        &["list", "pods", "--all-namespaces"],
        &["watch", "pods", "--all-namespaces"],
        &["create", "leases", "-n", "kube-system"],
        &["update", &format!("leases/{LEASE}"), "-n", "kube-system"],
        &["get", "pods", "-n", "default"],
        &["patch", "pods", "-n", "default"],
        &["create", "events.events.k8s.io", "-n", "default"],
        &["patch", "events.events.k8s.io", "-n", "default"],
        &["get", "statefulsets.apps", "-n", "default"],
        &["create", "hostnicblocks.hostnic.io"],
        &["list", "hostnicblocks.hostnic.io"],
        &["delete", "hostnicblocks.hostnic.io"],
        &["update", "hostnicblocks.hostnic.io"],
        // NetworkPolicy: the policies, the namespaces' labels, the
        // Services in front of the pods.
        &[
            "list",
            "networkpolicies.networking.k8s.io",
            "--all-namespaces",
        ],
        &[
            "watch",
            "networkpolicies.networking.k8s.io",
            "--all-namespaces",
        ],
        &["list", "namespaces"],
        &["watch", "namespaces"],
        &["list", "services", "--all-namespaces"],
        &["watch", "services", "--all-namespaces"],
    ] {
        assert!(can(allowed), "the agent needs {allowed:?}");
    }
    for forbidden in [
        &["get", "secrets", "-n", "kube-system"][..],
        &["delete", "pods", "-n", "default"],
        &["update", "nodes/node-0"],
        &["delete", "nodes/node-0"],
        &["update", "leases/kube-scheduler", "-n", "kube-system"],
        &["create", "leases", "-n", "default"],
        &["update", "pods", "-n", "default"],
        &["delete", "events.events.k8s.io", "-n", "default"],
        &["create", "events", "-n", "default"],
        &["list", "statefulsets.apps", "-n", "default"],
        &["update", "statefulsets.apps", "-n", "default"],
        &["patch", "hostnicblocks.hostnic.io"],
        &["get", "secrets", "-n", "default"],
        &[
            "create",
            "networkpolicies.networking.k8s.io",
            "-n",
            "default",
        ],
        &["update", "namespaces/default"],
        &["patch", "services", "-n", "default"],
    ] {
        assert!(!can(forbidden), "the agent must not {forbidden:?}");
    }

    // Its VM from the Node's provider id, not from the node's name.
    let module = guest_wasm("example_policy");
    let hooks = format!(
        "[hooks.vxnet]\npath = {module:?}\nsha256 = \"{}\"\n",
        sha256_file(&module).unwrap()
    );
    let a0 = agent(&bed, &cp, 0, &hooks).unwrap();
    assert!(
        a0.log_text().contains(&format!(
            "this node's VM, from its Node's spec.providerID instance={} node=node-0",
            bed.sim.nodes[0].instance
        )),
        "{}",
        a0.log_text()
    );
    // A Node without one: the agent says what to set, and does not start.
    let e = agent(&bed, &cp, 1, "").unwrap_err().to_string();
    assert!(e.contains("node node-1 has no spec.providerID"), "{e}");
    assert!(e.contains("--provider-id=qingcloud://"), "{e}");

    // A pod's label, known only to the API server, reaches the guest: the
    // example policy places it in the vxnet the label names.
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "default",
                     "labels": {"app": "web", "hostnic.io/vxnet": "vxnet-b"}},
        "spec": {"nodeName": "node-0", "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "busybox"}]},
    });
    cp.apply(&pod.to_string()).unwrap();
    let web = Ns::new("web0").unwrap();
    let r = add(&bed, "k8s-web-0", &web, "web-0");
    let ip = r["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(
        ip.starts_with("10.101."),
        "web-0 got {ip}, not from vxnet-b; the decisions: {:#?}",
        decisions(&bed)
    );
    let calls = decisions(&bed);
    let call = calls
        .iter()
        .find(|c| c["hook"] == "vxnet" && c["container_id"] == "k8s-web-0")
        .unwrap();
    assert_eq!(call["facts"]["pod"]["labels"]["app"], "web", "{call}");
    assert_eq!(call["answer"][0], "vxnet-b", "{call}");

    // A pod the API server does not know: after a bounded wait the ADD
    // goes on with what the runtime sent, and says so.
    let ghost = Ns::new("ghost").unwrap();
    let started = Instant::now();
    add(&bed, "k8s-ghost", &ghost, "ghost");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        a0.log_text()
            .contains("the pod is not in the API server's view yet"),
        "{}",
        a0.log_text()
    );
}

/// A field of the Lease's spec (`holderIdentity`, `leaseTransitions`),
/// if the Lease exists and the field is set.
fn lease(cp: &ControlPlane, field: &str) -> Option<String> {
    let path = format!("jsonpath={{.spec.{field}}}");
    cp.kubectl(&["get", "lease", LEASE, "-n", "kube-system", "-o", &path])
        .ok()
        .filter(|v| !v.is_empty())
}

fn lease_holder(cp: &ControlPlane) -> Option<String> {
    lease(cp, "holderIdentity")
}

#[test]
fn one_node_at_a_time_holds_the_cluster_duties_lease() {
    if !require_root("one_node_at_a_time_holds_the_cluster_duties_lease") {
        return;
    }
    let bed = bed();
    let cp = cluster(&bed, false);
    let sweep = "leak_sweep = \"cluster\"";
    // The sweep key belongs to [cloud], which agent() appends to.
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| agent(&bed, &cp, i, sweep).unwrap())
        .collect();
    wait_for("a Lease holder", Duration::from_secs(20), || {
        lease_holder(&cp).is_some()
    })
    .unwrap();
    let holder = lease_holder(&cp).unwrap();
    let i: usize = holder.strip_prefix("node-").unwrap().parse().unwrap();
    // Only the holder says it holds the Lease; it keeps it while alive.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(lease_holder(&cp).as_deref(), Some(holder.as_str()));
    let holds = |a: &Agent| a.log_text().contains("this node holds the Lease");
    assert!(holds(&agents[i]), "{}", agents[i].log_text());
    assert!(!holds(&agents[1 - i]), "{}", agents[1 - i].log_text());

    // The holder dies; the other node takes over once the Lease expires
    // (3 s, by its own clock), not before. (The RBAC's manifest creates the
    // Lease vacant, so taking it first already counted as a transition.)
    let transitions = || -> u32 {
        lease(&cp, "leaseTransitions")
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or_default()
    };
    let before = transitions();
    let killed = Instant::now();
    agents[i].kill9();
    let other = format!("node-{}", 1 - i);
    wait_for(
        "the other node to take the Lease",
        Duration::from_secs(20),
        || lease_holder(&cp).as_deref() == Some(other.as_str()),
    )
    .unwrap();
    let took = killed.elapsed();
    assert!(took >= Duration::from_secs(2), "taken over after {took:?}");
    assert!(holds(&agents[1 - i]), "{}", agents[1 - i].log_text());
    assert_eq!(transitions(), before + 1);
    eprintln!("lease: taken over {took:?} after the holder was killed (lease 3 s)");
}

/// The agent's metrics, scraped in node 0's namespace, as (series, value).
/// `hostnic-agent status --json` of node `i` (null if it does not answer).
fn status(bed: &CloudBed, i: usize) -> Value {
    bed.status(i).unwrap_or(Value::Null)
}

/// The DescribeNics node `i`'s agent sent.
fn describes(bed: &CloudBed, i: usize) -> u64 {
    status(bed, i)["cloud"]["calls"]["DescribeNics"]
        .as_u64()
        .unwrap_or(0)
}

/// Node `i`'s free addresses in `vxnet`, as it last had them counted.
fn free_ips(bed: &CloudBed, i: usize, vxnet: &str) -> Option<u64> {
    let s = status(bed, i);
    let row = s["vxnets"].as_array()?.iter().find(|v| v["id"] == vxnet)?;
    row["free_ips_age_s"].as_u64()?;
    row["free_ips"].as_u64()
}

#[test]
fn the_lease_holder_counts_the_vxnets_for_every_node() {
    if !require_root("the_lease_holder_counts_the_vxnets_for_every_node") {
        return;
    }
    let bed = bed();
    let cp = cluster(&bed, false);
    // Counted every 2 s (±20%): the holder counts often, and a node that
    // counted its own would show it within a few seconds.
    let counting = "vxnet_count_seconds = 2";
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| agent(&bed, &cp, i, counting).unwrap())
        .collect();
    let published = || {
        let out = kubebed::lease(&cp, "{.metadata.annotations.hostnic\\.io/vxnet-counts}");
        serde_json::from_str::<Value>(&out).unwrap_or(Value::Null)
    };
    wait_for(
        "both vxnets' counts on the Lease",
        Duration::from_secs(30),
        || {
            let p = published();
            p["vxnet-a"]["nics"].is_u64() && p["vxnet-b"]["nics"].is_u64()
        },
    )
    .unwrap();
    let holder: usize = lease_holder(&cp)
        .unwrap()
        .strip_prefix("node-")
        .unwrap()
        .parse()
        .unwrap();
    let reader = 1 - holder;
    // The free addresses of a /24 as the cloud has them now: 253 usable
    // (gateway left out), less a NIC each.
    let truth = |vxnet: &str| {
        let nics = bed.sim.inspect()["nics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["vxnet"] == vxnet)
            .count();
        253 - nics as u64
    };
    let both_right = |i: usize| {
        ["vxnet-a", "vxnet-b"]
            .iter()
            .all(|v| free_ips(&bed, i, v) == Some(truth(v)))
    };
    wait_for(
        "both nodes to have the cloud's count",
        Duration::from_secs(20),
        || both_right(reader) && both_right(holder),
    )
    .unwrap_or_else(|e| panic!("{e}\n{:#}\n{:#}", published(), status(&bed, reader)));
    // Over several intervals the holder counts and the other node does
    // not: its one DescribeNics is its inventory at start.
    let before = describes(&bed, holder);
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        describes(&bed, holder) >= before + 4,
        "the holder counts both vxnets every ~2 s"
    );
    assert_eq!(describes(&bed, reader), 1, "{}", agents[reader].log_text());

    // Two VMs join vxnet-b, outside the cluster: the holder's count
    // reaches the other node, which still makes no call of its own.
    let was = truth("vxnet-b");
    let _vms: Vec<_> = (0..2)
        .map(|k| bed.sim.add_vm(&format!("cnt{k}"), "vxnet-b").unwrap())
        .collect();
    assert_eq!(truth("vxnet-b"), was - 2);
    wait_for(
        "the other node to see the two new NICs",
        Duration::from_secs(20),
        || free_ips(&bed, reader, "vxnet-b") == Some(was - 2),
    )
    .unwrap();
    assert_eq!(describes(&bed, reader), 1);

    // The holder dies: the other node takes the Lease and counts.
    agents[holder].kill9();
    wait_for(
        "the other node to count as the holder",
        Duration::from_secs(30),
        || describes(&bed, reader) >= 3,
    )
    .unwrap();
    assert_eq!(lease_holder(&cp), Some(format!("node-{reader}")));
}

fn scrape(bed: &CloudBed) -> Vec<(String, f64)> {
    let text = bed.sim.nodes[0]
        .ns
        .exec("curl", &["-sf", "http://127.0.0.1:9273/metrics"])
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of the one series named `name` with every label of `labels`.
fn metric(samples: &[(String, f64)], name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| s.split('{').next() == Some(name) && labels.iter().all(|l| s.contains(l)))
        .map(|(_, v)| *v)
        .sum()
}

#[test]
fn an_operator_sees_each_decision_on_its_pod_and_each_failure_as_an_event() {
    if !require_root("an_operator_sees_each_decision_on_its_pod_and_each_failure_as_an_event") {
        return;
    }
    // One small vxnet: .2 to .6, five pods' worth of addresses.
    let bed = CloudBed::new(SimConfig {
        nodes: 1,
        vxnets: vec![("vxnet-small".into(), "10.102.0.0/29".parse().unwrap())],
        ..SimConfig::default()
    })
    .unwrap();
    let cp = cluster(&bed, false);
    let a0 = kubebed::agent(
        &bed,
        &cp,
        0,
        (
            "warm_min = 0\nwarm_max = 0\ncold_add_wait_seconds = 5\n",
            "",
        ),
        "",
    )
    .unwrap();
    let before = scrape(&bed);
    assert_eq!(
        metric(
            &before,
            "hostnic_build_info",
            &[&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(metric(&before, "hostnic_nics", &["state=\"held\""]), 0.0);
    assert!(
        metric(
            &before,
            "hostnic_cloud_api_requests_total",
            &["action=\"DescribeNics\"", "ret_code=\"0\""]
        ) >= 1.0
    );

    // Five pods take the vxnet's five addresses, each NIC created for its
    // ADD; each pod carries its network-status and the reason.
    let mut pods = Vec::new();
    for i in 0..5 {
        let name = format!("p{i}");
        cp.apply(&kubebed::pod_object(&name, "node-0")).unwrap();
        let ns = Ns::new(&format!("obs{i}")).unwrap();
        let r = add(&bed, &format!("k8s-{name}"), &ns, &name);
        pods.push((name, ns, r));
    }
    for (name, _, r) in &pods {
        let ip = r["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let mut annotations = Value::Null;
        wait_for("the pod's annotations", Duration::from_secs(10), || {
            annotations = serde_json::from_str(
                &cp.kubectl(&[
                    "get",
                    "pod",
                    name,
                    "-n",
                    "default",
                    "-o",
                    "jsonpath={.metadata.annotations}",
                ])
                .unwrap_or_default(),
            )
            .unwrap_or(Value::Null);
            annotations["hostnic.io/decision"].is_string()
        })
        .unwrap();
        let status: Value = serde_json::from_str(
            annotations["k8s.v1.cni.cncf.io/network-status"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            status,
            json!([{"name": "hostnic-cloud", "interface": "eth0", "ips": [ip], "mac": r["interfaces"][0]["mac"],
                    "default": true, "dns": {}, "gateway": ["10.102.0.1"]}]),
            "{name}: {annotations:#}"
        );
        let reason = annotations["hostnic.io/decision"].as_str().unwrap();
        assert!(
            reason.starts_with(
                "vxnet-small: a NIC created for this ADD; order vxnet-small; ip any -> "
            ),
            "{name}: {reason}"
        );
    }

    // The sixth finds the vxnet exhausted: the ADD says so, and so does an
    // event on the pod, with the cloud's ret_code and message.
    cp.apply(&kubebed::pod_object("p5", "node-0")).unwrap();
    let ns5 = Ns::new("obs5").unwrap();
    let e = add_once(&bed, "k8s-p5", &ns5, "p5").unwrap_err();
    assert!(e.msg.contains("ResourceInsufficient"), "{e:?}");
    let mut events = Value::Null;
    wait_for("the pod's event", Duration::from_secs(10), || {
        events = serde_json::from_str(
            &cp.kubectl(&["get", "events.events.k8s.io", "-n", "default", "-o", "json"])
                .unwrap_or_default(),
        )
        .unwrap_or(Value::Null);
        events["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|ev| ev["regarding"]["name"] == "p5"))
    })
    .unwrap();
    let event = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ev| ev["regarding"]["name"] == "p5")
        .unwrap();
    assert_eq!(event["type"], "Warning", "{event:#}");
    assert_eq!(event["reason"], "VxnetExhausted", "{event:#}");
    assert_eq!(event["reportingController"], "hostnic-agent", "{event:#}");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("ret_code 1400") && note.contains("vxnet-small"),
        "{note}"
    );

    // The metrics moved with it.
    let after = scrape(&bed);
    assert_eq!(
        metric(
            &after,
            "hostnic_nics",
            &["vxnet=\"vxnet-small\"", "state=\"held\""]
        ),
        5.0,
        "{after:?}"
    );
    assert_eq!(
        metric(
            &after,
            "hostnic_cni_request_duration_seconds_count",
            &["verb=\"add\"", "code=\"0\""]
        ),
        5.0
    );
    assert!(
        metric(
            &after,
            "hostnic_cni_request_duration_seconds_count",
            &["verb=\"add\"", "code=\"11\""]
        ) >= 1.0
    );
    assert!(
        metric(
            &after,
            "hostnic_cloud_api_requests_total",
            &["action=\"CreateNics\"", "ret_code=\"0\""]
        ) >= 1.0
    );
    assert!(
        metric(
            &after,
            "hostnic_cloud_api_requests_total",
            &["action=\"CreateNics\"", "ret_code=\"1400\""]
        ) >= 1.0
    );
    assert_eq!(metric(&after, "hostnic_vm_nic_limit", &[]), 64.0);
    assert!(
        metric(
            &after,
            "hostnic_policy_calls_total",
            &["hook=\"vxnet\"", "result=\"ok\""]
        ) >= 6.0
    );

    // `hostnic-agent status` names every pod with its NIC, and the failure.
    let status: Value = serde_json::from_str(&agent_cli(&bed, &["status", "--json"])).unwrap();
    for (name, _, r) in &pods {
        let mac = r["interfaces"][0]["mac"].as_str().unwrap();
        let row = status["nics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["mac"] == mac)
            .unwrap();
        assert_eq!(row["pod"], format!("default/{name}"), "{row}");
        assert_eq!(row["state"], "held", "{row}");
    }
    let last = status["decisions"].as_array().unwrap().last().unwrap();
    assert_eq!(last["pod"], "p5");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("ResourceInsufficient"),
        "{last}"
    );
    let tables = agent_cli(&bed, &["status"]);
    assert!(
        tables.contains("default/p4") && tables.contains("CreateNics"),
        "{tables}"
    );
    drop(a0);
}

/// A StatefulSet's pod, its owner from the agent's watch, is sticky under
/// its identity with the ip guest's `"statefulsets": true`: recreated, it
/// asks for the address its identity had, and gets it; a pod of another
/// identity gets another.
#[test]
fn a_statefulset_pod_gets_its_address_back_under_its_identity() {
    if !require_root("a_statefulset_pod_gets_its_address_back_under_its_identity") {
        return;
    }
    let bed = bed();
    let cp = cluster(&bed, true);
    let _agent = agent(
        &bed,
        &cp,
        0,
        "[hooks.ip]\nconfig = '{\"statefulsets\": true}'\n",
    )
    .unwrap();
    let owned = |name: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                "uid": "00000000-0000-0000-0000-000000000001", "controller": true}]},
            "spec": {"nodeName": "node-0", "automountServiceAccountToken": false,
                     "containers": [{"name": "c", "image": "busybox"}]},
        })
        .to_string()
    };
    cp.apply(&owned("db-0")).unwrap();
    cp.apply(&owned("db-1")).unwrap();
    let ip_of = |r: &Value| r["ips"][0]["address"].as_str().unwrap().to_string();
    let del = |cid: &str, ns: &Ns, pod: &str| call(&bed, "DEL", cid, ns, pod).unwrap();
    let first = Ns::new("sts0").unwrap();
    let before = ip_of(&add(&bed, "db-0-a", &first, "db-0"));
    // Another identity takes a NIC meanwhile and keeps it.
    let other = Ns::new("sts1").unwrap();
    let theirs = ip_of(&add(&bed, "db-1-a", &other, "db-1"));
    assert_ne!(theirs, before);
    del("db-0-a", &first, "db-0");
    // db-0 comes back (a new sandbox): the same address.
    let again = Ns::new("sts0b").unwrap();
    let after = ip_of(&add(&bed, "db-0-b", &again, "db-0"));
    assert_eq!(after, before, "db-0 did not get its address back");
    // The cloud NIC itself follows the identity: kept (detached) after
    // the DEL, attached again for the new sandbox.
    let audit = agent_cli(&bed, &["status", "--json"]);
    assert!(
        audit.contains("sticky statefulset/default/db/0@hostnic-cloud")
            && audit.contains("the NIC kept for its sticky identity"),
        "the decision names the identity and how its NIC came: {audit}"
    );
    del("db-0-b", &again, "db-0");
    del("db-1-a", &other, "db-1");
}

/// The simulator's calls of `action` so far.
fn calls(bed: &CloudBed, action: &str) -> u64 {
    bed.sim.calls().get(action).copied().unwrap_or(0)
}

#[test]
fn a_cold_add_makes_nics_for_every_pod_bound_to_its_node() {
    if !require_root("a_cold_add_makes_nics_for_every_pod_bound_to_its_node") {
        return;
    }
    let bed = bed();
    let cp = cluster(&bed, false);
    // Eight pods the scheduler bound to node-0, and one on the host's
    // network, which takes no NIC.
    const PODS: usize = 8;
    for i in 0..PODS {
        cp.apply(&kubebed::pod_object(&format!("p{i}"), "node-0"))
            .unwrap();
    }
    cp.apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "host", "namespace": "default"},
            "spec": {"nodeName": "node-0", "hostNetwork": true,
                     "automountServiceAccountToken": false,
                     "containers": [{"name": "c", "image": "busybox"}]},
        })
        .to_string(),
    )
    .unwrap();
    // No NIC kept warm, at most two: without the pods, a cold ADD's batch
    // is the ADD's NIC and as many as the recent cold ADDs, up to two.
    let _agent = kubebed::agent(
        &bed,
        &cp,
        0,
        (
            "warm_min = 0\nwarm_max = 2\nreconcile_seconds = 1\ncold_add_wait_seconds = 20\n",
            "",
        ),
        "",
    )
    .unwrap();
    let secondary = || bed.sim.secondary_nics().len();
    assert_eq!(secondary(), 0);
    // What waits for a quiet moment (counting the vxnets' addresses, one
    // DescribeNics each) waits while the bound pods have not asked: their
    // batch would wait behind it. The start's inventory is the one call.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        calls(&bed, "DescribeNics"),
        1,
        "the node counted its vxnets while its pods were on their way"
    );
    let netns: Vec<Ns> = (0..PODS)
        .map(|i| Ns::new(&format!("bound{i}")).unwrap())
        .collect();
    add(&bed, "p0-a", &netns[0], "p0");
    assert_eq!(calls(&bed, "CreateNics"), 1);
    assert_eq!(
        secondary(),
        PODS,
        "the first cold ADD's batch makes a NIC for each of the {PODS} networked pods bound here"
    );
    // The other seven find theirs made: no second CreateNics.
    let macs: std::collections::BTreeSet<String> = (1..PODS)
        .map(|i| {
            let r = add(&bed, &format!("p{i}-a"), &netns[i], &format!("p{i}"));
            r["interfaces"][0]["mac"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(macs.len(), PODS - 1);
    assert_eq!(calls(&bed, "CreateNics"), 1);
    assert_eq!(secondary(), PODS);
    // Every pod has its NIC: the node is quiet, and counts its two vxnets.
    wait_for("the vxnets counted", Duration::from_secs(20), || {
        calls(&bed, "DescribeNics") >= 3
    })
    .unwrap();
    for (i, ns) in netns.iter().enumerate() {
        call(&bed, "DEL", &format!("p{i}-a"), ns, &format!("p{i}")).unwrap();
    }
}
