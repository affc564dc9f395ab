//! Services with kube-proxy's defaults (no `masqueradeAll`), with pods on
//! NICs of their own and pods behind the node's NIC: a pod reaches a
//! ClusterIP Service whose backends are on its own node, on the other
//! node, and itself (hairpin), and every backend but itself sees the
//! client pod's own address; and it reaches the API server through the
//! `kubernetes` Service (a backend that is no pod: masqueraded by the
//! node). The answers go back through the node that translated the
//! request (`host/agent/src/return_path/`); an agent restart keeps it so,
//! and a backend leaving under load is never sent a request once the
//! change has reached the client's node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::cluster::{self, AGENT_TIMERS, Cluster, Install};
use hostnic_testbed::kubebed;
use hostnic_testbed::require_root;
use hostnic_testbed::sim::SimConfig;
use serde_json::json;

const REPLICAS: usize = 4;
/// Requests through the Service per check: with backends spread over two
/// nodes, the chance that one node's never answers is 2^-20.
const REQUESTS: usize = 20;

/// Pods behind the node's NIC: the upper half of the vxnet.
const SHARED: &str = "[[shared]]\nvxnet = \"vxnet-pods\"\nrange = \"10.100.0.128/25\"\n";

/// One cluster at a time: two on two cores starve each other's kubelets.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn services_keep_the_client_address_with_kube_proxy_defaults() {
    scenario(
        "services_keep_the_client_address_with_kube_proxy_defaults",
        "",
        Restart::Yes,
    );
}

#[test]
fn services_keep_the_client_address_behind_a_shared_nic() {
    // No restart: a test-run agent, outside the node's mount namespace,
    // cannot reopen its shared pods' namespaces by path, so it takes them
    // for gone and releases them. The DaemonSet's agent can; the node's
    // rules it rewrites at start are the same as the exclusive scenario's
    // restart rewrites, and shared_mode.rs restarts the shared wiring.
    scenario(
        "services_keep_the_client_address_behind_a_shared_nic",
        SHARED,
        Restart::No,
    );
}

/// Whether the scenario restarts an agent and checks again.
#[derive(PartialEq)]
enum Restart {
    Yes,
    No,
}

/// The scenario with the agents' `extra` tables.
fn scenario(test: &str, extra: &str, restart: Restart) {
    if !require_root(test) {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        vxnets: vec![("vxnet-pods".into(), "10.100.0.0/24".parse().unwrap())],
        ..SimConfig::default()
    })
    .unwrap();
    let mut cluster = Cluster::start(bed, Install::Agents(String::new())).unwrap();
    kubebed::watching_agents(&mut cluster, AGENT_TIMERS, extra).unwrap();
    let pods = cluster.deploy_web(REPLICAS).unwrap();
    let nodes: BTreeSet<&str> = pods.values().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes.len(), 2, "the pods did not spread: {pods:?}");
    let cluster_ip = cluster.expose("web").unwrap();
    let (client, client_ip) = cluster::pod_on(&pods, "node-0");

    let via = Via {
        cluster_ip: &cluster_ip,
        client: &client,
        client_ip: &client_ip,
        pods: &pods,
    };
    via.check(&cluster, "at first");

    // Hairpin: a Service whose only backend is the client itself.
    let self_ip = manual_service(&cluster, "self", &client_ip, 8080);
    let hairpin = cluster
        .fetch_within(
            &client,
            &format!("http://{self_ip}/"),
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(hairpin.trim(), client);

    // A Service's externalIP, from the range the pods' routes send through
    // their node as the Service CIDR (cluster::EXTERNAL_IP_CIDR): kube-proxy
    // translates it there, and a web pod answers.
    let external = "203.0.113.10";
    cluster
        .cp
        .apply(
            &json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web-external", "namespace": "default"},
                "spec": {"selector": {"app": "web"}, "externalIPs": [external],
                         "ports": [{"port": 80, "targetPort": 8080}]},
            })
            .to_string(),
        )
        .unwrap();
    let answer = cluster
        .fetch_within(
            &client,
            &format!("http://{external}/cgi-bin/ip"),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| {
            panic!(
                "the externalIP {external} did not answer {client}: {e:#}\n{}",
                diagnose(&cluster)
            )
        });
    let backend = answer.split_whitespace().next().unwrap_or_default();
    assert!(
        pods.contains_key(backend),
        "{external} was answered by {answer:?}, not a web pod"
    );

    // A backend that is a node's own process (a hostNetwork pod on
    // node-1) given by its address on node-1's gateway NIC: its answer
    // leaves by that NIC, whose rules send it back to node-0. It too sees
    // the client's own address.
    if extra.is_empty() {
        cluster.cp.apply(&host_web("node-1")).unwrap();
        let gateway = node_gateway(&cluster, "node-1");
        let host_ip = manual_service(&cluster, "host-web", &gateway, 8080);
        let url = format!("http://{host_ip}/cgi-bin/ip");
        let answer = cluster
            .fetch_within(&client, &url, Duration::from_secs(60))
            .unwrap_or_else(|e| {
                panic!(
                    "node-1's hostNetwork pod on its gateway NIC {gateway} did not answer {client} through a Service: {e:#}\n{}",
                    diagnose(&cluster)
                )
            });
        let seen = answer.split_whitespace().nth(1).unwrap_or_default();
        assert_eq!(
            seen.trim_start_matches("[::ffff:").trim_end_matches(']'),
            client_ip,
            "the hostNetwork backend saw {answer:?}"
        );
    }

    if restart == Restart::Yes {
        // A restarted agent leaves its pods' answers going back (the rules
        // live in the pods' namespaces; its start takes them over where it
        // can reopen a pod's namespace by path, which this testbed's
        // test-run agents, outside the nodes' mount namespaces, cannot).
        cluster.agents[1].kill9();
        cluster.agents[1] =
            kubebed::agent(&cluster.bed, &cluster.cp, 1, (AGENT_TIMERS, ""), extra).unwrap();
        via.check(&cluster, "after node-1's agent restarted");
    }
    a_backend_leaves_under_load(&cluster, &via);
}

