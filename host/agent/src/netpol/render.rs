//! A pod's policy rules as the nftables table of its own namespace, text
//! for `nft -f`: pure, so it is tested without a kernel.
//!
//! One `inet` table, replaced whole in one transaction. A direction no
//! policy isolates has no chain (everything passes); an isolated one
//! hooks `input` (ingress) or `output` (egress) and, in order: accepts
//! loopback, the packets of connections already allowed (and related
//! ICMP), drops invalid ones, accepts the pod's own node (kubelet's
//! probes), then each rule of each policy with a counter, and rejects the
//! rest (a refused connection fails at once, where a drop would make the
//! client wait for its timeout): TCP with a reset, the rest with an ICMP
//! error.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::compile::{Admits, Allow, Direction, Peer, PodRules, PortRange};

/// The table hostnic owns in each pod's namespace.
pub const TABLE: &str = "hostnic-policy";

/// The comment of the rule that rejects what no policy allowed.
pub const DENIED: &str = "denied";

/// The pod's table, replacing any it had; with no isolated direction, the
/// table goes.
pub fn ruleset(rules: &PodRules, node: &BTreeSet<Ipv4Addr>) -> String {
    let mut out = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    if rules.ingress.is_none() && rules.egress.is_none() {
        return out;
    }
    let _ = writeln!(out, "table inet {TABLE} {{");
    set(&mut out, "node", node);
    set(&mut out, "services", &rules.services);
    let sets = Sets {
        node: !node.is_empty(),
        services: !rules.services.is_empty(),
    };
    chain(
        &mut out,
        "ingress",
        "input",
        "iif",
        "saddr",
        &rules.ingress,
        sets,
    );
    chain(
        &mut out,
        "egress",
        "output",
        "oif",
        "daddr",
        &rules.egress,
        sets,
    );
    out.push_str("}\n");
    out
}

/// Which of the table's sets have elements (nft refuses an empty one in
/// a rule).
#[derive(Clone, Copy)]
struct Sets {
    node: bool,
    services: bool,
}

fn set(out: &mut String, name: &str, addrs: &BTreeSet<Ipv4Addr>) {
    if !addrs.is_empty() {
        let _ = writeln!(
            out,
            "\tset {name} {{ type ipv4_addr; elements = {{ {} }}; }}",
            join(addrs.iter().map(Ipv4Addr::to_string))
        );
    }
}

/// One direction's chain. Egress to a ClusterIP is judged by the triples
/// of the Services in front of allowed pods: after the triples and the
/// rules that admit everything, any other Service address is rejected
/// before a rule could admit it by its own address.
fn chain(
    out: &mut String,
    name: &str,
    hook: &str,
    iface: &str,
    addr: &str,
    rules: &Direction,
    sets: Sets,
) {
    let Some(rules) = rules else { return };
    let _ = writeln!(out, "\tchain {name} {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook {hook} priority filter; policy accept;"
    );
    let _ = writeln!(out, "\t\t{iface} \"lo\" accept");
    out.push_str("\t\tct state established,related accept\n");
    out.push_str("\t\tct state invalid drop\n");
    if sets.node {
        let _ = writeln!(out, "\t\tip {addr} @node accept");
    }
    let everything = |a: &&Allow| {
        matches!(
            a.what,
            Admits::Triples(_)
                | Admits::Match {
                    peers: None,
                    ports: None
                }
        )
    };
    let (first, rest): (Vec<&Allow>, Vec<&Allow>) = rules.iter().partition(everything);
    accepts(out, &first, name, addr);
    if sets.services && name == "egress" {
        deny(out, "ip daddr @services ");
    }
    accepts(out, &rest, name, addr);
    deny(out, "");
    out.push_str("\t}\n");
}

/// Refuses what `matching` matches: a TCP connection with a reset (the
/// client fails at once; an ICMP error only after its SYN's first
/// retransmission, a second later), anything else with an ICMP error.
fn deny(out: &mut String, matching: &str) {
    let _ = writeln!(
        out,
        "\t\t{matching}meta l4proto tcp counter reject with tcp reset comment \"{DENIED}\""
    );
    let _ = writeln!(out, "\t\t{matching}counter reject comment \"{DENIED}\"");
}

fn accepts(out: &mut String, allows: &[&Allow], direction: &str, addr: &str) {
    for allow in allows {
        for line in lines(allow, addr) {
            let _ = writeln!(
                out,
                "\t\t{line} counter accept comment \"{}\"",
                comment(allow, direction)
            );
        }
    }
}

/// The matches of one rule, a line each; none for a rule that admits
/// nobody (a selector that selects no pod yet).
fn lines(allow: &Allow, addr: &str) -> Vec<String> {
    match &allow.what {
        Admits::Triples(t) if t.is_empty() => Vec::new(),
        Admits::Triples(t) => vec![format!(
            "ip {addr} . meta l4proto . th dport {{ {} }}",
            join(
                t.iter()
                    .map(|(ip, proto, port)| format!("{ip} . {} . {port}", proto.nft()))
            )
        )],
        Admits::Match { peers, ports } => {
            let peers: Vec<String> = match peers {
                None => vec![String::new()],
                Some(list) => list.iter().filter_map(|p| peer(p, addr)).collect(),
            };
            let ports: Vec<String> = match ports {
                None => vec![String::new()],
                Some(list) => list.iter().map(port).collect(),
            };
            peers
                .iter()
                .flat_map(|p| {
                    ports
                        .iter()
                        .map(move |q| format!("{p} {q}").trim().to_string())
                })
                .collect()
        }
    }
}

