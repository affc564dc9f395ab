use serde_json::json;

use super::*;

fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ip: [u8; 4]) -> PodView {
    PodView {
        namespace: ns.into(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ip: Some(ip.into()),
        ports: vec![NamedPort {
            name: "serve-80-tcp".into(),
            proto: Proto::Tcp,
            port: 80,
        }],
    }
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// Namespaces x and y; pods a and b in x, c in y.
fn cluster(policies: Vec<NetworkPolicy>) -> Cluster {
    Cluster {
        policies: policies.into_iter().map(std::sync::Arc::new).collect(),
        namespaces: [
            (
                "x".to_string(),
                [("ns".to_string(), "x".to_string())].into(),
            ),
            (
                "y".to_string(),
                [("ns".to_string(), "y".to_string())].into(),
            ),
        ]
        .into(),
        pods: vec![
            pod("x", "a", &[("pod", "a")], [10, 0, 0, 1]),
            pod("x", "b", &[("pod", "b")], [10, 0, 0, 2]),
            pod("y", "c", &[("pod", "c")], [10, 0, 0, 3]),
        ],
        services: vec![ServiceView {
            namespace: "y".into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 3),
            selector: [("pod".to_string(), "c".to_string())].into(),
            ports: vec![ServicePort {
                proto: Proto::Tcp,
                port: 8080,
                target: IntOrString::String("serve-80-tcp".into()),
            }],
        }],
    }
}

fn addrs(ips: &[[u8; 4]]) -> Peer {
    Peer::Addrs(ips.iter().map(|ip| Ipv4Addr::from(*ip)).collect())
}

#[test]
fn a_pod_no_policy_selects_is_not_isolated() {
    let c = cluster(vec![
        policy(
            "x",
            "only-b",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}}),
        ),
        policy("y", "all", json!({"podSelector": {}})),
    ]);
    assert_eq!(compile(&c, &c.pods[0]), PodRules::default());
}

#[test]
fn policy_types_default_to_ingress_and_to_egress_when_it_has_egress_rules() {
    let c = cluster(vec![policy("x", "deny", json!({"podSelector": {}}))]);
    let rules = compile(&c, &c.pods[0]);
    assert_eq!(rules.ingress, Some(Vec::new()));
    assert_eq!(rules.egress, None);
    assert_eq!(rules.policies, ["x/deny"]);
    // Services are judged by their backends only where egress is isolated.
    assert!(rules.services.is_empty());
    let c = cluster(vec![policy(
        "x",
        "e",
        json!({"podSelector": {}, "egress": []}),
    )]);
    let rules = compile(&c, &c.pods[0]);
    assert_eq!(rules.ingress, Some(Vec::new()));
    assert_eq!(rules.egress, Some(Vec::new()));
    assert_eq!(rules.services, [Ipv4Addr::new(10, 96, 0, 3)].into());
    let c = cluster(vec![policy(
        "x",
        "e",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    )]);
    let rules = compile(&c, &c.pods[0]);
    assert_eq!((rules.ingress, rules.egress), (None, Some(Vec::new())));
}

#[test]
fn peers_by_pod_namespace_and_both_selectors_and_blocks() {
    let c = cluster(vec![policy(
        "x",
        "peers",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"podSelector": {"matchLabels": {"pod": "b"}}},
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}},
            {"podSelector": {"matchLabels": {"pod": "c"}}},
            {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}},
        ]}]}),
    )]);
    let rules = compile(&c, &c.pods[0]);
    let Admits::Match { peers, ports } = &rules.ingress.as_ref().unwrap()[0].what else {
        panic!("{rules:?}");
    };
    assert_eq!(ports, &None);
    assert_eq!(
        peers.as_ref().unwrap(),
        &[
            addrs(&[[10, 0, 0, 2]]),
            addrs(&[[10, 0, 0, 3]]),
            addrs(&[[10, 0, 0, 1]]),
            // A pod selector alone looks in the policy's namespace only.
            addrs(&[]),
            Peer::Block {
                cidr: "192.168.0.0/16".parse().unwrap(),
                except: vec!["192.168.1.0/24".parse().unwrap()],
            },
        ]
    );
    let block = &peers.as_ref().unwrap()[4];
    assert!(block.admits(Ipv4Addr::new(192, 168, 2, 1)));
    assert!(!block.admits(Ipv4Addr::new(192, 168, 1, 1)));
}

