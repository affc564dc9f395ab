//! Which address a shared-mode pod gets: one of the vxnet's shared range
//! that no attachment holds, within what the ip guest allows. Pure, so the
//! rules are tested without a kernel.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::error::Error;
use ipnet::{Ipv4AddrRange, Ipv4Net};

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

    /// Whether `a` is one of the range's hosts (as [`SharedNet::pick`]
    /// walks them for an ADD that takes any address): not the range's own
    /// network or broadcast address.
    fn range_host(&self, a: Ipv4Addr) -> bool {
        self.range.contains(&a)
            && (self.range.prefix_len() >= 31
                || (a != self.range.network() && a != self.range.broadcast()))
    }

    /// How many addresses this node could give a pod now, what the guests
    /// see as the vxnet's `free-ips`: the usable hosts of the range in the
    /// node's blocks (`owned`; `None`: the whole range is the node's) and
    /// in the blocks it could claim, less those an attachment holds
    /// (`taken`) or a cloud NIC holds (`cloud`). A block with a cloud
    /// NIC's address in it is never claimed, so none of its addresses
    /// count unless the node holds it already.
    ///
    /// Blocks other nodes hold count as claimable: the node keeps no copy
    /// of the cluster's claims (it lists them only when it claims), so
    /// with claims this is an upper bound.
    ///
    /// Counted from the held addresses rather than by walking the range (a
    /// /17 is 32k addresses, and guests are asked on every ADD); the range
    /// is inside the vxnet's cidr (`Shared::new` checks it).
    pub fn free_count(
        &self,
        taken: &BTreeSet<Ipv4Addr>,
        cloud: &BTreeSet<Ipv4Addr>,
        owned: Option<&BTreeSet<Ipv4Net>>,
    ) -> u32 {
        let givable = |a: &Ipv4Addr| self.range_host(*a) && self.usable(*a);
        let barred: BTreeSet<Ipv4Net> = match owned {
            None => BTreeSet::new(),
            Some(owned) => cloud
                .iter()
                .filter(|a| self.range.contains(*a))
                .map(|a| self.block_of(*a))
                .filter(|b| !owned.contains(b))
                .collect(),
        };
        // The range's hosts less the vxnet's network, broadcast and
        // gateway addresses among them (the only ones `usable` refuses
        // inside the cidr).
        let special = BTreeSet::from([self.cidr.network(), self.cidr.broadcast(), self.gateway]);
        let usable =
            self.range.hosts().count() - special.iter().filter(|a| self.range_host(**a)).count();
        let in_barred: usize = barred
            .iter()
            .map(|b| {
                Ipv4AddrRange::new(b.network(), b.broadcast())
                    .filter(givable)
                    .count()
            })
            .sum();
        let held = taken
            .union(cloud)
            .filter(|a| givable(a) && !barred.contains(&self.block_of(**a)))
            .count();
        u32::try_from(usable - in_barred - held).unwrap_or(u32::MAX)
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
    ) -> Result<Ipv4Addr, Error> {
        let mine = |a: &Ipv4Addr| owned.is_none_or(|o| o.contains(&self.block_of(*a)));
        let free = |a: &Ipv4Addr| self.usable(*a) && mine(a) && !taken.contains(a);
        match wanted {
            None => self.range.hosts().find(free).ok_or_else(|| {
                Error::try_again(match owned {
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
                    return Err(Error::invalid_config(format!(
                            "the ip policy asks for {} but {} is in shared mode and its pods are addressed from {} only",
                            crate::source::shown(wanted),
                            self.vxnet,
                            self.range
                        ),
                    ));
                }
                inside.iter().copied().find(free).ok_or_else(|| {
                    Error::try_again(format!(
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
    use crate::error::Kind;

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
        assert_eq!(e.kind, Kind::TryAgain);
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
        assert_eq!(e.kind, Kind::InvalidConfig);
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
        assert_eq!(e.kind, Kind::TryAgain, "{}", e.msg);
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

    /// `free_count` by walking every address, as the doc comment says it.
    fn free_by_hand(
        n: &SharedNet,
        taken: &BTreeSet<Ipv4Addr>,
        cloud: &BTreeSet<Ipv4Addr>,
        owned: Option<&BTreeSet<Ipv4Net>>,
    ) -> u32 {
        let claimable = |b: &Ipv4Net| {
            owned.is_none_or(|o| o.contains(b)) || !cloud.iter().any(|a| b.contains(a))
        };
        n.range
            .hosts()
            .filter(|a| n.usable(*a) && !taken.contains(a) && !cloud.contains(a))
            .filter(|a| claimable(&n.block_of(*a)))
            .count() as u32
    }

    #[test]
    fn free_count_is_what_the_node_could_give_now_its_blocks_and_the_claimable_ones() {
        // 10.0.0.0/26 in 10.0.0.0/24: the vxnet's network address and its
        // gateway .1 are in the range, .63 (the range's broadcast) is not
        // given to "any"; 61 addresses, blocks of 16.
        let n = SharedNet {
            range: "10.0.0.0/26".parse().unwrap(),
            block_prefix: 28,
            ..net()
        };
        let none = BTreeSet::new();
        let no_blocks = BTreeSet::new();
        assert_eq!(n.free_count(&none, &none, None), 61);
        assert_eq!(n.free_count(&none, &none, Some(&no_blocks)), 61);
        let block = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let owned = BTreeSet::from([block("10.0.0.0/28"), block("10.0.0.32/28")]);
        // Held addresses count once, in any block; those of other ranges
        // (another shared vxnet's) not at all.
        let taken = BTreeSet::from([
            ip("10.0.0.2"),
            ip("10.0.0.40"),
            ip("10.0.0.20"),
            ip("10.0.9.9"),
        ]);
        assert_eq!(n.free_count(&taken, &none, Some(&owned)), 58);
        // A cloud NIC's address in a block the node holds costs that one
        // address; in a block it does not hold, the whole block (never
        // claimed); without claims, one address.
        let cloud = BTreeSet::from([
            ip("10.0.0.3"),
            ip("10.0.0.50"),
            ip("10.0.0.51"),
            ip("10.0.0.40"),
        ]);
        assert_eq!(n.free_count(&taken, &cloud, Some(&owned)), 58 - 1 - 15);
        assert_eq!(n.free_count(&taken, &cloud, None), 58 - 3);
        // The arithmetic agrees with walking the range, whatever is held.
        for range in [
            "10.0.0.0/26",
            "10.0.0.192/26",
            "10.0.0.0/24",
            "10.0.0.252/30",
        ] {
            let n = SharedNet {
                range: range.parse().unwrap(),
                block_prefix: 28.max(range.parse::<Ipv4Net>().unwrap().prefix_len()),
                ..net()
            };
            for owned in [None, Some(&owned), Some(&no_blocks)] {
                for (taken, cloud) in [
                    (&none, &none),
                    (&taken, &none),
                    (&taken, &cloud),
                    (&none, &cloud),
                ] {
                    assert_eq!(
                        n.free_count(taken, cloud, owned),
                        free_by_hand(&n, taken, cloud, owned),
                        "{range} owned {owned:?} taken {taken:?} cloud {cloud:?}"
                    );
                }
            }
        }
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
