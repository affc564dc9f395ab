//! The start of the NIC wirings: the records of NIC attachments, whichever
//! wiring made them, and the kernel (where each NIC is) reconciled into
//! the pool. It adopts, repairs or releases, each record through the
//! wiring that made it; it never guesses.
//!
//! | record      | kernel                     | action                                   |
//! |-------------|----------------------------|------------------------------------------|
//! | committed   | (anywhere)                 | adopt: the pod was told success          |
//! | reserved    | node, or the recorded netns| roll back: the ADD never answered        |
//! | reserved    | nowhere                    | drop the record, NIC missing             |
//! | releasing   | (anywhere)                 | finish the DEL: as reserved              |
//! | none        | node, no child holds it    | park it, free                            |
//! | none        | node, a child holds it     | missing until no child holds it          |
//! | none        | nowhere                    | missing until it reappears               |
//!
//! A committed attachment whose netns path no longer opens belonged to a
//! pod that is gone if the kernel agrees: its NIC is back in the node
//! namespace (`move`), or no child holds it promiscuous any more
//! (`passthru`: the child went with the namespace). Then it is released.
//! A `passthru` NIC still held is adopted even when its path does not
//! open: the path may be one the agent's mounts do not show. A committed
//! `passthru` attachment is held on the node: up there, and never parked
//! while its pod has it.
//!
//! A NIC without a record (or whose record could not be read) is free only
//! if it is parked on the node: never one NIC to two pods. A `passthru`
//! NIC whose child lives in a namespace out of reach (a record lost, a
//! netns path re-bound) is in promiscuous mode, which `Plumber::park`
//! refuses: it stays missing until the child is gone, and the node check
//! frees it then.
//!
//! A released NIC that follows a sticky identity is not freed: it is
//! `leaving`, and the driver takes it off the node. So is a NIC the cloud
//! tags as sticky that no pod here holds (an agent stopped between a DEL
//! and its detach).

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context, bail};
use hostnic_netlink::Mac;
use ipnet::IpNet;
use tracing::{info, warn};

use super::{Exclusive, Found};
use crate::config::NicSpec;
use crate::plumb::Whereabouts;
use crate::pool::{Pool, State};
use crate::record::{Phase, Record};

/// What the start kept, and the sticky NICs to take off the node.
#[derive(Debug)]
pub struct Restored {
    pub live: Vec<Record>,
    pub leaving: Vec<Mac>,
}

