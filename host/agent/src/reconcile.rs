//! Start-up reconciliation of the two truths the agent has without a cloud:
//! its record (which attachment holds which NIC) and the kernel (where each
//! NIC is). It adopts, repairs or releases; it never guesses.
//!
//! | record      | kernel                     | action                                   |
//! |-------------|----------------------------|------------------------------------------|
//! | committed   | (anywhere)                 | adopt: the pod was told success          |
//! | reserved    | node, or the recorded netns| roll back: the ADD never answered        |
//! | reserved    | nowhere                    | drop the record, NIC missing             |
//! | releasing   | (anywhere)                 | finish the DEL: as reserved              |
//! | none        | node                       | park it, free                            |
//! | none        | nowhere                    | missing until it reappears               |
//!
//! A committed attachment whose NIC is back in the node namespace while its
//! netns path no longer exists belonged to a pod that is gone: released.
//!
//! A released NIC that follows a sticky identity is not freed: it is
//! `leaving`, its record kept, and the caller takes it off the node.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context, bail};
use hostnic_netlink::Mac;
use ipnet::IpNet;
use tracing::{info, warn};

use crate::config::{Config, NicSpec};
use crate::plumb::{Plumber, Whereabouts};
use crate::pool::{Pool, State};
use crate::store::{Allocation, Phase, Store};

/// The pool rebuilt, and the sticky NICs released meanwhile, to be taken
/// off the node (their records stay until they are).
#[derive(Debug)]
pub struct Reconciled {
    pub pool: Pool,
    pub leaving: Vec<Mac>,
}

pub async fn reconcile(
    cfg: &Config,
    inventory: &[NicSpec],
    plumber: &Plumber,
    store: &Store,
) -> anyhow::Result<Reconciled> {
    let mut records: BTreeMap<Mac, Allocation> = store
        .load()
        .with_context(|| {
            format!(
                "reading allocation records under {}",
                cfg.state_dir.display()
            )
        })?
        .into_iter()
        .map(|a| (a.mac, a))
        .collect();
    let links = plumber
        .node()
        .links()
        .await
        .context("listing the node's links")?;
    let Some(primary) = links.iter().find(|l| l.name == cfg.iface) else {
        bail!(
            "iface {:?} (the node's primary interface) does not exist in the node's network namespace",
            cfg.iface
        );
    };
    if let Some(mac) = primary.mac
        && inventory.iter().any(|n| n.mac == mac)
    {
        bail!(
            "inventory NIC {mac} is the primary interface {}; hostnic never hands that out",
            cfg.iface
        );
    }
    let on_node = |mac: Mac| links.iter().find(|l| l.mac == Some(mac));

    let mut pool = Pool::default();
    let mut leaving = Vec::new();
    let (mut adopted, mut rolled_back, mut free, mut missing) = (0, 0, 0, 0);
    for spec in inventory {
        let record = records.remove(&spec.mac);
        let sticky = record.as_ref().and_then(|r| r.sticky.clone());
        let state = match record {
            Some(rec) if rec.phase == Phase::Committed => {
                if on_node(spec.mac).is_some()
                    && rec
                        .netns
                        .as_deref()
                        .is_none_or(|p| plumber.reopen(p, rec.netns_id).is_none())
                {
                    warn!(nic = %spec.mac, container = %rec.key.container_id, "pod is gone; releasing its NIC");
                    release_record(plumber, store, &rec).await?
                } else {
                    adopted += 1;
                    State::Held(rec.key)
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
                release_record(plumber, store, &rec).await?
            }
            None => match on_node(spec.mac) {
                // The node's gateway NIC keeps its name and address.
                Some(link) if link.name == spec.mac.gateway_name() => State::Gateway,
                Some(link) => {
                    plumber
                        .park(link)
                        .await
                        .with_context(|| format!("parking NIC {}", spec.mac))?;
                    State::Free
                }
                None => State::Missing,
            },
        };
        match state {
            State::Free => free += 1,
            State::Missing => {
                missing += 1;
                warn!(nic = %spec.mac, "inventory NIC not found in the node namespace");
            }
            State::Leaving => leaving.push(spec.mac),
            _ => {}
        }
        pool.insert(spec.clone(), state, true);
        if let Some(identity) = sticky {
            pool.set_sticky(spec.mac, &identity);
        }
    }

    // Records of NICs no longer in the inventory: serve their DEL, then
    // forget them.
    for (mac, rec) in records {
        match (rec.phase, spec_from_record(&rec)) {
            (Phase::Committed, Some(spec)) if rec.sticky.is_some() => {
                // A sticky NIC moved here: not named for this node, so not
                // in its inventory.
                adopted += 1;
                let identity = rec.sticky.clone().unwrap_or_default();
                pool.insert(spec, State::Held(rec.key), false);
                pool.set_sticky(mac, &identity);
            }
            (Phase::Committed, Some(spec)) => {
                warn!(nic = %mac, "a pod holds a NIC that is no longer in the inventory; it is released on DEL");
                adopted += 1;
                pool.insert(spec, State::Held(rec.key), false);
            }
            _ => {
                rolled_back += 1;
                if release_record(plumber, store, &rec).await? == State::Leaving {
                    leaving.push(mac);
                }
            }
        }
    }
    info!(
        adopted,
        rolled_back,
        free,
        missing,
        leaving = leaving.len(),
        "reconciled allocation record with the kernel"
    );
    Ok(Reconciled { pool, leaving })
}

/// Brings a recorded NIC back (from its netns if that still exists) and
/// drops the record; a sticky NIC back on the node keeps it (as
/// `releasing`) and is `leaving`. Returns the NIC's new state.
async fn release_record(
    plumber: &Plumber,
    store: &Store,
    rec: &Allocation,
) -> anyhow::Result<State> {
    let netns = rec
        .netns
        .as_deref()
        .and_then(|p| plumber.reopen(p, rec.netns_id));
    let whereabouts = plumber
        .detach(rec.mac, netns.as_ref())
        .await
        .with_context(|| {
            format!(
                "returning NIC {} from container {}",
                rec.mac, rec.key.container_id
            )
        })?;
    if whereabouts == Whereabouts::Parked && rec.sticky.is_some() {
        let mut kept = rec.clone();
        kept.phase = Phase::Releasing;
        store
            .put(&kept)
            .with_context(|| format!("rewriting the record of NIC {}", rec.mac))?;
        return Ok(State::Leaving);
    }
    store
        .remove(rec.mac)
        .with_context(|| format!("removing the record of NIC {}", rec.mac))?;
    Ok(match whereabouts {
        Whereabouts::Parked => State::Free,
        Whereabouts::Gone => State::Missing,
    })
}

fn spec_from_record(rec: &Allocation) -> Option<NicSpec> {
    let r = rec.result.as_ref()?;
    let ip = r.ips.first()?;
    match (ip.address, ip.gateway) {
        (IpNet::V4(address), Some(IpAddr::V4(gateway))) => Some(NicSpec {
            mac: rec.mac,
            address,
            gateway,
            vxnet: None,
        }),
        _ => None,
    }
}
