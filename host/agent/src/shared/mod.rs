//! Shared-NIC mode (`docs/shared-nic.md`): pods of a shared vxnet get a
//! veth and an address of the vxnet's shared range; the node's NIC there
//! answers for them and carries their traffic. This module holds what the
//! node knows of its shared vxnets — which addresses are held, which
//! blocks of the range are the node's, the sticky pins — and the kernel
//! side (`wiring.rs`); the driver (`wiring/shared/`) runs the verbs and
//! the start.

pub mod addresses;
pub mod blocks;
pub mod pins;
pub mod wiring;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use ipnet::Ipv4Net;

pub use addresses::SharedNet;
pub use blocks::{Claims, Listing};
pub use pins::Pin;

use crate::attachments::Attachments;
use crate::config::{SharedVxnet, table_of};
use crate::error::{Kind, Result};
use crate::record::{Holds, Record, Resource, SharedHold};
use crate::source::VxnetAddr;

/// Which addresses of a vxnet the cloud gave its NICs: shared-NIC mode
/// keeps its pods off them. The cloud pool answers it.
#[async_trait::async_trait]
pub trait CloudAddresses: Send + Sync + std::fmt::Debug {
    /// Every NIC of `vxnet` in the cloud with an address: (id, address).
    async fn cloud_addresses(&self, vxnet: &str) -> anyhow::Result<Vec<(String, Ipv4Addr)>>;
}

#[derive(Debug, Default)]
struct Held {
    /// Every address an attachment holds (or an unreadable record names).
    taken: BTreeSet<Ipv4Addr>,
    /// The blocks this node holds per vxnet (with claims only).
    owned: BTreeMap<String, BTreeSet<Ipv4Net>>,
    /// Since when a held block has had no pod.
    empty_since: BTreeMap<Ipv4Net, Instant>,
    /// Addresses of the shared ranges the cloud gave NICs (id by address):
    /// never a pod's.
    cloud: BTreeMap<Ipv4Addr, String>,
    /// The addresses pinned for sticky identities (with claims): never
    /// another identity's.
    pins: BTreeMap<Ipv4Addr, Pin>,
}

/// What the node knows of its shared vxnets: which addresses its
/// attachments hold, which blocks of the ranges are its, which addresses
/// the cloud's NICs hold and which are pinned for sticky identities. The
/// attachments themselves are the attachment table's.
#[derive(Debug)]
pub struct Shared {
    nets: Vec<SharedNet>,
    held: Mutex<Held>,
    /// The node's attachments (which pod holds which address).
    attachments: Arc<Attachments>,
    /// The cluster's block claims; `None`: each range is the node's alone.
    claims: Option<Arc<dyn Claims>>,
    /// The cloud, asked which addresses of a range its NICs hold (`None`:
    /// the static inventory, no cloud to ask).
    cloud: Option<Arc<dyn CloudAddresses>>,
    /// One block claim or release at a time.
    claiming: tokio::sync::Mutex<()>,
    /// The vxnets whose node-wide pieces are in place.
    pub(crate) prepared: tokio::sync::Mutex<BTreeSet<String>>,
    /// Tells the vxnets where a pod's address is now (`None`: the socket
    /// could not be opened; reported at start).
    announcer: Option<hostnic_netlink::Announcer>,
}

/// What an ADD asks of [`Shared::reserve`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Want<'a> {
    /// The addresses that would do (the ip guest's answer); `None`: any.
    pub addresses: Option<&'a [Ipv4Addr]>,
    /// The sticky identity of the ADD, if any: its own pin is not kept
    /// from it.
    pub identity: Option<&'a str>,
    /// The address pinned for that identity and held by this node: the
    /// one address that will do, in the node's blocks or not.
    pub pinned: Option<Ipv4Addr>,
    /// The node's own NICs' addresses in the vxnet: never a pod's.
    pub nics: &'a [Ipv4Addr],
}

