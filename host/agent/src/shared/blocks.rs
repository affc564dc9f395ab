//! Where a node's shared addresses come from when nodes share a range
//! (with Kubernetes): blocks of the range, each claimed by one node as a
//! `HostnicBlock` object in the API server (`apiserver/blocks.rs`). The
//! claim is a create, so two nodes racing for a block end with one owner;
//! nothing else locks. Without Kubernetes there are no claims and the
//! configured range is the node's alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Instant;

use crate::error::Error;
use ipnet::Ipv4Net;
use tracing::{info, warn};

use super::{Pin, Shared, SharedNet};

/// The cluster's record of which node holds which block, and which
/// address is pinned for which sticky identity (`pins.rs`).
#[async_trait::async_trait]
pub trait Claims: Send + Sync + std::fmt::Debug {
    /// This node's name, as the claims carry it.
    fn node(&self) -> &str;
    /// Every block of `vxnet` with the node holding it, and every pin.
    async fn list(&self, vxnet: &str) -> anyhow::Result<Listing>;
    /// Claims `block` for this node; `false` when another node was first.
    async fn claim(&self, vxnet: &str, block: Ipv4Net) -> anyhow::Result<bool>;
    /// Gives `block` back (gone already is fine).
    async fn release(&self, vxnet: &str, block: Ipv4Net) -> anyhow::Result<()>;
    /// The pin of `identity`, if it has one.
    async fn pin_of(&self, identity: &str) -> anyhow::Result<Option<Pin>>;
    /// Creates `pin`; `None` when its address is pinned already.
    async fn create_pin(&self, pin: &Pin) -> anyhow::Result<Option<Pin>>;
    /// Replaces the pin as of `pin.version` with `pin`; `None` when it
    /// changed (or went) since.
    async fn replace_pin(&self, pin: &Pin) -> anyhow::Result<Option<Pin>>;
    /// Deletes the pin as of `pin.version`; `false` when it changed since.
    async fn delete_pin(&self, pin: &Pin) -> anyhow::Result<bool>;
    /// Whether the StatefulSet of a pinned identity still wants it
    /// (`None`: not a StatefulSet's, or unknown).
    async fn wants(&self, identity: &str) -> Option<bool>;
}

/// What [`Claims::list`] finds of a vxnet.
#[derive(Debug, Default)]
pub struct Listing {
    pub blocks: Vec<(Ipv4Net, String)>,
    pub pins: Vec<Pin>,
}

impl Shared {
    /// The blocks this node holds, read at start.
    pub async fn load_blocks(&self) -> anyhow::Result<()> {
        let Some(claims) = &self.claims else {
            return Ok(());
        };
        for net in &self.nets {
            let listing = claims.list(&net.vxnet).await?;
            let mine: BTreeSet<Ipv4Net> = listing
                .blocks
                .into_iter()
                .filter(|(_, node)| node == claims.node())
                .map(|(b, _)| b)
                .collect();
            info!(vxnet = %net.vxnet, blocks = mine.len(), pins = listing.pins.len(),
                  "this node's shared address blocks, and the vxnet's pinned addresses");
            let mut held = self.held();
            held.owned.insert(net.vxnet.clone(), mine);
            held.learn_pins(&net.vxnet, listing.pins, claims.node());
        }
        Ok(())
    }

