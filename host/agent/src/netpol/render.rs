//! A pod's policy rules as the nftables table of its own namespace, in
//! nft's script syntax: pure, so it is tested without a kernel.
//!
//! One `inet` table with the same shape in every pod — two sets (the
//! node's addresses, the Services' ClusterIPs) and two base chains, on
//! `input` (ingress) and `output` (egress), `policy accept` — whose
//! contents are replaced in one transaction: the chains and sets flushed
//! and filled again. Nothing is deleted but rules and elements: taking a
//! table or a hooked chain away makes the kernel wait out an RCU grace
//! period (~12 ms here), and the table is written on every ADD.
//!
//! A direction no policy isolates has an empty chain (everything passes).
//! An isolated one, in order: accepts loopback, the packets of
//! connections already allowed (and related ICMP), drops invalid ones,
//! accepts the pod's own node (kubelet's probes), then each rule of each
//! policy with a counter, and rejects the rest (a refused connection fails
//! at once, where a drop would make the client wait for its timeout): TCP
//! with a reset, the rest with an ICMP error.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::compile::{Admits, Allow, Direction, Peer, PodRules, PortRange};

/// The table hostnic owns in each pod's namespace.
pub const TABLE: &str = "hostnic-policy";

/// The comment of the rule that rejects what no policy allowed.
pub const DENIED: &str = "denied";

/// The pod's table, its contents replacing what it had.
pub fn ruleset(rules: &PodRules, node: &BTreeSet<Ipv4Addr>) -> String {
    let mut out = format!(
        "table inet {TABLE} {{\n\
         \tset node {{ type ipv4_addr; }}\n\
         \tset services {{ type ipv4_addr; }}\n\
         \tchain ingress {{ type filter hook input priority filter; policy accept; }}\n\
         \tchain egress {{ type filter hook output priority filter; policy accept; }}\n\
         }}\n\
         flush chain inet {TABLE} ingress\n\
         flush chain inet {TABLE} egress\n\
         flush set inet {TABLE} node\n\
         flush set inet {TABLE} services\n"
    );
    elements(&mut out, "node", node);
    elements(&mut out, "services", &rules.services);
    chain(&mut out, "ingress", "iif", "saddr", &rules.ingress);
    chain(&mut out, "egress", "oif", "daddr", &rules.egress);
    out
}

fn elements(out: &mut String, set: &str, addrs: &BTreeSet<Ipv4Addr>) {
    if !addrs.is_empty() {
        let _ = writeln!(
            out,
            "add element inet {TABLE} {set} {{ {} }}",
            join(addrs.iter().map(Ipv4Addr::to_string))
        );
    }
}

/// One direction's rules. Egress to a ClusterIP is judged by the triples
/// of the Services in front of allowed pods: after the triples and the
/// rules that admit everything, any other Service address is rejected
/// before a rule could admit it by its own address.
fn chain(out: &mut String, name: &str, iface: &str, addr: &str, rules: &Direction) {
    let Some(rules) = rules else { return };
    let rule = format!("add rule inet {TABLE} {name} ");
    let _ = writeln!(out, "{rule}{iface} \"lo\" accept");
    let _ = writeln!(out, "{rule}ct state established,related accept");
    let _ = writeln!(out, "{rule}ct state invalid drop");
    let _ = writeln!(out, "{rule}ip {addr} @node accept");
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
    accepts(out, &rule, &first, name, addr);
    if name == "egress" {
        deny(out, &rule, "ip daddr @services ");
    }
    accepts(out, &rule, &rest, name, addr);
    deny(out, &rule, "");
}

/// Refuses what `matching` matches: a TCP connection with a reset (the
/// client fails at once; an ICMP error only after its SYN's first
/// retransmission, a second later), anything else with an ICMP error.
fn deny(out: &mut String, rule: &str, matching: &str) {
    let _ = writeln!(
        out,
        "{rule}{matching}meta l4proto tcp counter reject with tcp reset comment \"{DENIED}\""
    );
    let _ = writeln!(out, "{rule}{matching}counter reject comment \"{DENIED}\"");
}