pub async fn reconcile(
    found: &Found,
    exclusive: &Exclusive,
    records: Vec<Record>,
) -> anyhow::Result<Restored> {
    let nics = exclusive.nics();
    let plumber = &nics.plumber;
    let mut records: BTreeMap<Mac, Record> = records
        .into_iter()
        .filter_map(|r| Some((r.mac()?, r)))
        .collect();
    let links = plumber
        .node()
        .links()
        .await
        .context("listing the node's links")?;
    let Some(primary) = links.iter().find(|l| l.name == found.iface) else {
        bail!(
            "iface {:?} (the node's primary interface) does not exist in the node's network namespace",
            found.iface
        );
    };
    if let Some(mac) = primary.mac
        && found.nics.iter().any(|n| n.mac == mac)
    {
        bail!(
            "inventory NIC {mac} is the primary interface {}; hostnic never hands that out",
            found.iface
        );
    }
    let on_node = |mac: Mac| links.iter().find(|l| l.mac == Some(mac));

    let mut pool = Pool::default();
    let mut live = Vec::new();
    let mut rolled_back = 0;
    let mut held_on_node = Vec::new();
    for spec in &found.nics {
        let record = records.remove(&spec.mac);
        let sticky = record.as_ref().and_then(|r| r.sticky.clone());
        let state = match record {
            Some(rec) if rec.phase == Phase::Committed => {
                let wiring = exclusive.wiring_of(&rec);
                let unreachable = rec
                    .netns
                    .as_deref()
                    .is_none_or(|p| plumber.reopen(p, rec.netns_id).is_none());
                // Whether the pod is gone, asked of the kernel, not of a
                // path the agent may not see (a runtime keeping its
                // namespaces outside the agent's mounts): a moved NIC is
                // back on the node; a passthru NIC has no child holding it
                // promiscuous, wherever the child's namespace is.
                let link = on_node(spec.mac);
                let pod_gone = if wiring.stays_on_node() {
                    link.is_none_or(|l| l.promiscuity == 0)
                } else {
                    link.is_some()
                };
                if unreachable && pod_gone {
                    warn!(nic = %spec.mac, container = %rec.key.container_id, "pod is gone; releasing its NIC");
                    release_record(exclusive, &rec).await?
                } else {
                    let state = State::Held(rec.key.clone());
                    if wiring.stays_on_node() {
                        held_on_node.push(spec.mac);
                    }
                    live.push(rec);
                    state
                }
            }
            Some(rec) => {
                rolled_back += 1;
                match rec.phase {
                    Phase::Releasing => {
                        info!(nic = %spec.mac, container = %rec.key.container_id, "finishing a DEL that answered before the agent stopped")
                    }
                    _ => {
                        info!(nic = %spec.mac, container = %rec.key.container_id, "rolling back an ADD that never answered")
                    }
                }
                release_record(exclusive, &rec).await?
            }
            None => match on_node(spec.mac) {
                // The node's gateway NIC keeps its name and address.
                Some(link) if link.name == spec.mac.gateway_name() => State::Gateway,
                Some(link) => match plumber.park(link).await {
                    Ok(()) => State::Free,
                    Err(e @ hostnic_netlink::Error::Refused { .. }) => {
                        warn!(nic = %spec.mac, error = %e, "a NIC no record explains is held by a child in some pod; missing until it is not");
                        State::Missing
                    }
                    Err(e) => return Err(e).context(format!("parking NIC {}", spec.mac)),
                },
                None => State::Missing,
            },
        };
        if state == State::Missing {
            warn!(nic = %spec.mac, "inventory NIC not found in the node namespace");
        }
        pool.insert(spec.clone(), state, true);
        if let Some(identity) = sticky {
            pool.set_sticky(spec.mac, &identity);
        }
    }
    for mac in held_on_node {
        pool.set_on_node(mac);
    }

    // Records of NICs no longer in the inventory: serve their DEL, then
    // forget them.
    for (mac, rec) in records {
        match (rec.phase, spec_from_record(&rec)) {
            (Phase::Committed, Some(spec)) => {
                if rec.sticky.is_none() {
                    warn!(nic = %mac, "a pod holds a NIC that is no longer in the inventory; it is released on DEL");
                }
                // (A sticky NIC moved here is not named for this node, so
                // not in its inventory.)
                pool.insert(spec, State::Held(rec.key.clone()), false);
                if let Some(identity) = &rec.sticky {
                    pool.set_sticky(mac, identity);
                }
                if exclusive.wiring_of(&rec).stays_on_node() {
                    pool.set_on_node(mac);
                }
                live.push(rec);
            }
            _ => {
                rolled_back += 1;
                if release_record(exclusive, &rec).await? == State::Free
                    && let Some(identity) = &rec.sticky
                {
                    // Back on the node but not in its inventory: known to
                    // the pool only to be taken off again.
                    if let Some(spec) = spec_from_record(&rec) {
                        pool.insert(spec, State::Free, false);
                        pool.set_sticky(mac, identity);
                    }
                }
            }
        }
    }

    // Sticky NICs with no pod here: off the node, kept for their
    // identities.
    for (mac, identity) in &found.sticky {
        pool.set_sticky(*mac, identity);
    }
    let sticky_free: Vec<Mac> = pool
        .rows()
        .into_iter()
        .filter(|(s, state, _)| *state == State::Free && pool.sticky_of(s.mac).is_some())
        .map(|(s, ..)| s.mac)
        .collect();
    let mut leaving = Vec::new();
    for mac in sticky_free {
        if pool
            .transition(mac, &[State::Free], State::Leaving)
            .is_some()
        {
            leaving.push(mac);
        }
    }
    info!(
        adopted = live.len(),
        rolled_back,
        free = pool.free_count(),
        missing = pool.missing().len(),
        leaving = leaving.len(),
        "reconciled the NIC records with the kernel"
    );
    *nics.pool() = pool;
    Ok(Restored { live, leaving })
}

/// Brings a recorded NIC back (from its netns if that still exists).
/// Returns its new state: free if parked, missing if nowhere.
async fn release_record(exclusive: &Exclusive, rec: &Record) -> anyhow::Result<State> {
    let Some(mac) = rec.mac() else {
        bail!("the record of {} holds no NIC", rec.key.container_id);
    };
    let netns = rec
        .netns
        .as_deref()
        .and_then(|p| exclusive.nics().plumber.reopen(p, rec.netns_id));
    let wiring = exclusive.wiring_of(rec);
    let whereabouts = super::detach(wiring.as_ref(), rec, mac, netns.as_ref())
        .await
        .with_context(|| {
            format!(
                "returning NIC {mac} from container {}",
                rec.key.container_id
            )
        })?;
    Ok(match whereabouts {
        Whereabouts::Parked => State::Free,
        Whereabouts::Gone => State::Missing,
    })
}

fn spec_from_record(rec: &Record) -> Option<NicSpec> {
    let r = rec.result.as_ref()?;
    let ip = r.ips.first()?;
    match (ip.address, ip.gateway) {
        (IpNet::V4(address), Some(IpAddr::V4(gateway))) => Some(NicSpec {
            mac: rec.mac()?,
            address,
            gateway,
            vxnet: None,
        }),
        _ => None,
    }
}
