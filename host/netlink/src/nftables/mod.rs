//! An `inet` nftables table written over an nf_tables netlink socket of
//! our own, kept open for as long as we manage the table.
//!
//! What a table is made of is described here as data ([`Script`]: the
//! commands of one transaction), printed in nft's script syntax (for logs
//! and tests) and encoded as one netlink batch (`encode.rs`) sent on a
//! [`Nftables`] socket (`socket.rs`).
//!
//! Why not libnftables (`nft.rs`): a table flagged `owner` accepts changes
//! only from the socket that created (or adopted) it, so a process in the
//! namespace with CAP_NET_ADMIN cannot flush or delete it; `persist` keeps
//! it, ownerless, when that socket closes (the agent restarting), until a
//! new socket adopts it. libnftables opens a socket per context and
//! Debian 12's (1.0.6) cannot ask for `persist`. And it is slow to build
//! a large table: 100 sets and 100 rules took ~17 ms of its own work
//! (`nft -c`), the kernel ~3 ms.

mod attrs;
mod encode;
mod expr;
mod socket;
mod text;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub use socket::Nftables;

/// A set's key: what its elements are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// Single IPv4 addresses.
    Addresses,
    /// IPv4 addresses and prefixes (an interval set).
    Prefixes,
    /// (IPv4 address, transport protocol, port) triples.
    Triples,
}

/// A transport protocol a rule or a triple names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// Its IANA number, as the IP header carries it.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    /// Its name in nft's syntax.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// One element of a set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// An address (of a [`SetKind::Addresses`] set; a prefixes set takes
    /// it as a /32 [`Element::Net`]).
    Addr(Ipv4Addr),
    /// A prefix (of a [`SetKind::Prefixes`] set); elements of one set must
    /// not overlap.
    Net(Ipv4Net),
    Triple(Ipv4Addr, Proto, u16),
}

/// Which address of the IPv4 header a match reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Source,
    Destination,
}

/// The hook of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// Packets to this namespace's own sockets (`input`).
    Input,
    /// Packets from them (`output`).
    Output,
}

/// A condition of a rule. An `ip` match implies the packet is IPv4.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Match {
    /// Arrived on (`Input`) or leaves by (`Output`) the loopback device.
    Loopback(Hook),
    /// Conntrack says the connection is established, or related to one.
    EstablishedOrRelated,
    /// Conntrack found the packet invalid.
    Invalid,
    /// The address is in the named set.
    InSet(Field, String),
    /// The address is in the prefix.
    InNet(Field, Ipv4Net),
    /// The address is in none of the prefixes (at least one).
    NotIn(Field, Vec<Ipv4Net>),
    /// (address, protocol, destination port) is in the named
    /// [`SetKind::Triples`] set.
    TripleInSet(Field, String),
    /// The transport protocol.
    Protocol(Proto),
    /// The transport header's destination port is in one of the ranges
    /// (inclusive, sorted, not overlapping; at least one).
    Ports(Vec<(u16, u16)>),
}

/// What a rule does with a packet that matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    /// `reject with tcp reset` (after a TCP match).
    Reset,
    /// `reject`: an ICMP port unreachable.
    Reject,
}

/// A rule appended to a chain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub chain: String,
    pub matches: Vec<Match>,
    /// Counts the packets and bytes it matched.
    pub counter: bool,
    pub verdict: Verdict,
    /// At most 127 bytes.
    pub comment: Option<String>,
}

/// One command of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// The table (flagged `owner` and `persist` if the script is
    /// [`Script::owned`], then adopted if it is ownerless), its sets and
    /// its base chains (`filter` type, priority 0, policy accept): made
    /// where missing, kept as they are where present.
    Declare {
        sets: Vec<(String, SetKind)>,
        chains: Vec<(String, Hook)>,
    },
    /// The table and all it holds deleted, if it exists.
    Destroy,
    FlushChain(String),
    DeleteSet(String),
    FlushSet(String),
    AddElements(String, Vec<Element>),
    AddRule(Rule),
}

/// Commands applied to table `table` (family `inet`) in one transaction:
/// all of them or none.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Script {
    pub table: String,
    pub commands: Vec<Command>,
    /// Whether [`Command::Declare`] flags the table `owner` and
    /// `persist` (the default). Linux before 6.9 has no `persist` and
    /// refuses both (EOPNOTSUPP); an owned table without it would go
    /// with the socket.
    pub owned: bool,
}

impl Script {
    pub fn new(table: impl Into<String>) -> Script {
        Script {
            table: table.into(),
            commands: Vec::new(),
            owned: true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}
