//! A pod's policy rules as the nftables table of its own namespace, in
//! nft's script syntax: pure, so it is tested without a kernel.
//!
//! One `inet` table in every pod — two sets (the node's addresses, the
//! Services' ClusterIPs), a named set per rule for its peers, and two base
//! chains, on `input` (ingress) and `output` (egress), `policy accept`.
//! When only peers changed (a pod of a selector came or went, a Service's
//! backends moved), only the sets that differ are flushed and filled again
//! ([`Table::changes`]); else everything is replaced in one transaction:
//! the chains and sets flushed and filled again, and sets no rule uses any
//! more deleted ([`Table::replacing`]). The table and its hooked chains are
//! never deleted: that makes the kernel wait out an RCU grace period
//! (~12 ms here), and the table is written on every ADD.
//!
//! A direction no policy isolates has an empty chain (everything passes).
//! An isolated one, in order: accepts loopback, the packets of
//! connections already allowed (and related ICMP), drops invalid ones,
//! accepts the pod's own node (kubelet's probes), then each rule of each
//! policy with a counter, and rejects the rest (a refused connection fails
//! at once, where a drop would make the client wait for its timeout): TCP
//! with a reset, the rest with an ICMP error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::compile::{Admits, Allow, Direction, Peer, PodRules, PortRange};

/// The table hostnic owns in each pod's namespace.
pub const TABLE: &str = "hostnic-policy";

/// The comment of the rule that rejects what no policy allowed.
pub const DENIED: &str = "denied";

/// Sets of single addresses (the node's, the ClusterIPs).
const ADDRESSES: &str = "type ipv4_addr;";
/// Sets of a rule's peers: addresses and prefixes.
const PREFIXES: &str = "type ipv4_addr; flags interval;";
/// Sets of (address, protocol, port) triples.
const TRIPLES: &str = "type ipv4_addr . inet_proto . inet_service;";

/// A pod's table: its shape (the sets it declares, the rules of its
/// chains) and what each set holds. A rule's peers (the addresses of the
/// pods its selectors pick, its Services' triples) are a named set of
/// their own, so a peer coming or going changes a set's elements, not the
/// rules, and the rules' counters go on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// By name: its declaration and its elements.
    sets: BTreeMap<String, (&'static str, Vec<String>)>,
    /// `add rule` lines, ingress's then egress's.
    rules: Vec<String>,
}

impl Table {
    /// The whole table, replacing what the pod's table had: `before`, as
    /// last written, or unknown. Sets `before` had the same are left as
    /// they are, sets it had otherwise are flushed and filled, sets it did
    /// not have are filled, and sets this table has no more are deleted;
    /// with `before` unknown, every set is flushed and filled.
    pub fn replacing(&self, before: Option<&Table>) -> String {
        let mut out = self.declared();
        let _ = write!(
            out,
            "flush chain inet {TABLE} ingress\n\
             flush chain inet {TABLE} egress\n"
        );
        for gone in before
            .into_iter()
            .flat_map(|b| b.sets.keys())
            .filter(|name| !self.sets.contains_key(*name))
        {
            let _ = writeln!(out, "delete set inet {TABLE} {gone}");
        }
        for (name, (_, elements)) in &self.sets {
            match before.map(|b| b.sets.get(name)) {
                Some(Some((_, was))) if was == elements => {}
                Some(None) => add(&mut out, name, elements),
                _ => fill(&mut out, name, elements),
            }
        }
        self.add_rules(&mut out);
        out
    }

    /// The table's block: its sets and its two base chains.
    fn declared(&self) -> String {
        let mut out = format!("table inet {TABLE} {{\n");
        for (name, (kind, _)) in &self.sets {
            let _ = writeln!(out, "\tset {name} {{ {kind} }}");
        }
        out.push_str(
            "\tchain ingress { type filter hook input priority filter; policy accept; }\n\
             \tchain egress { type filter hook output priority filter; policy accept; }\n\
             }\n",
        );
        out
    }

    fn add_rules(&self, out: &mut String) {
        for rule in &self.rules {
            out.push_str(rule);
            out.push('\n');
        }
    }

    /// What makes `before` this table when they differ in their sets'
    /// elements only: those sets flushed and filled again (empty when
    /// nothing differs). `None` when their shapes differ: then
    /// [`Table::replacing`].
    pub fn changes(&self, before: &Table) -> Option<String> {
        let same_sets = self.sets.len() == before.sets.len()
            && self
                .sets
                .iter()
                .zip(&before.sets)
                .all(|((a, (x, _)), (b, (y, _)))| a == b && x == y);
        if !same_sets || self.rules != before.rules {
            return None;
        }
        let mut out = String::new();
        for ((name, (_, now)), (_, (_, was))) in self.sets.iter().zip(&before.sets) {
            if now != was {
                fill(&mut out, name, now);
            }
        }
        Some(out)
    }
}

impl Table {
    /// How many rules its chains hold.
    pub fn rules(&self) -> usize {
        self.rules.len()
    }

    /// How many elements its sets hold.
    pub fn elements(&self) -> usize {
        self.sets.values().map(|(_, e)| e.len()).sum()
    }
}

/// `set` emptied, then given `elements`.
fn fill(out: &mut String, set: &str, elements: &[String]) {
    let _ = writeln!(out, "flush set inet {TABLE} {set}");
    add(out, set, elements);
}

/// `elements` added to `set`.
fn add(out: &mut String, set: &str, elements: &[String]) {
    if !elements.is_empty() {
        let _ = writeln!(
            out,
            "add element inet {TABLE} {set} {{ {} }}",
            elements.join(", ")
        );
    }
}

