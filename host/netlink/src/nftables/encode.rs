//! A [`Script`] as one nf_tables netlink batch: the messages nft itself
//! would send for it (see `nf_tables.h`; attribute integers are big
//! endian, register contents in the host's order).

use super::attrs::Attrs;
use super::expr::*;
use super::{Command, Element, Hook, Match, Rule, Script, SetKind, Verdict};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

// enum nf_tables_msg_types
const NEWTABLE: u8 = 0;
const NEWCHAIN: u8 = 3;
const NEWRULE: u8 = 6;
const DELRULE: u8 = 8;
const NEWSET: u8 = 9;
const DELSET: u8 = 11;
const NEWSETELEM: u8 = 12;
const DELSETELEM: u8 = 14;
const DESTROYTABLE: u8 = 26;

const TABLE_F_OWNER: u32 = 0x2;
const TABLE_F_PERSIST: u32 = 0x4;

const SET_ANONYMOUS: u32 = 0x1;
const SET_CONSTANT: u32 = 0x2;
const SET_INTERVAL: u32 = 0x4;
const SET_ELEM_INTERVAL_END: u32 = 0x1;

// nft's datatypes (a concatenation: each type 6 bits further left).
const TYPE_IPV4_ADDR: u32 = 7;
const TYPE_INET_PROTO: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;

/// One batch: its bytes, and what each message was (by its sequence
/// number, from `first_seq`), to name what the kernel refused.
///
/// Only the last message asks for an acknowledgement: the kernel answers
/// a batch's messages together once it is done with all of them, each
/// refused one with its error, so that answer comes last. (An answer to
/// each of ~400 messages overflowed the socket's receive buffer.)
pub struct Batch {
    pub bytes: Vec<u8>,
    pub first_seq: u32,
    /// Index of the script's command each message came from.
    pub commands: Vec<usize>,
}

impl Batch {
    /// The sequence number of the batch's begin: the kernel's answer to
    /// a batch it could not take at all (out of memory).
    pub fn begin_seq(&self) -> u32 {
        self.first_seq.wrapping_sub(1)
    }

    /// The sequence number of the message acknowledged.
    pub fn last_seq(&self) -> u32 {
        self.first_seq
            .wrapping_add(self.commands.len() as u32)
            .wrapping_sub(1)
    }
}

/// `script` as a batch whose messages are numbered from `seq`.
pub fn batch(script: &Script, seq: u32) -> Batch {
    let mut b = Builder {
        out: Vec::new(),
        seq,
        commands: Vec::new(),
        table: &script.table,
        next_set_id: 1,
        last: None,
        owned: script.owned,
    };
    b.control(NFNL_MSG_BATCH_BEGIN);
    let first_seq = b.seq;
    for (i, command) in script.commands.iter().enumerate() {
        b.command(i, command);
    }
    if let Some(at) = b.last {
        let flags = u16::from_ne_bytes([b.out[at + 6], b.out[at + 7]]) | NLM_F_ACK;
        b.out[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
    }
    b.control(NFNL_MSG_BATCH_END);
    Batch {
        bytes: b.out,
        first_seq,
        commands: b.commands,
    }
}

struct Builder<'a> {
    out: Vec<u8>,
    seq: u32,
    commands: Vec<usize>,
    table: &'a str,
    next_set_id: u32,
    /// Where the last nf_tables message starts.
    last: Option<usize>,
    owned: bool,
}

