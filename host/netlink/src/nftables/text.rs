//! A [`Script`] in nft's script syntax: what `nft -f` would make of the
//! same transaction (but for the table's flags, which Debian 12's nft
//! cannot write). For logs, errors and tests.

use std::fmt::{self, Display, Formatter, Write};

use ipnet::Ipv4Net;

use super::{Command, Element, Field, Hook, Match, Rule, Script, SetKind, Verdict};

impl Display for Script {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for command in &self.commands {
            writeln!(f, "{}", Shown(&self.table, command))?;
        }
        Ok(())
    }
}

/// One command of the script of table `.0`.
pub(super) struct Shown<'a>(pub &'a str, pub &'a Command);

impl Display for Shown<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let table = self.0;
        match self.1 {
            Command::Declare { sets, chains } => {
                writeln!(f, "table inet {table} {{")?;
                for (name, kind) in sets {
                    writeln!(f, "\tset {name} {{ {kind} }}")?;
                }
                for (name, hook) in chains {
                    writeln!(
                        f,
                        "\tchain {name} {{ type filter hook {hook} priority filter; policy accept; }}"
                    )?;
                }
                f.write_char('}')
            }
            Command::Destroy => write!(f, "destroy table inet {table}"),
            Command::FlushChain(chain) => write!(f, "flush chain inet {table} {chain}"),
            Command::DeleteSet(set) => write!(f, "delete set inet {table} {set}"),
            Command::FlushSet(set) => write!(f, "flush set inet {table} {set}"),
            Command::AddElements(set, elements) => {
                write!(f, "add element inet {table} {set} {{ ")?;
                list(f, elements.iter())?;
                f.write_str(" }")
            }
            Command::AddRule(rule) => write!(f, "add rule inet {table} {rule}"),
        }
    }
}

impl Display for SetKind {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetKind::Addresses => "type ipv4_addr;",
            SetKind::Prefixes => "type ipv4_addr; flags interval;",
            SetKind::Triples => "type ipv4_addr . inet_proto . inet_service;",
        })
    }
}

impl Display for Hook {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Input => "input",
            Hook::Output => "output",
        })
    }
}

impl Display for Element {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Element::Addr(a) => write!(f, "{a}"),
            Element::Net(n) => write!(f, "{}", Prefix(n)),
            Element::Triple(a, proto, port) => write!(f, "{a} . {} . {port}", proto.name()),
        }
    }
}

/// A prefix as nft writes it: a single address without its /32.
struct Prefix<'a>(&'a Ipv4Net);

impl Display for Prefix<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == 32 {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl Display for Field {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Source => "saddr",
            Field::Destination => "daddr",
        })
    }
}

impl Display for Match {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Match::Loopback(Hook::Input) => f.write_str("iif \"lo\""),
            Match::Loopback(Hook::Output) => f.write_str("oif \"lo\""),
            Match::EstablishedOrRelated => f.write_str("ct state established,related"),
            Match::Invalid => f.write_str("ct state invalid"),
            Match::InSet(field, set) => write!(f, "ip {field} @{set}"),
            Match::InNet(field, net) => write!(f, "ip {field} {net}"),
            Match::NotIn(field, nets) => {
                write!(f, "ip {field} != ")?;
                braced(f, nets.iter().map(Prefix))
            }
            Match::TripleInSet(field, set) => {
                write!(f, "ip {field} . meta l4proto . th dport @{set}")
            }
            Match::Protocol(proto) => write!(f, "meta l4proto {}", proto.name()),
            Match::Ports(ranges) => {
                f.write_str("th dport ")?;
                braced(f, ranges.iter().map(|&(a, b)| Range(a, b)))
            }
        }
    }
}

/// A port range as nft writes it: a single port bare.
struct Range(u16, u16);

impl Display for Range {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}-{}", self.0, self.1)
        }
    }
}

impl Display for Rule {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(&self.chain)?;
        for m in &self.matches {
            write!(f, " {m}")?;
        }
        if self.counter {
            f.write_str(" counter")?;
        }
        f.write_str(match self.verdict {
            Verdict::Accept => " accept",
            Verdict::Drop => " drop",
            Verdict::Reset => " reject with tcp reset",
            Verdict::Reject => " reject",
        })?;
        if let Some(comment) = &self.comment {
            write!(f, " comment \"{comment}\"")?;
        }
        Ok(())
    }
}

/// One item bare, several in braces.
fn braced<T: Display>(
    f: &mut Formatter<'_>,
    items: impl ExactSizeIterator<Item = T>,
) -> fmt::Result {
    if items.len() == 1 {
        return list(f, items);
    }
    f.write_str("{ ")?;
    list(f, items)?;
    f.write_str(" }")
}

fn list<T: Display>(f: &mut Formatter<'_>, items: impl Iterator<Item = T>) -> fmt::Result {
    for (i, item) in items.enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}
