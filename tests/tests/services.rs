//! Services with kube-proxy's defaults (no `masqueradeAll`): a pod reaches
//! a ClusterIP Service whose backends are on its own node, on the other
//! node, and itself (hairpin), and every backend but itself sees the
//! client pod's own address. The answers go back through the node that
//! translated the request (`host/agent/src/return_path.rs`); an agent
//! restart keeps it so.

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

#[test]
fn services_keep_the_client_address_with_kube_proxy_defaults() {
    if !require_root("services_keep_the_client_address_with_kube_proxy_defaults") {
        return;
    }
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        vxnets: vec![("vxnet-pods".into(), "10.100.0.0/24".parse().unwrap())],
        ..SimConfig::default()
    })
    .unwrap();
    let mut cluster = Cluster::start(bed, Install::Agents(String::new())).unwrap();
    kubebed::watching_agents(&mut cluster, AGENT_TIMERS, "").unwrap();
    cluster
        .cp
        .apply(&cluster::deployment("web", REPLICAS))
        .unwrap();
    cluster
        .wait(
            &format!("{REPLICAS} web pods Running"),
            Duration::from_secs(180),
            || cluster.running_pods("app=web").len() == REPLICAS,
        )
        .unwrap();
    let pods = cluster.running_pods("app=web");
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
    cluster
        .cp
        .apply(
            &json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "self", "namespace": "default"},
                "spec": {"ports": [{"port": 80, "targetPort": 8080}]},
            })
            .to_string(),
        )
        .unwrap();
    cluster
        .cp
        .apply(
            &json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "self-1", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "self"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [client_ip], "conditions": {"ready": true}}],
                "ports": [{"port": 8080, "protocol": "TCP"}],
            })
            .to_string(),
        )
        .unwrap();
    let self_ip = cluster
        .kubectl(&["get", "svc", "self", "-o", "jsonpath={.spec.clusterIP}"])
        .unwrap();
    let mut hairpin = String::new();
    cluster
        .wait(
            "the client to reach itself through its Service",
            Duration::from_secs(60),
            || match cluster.fetch(&client, &self_ip) {
                Ok(out) => {
                    hairpin = out;
                    true
                }
                Err(_) => false,
            },
        )
        .unwrap();
    assert_eq!(hairpin.trim(), client);

    // A restarted agent leaves its pods' answers going back (the rules
    // live in the pods' namespaces; its start takes them over where it can
    // reopen a pod's namespace by path, which this testbed's test-run
    // agents, outside the nodes' mount namespaces, cannot).
    cluster.agents[1].kill9();
    cluster.agents[1] =
        kubebed::agent(&cluster.bed, &cluster.cp, 1, (AGENT_TIMERS, ""), "").unwrap();
    via.check(&cluster, "after node-1's agent restarted");
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
            .wait(
                &format!("the Service to answer {when}"),
                Duration::from_secs(60),
                || cluster.fetch_url(self.client, &url).is_ok(),
            )
            .unwrap();
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
    }
}

/// What a failed request needs looked at: every node's gateway NICs as
/// published (the pods' rules are in their namespaces, which only the
/// nodes' mount namespaces name).
fn diagnose(cluster: &Cluster) -> String {
    cluster
        .kubectl(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.annotations.hostnic\\.io/gateways}{\"\\n\"}{end}",
        ])
        .unwrap_or_else(|e| format!("{e:#}"))
}