/// A backend on node-1 is deleted while the client keeps calling the
/// Service: once node-0's kube-proxy has dropped it from its rules (the
/// EndpointSlice change reached the node), no request goes to it and none
/// fails.
fn a_backend_leaves_under_load(cluster: &Cluster, via: &Via) {
    let (gone, gone_ip) = cluster::pod_on(via.pods, "node-1");
    let url = format!("http://{}/cgi-bin/ip", via.cluster_ip);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let answers = std::sync::Mutex::new(Vec::new());
    let reached_node = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let answer = cluster.fetch_url(via.client, &url);
                let at = std::time::Instant::now();
                answers
                    .lock()
                    .unwrap()
                    .push((at, answer.map_err(|e| format!("{e:#}"))));
            }
        });
        let node0 = &cluster.bed.sim.nodes[0].ns;
        let dnat = format!("--to-destination {gone_ip}:");
        let programmed = || {
            node0
                .exec("iptables-save", &["-t", "nat"])
                .map(|rules| rules.contains(&dnat))
        };
        assert!(
            programmed().unwrap(),
            "node-0's kube-proxy has no rule for {gone} ({gone_ip}) to drop"
        );
        cluster
            .kubectl(&["delete", "pod", &gone, "--wait=false"])
            .unwrap();
        let dropped = cluster.wait(
            &format!("node-0's kube-proxy to drop {gone} ({gone_ip})"),
            Duration::from_secs(60),
            || programmed().is_ok_and(|p| !p),
        );
        let reached = std::time::Instant::now();
        // Requests keep going for a while after the change.
        std::thread::sleep(Duration::from_secs(4));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        dropped.map(|()| reached)
    });
    let reached = reached_node.unwrap();
    let answers = answers.into_inner().unwrap();
    let after: Vec<&Result<String, String>> = answers
        .iter()
        .filter(|(at, _)| *at > reached)
        .map(|(_, a)| a)
        .collect();
    assert!(
        after.len() >= 5,
        "only {} requests after the change: {answers:?}",
        after.len()
    );
    for answer in after {
        match answer {
            Ok(a) => assert!(
                !a.starts_with(&format!("{gone} ")),
                "{gone} answered after node-0 had dropped it: {a:?}"
            ),
            Err(e) => panic!("a request failed after node-0 had dropped {gone}: {e}"),
        }
    }
}

/// A ClusterIP Service (port 80) whose one endpoint is `ip:port`, given
/// by hand; its cluster IP.
fn manual_service(cluster: &Cluster, name: &str, ip: &str, port: u16) -> String {
    cluster
        .cp
        .apply(
            &json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"ports": [{"port": 80, "targetPort": port}]},
            })
            .to_string(),
        )
        .unwrap();
    cluster
        .cp
        .apply(
            &json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-1"), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
                "ports": [{"port": port, "protocol": "TCP"}],
            })
            .to_string(),
        )
        .unwrap();
    cluster
        .kubectl(&["get", "svc", name, "-o", "jsonpath={.spec.clusterIP}"])
        .unwrap()
}

