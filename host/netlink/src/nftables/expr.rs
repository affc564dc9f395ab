//! A rule's expressions, as nf_tables takes them: what nft makes of each
//! match (`meta`, `payload`, `cmp`, `bitwise`, `range`, `lookup`, `ct`)
//! and statement (`counter`, `immediate` verdicts, `reject`). Register
//! contents are in the host's byte order, packet data in the network's.

use ipnet::Ipv4Net;

use super::Field;
use super::attrs::Attrs;

pub(super) const REG_VERDICT: u32 = 0;
pub(super) const REG_1: u32 = 1;
pub(super) const REG32_00: u32 = 8;

pub(super) const NF_DROP: u32 = 0;
pub(super) const NF_ACCEPT: u32 = 1;

pub(super) const META_IIF: u32 = 4;
pub(super) const META_OIF: u32 = 5;
pub(super) const META_NFPROTO: u32 = 15;
pub(super) const META_L4PROTO: u32 = 16;
pub(super) const CMP_EQ: u32 = 0;
pub(super) const CMP_NEQ: u32 = 1;
pub(super) const BASE_NETWORK: u32 = 1;
pub(super) const BASE_TRANSPORT: u32 = 2;
pub(super) const CT_INVALID: u32 = 1;
pub(super) const CT_ESTABLISHED: u32 = 2;
pub(super) const CT_RELATED: u32 = 4;
pub(super) const REJECT_TCP_RST: u32 = 1;
pub(super) const REJECT_ICMPX_UNREACH: u32 = 2;
pub(super) const ICMPX_PORT_UNREACH: u8 = 1;

pub(super) fn offset(field: Field) -> u32 {
    match field {
        Field::Source => 12,
        Field::Destination => 16,
    }
}

pub(super) fn address(reg: u32, field: Field) -> Expr {
    Expr::Payload(reg, BASE_NETWORK, offset(field), 4)
}

pub(super) fn ct_state(exprs: &mut Vec<Expr>, bits: u32) {
    exprs.push(Expr::CtState(REG_1));
    exprs.push(Expr::Bitwise(REG_1, bits.to_ne_bytes().to_vec()));
    exprs.push(Expr::Cmp(REG_1, CMP_NEQ, vec![0; 4]));
}

/// The address in register 1 compared with `net` (`op` equal or not).
pub(super) fn prefix(exprs: &mut Vec<Expr>, net: &Ipv4Net, op: u32) {
    let addr = net.network().octets().to_vec();
    if net.prefix_len() < 32 {
        exprs.push(Expr::Bitwise(REG_1, net.netmask().octets().to_vec()));
    }
    exprs.push(Expr::Cmp(REG_1, op, addr));
}

/// One expression of a rule.
pub(super) enum Expr {
    /// dreg, base, offset, length.
    Payload(u32, u32, u32, u32),
    /// dreg, key.
    Meta(u32, u32),
    /// dreg (conntrack state).
    CtState(u32),
    /// reg (source and destination), mask (xor 0).
    Bitwise(u32, Vec<u8>),
    /// sreg, op, data.
    Cmp(u32, u32, Vec<u8>),
    /// sreg, from, to (equal: within).
    Range(u32, Vec<u8>, Vec<u8>),
    /// sreg, set, set id (in this batch), inverted.
    Lookup(u32, String, Option<u32>, bool),
    Counter,
    Verdict(u32),
    /// type, ICMP code.
    Reject(u32, Option<u8>),
}

impl Expr {
    /// NFTA_EXPR_NAME and NFTA_EXPR_DATA.
    pub(super) fn write(&self, a: &mut Attrs) {
        let name = match self {
            Expr::Payload(..) => "payload",
            Expr::Meta(..) => "meta",
            Expr::CtState(..) => "ct",
            Expr::Bitwise(..) => "bitwise",
            Expr::Cmp(..) => "cmp",
            Expr::Range(..) => "range",
            Expr::Lookup(..) => "lookup",
            Expr::Counter => "counter",
            Expr::Verdict(..) => "immediate",
            Expr::Reject(..) => "reject",
        };
        a.str(1, name);
        a.nest(2, |d| match self {
            Expr::Payload(dreg, base, offset, len) => {
                d.u32(1, *dreg);
                d.u32(2, *base);
                d.u32(3, *offset);
                d.u32(4, *len);
            }
            Expr::Meta(dreg, key) => {
                d.u32(2, *key);
                d.u32(1, *dreg);
            }
            Expr::CtState(dreg) => {
                d.u32(2, 0);
                d.u32(1, *dreg);
            }
            Expr::Bitwise(reg, mask) => {
                d.u32(1, *reg);
                d.u32(2, *reg);
                d.u32(3, mask.len() as u32);
                d.nest(4, |v| v.bytes(1, mask));
                d.nest(5, |v| v.bytes(1, &vec![0; mask.len()]));
            }
            Expr::Cmp(sreg, op, data) => {
                d.u32(1, *sreg);
                d.u32(2, *op);
                d.nest(3, |v| v.bytes(1, data));
            }
            Expr::Range(sreg, from, to) => {
                d.u32(1, *sreg);
                d.u32(2, 0);
                d.nest(3, |v| v.bytes(1, from));
                d.nest(4, |v| v.bytes(1, to));
            }
            Expr::Lookup(sreg, set, id, inverted) => {
                d.str(1, set);
                d.u32(2, *sreg);
                if let Some(id) = id {
                    d.u32(4, *id);
                }
                if *inverted {
                    d.u32(5, 1);
                }
            }
            Expr::Counter => {}
            Expr::Verdict(code) => {
                d.u32(1, REG_VERDICT);
                d.nest(2, |data| data.nest(2, |v| v.u32(1, *code)));
            }
            Expr::Reject(kind, code) => {
                d.u32(1, *kind);
                if let Some(code) = code {
                    d.bytes(2, &[*code]);
                }
            }
        });
    }
}
