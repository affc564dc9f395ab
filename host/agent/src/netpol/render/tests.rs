//! `render.rs`'s tests: the text each table gives nft.

use super::*;
use crate::netpol::compile::Proto;

fn allow(what: Admits) -> Allow {
    Allow {
        policy: "x/deny".into(),
        index: 0,
        what,
    }
}

fn ruleset(rules: &PodRules, node: &BTreeSet<Ipv4Addr>) -> String {
    table(rules, node).replacing(None).to_string()
}

/// What `changes` makes of them, as text.
fn changes(now: &Table, before: &Table) -> Option<String> {
    now.changes(before).map(|s| s.to_string())
}

/// The matches of `allow`'s rules as text, its sets into `t`.
fn lines(t: &mut Table, allow: &Allow, field: Field, set: &str) -> Vec<String> {
    alternatives(t, allow, field, set)
        .into_iter()
        .map(|matches| {
            let shown: Vec<String> = matches.iter().map(|m| m.to_string()).collect();
            shown.join(" ")
        })
        .collect()
}

/// The rules `text` adds to `chain`, without the command.
fn rules<'a>(text: &'a str, chain: &str) -> Vec<&'a str> {
    let prefix = format!("add rule inet hostnic-policy {chain} ");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect()
}

#[test]
fn a_pod_no_policy_isolates_has_empty_chains_and_nothing_is_deleted() {
    let text = ruleset(&PodRules::default(), &[Ipv4Addr::new(10, 0, 0, 1)].into());
    assert!(rules(&text, "ingress").is_empty(), "{text}");
    assert!(rules(&text, "egress").is_empty(), "{text}");
    assert!(
        text.contains("chain ingress { type filter hook input priority filter; policy accept; }")
    );
    assert!(text.contains("flush chain inet hostnic-policy ingress\n"));
    assert!(text.contains("add element inet hostnic-policy node { 10.0.0.1 }\n"));
    assert!(!text.contains("delete"), "{text}");
}

#[test]
fn an_isolated_direction_allows_its_rules_then_rejects() {
    let rules_ = PodRules {
        ingress: Some(vec![allow(Admits::Match {
            peers: Some(vec![
                Peer::Addrs([Ipv4Addr::new(10, 0, 0, 5)].into()),
                Peer::Addrs(BTreeSet::new()),
                Peer::Block {
                    cidr: "10.0.0.0/16".parse().unwrap(),
                    except: vec!["10.0.1.0/24".parse().unwrap()],
                },
            ]),
            ports: Some(vec![PortRange {
                proto: Proto::Tcp,
                ports: Some((80, 81)),
            }]),
        })]),
        egress: None,
        policies: vec!["x/deny".into()],
        services: BTreeSet::new(),
    };
    let text = ruleset(&rules_, &[Ipv4Addr::new(10, 0, 0, 1)].into());
    assert!(rules(&text, "egress").is_empty(), "{text}");
    assert_eq!(
        rules(&text, "ingress"),
        [
            "iif \"lo\" accept",
            "ct state established,related accept",
            "ct state invalid drop",
            "ip saddr @node accept",
            "ip saddr @ingress-0-peers meta l4proto tcp th dport 80-81 counter accept comment \"x/deny ingress 0\"",
            "ip saddr 10.0.0.0/16 ip saddr != 10.0.1.0/24 meta l4proto tcp th dport 80-81 counter accept comment \"x/deny ingress 0\"",
            "meta l4proto tcp counter reject with tcp reset comment \"denied\"",
            "counter reject comment \"denied\"",
        ],
        "{text}"
    );
    assert!(
        text.contains("\tset ingress-0-peers { type ipv4_addr; flags interval; }\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "flush set inet hostnic-policy ingress-0-peers\n\
             add element inet hostnic-policy ingress-0-peers { 10.0.0.5 }\n"
        ),
        "{text}"
    );
}

#[test]
fn egress_triples_and_a_deny_all() {
    let rules_ = PodRules {
        ingress: Some(Vec::new()),
        egress: Some(vec![
            allow(Admits::Match {
                peers: Some(vec![Peer::Block {
                    cidr: "0.0.0.0/0".parse().unwrap(),
                    except: Vec::new(),
                }]),
                ports: None,
            }),
            allow(Admits::Triples(
                [(Ipv4Addr::new(10, 96, 0, 10), Proto::Udp, 53)].into(),
            )),
        ]),
        policies: vec!["x/deny".into()],
        services: [Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(10, 96, 0, 11)].into(),
    };
    let text = ruleset(&rules_, &BTreeSet::new());
    // The Service triples come first, then every other ClusterIP is
    // refused before the block could admit it by its own address.
    assert_eq!(
        rules(&text, "egress")[4..],
        [
            "ip daddr . meta l4proto . th dport @egress-1-triples counter accept comment \"x/deny egress 0\"",
            "ip daddr @services meta l4proto tcp counter reject with tcp reset comment \"denied\"",
            "ip daddr @services counter reject comment \"denied\"",
            "ip daddr @egress-0-peers counter accept comment \"x/deny egress 0\"",
            "meta l4proto tcp counter reject with tcp reset comment \"denied\"",
            "counter reject comment \"denied\"",
        ],
        "{text}"
    );
    assert!(text.contains("add element inet hostnic-policy services { 10.96.0.10, 10.96.0.11 }"));
    assert!(
        text.contains("add element inet hostnic-policy egress-1-triples { 10.96.0.10 . udp . 53 }")
    );
    assert!(text.contains("add element inet hostnic-policy egress-0-peers { 0.0.0.0/0 }"));
    assert!(
        !text.contains("add element inet hostnic-policy node"),
        "{text}"
    );
    // The ingress chain allows nothing but what is always allowed.
    let ingress = rules(&text, "ingress");
    assert!(
        !ingress.iter().any(|r| r.contains("counter accept")),
        "{text}"
    );
    assert!(ingress.last().unwrap().contains("counter reject"), "{text}");
}

