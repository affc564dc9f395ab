//! A NIC of the pod's own. Every NIC wiring acquires its NIC the same way
//! (`acquire.rs`: the node's NIC source, sticky NICs, the `mac` and `ips`
//! capabilities) and differs only in its kernel side, a [`NicWiring`],
//! one file each:
//!
//! - `moved.rs`: `move`, the NIC itself moved into the pod under its
//!   interface name and configured there; DEL brings it back to the node,
//!   parked (down, no addresses, `hn<mac>`). The kernel side is
//!   `plumb.rs`.
//! - `passthru.rs`: `passthru`, the NIC stays on the node and the pod gets
//!   a passthru macvlan of it, made straight in its namespace (no device
//!   move); DEL deletes the child and parks the NIC.
//!
//! One [`ExclusiveNic`] driver per wiring; they share the acquisition and
//! the start (`restore.rs`: the node has one pool of NICs, whichever
//! wiring holds each). A new way of wiring a NIC is a file implementing
//! [`NicWiring`], a line in [`wirings`] and a config value.

mod acquire;
mod moved;
mod passthru;
mod restore;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hostnic_netlink::{Mac, Netns};
use tracing::{info, warn};

pub use acquire::Acquisition;

use super::{Adding, Driver, Handback, Reservation, Wired};
use crate::config::NicSpec;
use crate::error::{Error, Kind, Result};
use crate::nics::Nics;
use crate::plan::Routes;
use crate::plumb::{PlumbError, Whereabouts, Wiring};
use crate::record::{Record, Resource};

/// The kernel side of one way of wiring a NIC of the pod's own.
#[async_trait::async_trait]
pub trait NicWiring: Send + Sync + fmt::Debug {
    /// The wiring's name in the config, the records and `status`.
    fn name(&self) -> &'static str;

    /// Whether the NIC stays in the node's namespace while a pod has it
    /// (up, with a child in the pod): the node's upkeep must then never
    /// take it for a free NIC, park it or configure it.
    fn stays_on_node(&self) -> bool {
        false
    }

    /// Gives the pod its interface from the NIC parked on the node, as
    /// `w` says. On failure the NIC is parked again before the error
    /// returns (or the error says it could not be).
    async fn attach(&self, w: &Wiring, pod: &Netns) -> Result<(), PlumbError>;

    /// Takes the pod's interface apart (from `pod`, when it can be
    /// reached) and parks the NIC. Idempotent: what is gone is done.
    async fn detach(
        &self,
        mac: Mac,
        pod: Option<&Netns>,
    ) -> Result<Whereabouts, hostnic_netlink::Error>;

    /// Whether the pod still has exactly what `w` says; the answer names
    /// the first difference.
    async fn verify(
        &self,
        w: &Wiring,
        pod: &Netns,
    ) -> Result<Result<(), String>, hostnic_netlink::Error>;
}

/// Every NIC wiring this agent knows, whatever the config chooses: a
/// record made by any of them is released by its own after a config
/// change.
pub fn wirings(nics: &Arc<Nics>) -> Vec<Arc<dyn NicWiring>> {
    vec![
        Arc::new(moved::Move::new(nics.clone())),
        Arc::new(passthru::Passthru::new(nics.clone())),
    ]
}

/// Takes `record`'s NIC `mac` back with `wiring`, from `pod` when it can
/// be reached. A NIC that a child out of reach still holds (DEL named no
/// namespace the agent could enter, yet the pod's lives on, kept by
/// someone) is reported gone from the node's use: missing until that
/// namespace goes and the node's check finds the NIC childless.
async fn detach(
    wiring: &dyn NicWiring,
    record: &Record,
    mac: Mac,
    pod: Option<&Netns>,
) -> Result<Whereabouts, hostnic_netlink::Error> {
    match wiring.detach(mac, pod).await {
        Err(e @ hostnic_netlink::Error::Refused { .. }) => {
            warn!(nic = %mac, container = %record.key.container_id, error = %e, "a NIC's child could not be reached; missing until it is gone");
            Ok(Whereabouts::Gone)
        }
        other => other,
    }
}

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

/// What the NIC drivers share: the acquisition, every wiring (a record
/// is released by the one that made it), and what the start works from.
#[derive(Debug)]
pub struct Exclusive {
    acquisition: Acquisition,
    wirings: Vec<Arc<dyn NicWiring>>,
    /// Taken by the first restore (see [`ExclusiveNic::restore`]).
    found: Mutex<Option<Found>>,
}

impl Exclusive {
    pub fn new(
        acquisition: Acquisition,
        wirings: Vec<Arc<dyn NicWiring>>,
        found: Found,
    ) -> Arc<Exclusive> {
        Arc::new(Exclusive {
            acquisition,
            wirings,
            found: Mutex::new(Some(found)),
        })
    }

