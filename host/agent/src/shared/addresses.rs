//! Which address a shared-mode pod gets: one of the vxnet's shared range
//! that no attachment holds, within what the ip guest allows. Pure, so the
//! rules are tested without a kernel.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use hostnic_proto::cni::{CniError, code};
use ipnet::Ipv4Net;

/// A shared vxnet as the node knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedNet {
    pub vxnet: String,
    /// The vxnet's subnet and gateway (from the cloud).
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Where pods are addressed from.
    pub range: Ipv4Net,
    /// Its policy-routing table.
    pub table: u32,
    /// The size of the blocks nodes claim (with Kubernetes).
    pub block_prefix: u8,
    /// How long an unused block stays claimed.
    pub block_idle: Duration,
}

impl SharedNet {
    /// Whether `a` may go to a pod at all: in the range, a host of the
    /// vxnet, not its gateway.
    pub fn usable(&self, a: Ipv4Addr) -> bool {
        self.range.contains(&a)
            && self.cidr.contains(&a)
            && a != self.cidr.network()
            && a != self.cidr.broadcast()
            && a != self.gateway
    }

    /// The block of the range that holds `a`.
    pub fn block_of(&self, a: Ipv4Addr) -> Ipv4Net {
        Ipv4Net::new(a, self.block_prefix)
            .expect("block_prefix is validated")
            .trunc()
    }

    /// The blocks a node may claim for `wanted` (`None`: any address),
    /// best first: those holding a wanted address, else every block of the
    /// range in order; never one in `owned`.
    pub fn candidates(
        &self,
        wanted: Option<&[Ipv4Addr]>,
        owned: &BTreeSet<Ipv4Net>,
    ) -> Vec<Ipv4Net> {
        let mut out: Vec<Ipv4Net> = match wanted {
            Some(w) => w
                .iter()
                .filter(|a| self.usable(**a))
                .map(|a| self.block_of(*a))
                .collect(),
            None => self
                .range
                .subnets(self.block_prefix)
                .map(|s| s.collect())
                .unwrap_or_default(),
        };
        let mut seen = BTreeSet::new();
        out.retain(|b| !owned.contains(b) && seen.insert(*b));
        out
    }

    /// The address for a new attachment: the first of `wanted` (the ip
    /// guest's answer; `None`: any) that is usable, in one of the node's
    /// blocks (`owned`; `None`: the whole range is the node's) and not in
    /// `taken`. "Try again later" when there is no room: a new block may
    /// make some.
    pub fn pick(
        &self,
        taken: &BTreeSet<Ipv4Addr>,
        wanted: Option<&[Ipv4Addr]>,
        owned: Option<&BTreeSet<Ipv4Net>>,
    ) -> Result<Ipv4Addr, CniError> {
        let mine = |a: &Ipv4Addr| owned.is_none_or(|o| o.contains(&self.block_of(*a)));
        let free = |a: &Ipv4Addr| self.usable(*a) && mine(a) && !taken.contains(a);
        match wanted {
            None => self.range.hosts().find(free).ok_or_else(|| {
                CniError::new(
                    code::TRY_AGAIN_LATER,
                    match owned {
                        None => format!(
                            "shared range {} of {} is exhausted on this node: every one of its {} addresses is held",
                            self.range,
                            self.vxnet,
                            self.range.hosts().filter(|a| self.usable(*a)).count()
                        ),
                        Some(o) => format!(
                            "every address of this node's {} blocks of {} in {} is held, and no other block is free",
                            o.len(),
                            self.range,
                            self.vxnet
                        ),
                    },
                )
            }),
            Some(wanted) => {
                let inside: Vec<Ipv4Addr> =
                    wanted.iter().copied().filter(|a| self.usable(*a)).collect();
                if inside.is_empty() {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        format!(
                            "the ip policy asks for {} but {} is in shared mode and its pods are addressed from {} only",
                            crate::source::shown(wanted),
                            self.vxnet,
                            self.range
                        ),
                    ));
                }
                inside.iter().copied().find(free).ok_or_else(|| {
                    CniError::new(
                        code::TRY_AGAIN_LATER,
                        format!(
                            "{} held by other pods (or other nodes' blocks)",
                            match inside.len() {
                                1 => format!("address {} is", inside[0]),
                                n => format!("all {n} addresses the ip policy allows are"),
                            }
                        ),
                    )
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> SharedNet {
        SharedNet {
            vxnet: "vxnet-a".into(),
            cidr: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            range: "10.0.0.252/30".parse().unwrap(),
            table: 1001,
            block_prefix: 31,
            block_idle: Duration::from_secs(1),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn any_gives_the_lowest_free_host_of_the_range_and_never_the_broadcast() {
        let n = net();
        let mut taken = BTreeSet::new();
        assert_eq!(n.pick(&taken, None, None).unwrap(), ip("10.0.0.253"));
        taken.insert(ip("10.0.0.253"));
        assert_eq!(n.pick(&taken, None, None).unwrap(), ip("10.0.0.254"));
        taken.insert(ip("10.0.0.254"));
        let e = n.pick(&taken, None, None).unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        assert!(
            e.msg.contains("10.0.0.252/30 of vxnet-a is exhausted"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn wanted_addresses_outside_the_range_are_refused_by_name() {
        let n = net();
        let taken = BTreeSet::from([ip("10.0.0.253")]);
        let e = n.pick(&taken, Some(&[ip("10.0.0.7")]), None).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(
            e.msg.contains("10.0.0.7") && e.msg.contains("10.0.0.252/30"),
            "{}",
            e.msg
        );
        let e = n.pick(&taken, Some(&[ip("10.0.0.253")]), None).unwrap_err();
        assert!(e.msg.contains("address 10.0.0.253 is held"), "{}", e.msg);
        assert_eq!(
            n.pick(
                &taken,
                Some(&[ip("10.0.0.7"), ip("10.0.0.253"), ip("10.0.0.254")]),
                None
            )
            .unwrap(),
            ip("10.0.0.254")
        );
    }

    #[test]
    fn with_blocks_only_the_nodes_blocks_serve_and_candidates_follow_the_wish() {
        let n = net(); // blocks of 2: .252/31 and .254/31
        let owned = BTreeSet::from(["10.0.0.254/31".parse().unwrap()]);
        let none = BTreeSet::new();
        assert_eq!(n.pick(&none, None, Some(&owned)).unwrap(), ip("10.0.0.254"));
        let e = n
            .pick(&none, Some(&[ip("10.0.0.253")]), Some(&owned))
            .unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN_LATER, "{}", e.msg);
        let taken = BTreeSet::from([ip("10.0.0.254")]);
        assert!(n.pick(&taken, None, Some(&owned)).is_err());
        assert_eq!(
            n.candidates(None, &owned),
            vec!["10.0.0.252/31".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(
            n.candidates(
                Some(&[ip("10.0.0.253"), ip("10.0.0.252"), ip("10.0.0.7")]),
                &BTreeSet::new()
            ),
            vec!["10.0.0.252/31".parse::<Ipv4Net>().unwrap()]
        );
    }

    #[test]
    fn the_gateway_is_never_given() {
        let mut n = net();
        n.range = "10.0.0.0/30".parse().unwrap();
        assert_eq!(
            n.pick(&BTreeSet::new(), None, None).unwrap(),
            ip("10.0.0.2")
        );
        assert!(
            n.pick(&BTreeSet::new(), Some(&[ip("10.0.0.1")]), None)
                .is_err()
        );
    }
}
