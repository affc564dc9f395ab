//! Where an ADD's NIC comes from: the step "acquire" of the ADD pipeline
//! for a NIC of its own. Two sources implement [`NicSource`]: the static
//! inventory ([`inventory::StaticInventory`]) and the cloud pool
//! (`CloudSource` in `cloud/source.rs`), which can also create NICs. The
//! caller has already decided (the plan); a source only finds, waits for
//! or makes the NIC the plan asks for. What only the cloud does (sticky
//! NICs, the node's own NICs, its counts) is `CloudSource`'s own, reached
//! where there is a cloud.

pub mod inventory;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::config::NicSpec;
use crate::error::{Error, Kind, Result};
use crate::nics::Nics;
use crate::pool::{Pool, State};
use crate::record::Key;

/// The answer of a cold ADD that waited its time while its NIC is still
/// on its way: no failure, the retry finds it warm.
pub fn still_attaching() -> Error {
    Error::new(
        Kind::StillAttaching,
        "no warm NIC on this node; NICs are being attached for the waiting pods, try again shortly",
    )
}

/// A vxnet an ADD can take a NIC from, and its addressing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxnetAddr {
    pub id: String,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// A NIC reserved for an ADD, and how the source came by it.
#[derive(Debug)]
pub struct Acquired {
    pub nic: NicSpec,
    pub how: How,
}

/// How a source came by a NIC (the decision audit's "why").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// Free on the node already (or brought back by a DEL meanwhile).
    Warm,
    /// Created and attached for the ADDs waiting, this one among them.
    Created,
    /// The NIC kept in the cloud for the pod's sticky identity, attached
    /// here (moved from another node if need be).
    Followed,
}

impl How {
    pub fn describe(self) -> &'static str {
        match self {
            How::Warm => "a warm NIC",
            How::Created => "a NIC created for this ADD",
            How::Followed => "the NIC kept for its sticky identity",
        }
    }
}

impl Acquired {
    pub fn warm(nic: NicSpec) -> Acquired {
        Acquired {
            nic,
            how: How::Warm,
        }
    }
}

#[async_trait::async_trait]
pub trait NicSource: Send + Sync + std::fmt::Debug {
    /// The vxnets to choose from, in configured order. Empty: there is no
    /// choice of vxnet (a static inventory without vxnets).
    fn vxnets(&self) -> Vec<VxnetAddr>;

    /// The vxnet guest's candidates (the configured vxnets with what the
    /// node knows of them) and the node, from a look at the pool.
    fn facts(&self, pool: &Pool) -> (Vec<hostnic_policy::Vxnet>, hostnic_policy::Node);

    /// A NIC from the vxnets of `order` (best first; `None`: any), waiting
    /// for one a DEL is bringing back, or making one where the source can.
    async fn acquire(&self, key: &Key, order: Option<&[String]>) -> Result<Acquired>;

    /// A NIC with one of `addrs` (the ip policy's answer), in `vxnet` when
    /// the source must make one.
    async fn acquire_address(
        &self,
        key: &Key,
        addrs: &[Ipv4Addr],
        vxnet: Option<&str>,
    ) -> Result<Acquired>;

    /// Whether an ADD could still get a NIC with none free (STATUS).
    fn can_create(&self, pool_len: usize) -> bool;
}

/// A candidate vxnet with the pool's counts: its warm and its held NICs.
pub fn counted(pool: &Pool, vxnet: &VxnetAddr) -> hostnic_policy::Vxnet {
    let mut v = crate::policy::vxnet(&vxnet.id, vxnet.cidr, vxnet.gateway);
    v.warm_nics = pool.count_in(&vxnet.id, &[State::Free]) as u32;
    v.used_nics = pool.count_held_in(&vxnet.id) as u32;
    v
}

/// A free NIC already on the node with one of `addrs`.
pub async fn warm_with_address(nics: &Nics, key: &Key, addrs: &[Ipv4Addr]) -> Option<NicSpec> {
    nics.wait_for_release(|p| p.reserve_where(key, |s| addrs.contains(&s.address.addr())))
        .await
}

/// The first few of `addrs`, for an error message.
pub fn shown(addrs: &[Ipv4Addr]) -> String {
    addrs
        .iter()
        .take(4)
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