#[test]
fn ten_thousand_blocks_and_overlapping_ports_make_one_line() {
    let blocks = (0..10_000u32)
        .map(|i| Peer::Block {
            cidr: Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + i * 4), 30).unwrap(),
            except: Vec::new(),
        })
        .chain([Peer::Addrs([Ipv4Addr::new(192, 168, 0, 1)].into())])
        .collect();
    let range = |a, b| PortRange {
        proto: Proto::Tcp,
        ports: Some((a, b)),
    };
    let a = allow(Admits::Match {
        peers: Some(blocks),
        ports: Some(vec![
            range(80, 90),
            range(85, 100),
            range(101, 101),
            range(443, 443),
        ]),
    });
    // 10,000 adjacent /30s are five prefixes; the ranges merge.
    let mut t = Table::default();
    assert_eq!(
        lines(&mut t, &a, Field::Source, "ingress-0"),
        ["ip saddr @ingress-0-peers meta l4proto tcp th dport { 80-101, 443 }"]
    );
    let shown: Vec<String> = t.sets["ingress-0-peers"]
        .1
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        shown,
        [
            "10.0.0.0/17",
            "10.0.128.0/20",
            "10.0.144.0/21",
            "10.0.152.0/22",
            "10.0.156.0/26",
            "192.168.0.1"
        ]
    );
}

#[test]
fn a_peer_coming_changes_its_set_only_and_a_rule_gone_deletes_its_set() {
    let peers = |ips: &[[u8; 4]]| PodRules {
        ingress: Some(vec![allow(Admits::Match {
            peers: Some(vec![Peer::Addrs(
                ips.iter().map(|ip| Ipv4Addr::from(*ip)).collect(),
            )]),
            ports: None,
        })]),
        egress: None,
        policies: vec!["x/deny".into()],
        services: BTreeSet::new(),
    };
    let node = [Ipv4Addr::new(10, 0, 0, 1)].into();
    let none = table(&peers(&[]), &node);
    let one = table(&peers(&[[10, 0, 0, 5]]), &node);
    let two = table(&peers(&[[10, 0, 0, 5], [10, 0, 0, 9]]), &node);
    // Selecting nobody yet, the rule is not there: its first peer
    // changes the shape.
    assert!(
        !none.replacing(None).to_string().contains("ingress-0-peers"),
        "{}",
        none.replacing(None)
    );
    assert_eq!(changes(&one, &none), None);
    assert_eq!(changes(&one, &one).as_deref(), Some(""));
    assert_eq!(
        changes(&one, &two).as_deref(),
        Some(
            "flush set inet hostnic-policy ingress-0-peers\n\
             add element inet hostnic-policy ingress-0-peers { 10.0.0.5 }\n"
        )
    );
    // Another shape is replaced whole; the set no rule uses goes.
    let open = table(&PodRules::default(), &node);
    assert_eq!(changes(&open, &one), None);
    let replaced = open.replacing(Some(&one)).to_string();
    assert!(
        replaced.contains("delete set inet hostnic-policy ingress-0-peers\n"),
        "{replaced}"
    );
    assert!(
        replaced.find("flush chain inet hostnic-policy ingress") < replaced.find("delete set"),
        "the rules using a set go before it: {replaced}"
    );
    assert!(!open.replacing(None).to_string().contains("delete"));
    // Replacing a known table touches only the sets that differ: the
    // node's is the same, the new rule's set is only filled.
    let back = one.replacing(Some(&open)).to_string();
    assert!(!back.contains("flush set"), "{back}");
    assert!(
        back.contains("add element inet hostnic-policy ingress-0-peers { 10.0.0.5 }\n"),
        "{back}"
    );
    // Unknown, every set is flushed.
    assert!(
        one.replacing(None)
            .to_string()
            .contains("flush set inet hostnic-policy node\n")
    );
}

#[test]
fn a_long_policy_name_fits_the_comment() {
    let mut a = allow(Admits::Triples(BTreeSet::new()));
    a.policy = format!("ns/{}", "p".repeat(253));
    assert!(comment(&a, "ingress").len() <= 127);
    assert!(comment(&a, "ingress").ends_with(" ingress 0"));
}