#[test]
fn ports_numbered_ranged_named_and_by_protocol() {
    let c = cluster(vec![policy(
        "x",
        "ports",
        json!({"podSelector": {}, "ingress": [{"ports": [
            {"port": 81},
            {"port": 1000, "endPort": 2000, "protocol": "UDP"},
            {"port": "serve-80-tcp"},
            {"port": "serve-80-udp", "protocol": "UDP"},
            {"protocol": "SCTP"},
        ]}]}),
    )]);
    let rules = compile(&c, &c.pods[0]);
    let Admits::Match { peers, ports } = &rules.ingress.as_ref().unwrap()[0].what else {
        panic!("{rules:?}");
    };
    assert_eq!(peers, &None);
    let r = |proto, ports| PortRange { proto, ports };
    assert_eq!(
        ports.as_ref().unwrap(),
        &[
            r(Proto::Tcp, Some((81, 81))),
            r(Proto::Udp, Some((1000, 2000))),
            // Resolved on the pod itself; the UDP name it lacks admits nothing.
            r(Proto::Tcp, Some((80, 80))),
            r(Proto::Sctp, None),
        ]
    );
}

#[test]
fn egress_to_a_named_port_is_exact_and_reaches_the_service_in_front() {
    let c = cluster(vec![policy(
        "x",
        "to-c",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                           "ports": [{"port": "serve-80-tcp"}]}]}),
    )]);
    let rules = compile(&c, &c.pods[0]);
    let egress = rules.egress.unwrap();
    let whats: Vec<&Admits> = egress.iter().map(|a| &a.what).collect();
    assert_eq!(
        whats,
        [
            &Admits::Triples([(Ipv4Addr::new(10, 0, 0, 3), Proto::Tcp, 80)].into()),
            &Admits::Triples([(Ipv4Addr::new(10, 96, 0, 3), Proto::Tcp, 8080)].into()),
        ]
    );
}

#[test]
fn egress_to_a_block_holding_a_backend_reaches_its_service_and_an_except_does_not() {
    let to = |block: serde_json::Value| {
        let c = cluster(vec![policy(
            "x",
            "cidr",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"ipBlock": block}]}]}),
        )]);
        compile(&c, &c.pods[0]).egress.unwrap()
    };
    let allowed = to(json!({"cidr": "10.0.0.3/32"}));
    assert_eq!(allowed.len(), 2, "{allowed:?}");
    assert_eq!(
        allowed[1].what,
        Admits::Triples([(Ipv4Addr::new(10, 96, 0, 3), Proto::Tcp, 8080)].into())
    );
    let excepted = to(json!({"cidr": "10.0.0.0/24", "except": ["10.0.0.3/32"]}));
    assert_eq!(excepted.len(), 1, "{excepted:?}");
    // Egress to anywhere needs no Service of its own.
    let c = cluster(vec![policy(
        "x",
        "all",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}),
    )]);
    let all = compile(&c, &c.pods[0]).egress.unwrap();
    assert_eq!(
        all.iter().map(|a| &a.what).collect::<Vec<_>>(),
        [&Admits::Match {
            peers: None,
            ports: None
        }]
    );
}

#[test]
fn policies_add_up() {
    let c = cluster(vec![
        policy("x", "deny", json!({"podSelector": {}})),
        policy(
            "x",
            "allow-b",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
        ),
    ]);
    let rules = compile(&c, &c.pods[0]);
    assert_eq!(rules.policies, ["x/deny", "x/allow-b"]);
    assert_eq!(rules.ingress.as_ref().unwrap().len(), 1);
    assert_eq!(rules.ingress.unwrap()[0].policy, "x/allow-b");
    // b is selected by the deny alone.
    assert_eq!(compile(&c, &c.pods[1]).ingress, Some(Vec::new()));
}

#[test]
fn a_selector_matching_a_thousand_pods_is_one_set_of_their_addresses() {
    let mut c = cluster(vec![policy(
        "x",
        "team",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"team": "t"}}}]}]}),
    )]);
    c.pods.extend((0..1000u32).map(|i| {
        let ip = (Ipv4Addr::new(10, 1, 0, 0).to_bits() + i).to_be_bytes();
        pod("x", &format!("t{i}"), &[("team", "t")], ip)
    }));
    let rules = compile(&c, &c.pods[0]);
    let ingress = rules.ingress.as_ref().unwrap();
    let Admits::Match {
        peers: Some(peers), ..
    } = &ingress[0].what
    else {
        panic!("{ingress:?}");
    };
    let [Peer::Addrs(addrs)] = peers.as_slice() else {
        panic!("{peers:?}");
    };
    assert_eq!(addrs.len(), 1000);
    // One rule in the pod's table: the thousand addresses merge into
    // prefixes of one set.
    let text = crate::netpol::render::table(&rules, &Default::default())
        .replacing(None)
        .to_string();
    let rule: Vec<&str> = text.lines().filter(|l| l.contains("x/team")).collect();
    assert_eq!(rule.len(), 1, "{text}");
    let set = text
        .lines()
        .find(|l| l.starts_with("add element inet hostnic-policy ingress-0-peers"))
        .expect("the rule's set is filled");
    assert!(set.contains("10.1.0.0/23"), "{set}");
}
