//! Services of type LoadBalancer on the testbed cluster: the Service
//! controller (in the agent holding the Lease) gives a Deployment's
//! Service a cloud load balancer whose backends are the pods' own
//! addresses; a client VM on the vxnet, outside the cluster, reaches every
//! pod through it; a rolling update under continuous requests fails none;
//! scaling to zero and back follows; deleting the Service deletes the load
//! balancer. A public load balancer takes its EIP and is reached from the
//! internet; a second Service asking for the same EIP gets an event, and
//! the EIP once the first Service is gone — deleted while the node running
//! the controller was killed, so the other node finishes its work.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::cluster::{self, AGENT_TIMERS, Cluster, Install};
use hostnic_testbed::sim::faults::ErrorRule;
use hostnic_testbed::sim::{Faults, SimConfig};
use hostnic_testbed::{kubebed, require_root};
use serde_json::{Value, json};

const VXNET: &str = "vxnet-pods";
const REPLICAS: usize = 10;

/// One cluster at a time: two on two cores starve each other's kubelets.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The web Deployment, its pods ready only once they answer, and given
/// time to leave the load balancer before they stop serving (a preStop
/// pause, as behind any cloud load balancer).
fn web(replicas: usize) -> String {
    let mut d: Value = serde_json::from_str(&cluster::deployment("web", replicas)).unwrap();
    let spec = &mut d["spec"]["template"]["spec"];
    spec["terminationGracePeriodSeconds"] = json!(10);
    let c = &mut spec["containers"][0];
    c["readinessProbe"] = json!({"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1});
    c["lifecycle"] = json!({"preStop": {"exec": {"command": ["sleep", "4"]}}});
    d.to_string()
}

/// The sim's load balancers that are not deleted.
fn live_lbs(cluster: &Cluster) -> Vec<Value> {
    cluster.bed.sim.inspect()["loadbalancers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|lb| lb["status"] != "deleted")
        .collect()
}

#[test]
fn a_load_balancer_service_reaches_the_pods_through_the_cloud() {
    if !require_root("a_load_balancer_service_reaches_the_pods_through_the_cloud") {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let cluster = load_balancing_cluster();
    let client = cluster.bed.sim.add_vm("outside", VXNET).unwrap();

    cluster.cp.apply(&web(REPLICAS)).unwrap();
    cluster
        .wait("the web pods ready", Duration::from_secs(180), || {
            ready_pods(&cluster).len() == REPLICAS
        })
        .unwrap();
    cluster
        .cp
        .apply(
            &json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            })
            .to_string(),
        )
        .unwrap();
    let t = Instant::now();
    cluster
        .wait(
            "the Service's load balancer address",
            Duration::from_secs(60),
            || cluster.lb_ingress("web").is_some(),
        )
        .unwrap();
    let vip = cluster.lb_ingress("web").unwrap();
    let front = SocketAddr::from((vip, 80));
    eprintln!("load balancer {vip} after {:?}", t.elapsed());
    let finalizers = cluster
        .kubectl(&["get", "svc", "web", "-o", "jsonpath={.metadata.finalizers}"])
        .unwrap();
    assert!(
        finalizers.contains("hostnic.io/load-balancer"),
        "{finalizers}"
    );

    // Every pod answers through the load balancer (round robin over all of them).
    let pods = ready_pods(&cluster);
    let mut seen = std::collections::BTreeSet::new();
    cluster
        .wait(
            "every pod answering through the load balancer",
            Duration::from_secs(30),
            || {
                if let Some(name) = client.ns.http_get(front) {
                    seen.insert(name);
                }
                seen.len() == REPLICAS
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "answered: {seen:?} of {pods:?}; the cloud: {:#}\n{e:#}",
                cluster.bed.sim.inspect()
            )
        });
    let lbs = live_lbs(&cluster);
    assert_eq!(lbs.len(), 1, "{lbs:?}");
    assert_eq!(
        cluster.bed.sim.lb_forwards_to(),
        pods,
        "the backends are the pods' own addresses"
    );

    // A rolling update under continuous requests: none fails.
    let before = ready_pods(&cluster);
    let stop = AtomicBool::new(false);
    let (ok, failed) = std::thread::scope(|s| {
        let requests = s.spawn(|| {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                match client.ns.http_get(front) {
                    Some(_) => ok += 1,
                    None => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        });
        cluster
            .kubectl(&["rollout", "restart", "deployment/web"])
            .unwrap();
        cluster
            .kubectl(&["rollout", "status", "deployment/web", "--timeout=180s"])
            .unwrap();
        cluster
            .wait("the old pods gone", Duration::from_secs(60), || {
                cluster.running_pods("app=web").len() == REPLICAS
            })
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        requests.join().unwrap()
    });
    let after = ready_pods(&cluster);
    assert!(
        before.is_disjoint(&after),
        "every pod was replaced: {before:?} {after:?}"
    );
    cluster
        .wait(
            "the backends to be the new pods",
            Duration::from_secs(10),
            || cluster.bed.sim.lb_forwards_to() == after,
        )
        .unwrap();
    eprintln!("rolling update: {ok} requests answered, {failed} failed");
    assert!(ok > 50, "only {ok} requests made");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the rolling update",
        ok + failed
    );

    // Scaled to zero, the load balancer has no backend; scaled back while
    // the cloud refuses the first adds, it converges anyway, and says why
    // it was late on the Service.
    cluster
        .kubectl(&["scale", "deployment/web", "--replicas=0"])
        .unwrap();
    cluster
        .wait("no backends", Duration::from_secs(60), || {
            cluster.bed.sim.lb_forwards_to().is_empty()
        })
        .unwrap();
    assert_eq!(client.ns.http_get(front), None);
    cluster.bed.sim.set_faults(Faults {
        errors: vec![ErrorRule {
            action: Some("AddLoadBalancerBackends".into()),
            code: 1400,
            rate: 1.0,
            count: Some(2),
        }],
        ..Faults::default()
    });
    cluster
        .kubectl(&["scale", "deployment/web", &format!("--replicas={REPLICAS}")])
        .unwrap();
    cluster
        .wait("the backends back", Duration::from_secs(120), || {
            let ready = ready_pods(&cluster);
            ready.len() == REPLICAS && cluster.bed.sim.lb_forwards_to() == ready
        })
        .unwrap();
    assert_eq!(cluster.bed.sim.injected().get(&1400), Some(&2));
    cluster
        .wait("an answer again", Duration::from_secs(10), || {
            client.ns.http_get(front).is_some()
        })
        .unwrap();
    let events = cluster.kubectl(&["get", "events", "-o", "json"]).unwrap();
    assert!(
        events.contains("SyncLoadBalancerFailed"),
        "no event said why"
    );

    // Deleting the Service deletes its load balancer (the finalizer waits
    // for it).
    cluster
        .kubectl(&["delete", "svc", "web", "--timeout=60s"])
        .unwrap();
    cluster
        .wait("the load balancer deleted", Duration::from_secs(30), || {
            live_lbs(&cluster).is_empty()
        })
        .unwrap();
    assert_eq!(cluster.bed.sim.lbs_running(), 0);
    assert_eq!(client.ns.http_get(front), None);
}

/// Two nodes, agents running the Service controller.
fn load_balancing_cluster() -> Cluster {
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        vxnets: vec![(VXNET.into(), "10.100.0.0/24".parse().unwrap())],
        ..SimConfig::default()
    })
    .unwrap();
    let mut cluster = Cluster::start(bed, Install::Agents(String::new())).unwrap();
    kubebed::load_balancing_agents(&mut cluster, AGENT_TIMERS, "").unwrap();
    cluster
}