impl Shared {
    /// The configured shared vxnets, resolved against what the source
    /// knows of them (subnet and gateway).
    pub fn new(
        config: &[SharedVxnet],
        known: &[VxnetAddr],
        cloud: Option<Arc<dyn CloudAddresses>>,
        attachments: Arc<Attachments>,
        claims: Option<Arc<dyn Claims>>,
    ) -> anyhow::Result<Shared> {
        let mut nets = Vec::new();
        for (n, s) in config.iter().enumerate() {
            let Some(v) = known.iter().find(|v| v.id == s.vxnet) else {
                bail!(
                    "shared vxnet {}: the node knows no such vxnet (its vxnets: {})",
                    s.vxnet,
                    known
                        .iter()
                        .map(|v| v.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            if !v.cidr.contains(&s.range) {
                bail!(
                    "shared range {} is not inside vxnet {} ({})",
                    s.range,
                    s.vxnet,
                    v.cidr
                );
            }
            nets.push(SharedNet {
                vxnet: s.vxnet.clone(),
                cidr: v.cidr,
                gateway: v.gateway,
                range: s.range,
                table: table_of(n),
                block_prefix: s.block_prefix,
                block_idle: Duration::from_secs(s.block_idle_seconds),
            });
        }
        // Opened here, in the node's namespace, and kept (see `Announcer`).
        let announcer = match (nets.is_empty(), hostnic_netlink::Announcer::open()) {
            (true, _) => None,
            (false, Ok(a)) => Some(a),
            (false, Err(e)) => {
                tracing::warn!(error = %e, "shared addresses will not be announced: peers learn a moved address only as their ARP entries age out");
                None
            }
        };
        Ok(Shared {
            nets,
            held: Mutex::default(),
            attachments,
            claims,
            cloud,
            claiming: tokio::sync::Mutex::default(),
            prepared: tokio::sync::Mutex::default(),
            announcer,
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn nets(&self) -> &[SharedNet] {
        &self.nets
    }

    pub fn net(&self, vxnet: &str) -> Option<&SharedNet> {
        self.nets.iter().find(|n| n.vxnet == vxnet)
    }

    /// The shared attachments, with what they hold.
    fn records(&self) -> Vec<(Record, SharedHold)> {
        self.attachments
            .all()
            .into_iter()
            .filter_map(|r| match &r.holds {
                Holds::Address(h) => {
                    let h = h.clone();
                    Some((r, h))
                }
                Holds::Nic { .. } => None,
            })
            .collect()
    }

    /// An address of `net` for a new attachment — what `want` asks, none
    /// of the node's own NICs' nor any a cloud NIC holds nor any pinned
    /// for another identity — taken until [`Shared::free`]. A new block of
    /// the range is claimed when the node's blocks have no room.
    pub async fn reserve(&self, net: &SharedNet, want: Want<'_>) -> Result<Ipv4Addr> {
        loop {
            match self.reserve_now(net, want) {
                Err(e)
                    if e.kind == Kind::TryAgain
                        && want.pinned.is_none()
                        && self.grow(net, want.addresses).await? => {}
                other => return other,
            }
        }
    }

    /// [`Shared::reserve`] within the blocks the node holds now.
    fn reserve_now(&self, net: &SharedNet, want: Want<'_>) -> Result<Ipv4Addr> {
        let mut held = self.held();
        // A pinned address is the identity's wherever its block is.
        let (wanted, owned) = match &want.pinned {
            Some(a) => (Some(std::slice::from_ref(a)), None),
            None => (
                want.addresses,
                self.claims
                    .as_ref()
                    .map(|_| held.owned.get(&net.vxnet).cloned().unwrap_or_default()),
            ),
        };
        let pinned = held.pinned_for_others(want.identity);
        let taken: std::borrow::Cow<'_, BTreeSet<Ipv4Addr>> =
            if held.cloud.is_empty() && want.nics.is_empty() && pinned.is_empty() {
                std::borrow::Cow::Borrowed(&held.taken)
            } else {
                let all = held.taken.iter().chain(held.cloud.keys()).chain(want.nics);
                std::borrow::Cow::Owned(all.chain(&pinned).copied().collect())
            };
        let address = net.pick(&taken, wanted, owned.as_ref())?;
        held.taken.insert(address);
        Ok(address)
    }

    /// Holds the address of a record read back at start.
    pub fn hold(&self, address: Ipv4Addr) {
        self.held().taken.insert(address);
    }

    /// The address is free again.
    pub fn free(&self, address: Ipv4Addr) {
        self.held().taken.remove(&address);
    }

    /// Tells the vxnet, from the node's NIC (link `nic_index`), that
    /// `address` is at that NIC (`nic`) now: peers that knew it at another
    /// node's (a sticky identity's last node, a block's last holder) send
    /// here at once instead of once their entries age out. The pod works
    /// without it, so a failure is only reported.
    pub fn announce(&self, nic_index: u32, nic: hostnic_netlink::Mac, address: Ipv4Addr) {
        let Some(a) = &self.announcer else { return };
        if let Err(e) = a.announce(nic_index, nic, address) {
            tracing::warn!(%address, error = %e, "announcing a shared address");
        }
    }

    /// Waits until no attachment is releasing `address` (a DEL's kernel
    /// work runs in the background, holding the attachment's lock): a
    /// sticky identity back on the node wants the address its last pod
    /// had.
    pub async fn wait_released(&self, address: Ipv4Addr) {
        let releasing = self.attachments.releasing_of(Resource::Address(address));
        if let Some(lock) = releasing {
            let _ = lock.lock().await;
        }
    }

    /// The address this node holds pinned for `identity`, as last known.
    pub fn pinned_here(&self, identity: &str) -> Option<Ipv4Addr> {
        let me = self.claims.as_ref()?.node().to_string();
        self.held()
            .pins
            .values()
            .find(|p| p.identity == identity && p.node == me)
            .map(|p| p.address)
    }

    /// Whether nodes share the ranges through claims (with Kubernetes).
    pub fn has_claims(&self) -> bool {
        self.claims.is_some()
    }

    /// Per shared vxnet: the addresses held and the blocks the node holds
    /// (0 without claims), for the metrics and `status`.
    pub fn counts(&self) -> BTreeMap<String, (usize, usize)> {
        let mut out: BTreeMap<String, (usize, usize)> = {
            let held = self.held();
            self.nets
                .iter()
                .map(|n| {
                    let blocks = held.owned.get(&n.vxnet).map_or(0, BTreeSet::len);
                    (n.vxnet.clone(), (0, blocks))
                })
                .collect()
        };
        for (_, h) in self.records() {
            out.entry(h.vxnet).or_default().0 += 1;
        }
        out
    }

    /// The addresses of `vxnet`'s shared range this node could give a pod
    /// now ([`SharedNet::free_count`]; with claims an upper bound, as the
    /// node does not know other nodes' blocks): what guests see as its
    /// `free-ips`. `None`: `vxnet` is not shared.
    pub fn free_addresses(&self, vxnet: &str) -> Option<u32> {
        let net = self.net(vxnet)?;
        let held = self.held();
        let cloud: BTreeSet<Ipv4Addr> = held.cloud.keys().copied().collect();
        let none = BTreeSet::new();
        let owned = self
            .claims
            .as_ref()
            .map(|_| held.owned.get(vxnet).unwrap_or(&none));
        // A pinned address is its identity's, not any pod's.
        let taken: std::borrow::Cow<'_, BTreeSet<Ipv4Addr>> = if held.pins.is_empty() {
            std::borrow::Cow::Borrowed(&held.taken)
        } else {
            std::borrow::Cow::Owned(held.taken.iter().chain(held.pins.keys()).copied().collect())
        };
        Some(net.free_count(&taken, &cloud, owned))
    }
}