/// The pod's table.
pub fn table(rules: &PodRules, node: &BTreeSet<Ipv4Addr>) -> Table {
    let mut t = Table::default();
    let addresses =
        |a: &BTreeSet<Ipv4Addr>| (ADDRESSES, a.iter().map(Ipv4Addr::to_string).collect());
    t.sets.insert("node".into(), addresses(node));
    t.sets.insert("services".into(), addresses(&rules.services));
    chain(&mut t, "ingress", "iif", "saddr", &rules.ingress);
    chain(&mut t, "egress", "oif", "daddr", &rules.egress);
    t
}

/// One direction's rules. Egress to a ClusterIP is judged by the triples
/// of the Services in front of allowed pods: after the triples and the
/// rules that admit everything, any other Service address is rejected
/// before a rule could admit it by its own address.
fn chain(t: &mut Table, name: &str, iface: &str, addr: &str, rules: &Direction) {
    let Some(rules) = rules else { return };
    let rule = format!("add rule inet {TABLE} {name} ");
    t.rules.push(format!("{rule}{iface} \"lo\" accept"));
    t.rules
        .push(format!("{rule}ct state established,related accept"));
    t.rules.push(format!("{rule}ct state invalid drop"));
    t.rules.push(format!("{rule}ip {addr} @node accept"));
    let everything = |(_, a): &Placed| {
        matches!(
            a.what,
            Admits::Triples(_)
                | Admits::Match {
                    peers: None,
                    ports: None
                }
        )
    };
    // Each rule's sets are named after its place in the direction.
    let (first, rest): (Vec<Placed>, Vec<Placed>) = rules.iter().enumerate().partition(everything);
    accepts(t, &rule, &first, name, addr);
    if name == "egress" {
        deny(t, &rule, "ip daddr @services ");
    }
    accepts(t, &rule, &rest, name, addr);
    deny(t, &rule, "");
}

/// Refuses what `matching` matches: a TCP connection with a reset (the
/// client fails at once; an ICMP error only after its SYN's first
/// retransmission, a second later), anything else with an ICMP error.
fn deny(t: &mut Table, rule: &str, matching: &str) {
    t.rules.push(format!(
        "{rule}{matching}meta l4proto tcp counter reject with tcp reset comment \"{DENIED}\""
    ));
    t.rules.push(format!(
        "{rule}{matching}counter reject comment \"{DENIED}\""
    ));
}

/// A rule and its place among its direction's.
type Placed<'a> = (usize, &'a Allow);

fn accepts(t: &mut Table, rule: &str, allows: &[Placed], direction: &str, addr: &str) {
    for &(place, allow) in allows {
        let set = format!("{direction}-{place}");
        for line in lines(t, allow, addr, &set) {
            t.rules.push(format!(
                "{rule}{line} counter accept comment \"{}\"",
                comment(allow, direction)
            ));
        }
    }
}

/// The matches of one rule, a line each, its sets (named after `set`)
/// into `t`; none for a rule that admits nobody.
fn lines(t: &mut Table, allow: &Allow, addr: &str, set: &str) -> Vec<String> {
    match &allow.what {
        Admits::Triples(triples) if triples.is_empty() => Vec::new(),
        Admits::Triples(triples) => {
            let set = format!("{set}-triples");
            let elements = triples
                .iter()
                .map(|(ip, proto, port)| format!("{ip} . {} . {port}", proto.nft()))
                .collect();
            t.sets.insert(set.clone(), (TRIPLES, elements));
            vec![format!("ip {addr} . meta l4proto . th dport @{set}")]
        }
        Admits::Match { peers: p, ports: q } => {
            let peers = match p {
                None => vec![String::new()],
                Some(list) => peers(t, list, addr, set),
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

/// A rule's peers as matches: every address and plain block in one named
/// set (merged: nft refuses overlapping elements), each block with
/// excepts on its own. None when they admit nobody: a rule whose
/// selectors pick no pod yet costs an ADD nothing (with a set and a rule
/// for each, 100 such policies made an ADD ~4 ms slower,
/// hostnic-netpol-bench), and its first peer changes the table's shape.
fn peers(t: &mut Table, list: &[Peer], addr: &str, set: &str) -> Vec<String> {
    let mut plain: Option<Vec<Ipv4Net>> = None;
    let mut out = Vec::new();
    for p in list {
        match p {
            Peer::Addrs(a) => plain
                .get_or_insert_default()
                .extend(a.iter().map(|ip| Ipv4Net::from(*ip))),
            Peer::Block { cidr, except } if except.is_empty() => {
                plain.get_or_insert_default().push(cidr.trunc())
            }
            Peer::Block { cidr, except } => out.push(format!(
                "ip {addr} {} ip {addr} != {}",
                cidr.trunc(),
                set_of(Ipv4Net::aggregate(except).iter().map(net))
            )),
        }
    }
    if let Some(plain) = plain.filter(|p| !p.is_empty()) {
        let set = format!("{set}-peers");
        let elements = Ipv4Net::aggregate(&plain).iter().map(net).collect();
        t.sets.insert(set.clone(), (PREFIXES, elements));
        out.insert(0, format!("ip {addr} @{set}"));
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
                format!("meta l4proto {} th dport {}", proto.nft(), set_of(items))
            }
        })
        .collect()
}

/// One element bare, several in braces.
fn set_of(items: impl Iterator<Item = String>) -> String {
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

#[cfg(test)]
mod tests;
