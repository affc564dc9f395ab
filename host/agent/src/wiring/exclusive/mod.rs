//! `move`: the pod gets a NIC of its own, moved into its namespace under
//! its interface name and configured there; DEL brings it back to the
//! node, parked (down, no addresses, `hn<mac>`), ready for the next pod.
//! The NIC comes from the node's [`NicSource`]: the static inventory or
//! the cloud pool (a warm NIC, one made for the ADD, or the NIC that
//! follows a sticky identity). The kernel side is `plumb.rs`.

mod restore;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use hostnic_netlink::{Mac, Netns};
use tracing::{info, warn};

use super::{Adding, Driver, Handback, Outcome, Reservation, Wired};
use crate::cloud::source::CloudSource;
use crate::config::NicSpec;
use crate::error::{Error, Kind, Result};
use crate::nics::Nics;
use crate::plan::{Plan, Routes};
use crate::plumb::{PlumbError, Whereabouts, Wiring};
use crate::pool::State;
use crate::record::{Holds, Record, Resource};
use crate::source::{Acquired, NicSource};

/// What the restore at start works from: the NICs the node should have
/// (the inventory, or what the cloud says is attached) and those the
/// cloud tags as following a sticky identity.
#[derive(Debug, Default)]
pub struct Found {
    /// The node's primary interface: never a pod's.
    pub iface: String,
    pub nics: Vec<NicSpec>,
    pub sticky: Vec<(Mac, String)>,
}

#[derive(Debug)]
pub struct ExclusiveNic {
    nics: Arc<Nics>,
    source: Arc<dyn NicSource>,
    /// The cloud, for the NICs that follow a sticky identity; `None` with
    /// the static inventory (a sticky pod's address is remembered instead).
    cloud: Option<Arc<CloudSource>>,
    /// Taken by [`Driver::restore`].
    found: Mutex<Option<Found>>,
}

impl ExclusiveNic {
    pub fn new(
        nics: Arc<Nics>,
        source: Arc<dyn NicSource>,
        cloud: Option<Arc<CloudSource>>,
        found: Found,
    ) -> ExclusiveNic {
        ExclusiveNic {
            nics,
            source,
            cloud,
            found: Mutex::new(Some(found)),
        }
    }

    /// The NIC the plan asks for, reserved. A sticky identity gets the
    /// NIC that follows it, or, the first time, any NIC the plan allows,
    /// tagged to follow it from now on.
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

    /// Whether the NIC is parked on the node (free to hand out again).
    async fn parked(&self, mac: Mac) -> bool {
        matches!(
            self.nics
                .plumber
                .node()
                .link_by_mac(mac, Some(&mac.parked_name()))
                .await,
            Ok(Some(_))
        )
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

#[async_trait::async_trait]
impl Driver for ExclusiveNic {
    fn name(&self) -> &'static str {
        "move"
    }

    /// A NIC on its way back from a DEL serves the next ADD in ms; with
    /// the cloud an ADD can still make a NIC while the VM has room.
    fn ready(&self) -> bool {
        let pool = self.nics.pool();
        pool.count_all(&[State::Free, State::Releasing]) > 0 || self.source.can_create(pool.len())
    }

    async fn reserve(&self, add: &Adding<'_>) -> Result<Reservation> {
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

    async fn wire(&self, add: &Adding<'_>, res: &mut Reservation, routes: Routes) -> Result<Wired> {
        let nic = &res.interface;
        let wiring = Wiring {
            mac: nic.mac,
            ifname: add.key.ifname.clone(),
            address: nic.address,
            mtu: add.mtu,
            routes,
        };
        let gateway = nic.gateway;
        let started = Instant::now();
        let attached = self.nics.plumber.attach(&wiring, add.netns).await;
        let kernel = started.elapsed();
        let Err(e) = attached else {
            return Ok(Wired {
                interface: wiring,
                gateway,
                kernel,
            });
        };
        let kind = match e {
            PlumbError::NicMissing(_) => Kind::Gone,
            PlumbError::NameTaken(_) => Kind::InvalidEnv,
            _ => Kind::Internal,
        };
        // Ask the kernel where the NIC is rather than infer it from the
        // error: free only if it is back in the node namespace. One that
        // may still be in the pod keeps its record, for the next start to
        // bring it back.
        if kind == Kind::Gone {
            res.missing();
        } else if !self.parked(wiring.mac).await {
            res.lose();
        }
        warn!(nic = %wiring.mac, container = %add.key.container_id, error = %e, "wiring a NIC failed; NIC released");
        Err(Error::new(
            kind,
            format!("attaching NIC {} as {}: {e}", wiring.mac, add.key.ifname),
        ))
    }

    async fn verify(&self, record: &Record, netns: &Netns) -> Result<()> {
        let (Some(mac), Some(result)) = (record.mac(), &record.result) else {
            return Err(Error::internal("the record has no NIC or no result"));
        };
        let w = Wiring::from_result(result, mac).map_err(Error::internal)?;
        match self.nics.plumber.verify(&w, netns).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(diff)) => Err(Error::new(Kind::CheckFailed, diff)),
            Err(e) => Err(Error::internal(format!(
                "checking container {}: {e}",
                record.key.container_id
            ))),
        }
    }

    fn releasing(&self, record: &Record) {
        if let Some(mac) = record.mac() {
            self.nics.pool().start_release(mac);
        }
    }

    async fn release(&self, record: &Record, netns: Option<&Netns>) -> Result<Handback> {
        let Some(mac) = record.mac() else {
            return Err(Error::internal("the record holds no NIC"));
        };
        let key = &record.key;
        self.nics.pool().start_release(mac);
        let whereabouts = self.nics.plumber.detach(mac, netns).await.map_err(|e| {
            Error::internal(format!(
                "returning NIC {mac} from container {}: {e}",
                key.container_id
            ))
        })?;
        if whereabouts == Whereabouts::Gone {
            warn!(nic = %mac, container = %key.container_id, "NIC not found in the pod or the node; marked missing");
        }
        info!(nic = %mac, container = %key.container_id, ifname = %key.ifname, ?whereabouts, "DEL");
        let (nics, cloud) = (self.nics.clone(), self.cloud.clone());
        let parked = whereabouts == Whereabouts::Parked;
        Ok(Handback::new(move || {
            give_back(&nics, cloud.as_ref(), mac, parked)
        }))
    }

    fn abandon(&self, record: &Record) {
        if let Some(mac) = record.mac() {
            tracing::error!(nic = %mac, "bringing a NIC back failed; marked missing until it reappears or the agent restarts");
            self.nics.pool().release(mac, false);
        }
    }

    async fn restore(
        &self,
        records: Vec<Record>,
        _unreadable: &[Resource],
    ) -> anyhow::Result<Vec<Record>> {
        // A NIC whose record could not be read is one without a record:
        // the kernel says where it is, and it is free only if parked.
        let found = self
            .found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        let restored = restore::reconcile(&found, &self.nics, records).await?;
        if let Some(cloud) = &self.cloud {
            keep(cloud, restored.leaving);
        }
        Ok(restored.live)
    }
}