fn accepts(out: &mut String, rule: &str, allows: &[&Allow], direction: &str, addr: &str) {
    for allow in allows {
        for line in lines(allow, addr) {
            let _ = writeln!(
                out,
                "{rule}{line} counter accept comment \"{}\"",
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
        Admits::Match { peers: p, ports: q } => {
            let peers = match p {
                None => vec![String::new()],
                Some(list) => peers(list, addr),
            };
            let ports = match q {
                None => vec![String::new()],
                Some(list) => ports(list),
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

/// A rule's peers as matches: every address and plain block in one set
/// (merged: nft refuses overlapping elements), each block with excepts on
/// its own. None when they admit nobody.
fn peers(list: &[Peer], addr: &str) -> Vec<String> {
    let mut plain = Vec::new();
    let mut out = Vec::new();
    for p in list {
        match p {
            Peer::Addrs(a) => plain.extend(a.iter().map(|ip| Ipv4Net::from(*ip))),
            Peer::Block { cidr, except } if except.is_empty() => plain.push(cidr.trunc()),
            Peer::Block { cidr, except } => out.push(format!(
                "ip {addr} {} ip {addr} != {}",
                cidr.trunc(),
                set(Ipv4Net::aggregate(except).iter().map(net))
            )),
        }
    }
    if !plain.is_empty() {
        out.insert(
            0,
            format!(
                "ip {addr} {}",
                set(Ipv4Net::aggregate(&plain).iter().map(net))
            ),
        );
    }
    out
}

/// A prefix as nft writes it: a single address without its /32.
fn net(n: &Ipv4Net) -> String {
    if n.prefix_len() == 32 {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

/// Ports as matches, one per protocol: a protocol with all its ports, or
/// the set of its ranges (merged: nft refuses overlapping elements).
fn ports(list: &[PortRange]) -> Vec<String> {
    let mut by_proto: std::collections::BTreeMap<_, Option<Vec<(u16, u16)>>> = Default::default();
    for r in list {
        let entry = by_proto.entry(r.proto).or_insert_with(|| Some(Vec::new()));
        match (r.ports, entry.as_mut()) {
            (Some(range), Some(ranges)) => ranges.push(range),
            _ => *entry = None,
        }
    }
    by_proto
        .into_iter()
        .map(|(proto, ranges)| match ranges {
            None => format!("meta l4proto {}", proto.nft()),
            Some(mut ranges) => {
                ranges.sort_unstable();
                let mut merged: Vec<(u16, u16)> = Vec::new();
                for (a, b) in ranges {
                    match merged.last_mut() {
                        Some(last) if u32::from(a) <= u32::from(last.1) + 1 => {
                            last.1 = last.1.max(b)
                        }
                        _ => merged.push((a, b)),
                    }
                }
                let items = merged.iter().map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                });
                format!("meta l4proto {} th dport {}", proto.nft(), set(items))
            }
        })
        .collect()
}

/// One element bare, several in braces.
fn set(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    match items.as_slice() {
        [one] => one.clone(),
        _ => format!("{{ {} }}", items.join(", ")),
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
            text.contains(
                "chain ingress { type filter hook input priority filter; policy accept; }"
            )
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
                "ip saddr 10.0.0.5 meta l4proto tcp th dport 80-81 counter accept comment \"x/deny ingress 0\"",
                "ip saddr 10.0.0.0/16 ip saddr != 10.0.1.0/24 meta l4proto tcp th dport 80-81 counter accept comment \"x/deny ingress 0\"",
                "meta l4proto tcp counter reject with tcp reset comment \"denied\"",
                "counter reject comment \"denied\"",
            ],
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
            text.contains("add element inet hostnic-policy services { 10.96.0.10, 10.96.0.11 }")
        );
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
        assert_eq!(
            lines(&a, "saddr"),
            [
                "ip saddr { 10.0.0.0/17, 10.0.128.0/20, 10.0.144.0/21, 10.0.152.0/22, 10.0.156.0/26, 192.168.0.1 } \
                 meta l4proto tcp th dport { 80-101, 443 }"
            ]
        );
    }

    #[test]
    fn a_long_policy_name_fits_the_comment() {
        let mut a = allow(Admits::Triples(BTreeSet::new()));
        a.policy = format!("ns/{}", "p".repeat(253));
        assert!(comment(&a, "ingress").len() <= 127);
        assert!(comment(&a, "ingress").ends_with(" ingress 0"));
    }
}