    /// Claims a block of `net` that can serve `wanted` (`None`: any
    /// address): after a pick found no room in the node's blocks. One
    /// claim at a time per node; an ADD that waited finds the block the
    /// one before it claimed.
    pub(super) async fn grow(
        &self,
        net: &SharedNet,
        wanted: Option<&[Ipv4Addr]>,
    ) -> Result<bool, Error> {
        let Some(claims) = &self.claims else {
            return Ok(false);
        };
        let _one = self.claiming.lock().await;
        let owned = self.owned_in(&net.vxnet);
        let candidates = net.candidates(wanted, &owned);
        if candidates.is_empty() {
            return Ok(false);
        }
        let unavailable = |e: anyhow::Error| {
            Error::try_again(format!("claiming an address block of {}: {e:#}", net.vxnet))
        };
        self.learn_cloud(net).await.map_err(unavailable)?;
        let cloud: BTreeSet<Ipv4Net> = self.held().cloud.keys().map(|a| net.block_of(*a)).collect();
        let listing = claims.list(&net.vxnet).await.map_err(unavailable)?;
        self.held()
            .learn_pins(&net.vxnet, listing.pins, claims.node());
        let others: BTreeSet<Ipv4Net> = listing
            .blocks
            .into_iter()
            .filter(|(_, node)| node != claims.node())
            .map(|(b, _)| b)
            .collect();
        for block in candidates
            .into_iter()
            .filter(|b| !others.contains(b) && !cloud.contains(b))
        {
            if claims.claim(&net.vxnet, block).await.map_err(unavailable)? {
                info!(vxnet = %net.vxnet, %block, "claimed a shared address block");
                self.held()
                    .owned
                    .entry(net.vxnet.clone())
                    .or_default()
                    .insert(block);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Claims the blocks of restored attachments' addresses that the node
    /// does not hold (a claim deleted under a running pod). One held by
    /// another node is reported: two pods may then have the address.
    pub async fn claim_restored(&self) {
        let Some(claims) = &self.claims else { return };
        for (_, r) in self.records() {
            let Some(net) = self.net(&r.vxnet) else {
                continue;
            };
            let block = net.block_of(r.address);
            if self.owned_in(&r.vxnet).contains(&block) {
                continue;
            }
            match claims.claim(&r.vxnet, block).await {
                Ok(true) => {
                    self.held()
                        .owned
                        .entry(r.vxnet.clone())
                        .or_default()
                        .insert(block);
                }
                Ok(false) => warn!(address = %r.address, %block, vxnet = %r.vxnet,
                    "a pod here has an address of a block another node holds; delete one of the pods"),
                Err(e) => {
                    warn!(%block, error = %format!("{e:#}"), "claiming a restored pod's block")
                }
            }
        }
    }

    /// Gives back the blocks no pod has used for their vxnet's
    /// `block_idle_seconds`. A block leaves the node's set (under the lock
    /// picks take) before its claim is deleted, so no ADD gets an address
    /// of a block on its way out.
    pub async fn release_idle(&self, now: Instant) {
        let Some(claims) = &self.claims else { return };
        let _one = self.claiming.lock().await;
        let mut idle = Vec::new();
        {
            let mut held = self.held();
            let held = &mut *held;
            for net in &self.nets {
                let Some(owned) = held.owned.get_mut(&net.vxnet) else {
                    continue;
                };
                let used: BTreeSet<Ipv4Net> = held.taken.iter().map(|a| net.block_of(*a)).collect();
                owned.retain(|b| {
                    if used.contains(b) {
                        held.empty_since.remove(b);
                        return true;
                    }
                    let since = *held.empty_since.entry(*b).or_insert(now);
                    if now.duration_since(since) < net.block_idle {
                        return true;
                    }
                    held.empty_since.remove(b);
                    idle.push((net.vxnet.clone(), *b));
                    false
                });
            }
        }
        for (vxnet, block) in idle {
            match claims.release(&vxnet, block).await {
                Ok(()) => info!(%vxnet, %block, "released an idle shared address block"),
                Err(e) => {
                    warn!(%vxnet, %block, error = %format!("{e:#}"), "releasing an idle block; kept");
                    self.held().owned.entry(vxnet).or_default().insert(block);
                }
            }
        }
    }

    /// Asks the cloud which addresses of `net`'s range its NICs hold, so
    /// no pod gets one (and no block with one is claimed). Each is
    /// reported: the operator's DHCP range overlaps the shared range.
    pub async fn learn_cloud(&self, net: &SharedNet) -> anyhow::Result<()> {
        let Some(cloud) = &self.cloud else {
            return Ok(());
        };
        let found: BTreeMap<Ipv4Addr, String> = cloud
            .cloud_addresses(&net.vxnet)
            .await?
            .into_iter()
            .filter(|(_, a)| net.range.contains(a))
            .map(|(id, a)| (a, id))
            .collect();
        let mut held = self.held();
        for (a, id) in &found {
            if !held.cloud.contains_key(a) {
                warn!(vxnet = %net.vxnet, range = %net.range, address = %a, nic = %id,
                    "a cloud NIC holds an address of the shared range; no pod gets it (keep the vxnet's DHCP range out of the shared range)");
            }
        }
        held.cloud.retain(|a, _| !net.range.contains(a));
        held.cloud.extend(found);
        Ok(())
    }

    /// The blocks the node holds in `vxnet`.
    pub fn owned_in(&self, vxnet: &str) -> BTreeSet<Ipv4Net> {
        self.held().owned.get(vxnet).cloned().unwrap_or_default()
    }
}
