//! The agent's answers to ADD, DEL, CHECK, GC and STATUS, one verb per
//! module. An attachment — (network, container, interface) — is the unit
//! each verb works on.
//!
//! ADD is a pipeline a reader can follow in [`add`]: **plan** (the policy
//! guests decide the vxnet order and the address; [`plan`]) → **acquire**
//! (a NIC from the node's [`NicSource`]: the static inventory or the cloud
//! pool) → **wire** (the routes are decided for that NIC, then netlink moves
//! and configures it) → **record** (the allocation is committed to the
//! store before the pod is told). Each handler validates first, then acts,
//! and on failure undoes what it did: a request that fails leaves the NIC
//! parked and free, never half wired, and never recorded for a pod that was
//! not told "success".

mod add;
mod check;
mod del;
mod gc;
mod networks;
mod plan;
mod shared;
mod shared_restore;
mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hostnic_netlink::{Mac, NsId};
use hostnic_proto::cni::{self, CniError, code};
use hostnic_proto::rpc::{Reply, Target};
use tracing::warn;

use crate::audit::Audit;
use crate::config::Config;
use crate::decisions::For;
use crate::nics::Nics;
use crate::policy::Policies;
use crate::source::NicSource;
use crate::sticky::Sticky;
use crate::store::{Key, Store};

#[derive(Debug)]
pub struct Service {
    /// The node's NICs: the pool and the plumber.
    pub(crate) nics: Arc<Nics>,
    /// Where an ADD's NIC comes from: the static inventory or the cloud.
    pub(crate) source: Arc<dyn NicSource>,
    /// The allocation records: the durable truth of who holds which NIC.
    pub(crate) store: Store,
    /// Attachments in shared-NIC mode: an address and a veth, no NIC.
    pub(crate) shared: Arc<crate::shared::Shared>,
    pub(crate) default_mtu: u32,
    /// The policy hooks (the built-in guests with `hooks.enabled = false`).
    pub(crate) policies: Policies,
    /// The API server's view; `None` outside Kubernetes.
    pub(crate) kube: Option<crate::apiserver::KubeView>,
    /// Each ADD's decision and why, the latest ones.
    pub(crate) audit: Audit,
    sticky: Sticky,
    /// Releases under way per pod namespace: a NIC a DEL answered for may
    /// still sit in the pod under its interface name, so an ADD into the
    /// same namespace (a runtime re-connecting a container) waits for it.
    releasing_in: Mutex<HashMap<NsId, usize>>,
}

impl Service {
    pub fn new(
        cfg: &Config,
        nics: Arc<Nics>,
        source: Arc<dyn NicSource>,
        store: Store,
        shared: Arc<crate::shared::Shared>,
        policies: Policies,
        kube: Option<crate::apiserver::KubeView>,
    ) -> Service {
        Service {
            nics,
            source,
            store,
            shared,
            default_mtu: cfg.mtu,
            policies,
            kube,
            audit: Audit::default(),
            sticky: Sticky::new(&cfg.state_dir),
            releasing_in: Mutex::new(HashMap::new()),
        }
    }

    /// The answer an earlier ADD of this NIC's attachment recorded.
    fn recorded_result(&self, mac: Mac) -> Result<Reply, CniError> {
        self.store
            .get(mac)
            .map_err(|e| internal(format!("reading the allocation record of NIC {mac}: {e}")))?
            .and_then(|a| a.result)
            .map(Reply::Added)
            .ok_or_else(|| internal(format!("NIC {mac} is held but its record has no result")))
    }

    /// Drops the record and returns the NIC to the pool (or marks it missing).
    fn forget(&self, mac: Mac, present: bool) {
        if present && self.nics.pool().sticky_of(mac).is_some() {
            // Its record goes once it is off the node: a restart before
            // then finishes the job.
            self.nics.pool().leave(mac);
            self.keep(vec![mac]);
            return;
        }
        if let Err(e) = self.store.remove(mac) {
            // The stale reservation is rolled back at the next start.
            warn!(nic = %mac, error = %e, "removing an allocation record");
        }
        self.nics.pool().release(mac, present);
    }

    /// Takes sticky NICs whose attachments are over off the node in the
    /// background, kept in the cloud for their identities, and drops
    /// their records once they are.
    pub fn keep(&self, macs: Vec<Mac>) {
        for mac in macs {
            let (source, store) = (self.source.clone(), self.store.clone());
            tokio::spawn(async move {
                match source.keep(mac).await {
                    Ok(()) => {
                        if let Err(e) = store.remove(mac) {
                            warn!(nic = %mac, error = %e, "removing the record of a kept sticky NIC");
                        }
                    }
                    Err(e) => {
                        warn!(nic = %mac, error = %format!("{e:#}"), "taking a sticky NIC off the node failed; it stays out of the pool until the agent restarts")
                    }
                }
            });
        }
    }
}

fn who(key: &Key) -> For<'_> {
    For {
        container_id: &key.container_id,
        ifname: &key.ifname,
    }
}

fn key_of(t: &Target) -> Key {
    Key {
        network: t.network.clone(),
        container_id: t.container_id.clone(),
        ifname: t.ifname.clone(),
    }
}

fn validate_target(t: &Target) -> Result<(), CniError> {
    cni::validate_container_id(&t.container_id)?;
    cni::validate_ifname(&t.ifname)
}

fn internal(what: impl std::fmt::Display) -> CniError {
    CniError::new(code::INTERNAL, what.to_string())
}