/// The addresses of the web pods that are Ready.
fn ready_pods(cluster: &Cluster) -> std::collections::BTreeSet<String> {
    let out = cluster
        .kubectl(&["get", "pods", "-l", "app=web", "-o", "json"])
        .unwrap_or_default();
    let list: Value = serde_json::from_str(&out).unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
        .collect()
}

/// Service `name` in front of the web pods, on the load balancer of EIP
/// `eip`.
fn public_service(name: &str, eip: &str) -> String {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "annotations": {
            "service.beta.kubernetes.io/qingcloud-load-balancer-network-type": "public",
            "service.beta.kubernetes.io/qingcloud-load-balancer-eip-ids": eip,
        }},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    })
    .to_string()
}

#[test]
fn an_eip_goes_to_one_service_and_the_other_node_finishes_the_work_of_a_killed_one() {
    if !require_root(
        "an_eip_goes_to_one_service_and_the_other_node_finishes_the_work_of_a_killed_one",
    ) {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let mut cluster = load_balancing_cluster();
    let internet = cluster
        .bed
        .sim
        .add_vm("internet", hostnic_testbed::sim::balancer::INTERNET)
        .unwrap();
    let (eip, eip_addr) = cluster.bed.sim.eips().remove(0);
    cluster.deploy_web(2).unwrap();

    cluster.cp.apply(&public_service("web", &eip)).unwrap();
    cluster
        .wait("web on its EIP", Duration::from_secs(60), || {
            cluster.lb_ingress("web") == Some(eip_addr)
        })
        .unwrap();
    let front = SocketAddr::from((eip_addr, 80));
    cluster
        .wait(
            "an answer from the internet",
            Duration::from_secs(20),
            || internet.ns.http_get(front).is_some(),
        )
        .unwrap();

    // A second Service asks for the same EIP: an event says so, no address.
    cluster.cp.apply(&public_service("web2", &eip)).unwrap();
    cluster
        .wait(
            "an event on web2 naming the taken EIP",
            Duration::from_secs(30),
            || {
                cluster
                    .kubectl(&[
                        "get",
                        "events",
                        "--field-selector",
                        "involvedObject.name=web2",
                        "-o",
                        "json",
                    ])
                    .is_ok_and(|e| {
                        e.contains("SyncLoadBalancerFailed") && e.contains("is associated")
                    })
            },
        )
        .unwrap();
    assert_eq!(cluster.lb_ingress("web2"), None);
    assert_eq!(live_lbs(&cluster).len(), 1);

    // The node running the controller is killed; web is deleted meanwhile.
    // The other node takes the Lease, deletes web's load balancer, and
    // gives the EIP to web2.
    let holder = cluster
        .kubectl(&[
            "get",
            "lease",
            "-n",
            "kube-system",
            "hostnic-cluster-duties",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap();
    let i: usize = holder.trim().trim_start_matches("node-").parse().unwrap();
    cluster.agents[i].kill9();
    cluster
        .kubectl(&["delete", "svc", "web", "--wait=false"])
        .unwrap();
    cluster
        .wait("web2 on the EIP", Duration::from_secs(90), || {
            cluster.lb_ingress("web2") == Some(eip_addr)
        })
        .unwrap();
    cluster
        .wait("web gone", Duration::from_secs(30), || {
            cluster
                .kubectl(&["get", "svc", "web", "-o", "name"])
                .is_err()
        })
        .unwrap();
    let lbs = live_lbs(&cluster);
    assert_eq!(lbs.len(), 1, "{lbs:?}");
    assert!(
        lbs[0]["name"].as_str().unwrap().contains("_web2_"),
        "{lbs:?}"
    );
    cluster
        .wait("an answer through web2", Duration::from_secs(20), || {
            internet.ns.http_get(front).is_some()
        })
        .unwrap();
}
