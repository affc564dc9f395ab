//! How an ADD gets a NIC of its own, whatever then wires it: from the
//! node's [`NicSource`] (the static inventory or the cloud pool: a warm
//! NIC, one made for the ADD, the NIC that follows a sticky identity, the
//! one the `mac` capability names, one with an address the `ips`
//! capability asks for), and how it goes back (free, missing, or, for a
//! sticky NIC, off the node to be kept in the cloud). Every NIC wiring
//! shares this one: a new way of wiring a NIC never acquires one itself.

use std::sync::Arc;

use hostnic_netlink::Mac;
use tracing::warn;

use super::super::{Adding, Handback, Outcome, Reservation};
use crate::cloud::source::CloudSource;
use crate::config::NicSpec;
use crate::error::{Error, Result};
use crate::nics::Nics;
use crate::plan::Plan;
use crate::pool::State;
use crate::record::Holds;
use crate::source::{Acquired, NicSource};

/// The node's NICs as the NIC wirings acquire and give them back.
#[derive(Debug)]
pub struct Acquisition {
    pub(super) nics: Arc<Nics>,
    source: Arc<dyn NicSource>,
    /// The cloud, for the NICs that follow a sticky identity; `None` with
    /// the static inventory (a sticky pod's address is remembered instead).
    pub(super) cloud: Option<Arc<CloudSource>>,
}

impl Acquisition {
    pub fn new(
        nics: Arc<Nics>,
        source: Arc<dyn NicSource>,
        cloud: Option<Arc<CloudSource>>,
    ) -> Acquisition {
        Acquisition {
            nics,
            source,
            cloud,
        }
    }

    /// A NIC on its way back from a DEL serves the next ADD in ms; with
    /// the cloud an ADD can still make a NIC while the VM has room.
    pub fn ready(&self) -> bool {
        let pool = self.nics.pool();
        pool.count_all(&[State::Free, State::Releasing]) > 0 || self.source.can_create(pool.len())
    }

    /// The NIC the plan asks for, reserved, as a [`Reservation`] that gives
    /// it back when dropped uncommitted.
    pub async fn reserve(&self, add: &Adding<'_>) -> Result<Reservation> {
        let (acquired, sticky) = self.acquire(add).await?;
        let nic = acquired.nic;
        let mac = nic.mac;
        let mut res = Reservation::new(
            nic,
            Holds::Nic { mac },
            acquired.how.describe(),
            self.end(mac),
        );
        res.sticky = sticky;
        Ok(res)
    }

    /// The NIC the plan asks for. A sticky identity gets the NIC that
    /// follows it, or, the first time, any NIC the plan allows, tagged to
    /// follow it from now on.
    async fn acquire(&self, add: &Adding<'_>) -> Result<(Acquired, Option<String>)> {
        let plan = add.plan;
        if let Some(mac) = plan.mac {
            return Ok((self.acquire_mac(add, mac).await?, None));
        }
        // Without a cloud no NIC follows an identity: the address is
        // remembered instead.
        let (Some(identity), Some(cloud)) = (&plan.sticky, &self.cloud) else {
            return Ok((self.acquire_any(add).await?, None));
        };
        if let Some(followed) = cloud
            .acquire_sticky(add.key, identity, plan.order.as_deref())
            .await?
        {
            return Ok((followed, Some(identity.clone())));
        }
        let acquired = self.acquire_any(add).await?;
        let mac = acquired.nic.mac;
        if let Err(e) = cloud.tag_sticky(mac, identity).await {
            self.nics.pool().release(mac, true);
            return Err(e);
        }
        Ok((acquired, Some(identity.clone())))
    }

    /// A NIC of the plan's vxnets, with one of its addresses if it has any.
    async fn acquire_any(&self, add: &Adding<'_>) -> Result<Acquired> {
        let plan = add.plan;
        match &plan.addresses {
            Some(addrs) => {
                self.source
                    .acquire_address(add.key, addrs, plan.first_vxnet())
                    .await
            }
            None => self.source.acquire(add.key, plan.order.as_deref()).await,
        }
    }

