//! A pod's policy rules as the nftables table of its own namespace: the
//! commands of one transaction (hostnic-netlink's `nftables`, which
//! writes them over the agent's own socket and prints them in nft's
//! syntax). Pure, so it is tested without a kernel.
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
use std::net::Ipv4Addr;

use hostnic_netlink::nftables::{
    Command, Element, Field, Hook, Match, Proto, Rule, Script, SetKind, Verdict,
};
use ipnet::Ipv4Net;

use super::compile::{Admits, Allow, Direction, Peer, PodRules, PortRange};

/// The table hostnic owns in each pod's namespace.
pub const TABLE: &str = "hostnic-policy";

/// The comment of the rule that rejects what no policy allowed.
pub const DENIED: &str = "denied";

/// A pod's table: its shape (the sets it declares, the rules of its
/// chains) and what each set holds. A rule's peers (the addresses of the
/// pods its selectors pick, its Services' triples) are a named set of
/// their own, so a peer coming or going changes a set's elements, not the
/// rules, and the rules' counters go on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// By name: its kind and its elements.
    sets: BTreeMap<String, (SetKind, Vec<Element>)>,
    /// Ingress's rules, then egress's.
    rules: Vec<Rule>,
}

impl Table {
    /// The whole table, replacing what the pod's table had: `before`, as
    /// last written, or unknown. Sets `before` had the same are left as
    /// they are, sets it had otherwise are flushed and filled, sets it did
    /// not have are filled, and sets this table has no more are deleted;
    /// with `before` unknown, every set is flushed and filled.
    pub fn replacing(&self, before: Option<&Table>) -> Script {
        let mut out = Script::new(TABLE);
        out.commands.push(self.declared());
        for chain in ["ingress", "egress"] {
            out.commands.push(Command::FlushChain(chain.into()));
        }
        for gone in before
            .into_iter()
            .flat_map(|b| b.sets.keys())
            .filter(|name| !self.sets.contains_key(*name))
        {
            out.commands.push(Command::DeleteSet(gone.clone()));
        }
        for (name, (_, elements)) in &self.sets {
            match before.map(|b| b.sets.get(name)) {
                Some(Some((_, was))) if was == elements => {}
                Some(None) => add(&mut out, name, elements),
                _ => fill(&mut out, name, elements),
            }
        }
        out.commands
            .extend(self.rules.iter().cloned().map(Command::AddRule));
        out
    }

    /// The table: its sets and its two base chains.
    fn declared(&self) -> Command {
        Command::Declare {
            sets: self
                .sets
                .iter()
                .map(|(name, (kind, _))| (name.clone(), *kind))
                .collect(),
            chains: vec![
                ("ingress".into(), Hook::Input),
                ("egress".into(), Hook::Output),
            ],
        }
    }