    /// The driver of the wiring named `name`, if there is one.
    pub fn driver(self: &Arc<Self>, name: &str) -> Option<Arc<ExclusiveNic>> {
        let wiring = self.wirings.iter().find(|w| w.name() == name)?;
        Some(Arc::new(ExclusiveNic {
            common: self.clone(),
            wiring: wiring.clone(),
        }))
    }

    /// The wiring that made `record` (records older than the field are
    /// `move`'s).
    fn wiring_of(&self, record: &Record) -> &Arc<dyn NicWiring> {
        let name = record.wiring();
        self.wirings
            .iter()
            .find(|w| w.name() == name)
            .unwrap_or_else(|| {
                warn!(wiring = name, nic = ?record.mac(), "a record of a NIC wiring this agent does not know; released as the first it knows");
                &self.wirings[0]
            })
    }

    fn nics(&self) -> &Arc<Nics> {
        &self.acquisition.nics
    }
}

/// The driver of one NIC wiring.
#[derive(Debug)]
pub struct ExclusiveNic {
    common: Arc<Exclusive>,
    wiring: Arc<dyn NicWiring>,
}

impl ExclusiveNic {
    /// Whether the NIC is parked on the node (free to hand out again): on
    /// the node, and no child of it holds it.
    async fn parked(&self, mac: Mac) -> bool {
        matches!(
            self.common
                .nics()
                .plumber
                .node()
                .link_by_mac(mac, Some(&mac.parked_name()))
                .await,
            Ok(Some(l)) if l.promiscuity == 0
        )
    }
}

#[async_trait::async_trait]
impl Driver for ExclusiveNic {
    fn name(&self) -> &'static str {
        self.wiring.name()
    }

    fn ready(&self) -> bool {
        self.common.acquisition.ready()
    }

    /// Every NIC record, whichever wiring made it: the NIC wirings restore
    /// together (one pool of the node's NICs), so the first NIC driver in
    /// restore order takes them all.
    fn restores(&self, record: &Record) -> bool {
        record.mac().is_some()
    }

    async fn reserve(&self, add: &Adding<'_>) -> Result<Reservation> {
        let res = self.common.acquisition.reserve(add).await?;
        if self.wiring.stays_on_node() {
            self.common.nics().pool().set_on_node(res.interface.mac);
        }
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
        let attached = self.wiring.attach(&wiring, add.netns).await;
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
        // error: free only if it is parked on the node again. One that
        // may still be in the pod keeps its record, for the next start to
        // bring it back.
        if kind == Kind::Gone {
            res.missing();
        } else if !self.parked(wiring.mac).await {
            res.lose();
        }
        warn!(nic = %wiring.mac, container = %add.key.container_id, wiring = self.name(), error = %e, "wiring a NIC failed; NIC released");
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
        match self.wiring.verify(&w, netns).await {
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
            self.common.acquisition.releasing(mac);
        }
    }

    async fn release(&self, record: &Record, netns: Option<&Netns>) -> Result<Handback> {
        let Some(mac) = record.mac() else {
            return Err(Error::internal("the record holds no NIC"));
        };
        let key = &record.key;
        self.common.acquisition.releasing(mac);
        let whereabouts = detach(self.wiring.as_ref(), record, mac, netns)
            .await
            .map_err(|e| {
                Error::internal(format!(
                    "returning NIC {mac} from container {}: {e}",
                    key.container_id
                ))
            })?;
        if whereabouts == Whereabouts::Gone {
            warn!(nic = %mac, container = %key.container_id, "NIC not found in the pod or the node; marked missing");
        }
        info!(nic = %mac, container = %key.container_id, ifname = %key.ifname, wiring = self.name(), ?whereabouts, "DEL");
        Ok(self
            .common
            .acquisition
            .handback(mac, whereabouts == Whereabouts::Parked))
    }

    fn abandon(&self, record: &Record) {
        if let Some(mac) = record.mac() {
            tracing::error!(nic = %mac, "bringing a NIC back failed; marked missing until it reappears or the agent restarts");
            self.common.acquisition.abandon(mac);
        }
    }

    /// The first NIC driver to restore reconciles every NIC record with
    /// the kernel; the others find the work done.
    async fn restore(
        &self,
        records: Vec<Record>,
        _unreadable: &[Resource],
    ) -> anyhow::Result<Vec<Record>> {
        // A NIC whose record could not be read is one without a record:
        // the kernel says where it is, and it is free only if parked.
        let Some(found) = self
            .common
            .found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return Ok(Vec::new());
        };
        let restored = restore::reconcile(&found, &self.common, records).await?;
        self.common.acquisition.keep(restored.leaving);
        Ok(restored.live)
    }
}