    /// The NIC the runtime named (the `mac` capability): free on this node,
    /// in the network's vxnets, with one of the plan's addresses if it has
    /// any.
    async fn acquire_mac(&self, add: &Adding<'_>, mac: Mac) -> Result<Acquired> {
        let plan: &Plan = add.plan;
        let fits = |s: &NicSpec| {
            s.mac == mac
                && plan
                    .order
                    .as_ref()
                    .is_none_or(|o| s.vxnet.as_ref().is_some_and(|v| o.contains(v)))
                && plan
                    .addresses
                    .as_ref()
                    .is_none_or(|a| a.contains(&s.address.addr()))
        };
        self.nics
            .wait_for_release(|p| p.reserve_where(add.key, fits))
            .await
            .map(Acquired::warm)
            .ok_or_else(|| {
                Error::exhausted(format!(
                    "runtimeConfig.mac: NIC {mac} is not free on this node{}",
                    match &plan.order {
                        Some(o) => format!(
                            " in network {}'s vxnets ({})",
                            add.key.network,
                            o.join(", ")
                        ),
                        None => String::new(),
                    }
                ))
            })
    }

    /// How a reserved NIC goes back: free (or missing) in the pool, or,
    /// if it follows a sticky identity, off the node to be kept for it.
    fn end(&self, mac: Mac) -> impl FnOnce(Outcome) + Send + 'static {
        let (nics, cloud) = (self.nics.clone(), self.cloud.clone());
        move |outcome| match outcome {
            Outcome::Committed => nics.pool().commit(mac),
            Outcome::HandedOver => {}
            Outcome::Lost | Outcome::Missing => nics.pool().release(mac, false),
            Outcome::GivenBack => give_back(&nics, cloud.as_ref(), mac, true),
        }
    }

    /// DEL answered for the NIC's attachment: it is on its way back.
    pub fn releasing(&self, mac: Mac) {
        self.nics.pool().start_release(mac);
    }

    /// What a release gives back once its record is gone: the NIC, free if
    /// `parked` on the node (missing if not), or kept for its identity.
    pub fn handback(&self, mac: Mac, parked: bool) -> Handback {
        let (nics, cloud) = (self.nics.clone(), self.cloud.clone());
        Handback::new(move || give_back(&nics, cloud.as_ref(), mac, parked))
    }

    /// A release that will not succeed: missing until it reappears or the
    /// agent restarts.
    pub fn abandon(&self, mac: Mac) {
        self.nics.pool().release(mac, false);
    }

    /// Sticky NICs whose attachments are over, taken off the node in the
    /// background (the restore's).
    pub fn keep(&self, macs: Vec<Mac>) {
        if let Some(cloud) = &self.cloud {
            keep(cloud, macs);
        }
    }
}

/// Frees a NIC whose attachment is over: back to the pool if `present`
/// on the node (missing if not), or, if it follows a sticky identity,
/// taken off the node in the background, kept in the cloud for it.
fn give_back(nics: &Arc<Nics>, cloud: Option<&Arc<CloudSource>>, mac: Mac, present: bool) {
    if let Some(cloud) = cloud
        && present
        && nics.pool().sticky_of(mac).is_some()
    {
        nics.pool().leave(mac);
        keep(cloud, vec![mac]);
        return;
    }
    nics.pool().release(mac, present);
}

/// Takes sticky NICs whose attachments are over off the node in the
/// background, kept in the cloud for their identities.
fn keep(cloud: &Arc<CloudSource>, macs: Vec<Mac>) {
    for mac in macs {
        let cloud = cloud.clone();
        tokio::spawn(async move {
            if let Err(e) = cloud.keep(mac).await {
                warn!(nic = %mac, error = %format!("{e:#}"), "taking a sticky NIC off the node failed; it stays out of the pool until the agent restarts")
            }
        });
    }
}
