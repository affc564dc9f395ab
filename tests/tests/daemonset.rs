//! hostnic installed as operators install it: the image built from
//! `deploy/Containerfile` (`scripts/image`), and `deploy/` applied with
//! kubectl in the order deploy/README.md gives — RBAC, the ConfigMap with a
//! site's edits, the credentials Secret in the original form, the
//! DaemonSet — on a real cluster whose nodes have no CNI yet. The agents
//! run in their pods under the hostnic ServiceAccount, learn their VMs from
//! the Nodes, install the executable and the conflist, turn the nodes
//! Ready, and serve a Deployment's pods.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hostnic_testbed::cluster::Cluster;
use hostnic_testbed::{cluster, deploy, require_root, wait_for};

/// One cluster at a time: two on two cores starve each other's kubelets.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn kubectl_apply_of_deploy_brings_hostnic_up_and_pods_get_cloud_nics() {
    if !require_root("kubectl_apply_of_deploy_brings_hostnic_up_and_pods_get_cloud_nics") {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let (cluster, took) = deploy::install(&[("vxnet-pods", "10.100.0.0/24")]).unwrap();
    eprintln!("daemonset: kubectl apply to both agents and nodes Ready in {took:?}");

    // The agents learnt their VMs from the Nodes' provider ids.
    let logs = cluster.agent_pod_logs(-1);
    for vm in &cluster.bed.sim.nodes {
        assert!(
            logs.contains(&format!("instance={}", vm.instance)),
            "no agent found its VM {}:\n{logs}",
            vm.instance
        );
    }

    // Pods get NICs from the cloud through the installed executable.
    let held_before = held(&cluster);
    assert_eq!(held_before, 0.0);
    let replicas = 6;
    let pods = cluster.deploy_web(replicas).unwrap();
    let ips: BTreeSet<&str> = pods.values().map(|(_, ip)| ip.as_str()).collect();
    assert_eq!(ips.len(), replicas, "{pods:?}");
    assert!(ips.iter().all(|ip| ip.starts_with("10.100.0.")), "{pods:?}");
    what_an_operator_sees(&cluster, &pods);

    // A rolling restart of the agents while pods are being created and
    // running pods talk across nodes: no creation fails for good (the
    // kubelet retries an ADD answered "try again later"), and not one
    // packet of a running pod is lost — its NIC is in its namespace, not
    // in the agent.
    let on = |node: &str| {
        pods.iter()
            .find(|(_, (n, _))| n == node)
            .map(|(name, (_, ip))| (name.clone(), ip.clone()))
            .unwrap()
    };
    let ((from, _), (to_pod, to)) = (on("node-0"), on("node-1"));
    let pinger = {
        let kubeconfig = cluster.cp.admin_kubeconfig();
        let kubectl = cluster.cp.bin.join("kubectl");
        let sdn = cluster.bed.sim.sdn_ns().command(kubectl).unwrap();
        let mut cmd = sdn;
        cmd.arg("--kubeconfig").arg(kubeconfig).args([
            "exec", &from, "--", "ping", "-c", "150", "-i", "0.2", "-W", "1", &to,
        ]);
        std::thread::spawn(move || cmd.output())
    };
    std::thread::sleep(Duration::from_secs(2));
    // The agents about to be replaced, for a failure message.
    let before = cluster.agent_pod_logs(-1);
    let wiring = |pod: &str| {
        cluster
            .kubectl(&["exec", pod, "--", "sh", "-c", "ip addr; ip route"])
            .unwrap_or_else(|e| e.to_string())
    };
    let restarted = Instant::now();
    rollout(&cluster, "restart");
    let more = 12;
    cluster.cp.apply(&cluster::deployment("web", more)).unwrap();
    rollout(&cluster, "status");
    eprintln!(
        "daemonset: rolling restart of both agents done in {:?}",
        restarted.elapsed()
    );
    cluster
        .wait(
            "the web pods Running after the restart",
            Duration::from_secs(180),
            || cluster.running_pods("app=web").len() == more,
        )
        .unwrap();
    let ping = pinger.join().unwrap().unwrap();
    let out = String::from_utf8_lossy(&ping.stdout);
    assert!(
        out.contains("150 packets transmitted, 150 packets received"),
        "packets lost across the agents' restart:\n{out}{}\n\
         --- {from}\n{}\n--- {to_pod}\n{}\n{}{}",
        String::from_utf8_lossy(&ping.stderr),
        wiring(&from),
        wiring(&to_pod),
        hostnic_testbed::log_tail("the agents before the restart", &before, 200),
        cluster.logs(),
    );
    let after = cluster.running_pods("app=web");
    let ips: BTreeSet<&str> = after.values().map(|(_, ip)| ip.as_str()).collect();
    assert_eq!(ips.len(), more, "{after:?}");

    cluster.cp.apply(&cluster::deployment("web", 0)).unwrap();
    cluster
        .wait_gone("app=web", Duration::from_secs(120))
        .unwrap();
    assert!(
        cluster.bed.leaked_nics().is_empty(),
        "{:?}",
        cluster.bed.leaked_nics()
    );
}