    /// What makes `before` this table when they differ in their sets'
    /// elements only: those sets flushed and filled again (empty when
    /// nothing differs). `None` when their shapes differ: then
    /// [`Table::replacing`].
    pub fn changes(&self, before: &Table) -> Option<Script> {
        let same_sets = self.sets.len() == before.sets.len()
            && self
                .sets
                .iter()
                .zip(&before.sets)
                .all(|((a, (x, _)), (b, (y, _)))| a == b && x == y);
        if !same_sets || self.rules != before.rules {
            return None;
        }
        let mut out = Script::new(TABLE);
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
fn fill(out: &mut Script, set: &str, elements: &[Element]) {
    out.commands.push(Command::FlushSet(set.into()));
    add(out, set, elements);
}

/// `elements` added to `set`.
fn add(out: &mut Script, set: &str, elements: &[Element]) {
    if !elements.is_empty() {
        out.commands
            .push(Command::AddElements(set.into(), elements.to_vec()));
    }
}

/// The pod's table.
pub fn table(rules: &PodRules, node: &BTreeSet<Ipv4Addr>) -> Table {
    let mut t = Table::default();
    let addresses = |a: &BTreeSet<Ipv4Addr>| {
        (
            SetKind::Addresses,
            a.iter().copied().map(Element::Addr).collect(),
        )
    };
    t.sets.insert("node".into(), addresses(node));
    t.sets.insert("services".into(), addresses(&rules.services));
    chain(&mut t, Way::INGRESS, &rules.ingress);
    chain(&mut t, Way::EGRESS, &rules.egress);
    t
}

/// A direction: its chain, its hook, and which address is the peer's.
#[derive(Clone, Copy)]
struct Way {
    chain: &'static str,
    hook: Hook,
    peer: Field,
}

impl Way {
    const INGRESS: Way = Way {
        chain: "ingress",
        hook: Hook::Input,
        peer: Field::Source,
    };
    const EGRESS: Way = Way {
        chain: "egress",
        hook: Hook::Output,
        peer: Field::Destination,
    };

    fn rule(&self, matches: Vec<Match>, verdict: Verdict, comment: Option<String>) -> Rule {
        Rule {
            chain: self.chain.into(),
            matches,
            counter: comment.is_some(),
            verdict,
            comment,
        }
    }
}

/// One direction's rules. Egress to a ClusterIP is judged by the triples
/// of the Services in front of allowed pods: after the triples and the
/// rules that admit everything, any other Service address is rejected
/// before a rule could admit it by its own address.
fn chain(t: &mut Table, way: Way, rules: &Direction) {
    let Some(rules) = rules else { return };
    t.rules.extend([
        way.rule(vec![Match::Loopback(way.hook)], Verdict::Accept, None),
        way.rule(vec![Match::EstablishedOrRelated], Verdict::Accept, None),
        way.rule(vec![Match::Invalid], Verdict::Drop, None),
        way.rule(
            vec![Match::InSet(way.peer, "node".into())],
            Verdict::Accept,
            None,
        ),
    ]);
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
    accepts(t, way, &first);
    if way.chain == "egress" {
        deny(
            t,
            way,
            vec![Match::InSet(Field::Destination, "services".into())],
        );
    }
    accepts(t, way, &rest);
    deny(t, way, Vec::new());
}

/// Refuses what `matching` matches: a TCP connection with a reset (the
/// client fails at once; an ICMP error only after its SYN's first
/// retransmission, a second later), anything else with an ICMP error.
fn deny(t: &mut Table, way: Way, matching: Vec<Match>) {
    let mut tcp = matching.clone();
    tcp.push(Match::Protocol(Proto::Tcp));
    t.rules
        .push(way.rule(tcp, Verdict::Reset, Some(DENIED.into())));
    t.rules
        .push(way.rule(matching, Verdict::Reject, Some(DENIED.into())));
}

/// A rule and its place among its direction's.
type Placed<'a> = (usize, &'a Allow);

fn accepts(t: &mut Table, way: Way, allows: &[Placed]) {
    for &(place, allow) in allows {
        let set = format!("{}-{place}", way.chain);
        for matches in alternatives(t, allow, way.peer, &set) {
            t.rules
                .push(way.rule(matches, Verdict::Accept, Some(comment(allow, way.chain))));
        }
    }
}

/// The matches of one rule, a rule's worth each, its sets (named after
/// `set`) into `t`; none for a rule that admits nobody.
fn alternatives(t: &mut Table, allow: &Allow, field: Field, set: &str) -> Vec<Vec<Match>> {
    match &allow.what {
        Admits::Triples(triples) if triples.is_empty() => Vec::new(),
        Admits::Triples(triples) => {
            let set = format!("{set}-triples");
            let elements = triples
                .iter()
                .map(|&(ip, proto, port)| Element::Triple(ip, proto, port))
                .collect();
            t.sets.insert(set.clone(), (SetKind::Triples, elements));
            vec![vec![Match::TripleInSet(field, set)]]
        }
        Admits::Match { peers: p, ports: q } => {
            let peers = match p {
                None => vec![Vec::new()],
                Some(list) => peers(t, list, field, set),
            };
            let ports = match q {
                None => vec![Vec::new()],
                Some(list) => ports(list),
            };
            peers
                .iter()
                .flat_map(|p| {
                    ports
                        .iter()
                        .map(move |q| p.iter().chain(q).cloned().collect())
                })
                .collect()
        }
    }
}

/// A rule's peers as matches: every address and plain block in one named
/// set (merged: overlapping elements are refused), each block with
/// excepts on its own. None when they admit nobody: a rule whose
/// selectors pick no pod yet costs an ADD nothing (with a set and a rule
/// for each, 100 such policies made an ADD ~4 ms slower,
/// hostnic-netpol-bench), and its first peer changes the table's shape.
fn peers(t: &mut Table, list: &[Peer], field: Field, set: &str) -> Vec<Vec<Match>> {
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
            Peer::Block { cidr, except } => out.push(vec![
                Match::InNet(field, cidr.trunc()),
                Match::NotIn(field, Ipv4Net::aggregate(except)),
            ]),
        }
    }
    if let Some(plain) = plain.filter(|p| !p.is_empty()) {
        let set = format!("{set}-peers");
        let elements = Ipv4Net::aggregate(&plain)
            .into_iter()
            .map(Element::Net)
            .collect();
        t.sets.insert(set.clone(), (SetKind::Prefixes, elements));
        out.insert(0, vec![Match::InSet(field, set)]);
    }
    out
}

/// Ports as matches, one per protocol: a protocol with all its ports, or
/// its ranges (merged: overlapping elements are refused).
fn ports(list: &[PortRange]) -> Vec<Vec<Match>> {
    let mut by_proto: BTreeMap<_, Option<Vec<(u16, u16)>>> = BTreeMap::new();
    for r in list {
        let entry = by_proto.entry(r.proto).or_insert_with(|| Some(Vec::new()));
        match (r.ports, entry.as_mut()) {
            (Some(range), Some(ranges)) => ranges.push(range),
            _ => *entry = None,
        }
    }
    by_proto
        .into_iter()
        .map(|(proto, ranges)| {
            let protocol = Match::Protocol(proto);
            match ranges {
                None => vec![protocol],
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
                    vec![protocol, Match::Ports(merged)]
                }
            }
        })
        .collect()
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