impl Builder<'_> {
    /// A batch's begin or end.
    fn control(&mut self, kind: u16) {
        let start = self.header(kind, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        self.finish(start);
    }

    /// An nf_tables message of command `command`; `attrs` writes its
    /// attributes.
    fn message(&mut self, command: usize, kind: u8, flags: u16, attrs: impl FnOnce(&mut Attrs)) {
        let start = self.header(
            (NFNL_SUBSYS_NFTABLES << 8) | u16::from(kind),
            NLM_F_REQUEST | flags,
            NFPROTO_INET,
            0,
        );
        self.last = Some(start);
        attrs(&mut Attrs(&mut self.out));
        self.finish(start);
        self.commands.push(command);
    }

    /// nlmsghdr and nfgenmsg; the header's length is set by `finish`.
    fn header(&mut self, kind: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let start = self.out.len();
        self.out.extend_from_slice(&0u32.to_ne_bytes());
        self.out.extend_from_slice(&kind.to_ne_bytes());
        self.out.extend_from_slice(&flags.to_ne_bytes());
        self.out.extend_from_slice(&self.seq.to_ne_bytes());
        self.out.extend_from_slice(&0u32.to_ne_bytes());
        self.out.extend_from_slice(&[family, 0]);
        self.out.extend_from_slice(&res_id.to_be_bytes());
        self.seq = self.seq.wrapping_add(1);
        start
    }

    fn finish(&mut self, start: usize) {
        let len = (self.out.len() - start) as u32;
        self.out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn command(&mut self, i: usize, command: &Command) {
        let table = self.table;
        match command {
            Command::Declare { sets, chains } => {
                let flags = if self.owned {
                    TABLE_F_OWNER | TABLE_F_PERSIST
                } else {
                    0
                };
                self.message(i, NEWTABLE, NLM_F_CREATE, |a| {
                    a.str(1, table);
                    a.u32(2, flags);
                });
                for (name, kind) in sets {
                    let (key_type, key_len, flags) = key(*kind);
                    let id = self.set_id();
                    self.message(i, NEWSET, NLM_F_CREATE, |a| {
                        a.str(1, table);
                        a.str(2, name);
                        a.u32(3, flags);
                        a.u32(4, key_type);
                        a.u32(5, key_len);
                        a.u32(10, id);
                    });
                }
                for (name, hook) in chains {
                    self.message(i, NEWCHAIN, NLM_F_CREATE, |a| {
                        a.str(1, table);
                        a.str(3, name);
                        a.nest(4, |h| {
                            h.u32(1, hook_number(*hook));
                            h.u32(2, 0);
                        });
                        a.u32(5, NF_ACCEPT);
                        a.str(7, "filter");
                    });
                }
            }
            Command::Destroy => self.message(i, DESTROYTABLE, 0, |a| a.str(1, table)),
            Command::FlushChain(chain) => self.message(i, DELRULE, 0, |a| {
                a.str(1, table);
                a.str(2, chain);
            }),
            Command::DeleteSet(set) => self.message(i, DELSET, 0, |a| {
                a.str(1, table);
                a.str(2, set);
            }),
            Command::FlushSet(set) => self.message(i, DELSETELEM, 0, |a| {
                a.str(1, table);
                a.str(2, set);
            }),
            Command::AddElements(set, elements) => {
                for keys in chunks(keys(elements)) {
                    self.message(i, NEWSETELEM, NLM_F_CREATE, |a| {
                        a.str(1, table);
                        a.str(2, set);
                        elements_attr(a, &keys);
                    });
                }
            }
            Command::AddRule(rule) => self.rule(i, rule),
        }
    }

    fn set_id(&mut self) -> u32 {
        self.next_set_id += 1;
        self.next_set_id
    }

    /// An anonymous interval set holding `keys` (made before the rule
    /// that looks it up): its name and id.
    fn anonymous(&mut self, i: usize, key_type: u32, keys: &[Key]) -> (&'static str, u32) {
        const NAME: &str = "__set%d";
        let (table, id) = (self.table, self.set_id());
        let key_len = keys.first().map_or(0, |k| k.bytes.len()) as u32;
        self.message(i, NEWSET, NLM_F_CREATE, |a| {
            a.str(1, table);
            a.str(2, NAME);
            a.u32(3, SET_ANONYMOUS | SET_CONSTANT | SET_INTERVAL);
            a.u32(4, key_type);
            a.u32(5, key_len);
            a.u32(10, id);
        });
        for keys in chunks(keys.to_vec()) {
            self.message(i, NEWSETELEM, NLM_F_CREATE, |a| {
                a.str(1, table);
                a.str(2, NAME);
                elements_attr(a, &keys);
                a.u32(4, id);
            });
        }
        (NAME, id)
    }

    fn rule(&mut self, i: usize, rule: &Rule) {
        // Expressions first: a match may need an anonymous set made
        // before the rule's own message.
        let mut exprs: Vec<Expr> = Vec::new();
        let mut ipv4 = false;
        for m in &rule.matches {
            let is_ip = matches!(
                m,
                Match::InSet(..) | Match::InNet(..) | Match::NotIn(..) | Match::TripleInSet(..)
            );
            if is_ip && !ipv4 {
                ipv4 = true;
                exprs.push(Expr::Meta(REG_1, META_NFPROTO));
                exprs.push(Expr::Cmp(REG_1, CMP_EQ, vec![NFPROTO_IPV4]));
            }
            self.matches(i, m, &mut exprs);
        }
        if rule.counter {
            exprs.push(Expr::Counter);
        }
        exprs.push(match rule.verdict {
            Verdict::Accept => Expr::Verdict(NF_ACCEPT),
            Verdict::Drop => Expr::Verdict(NF_DROP),
            Verdict::Reset => Expr::Reject(REJECT_TCP_RST, None),
            Verdict::Reject => Expr::Reject(REJECT_ICMPX_UNREACH, Some(ICMPX_PORT_UNREACH)),
        });
        let table = self.table;
        self.message(i, NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |a| {
            a.str(1, table);
            a.str(2, &rule.chain);
            a.nest(4, |list| {
                for e in &exprs {
                    list.nest(1, |elem| e.write(elem));
                }
            });
            if let Some(comment) = &rule.comment {
                // NFTNL_UDATA_RULE_COMMENT, as nft lists it.
                let mut udata = vec![0, (comment.len() + 1) as u8];
                udata.extend_from_slice(comment.as_bytes());
                udata.push(0);
                a.bytes(7, &udata);
            }
        });
    }

    fn matches(&mut self, i: usize, m: &Match, exprs: &mut Vec<Expr>) {
        match m {
            Match::Loopback(hook) => {
                let key = match hook {
                    Hook::Input => META_IIF,
                    Hook::Output => META_OIF,
                };
                exprs.push(Expr::Meta(REG_1, key));
                // lo is interface 1 in every namespace.
                exprs.push(Expr::Cmp(REG_1, CMP_EQ, 1u32.to_ne_bytes().to_vec()));
            }
            Match::EstablishedOrRelated => ct_state(exprs, CT_ESTABLISHED | CT_RELATED),
            Match::Invalid => ct_state(exprs, CT_INVALID),
            Match::InSet(field, set) => {
                exprs.push(address(REG_1, *field));
                exprs.push(Expr::Lookup(REG_1, set.clone(), None, false));
            }
            Match::InNet(field, net) => {
                exprs.push(address(REG_1, *field));
                prefix(exprs, net, CMP_EQ);
            }
            Match::NotIn(field, nets) => {
                exprs.push(address(REG_1, *field));
                if let [net] = nets.as_slice() {
                    prefix(exprs, net, CMP_NEQ);
                } else {
                    let keys = keys(&nets.iter().map(|n| Element::Net(*n)).collect::<Vec<_>>());
                    let (name, id) = self.anonymous(i, TYPE_IPV4_ADDR, &keys);
                    exprs.push(Expr::Lookup(REG_1, name.into(), Some(id), true));
                }
            }
            Match::TripleInSet(field, set) => {
                exprs.push(Expr::Payload(REG32_00, BASE_NETWORK, offset(*field), 4));
                exprs.push(Expr::Meta(REG32_00 + 1, META_L4PROTO));
                exprs.push(Expr::Payload(REG32_00 + 2, BASE_TRANSPORT, 2, 2));
                exprs.push(Expr::Lookup(REG32_00, set.clone(), None, false));
            }
            Match::Protocol(proto) => {
                exprs.push(Expr::Meta(REG_1, META_L4PROTO));
                exprs.push(Expr::Cmp(REG_1, CMP_EQ, vec![proto.number()]));
            }
            Match::Ports(ranges) => {
                exprs.push(Expr::Payload(REG_1, BASE_TRANSPORT, 2, 2));
                match ranges.as_slice() {
                    [(a, b)] if a == b => {
                        exprs.push(Expr::Cmp(REG_1, CMP_EQ, a.to_be_bytes().to_vec()))
                    }
                    [(a, b)] => exprs.push(Expr::Range(
                        REG_1,
                        a.to_be_bytes().to_vec(),
                        b.to_be_bytes().to_vec(),
                    )),
                    _ => {
                        let keys =
                            intervals(ranges.iter().map(|&(a, b)| (u32::from(a), u32::from(b))), 2);
                        let (name, id) = self.anonymous(i, TYPE_INET_SERVICE, &keys);
                        exprs.push(Expr::Lookup(REG_1, name.into(), Some(id), false));
                    }
                }
            }
        }
    }
}

fn hook_number(hook: Hook) -> u32 {
    match hook {
        Hook::Input => 1,  // NF_INET_LOCAL_IN
        Hook::Output => 3, // NF_INET_LOCAL_OUT
    }
}

/// A set's key type, key length and flags.
fn key(kind: SetKind) -> (u32, u32, u32) {
    match kind {
        SetKind::Addresses => (TYPE_IPV4_ADDR, 4, 0),
        SetKind::Prefixes => (TYPE_IPV4_ADDR, 4, SET_INTERVAL),
        SetKind::Triples => (
            (((TYPE_IPV4_ADDR << 6) | TYPE_INET_PROTO) << 6) | TYPE_INET_SERVICE,
            12,
            0,
        ),
    }
}

/// A set element as the kernel takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    bytes: Vec<u8>,
    /// The first value past an interval.
    end: bool,
}