/// Issue 22: `kubectl rollout restart` of the agents while 12 pods are
/// being created costs no pod a sandbox retry. An ADD that reaches a node
/// while its agent is being replaced (the old one stopped listening on
/// SIGTERM, the new one not yet bound) waits for the new agent, so all 12
/// run and no FailedCreatePodSandBox event names any of them. Also measures
/// how long each node went without a listening agent.
#[test]
fn a_rolling_restart_of_the_agents_costs_no_pod_a_sandbox_retry() {
    if !require_root("a_rolling_restart_of_the_agents_costs_no_pod_a_sandbox_retry") {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let (cluster, _) = deploy::install(&[("vxnet-pods", "10.100.0.0/24")]).unwrap();

    // Each node's /run/hostnic is a directory of the test's: watch its
    // socket as the executable sees it, noting every stretch in which
    // connecting fails (nobody listens, or no socket): when it began
    // after the restart, and how long it lasted.
    let watching = Arc::new(AtomicBool::new(true));
    let a_gap_began = Arc::new(AtomicBool::new(false));
    let restarted = Instant::now();
    let watchers: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| {
            let socket = n.dir.join("run-hostnic/agent.sock");
            let (watching, a_gap_began) = (watching.clone(), a_gap_began.clone());
            std::thread::spawn(move || {
                let (mut gaps, mut down) = (Vec::new(), None::<Instant>);
                while watching.load(Ordering::Relaxed) {
                    match UnixStream::connect(&socket) {
                        Ok(_) => gaps.extend(
                            down.take()
                                .map(|t| (t.duration_since(restarted), t.elapsed())),
                        ),
                        Err(_) => {
                            down.get_or_insert_with(Instant::now);
                            a_gap_began.store(true, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                gaps
            })
        })
        .collect();

    let app = "during";
    let pods = 12;
    rollout(&cluster, "restart");
    // The pods are created as the first agent stops listening, so that
    // their ADDs meet its gap: created with the restart command, they were
    // sometimes all wired before the DaemonSet controller and kubelet had
    // stopped the first agent.
    wait_for(
        "the first agent to stop listening",
        Duration::from_secs(60),
        || a_gap_began.load(Ordering::Relaxed),
    )
    .unwrap();
    cluster.cp.apply(&cluster::deployment(app, pods)).unwrap();
    rollout(&cluster, "status");
    cluster
        .wait(
            "the pods created during the restart Running",
            Duration::from_secs(180),
            || cluster.running_pods(&format!("app={app}")).len() == pods,
        )
        .unwrap();
    watching.store(false, Ordering::Relaxed);
    let gaps: Vec<Vec<(Duration, Duration)>> =
        watchers.into_iter().map(|w| w.join().unwrap()).collect();
    // The executable's own trace, in containerd's log (its stderr).
    let waited: Vec<String> = cluster
        .nodes
        .iter()
        .flat_map(|n| {
            std::fs::read_to_string(n.dir.join("containerd.log"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("hostnic: add: answered by hostnic-agent"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    eprintln!(
        "daemonset: each node's stretch without a listening agent (began after the restart, lasted): {gaps:?}; {} ADDs waited for one:\n{}",
        waited.len(),
        waited.join("\n")
    );
    for (node, gaps) in cluster.nodes.iter().zip(&gaps) {
        assert_eq!(gaps.len(), 1, "{}: {gaps:?}", node.name);
    }

    let events = cluster
        .kubectl(&[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            "reason=FailedCreatePodSandBox",
            "-o",
            "json",
        ])
        .unwrap();
    let events: serde_json::Value = serde_json::from_str(&events).unwrap();
    let failed: Vec<String> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["involvedObject"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("{app}-")))
        })
        .map(|e| format!("{}: {}", e["involvedObject"]["name"], e["message"]))
        .collect();
    assert!(
        failed.is_empty(),
        "pods paid the restart with a sandbox retry:\n{}",
        failed.join("\n")
    );
    // The pods did meet the gap: else this proves nothing.
    assert!(
        !waited.is_empty(),
        "no ADD came while an agent was being replaced; the test tests nothing"
    );

    cluster.cp.apply(&cluster::deployment(app, 0)).unwrap();
    cluster
        .wait_gone(&format!("app={app}"), Duration::from_secs(120))
        .unwrap();
    assert!(
        cluster.bed.leaked_nics().is_empty(),
        "{:?}",
        cluster.bed.leaked_nics()
    );
}

/// A policy module delivered as deploy/README.md says: a binaryData key of
/// the hostnic ConfigMap, beside the agent.toml that pins its digest, so
/// one `kubectl apply` changes both at once. Applied while pods are being
/// created, the running agents swap it in live (same pods, no restart), no
/// pod creation fails, and the pods created afterwards are placed by it.
#[test]
fn a_policy_module_swapped_by_kubectl_apply_places_new_pods_without_restarting_agents() {
    if !require_root(
        "a_policy_module_swapped_by_kubectl_apply_places_new_pods_without_restarting_agents",
    ) {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let (cluster, _) = deploy::install(&[
        ("vxnet-pods", "10.100.0.0/24"),
        ("vxnet-b", "10.101.0.0/24"),
    ])
    .unwrap();
    let agents = || deploy::agent_identities(&cluster).unwrap();
    let before = agents();
    assert_eq!(before.len(), 2, "{before:?}");

    // Pods that ask for vxnet-b by label. The built-in vxnet guest orders
    // by `policy` and reads no label: they land in vxnet-pods.
    let want = [("hostnic.io/vxnet", "vxnet-b")];
    let placed = |n| cluster::labelled_deployment("placed", n, &want);
    let c = &cluster;
    let running = |n: usize| move || c.running_pods("app=placed").len() == n;
    cluster.cp.apply(&placed(4)).unwrap();
    cluster
        .wait("4 pods Running", Duration::from_secs(180), running(4))
        .unwrap();
    let first = cluster.running_pods("app=placed");
    assert!(
        first.values().all(|(_, ip)| ip.starts_with("10.100.0.")),
        "{first:?}"
    );

    // The swap, while six more pods are being created.
    cluster.cp.apply(&placed(10)).unwrap();
    let module = hostnic_testbed::guest_wasm("example_policy");
    let took = deploy::swap_module(&cluster, "vxnet", &module).unwrap();
    eprintln!("daemonset: the module swapped in on both agents {took:?} after kubectl apply");
    cluster
        .wait("10 pods Running", Duration::from_secs(180), running(10))
        .unwrap();

    // Pods created after the swap go where the module sends them.
    let during = cluster.running_pods("app=placed");
    cluster.cp.apply(&placed(14)).unwrap();
    cluster
        .wait("14 pods Running", Duration::from_secs(180), running(14))
        .unwrap();
    let after = cluster.running_pods("app=placed");
    let new: Vec<&(String, String)> = after
        .iter()
        .filter(|(name, _)| !during.contains_key(*name))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(new.len(), 4, "{after:?}");
    assert!(
        new.iter().all(|(_, ip)| ip.starts_with("10.101.0.")),
        "pods created after the swap are not in vxnet-b: {new:?}"
    );
    let ips: BTreeSet<&str> = after.values().map(|(_, ip)| ip.as_str()).collect();
    assert_eq!(ips.len(), 14, "{after:?}");

    // Swapped live: the same agent pods, never restarted; no creation
    // failed for good.
    assert_eq!(agents(), before);
    let failed = deploy::failed_pods(&cluster, "app=placed").unwrap();
    assert!(failed.is_empty(), "{failed:?}");

    // A second swap, to a module that reads the pod's owner (pod-facts,
    // contract 0.1.1, from the agent's watch): a StatefulSet's pods spread
    // over the vxnets by ordinal.
    let spread = hostnic_testbed::guest_wasm("spread_ordinals");
    deploy::swap_module(&cluster, "vxnet", &spread).unwrap();
    cluster.cp.apply(&cluster::statefulset("db", 4)).unwrap();
    cluster
        .wait("4 db pods Running", Duration::from_secs(180), || {
            cluster.running_pods("app=db").len() == 4
        })
        .unwrap();
    let db = cluster.running_pods("app=db");
    for k in 0..4 {
        let (_, ip) = &db[&format!("db-{k}")];
        let want = ["10.100.0.", "10.101.0."][k % 2];
        assert!(
            ip.starts_with(want),
            "db-{k} got {ip}, not in {want}x: {db:?}"
        );
    }

    cluster.cp.apply(&placed(0)).unwrap();
    cluster
        .kubectl(&["delete", "statefulset", "db", "--wait=false"])
        .unwrap();
    cluster
        .wait_gone("app=placed", Duration::from_secs(120))
        .unwrap();
    cluster
        .wait_gone("app=db", Duration::from_secs(120))
        .unwrap();
    assert!(
        cluster.bed.leaked_nics().is_empty(),
        "{:?}",
        cluster.bed.leaked_nics()
    );
}

/// `kubectl rollout <verb>` of the agents' DaemonSet (`status` waits up to
/// 3 minutes for the rollout to finish).
fn rollout(cluster: &Cluster, verb: &str) {
    let mut args = vec!["rollout", verb, "ds/hostnic-agent", "-n", "kube-system"];
    if verb == "status" {
        args.push("--timeout=180s");
    }
    cluster.kubectl(&args).unwrap();
}

/// NICs held by pods on both nodes, from each agent's metrics.
fn held(cluster: &Cluster) -> f64 {
    deploy::nics_in_state(cluster, "held")
        .unwrap()
        .iter()
        .flat_map(|by_vxnet| by_vxnet.values())
        .sum()
}

/// Issue 9 on the real cluster: every pod carries its network-status and
/// the reason for its NIC, the agents' metrics count the pods, and
/// `hostnic-agent status` inside the agent pod lists its node's pods.
fn what_an_operator_sees(cluster: &Cluster, pods: &BTreeMap<String, (String, String)>) {
    for (pod, (_, ip)) in pods {
        let mut annotations = serde_json::Value::Null;
        cluster
            .wait(
                "the pod's decision annotations",
                Duration::from_secs(20),
                || {
                    annotations = cluster
                        .kubectl(&["get", "pod", pod, "-o", "jsonpath={.metadata.annotations}"])
                        .ok()
                        .and_then(|o| serde_json::from_str(&o).ok())
                        .unwrap_or_default();
                    annotations["hostnic.io/decision"].is_string()
                },
            )
            .unwrap();
        let status: serde_json::Value = serde_json::from_str(
            annotations["k8s.v1.cni.cncf.io/network-status"]
                .as_str()
                .unwrap_or_default(),
        )
        .unwrap();
        assert_eq!(status[0]["interface"], "eth0", "{pod}: {status}");
        assert_eq!(status[0]["ips"][0], ip.as_str(), "{pod}: {status}");
        assert_eq!(status[0]["default"], true, "{pod}: {status}");
        let reason = annotations["hostnic.io/decision"].as_str().unwrap();
        assert!(reason.starts_with("vxnet-pods: "), "{pod}: {reason}");
    }
    assert_eq!(held(cluster), pods.len() as f64);
    let agent = cluster.agent_pods(Some("node-0")).unwrap();
    let agent = agent[0]["metadata"]["name"].as_str().unwrap();
    let status = cluster
        .kubectl(&[
            "exec",
            "-n",
            "kube-system",
            agent,
            "--",
            "hostnic-agent",
            "status",
        ])
        .unwrap();
    for (pod, (node, _)) in pods {
        if node == "node-0" {
            assert!(
                status.contains(&format!("default/{pod}")),
                "{pod} missing:\n{status}"
            );
        }
    }
}

/// A vxnet with five addresses and six pods to place: the pod that cannot
/// get one is told why where an operator looks — a Warning event on it
/// (`kubectl get events`), with the cloud's ret_code and message — while
/// the pods that got an address run.
#[test]
fn an_exhausted_vxnet_is_an_event_on_the_pod_it_holds_back() {
    if !require_root("an_exhausted_vxnet_is_an_event_on_the_pod_it_holds_back") {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let (cluster, _) = deploy::install(&[("vxnet-tiny", "10.103.0.0/29")]).unwrap();
    cluster.cp.apply(&cluster::deployment("web", 6)).unwrap();
    let mut event = serde_json::Value::Null;
    cluster
        .wait(
            "a VxnetExhausted event on a web pod",
            Duration::from_secs(180),
            || {
                let list: serde_json::Value = cluster
                    .kubectl(&["get", "events.events.k8s.io", "-o", "json"])
                    .ok()
                    .and_then(|o| serde_json::from_str(&o).ok())
                    .unwrap_or_default();
                event = list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|e| e["reason"] == "VxnetExhausted" && e["regarding"]["kind"] == "Pod")
                    .cloned()
                    .unwrap_or_default();
                !event.is_null()
            },
        )
        .unwrap();
    assert_eq!(event["type"], "Warning", "{event:#}");
    assert_eq!(event["reportingController"], "hostnic-agent", "{event:#}");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("ret_code 1400") && note.contains("vxnet-tiny"),
        "{note}"
    );
    let held_back = event["regarding"]["name"].as_str().unwrap().to_string();
    assert!(held_back.starts_with("web-"), "{event:#}");
    // Five addresses for six pods (and the nodes' gateway NICs): the pod
    // the event names is not running; some others are.
    cluster
        .wait(
            "the pods with an address Running",
            Duration::from_secs(120),
            || !cluster.running_pods("app=web").is_empty(),
        )
        .unwrap();
    let running = cluster.running_pods("app=web");
    assert!(
        !running.contains_key(&held_back),
        "{held_back} runs: {running:?}"
    );
    assert!(
        (1..=5).contains(&running.len()),
        "{} web pods run on a vxnet of five addresses",
        running.len()
    );
    cluster.cp.apply(&cluster::deployment("web", 0)).unwrap();
    cluster
        .wait_gone("app=web", Duration::from_secs(120))
        .unwrap();
}