fn peer(p: &Peer, addr: &str) -> Option<String> {
    match p {
        Peer::Addrs(a) if a.is_empty() => None,
        Peer::Addrs(a) => Some(format!(
            "ip {addr} {{ {} }}",
            join(a.iter().map(Ipv4Addr::to_string))
        )),
        Peer::Block { cidr, except } if except.is_empty() => Some(format!("ip {addr} {cidr}")),
        Peer::Block { cidr, except } => Some(format!(
            "ip {addr} {cidr} ip {addr} != {{ {} }}",
            // nft refuses overlapping elements in one set.
            join(Ipv4Net::aggregate(except).iter().map(Ipv4Net::to_string))
        )),
    }
}

fn port(r: &PortRange) -> String {
    match r.ports {
        None => format!("meta l4proto {}", r.proto.nft()),
        Some((a, b)) if a == b => format!("meta l4proto {} th dport {a}", r.proto.nft()),
        Some((a, b)) => format!("meta l4proto {} th dport {a}-{b}", r.proto.nft()),
    }
}

/// `<policy> <direction> <rule>`, within nftables' 128 bytes.
fn comment(allow: &Allow, direction: &str) -> String {
    let tail = format!(" {direction} {}", allow.index);
    let room = 127 - tail.len();
    let mut policy = allow.policy.clone();
    while policy.len() > room {
        policy.pop();
    }
    format!("{policy}{tail}")
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netpol::compile::Proto;

    fn allow(what: Admits) -> Allow {
        Allow {
            policy: "x/deny".into(),
            index: 0,
            what,
        }
    }

    #[test]
    fn a_pod_no_policy_isolates_has_no_table() {
        let text = ruleset(&PodRules::default(), &BTreeSet::new());
        assert_eq!(
            text,
            "table inet hostnic-policy\ndelete table inet hostnic-policy\n"
        );
    }

    #[test]
    fn an_isolated_direction_allows_its_rules_then_rejects() {
        let rules = PodRules {
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
        let text = ruleset(&rules, &[Ipv4Addr::new(10, 0, 0, 1)].into());
        assert!(!text.contains("chain egress"), "{text}");
        let ingress: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("chain ingress"))
            .map(str::trim)
            .collect();
        assert_eq!(
            &ingress[1..10],
            [
                "type filter hook input priority filter; policy accept;",
                "iif \"lo\" accept",
                "ct state established,related accept",
                "ct state invalid drop",
                "ip saddr @node accept",
                "ip saddr { 10.0.0.5 } meta l4proto tcp th dport 80-81 counter accept comment \"x/deny ingress 0\"",
                "ip saddr 10.0.0.0/16 ip saddr != { 10.0.1.0/24 } meta l4proto tcp th dport 80-81 counter accept comment \"x/deny ingress 0\"",
                "meta l4proto tcp counter reject with tcp reset comment \"denied\"",
                "counter reject comment \"denied\"",
            ],
            "{text}"
        );
    }

    #[test]
    fn egress_triples_and_a_deny_all() {
        let rules = PodRules {
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
        let text = ruleset(&rules, &BTreeSet::new());
        // The Service triples come first, then every other ClusterIP is
        // refused before the block could admit it by its own address.
        let egress: Vec<&str> = text
            .split("chain egress")
            .nth(1)
            .unwrap()
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("accept comment") || l.contains("reject"))
            .collect();
        assert_eq!(
            egress,
            [
                "ip daddr . meta l4proto . th dport { 10.96.0.10 . udp . 53 } counter accept comment \"x/deny egress 0\"",
                "ip daddr @services meta l4proto tcp counter reject with tcp reset comment \"denied\"",
                "ip daddr @services counter reject comment \"denied\"",
                "ip daddr 0.0.0.0/0 counter accept comment \"x/deny egress 0\"",
                "meta l4proto tcp counter reject with tcp reset comment \"denied\"",
                "counter reject comment \"denied\"",
            ],
            "{text}"
        );
        assert!(
            text.contains(
                "set services { type ipv4_addr; elements = { 10.96.0.10, 10.96.0.11 }; }"
            )
        );
        assert!(text.contains(
            "ip daddr . meta l4proto . th dport { 10.96.0.10 . udp . 53 } counter accept"
        ));
        assert!(!text.contains("@node"), "{text}");
        // The ingress chain allows nothing but what is always allowed.
        let ingress = text.split("chain ingress").nth(1).unwrap();
        let ingress = ingress.split("chain egress").next().unwrap();
        assert!(!ingress.contains("counter accept"), "{ingress}");
        assert!(ingress.contains("counter reject"), "{ingress}");
    }

    #[test]
    fn a_long_policy_name_fits_the_comment() {
        let mut a = allow(Admits::Triples(BTreeSet::new()));
        a.policy = format!("ns/{}", "p".repeat(253));
        assert!(comment(&a, "ingress").len() <= 127);
        assert!(comment(&a, "ingress").ends_with(" ingress 0"));
    }
}