/// The keys of `elements`: each as it is, or, for prefixes, their merged
/// ranges as interval starts and ends.
fn keys(elements: &[Element]) -> Vec<Key> {
    let mut ranges = Vec::new();
    let mut keys = Vec::new();
    for e in elements {
        match e {
            Element::Addr(a) => keys.push(Key {
                bytes: a.octets().to_vec(),
                end: false,
            }),
            Element::Net(n) => ranges.push((u32::from(n.network()), u32::from(n.broadcast()))),
            Element::Triple(a, proto, port) => {
                // Each part in a 32-bit register of its own, zero-padded.
                let mut bytes = a.octets().to_vec();
                bytes.extend_from_slice(&[proto.number(), 0, 0, 0]);
                bytes.extend_from_slice(&port.to_be_bytes());
                bytes.extend_from_slice(&[0, 0]);
                keys.push(Key { bytes, end: false });
            }
        }
    }
    keys.extend(intervals(ranges.into_iter(), 4));
    keys
}

/// Inclusive ranges of `width`-byte values as interval elements: merged
/// where they overlap or touch, each a start and (unless it runs to the
/// last value) an end one past it.
fn intervals(ranges: impl Iterator<Item = (u32, u32)>, width: usize) -> Vec<Key> {
    let mut ranges: Vec<(u32, u32)> = ranges.collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if u64::from(a) <= u64::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let max = if width == 4 {
        u32::MAX
    } else {
        u32::from(u16::MAX)
    };
    let bytes = |v: u32| v.to_be_bytes()[4 - width..].to_vec();
    let mut out = Vec::new();
    for (a, b) in merged {
        out.push(Key {
            bytes: bytes(a),
            end: false,
        });
        if b < max {
            out.push(Key {
                bytes: bytes(b + 1),
                end: true,
            });
        }
    }
    out
}

/// `keys` in messages of at most ~1,000 (a nested attribute's length is
/// 16 bits), an interval's start and end in the same one.
fn chunks(keys: Vec<Key>) -> Vec<Vec<Key>> {
    const MOST: usize = 1000;
    let mut out: Vec<Vec<Key>> = Vec::new();
    for k in keys {
        match out.last_mut() {
            Some(last) if last.len() < MOST || k.end => last.push(k),
            _ => out.push(vec![k]),
        }
    }
    out
}

/// NFTA_SET_ELEM_LIST_ELEMENTS.
fn elements_attr(a: &mut Attrs, keys: &[Key]) {
    a.nest(3, |list| {
        for k in keys {
            list.nest(1, |elem| {
                elem.nest(1, |key| key.bytes(1, &k.bytes));
                if k.end {
                    elem.u32(3, SET_ELEM_INTERVAL_END);
                }
            });
        }
    });
}