/// A hostNetwork web server on `node` (port 8080 of every node address).
fn host_web(node: &str) -> String {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "host-web", "namespace": "default"},
        "spec": {
            "hostNetwork": true,
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "httpd", "image": cluster::BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", cluster::WEB_SERVER],
            }],
        },
    })
    .to_string()
}

/// The address of `node`'s gateway NIC in vxnet-pods, as its agent
/// published it.
fn node_gateway(cluster: &Cluster, node: &str) -> String {
    let published = cluster
        .kubectl(&[
            "get",
            "node",
            node,
            "-o",
            "jsonpath={.metadata.annotations.hostnic\\.io/gateways}",
        ])
        .unwrap();
    let gateways: serde_json::Value = serde_json::from_str(&published)
        .unwrap_or_else(|e| panic!("{node}'s gateways {published:?}: {e}"));
    gateways["vxnet-pods"]["ip"]
        .as_str()
        .unwrap_or_else(|| panic!("{node} published no gateway NIC in vxnet-pods: {published}"))
        .to_string()
}

/// A client pod calling a Service.
struct Via<'a> {
    cluster_ip: &'a str,
    client: &'a str,
    client_ip: &'a str,
    pods: &'a BTreeMap<String, (String, String)>,
}

impl Via<'_> {
    fn check(&self, cluster: &Cluster, when: &str) {
        // Every request answered, by backends on both nodes, each of which saw
        // the client's own address (the client's own answers come back
        // masqueraded by kube-proxy, as hairpin traffic always is).
        let url = format!("http://{}/cgi-bin/ip", self.cluster_ip);
        // The first request may wait for kube-proxy to program the Service.
        cluster
            .fetch_within(self.client, &url, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("the Service did not answer {when}: {e:#}"));
        let mut served_from = BTreeSet::new();
        for i in 0..REQUESTS {
            let answer = cluster.fetch_url(self.client, &url).unwrap_or_else(|e| {
                panic!(
                    "request {i} {when} through the Service failed: {e:#}\n{}",
                    diagnose(cluster)
                )
            });
            let mut words = answer.split_whitespace();
            let (Some(backend), Some(seen)) = (words.next(), words.next()) else {
                panic!("the backend answered {answer:?}");
            };
            // busybox httpd names IPv4 clients as IPv4-mapped IPv6.
            let seen = seen.trim_start_matches("[::ffff:").trim_end_matches(']');
            let (node, _) = self
                .pods
                .get(backend)
                .unwrap_or_else(|| panic!("{backend} is not a web pod"));
            served_from.insert(node.clone());
            if backend != self.client {
                assert_eq!(
                    seen, self.client_ip,
                    "{backend} saw the request {when} from {seen}, not from the client pod {} ({})",
                    self.client, self.client_ip
                );
            }
        }
        assert_eq!(
            served_from.len(),
            2,
            "only backends on {served_from:?} answered {when}"
        );
        self.reach_the_api_server(cluster, when);
    }

    /// The API server answers through the `kubernetes` Service: it is no
    /// pod, so its answer comes back only because the node masqueraded
    /// the request. Plain http to its https port is answered with a 400,
    /// which is all this asks for; a lost answer is a timeout.
    fn reach_the_api_server(&self, cluster: &Cluster, when: &str) {
        let url = "http://10.96.0.1:443/";
        let script = format!("timeout 5 wget -q -O - {url} 2>&1; true");
        let answer = cluster
            .kubectl(&["exec", self.client, "--", "sh", "-c", &script])
            .unwrap_or_else(|e| format!("{e:#}"));
        assert!(
            answer.contains("400"),
            "the API server did not answer {} through the kubernetes Service {when}: {answer:?}",
            self.client
        );
    }
}

/// What a failed request needs looked at: every node's gateway NICs as
/// published, and the Service rules in each node's namespace (the pods'
/// are in their namespaces, which only the nodes' mount namespaces name).
fn diagnose(cluster: &Cluster) -> String {
    let mut out = cluster
        .kubectl(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.annotations.hostnic\\.io/gateways}{\"\\n\"}{end}",
        ])
        .unwrap_or_else(|e| format!("{e:#}"));
    for (i, node) in cluster.bed.sim.nodes.iter().enumerate() {
        let rules = node
            .ns
            .exec("nft", &["list", "ruleset"])
            .unwrap_or_else(|e| format!("{e:#}"));
        let ours: Vec<&str> = rules
            .split("\ntable ")
            .filter(|t| t.contains("hostnic-"))
            .collect();
        out.push_str(&format!("node-{i} nft:\n{}\n", ours.join("\ntable ")));
    }
    out
}
