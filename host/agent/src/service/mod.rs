//! The agent's answers to ADD, DEL, CHECK, GC and STATUS, one verb per
//! module. An attachment — (network, container, interface) — is the unit
//! each verb works on; the attachment table (`attachments.rs`) says which
//! exist, the wiring driver that made one (`wiring/`) does the kernel's
//! part. No verb asks which driver it holds.
//!
//! ADD is a pipeline a reader can follow in [`add`]: **plan** (the policy
//! guests decide the vxnet order and the address; [`decide`]) →
//! **acquire** (the driver of the plan's vxnet reserves a NIC or an
//! address) → **wire** (the routes are decided for that interface, the
//! reservation recorded, the driver makes it) → **record** (committed
//! before the pod is told). A request that fails leaves nothing behind:
//! the attempt gives back what it took when it is dropped.

mod add;
mod check;
mod decide;
mod del;
mod gc;
mod networks;
mod restore;
mod status;

use std::sync::Arc;
use std::time::Duration;

use hostnic_netlink::{Netns, NsId};
use hostnic_proto::cni;
use hostnic_proto::rpc::Target;
use tracing::warn;

use crate::attachments::Attachments;
use crate::audit::Audit;
use crate::cloud::source::CloudSource;
use crate::config::Config;
use crate::decisions::For;
use crate::error::{Error, Result};
use crate::netpol::Enforcer;
use crate::nics::Nics;
use crate::plumb::Namespaces;
use crate::policy::Policies;
use crate::record::{Key, Record};
use crate::return_path::{self, ReturnPath};
use crate::source::NicSource;
use crate::sticky::Sticky;
use crate::store::Records;
use crate::wiring::{Driver, Drivers};

/// How long an ADD waits for a release under way in its pod's namespace.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Service {
    /// The node's attachments: which exist, and their records.
    pub(crate) attachments: Arc<Attachments>,
    /// How each attachment is wired, by vxnet.
    pub(crate) drivers: Drivers,
    /// The records on disk: the durable truth of who holds what.
    pub(crate) store: Arc<dyn Records>,
    /// The node's NICs: the pool and the plumber.
    pub(crate) nics: Arc<Nics>,
    /// The kernel's say on pods' namespaces.
    pub(crate) namespaces: Arc<dyn Namespaces>,
    /// The node's vxnets and what it knows of them (the guests' facts).
    pub(crate) source: Arc<dyn NicSource>,
    /// The cloud's own duties (the node's gateway NICs, its counts);
    /// `None` with the static inventory.
    pub(crate) cloud: Option<Arc<CloudSource>>,
    pub(crate) default_mtu: u32,
    /// The policy hooks (the built-in guests with `hooks.enabled = false`).
    pub(crate) policies: Policies,
    /// The API server's view; `None` outside Kubernetes.
    pub(crate) kube: Option<crate::apiserver::KubeView>,
    /// Each ADD's decision and why, the latest ones.
    pub(crate) audit: Audit,
    /// Where the pods' Service answers go back; `None` outside Kubernetes.
    pub(crate) return_path: Option<Arc<ReturnPath>>,
    /// The pods' NetworkPolicy rules; `None` unless enforced.
    pub(crate) netpol: Option<Arc<Enforcer>>,
    sticky: Sticky,
}

/// What a [`Service`] is made of.
#[derive(Debug)]
pub struct Parts {
    pub attachments: Arc<Attachments>,
    pub drivers: Drivers,
    pub store: Arc<dyn Records>,
    pub nics: Arc<Nics>,
    pub namespaces: Arc<dyn Namespaces>,
    pub source: Arc<dyn NicSource>,
    pub cloud: Option<Arc<CloudSource>>,
    pub policies: Policies,
    pub kube: Option<crate::apiserver::KubeView>,
    pub return_path: Option<Arc<ReturnPath>>,
    pub netpol: Option<Arc<Enforcer>>,
}

impl Service {
    pub fn new(cfg: &Config, parts: Parts) -> Service {
        Service {
            attachments: parts.attachments,
            drivers: parts.drivers,
            store: parts.store,
            nics: parts.nics,
            namespaces: parts.namespaces,
            source: parts.source,
            cloud: parts.cloud,
            default_mtu: cfg.mtu,
            policies: parts.policies,
            kube: parts.kube,
            audit: Audit::default(),
            return_path: parts.return_path,
            netpol: parts.netpol,
            sticky: Sticky::new(&cfg.state_dir),
        }
    }

    /// Waits (at most [`RELEASE_WAIT`]) until no release is under way in
    /// namespace `ns`, so an ADD never meets an interface a DEL answered
    /// for: each release holds its attachment's lock until it is done.
    async fn wait_for_releases_in(&self, ns: NsId) {
        let releasing = self.attachments.releasing_in(ns);
        if releasing.is_empty() {
            return;
        }
        let all = futures::future::join_all(releasing.iter().map(|l| l.lock()));
        if tokio::time::timeout(RELEASE_WAIT, all).await.is_err() {
            warn!(netns = %ns, "a release in the pod's namespace is still under way; going on");
        }
    }

    /// Waits (at most [`RELEASE_WAIT`]) for the release under way of the
    /// attachment `key`.
    async fn wait_for_release_of(&self, key: &Key) {
        let Some(lock) = self.attachments.releasing_key(key) else {
            return;
        };
        if tokio::time::timeout(RELEASE_WAIT, lock.lock())
            .await
            .is_err()
        {
            warn!(container = %key.container_id, ifname = %key.ifname, "the release of the same attachment is still under way");
        }
    }

    /// Releases an attachment now (its lock is the caller's): the driver
    /// takes it apart, the record goes, then the resource is free. A
    /// release that fails leaves the record for the next start and the
    /// resource out of use.
    async fn release_now(&self, record: &Record, netns: Option<&Netns>) -> Result<()> {
        let driver = self.drivers.for_record(record);
        unshape(record, netns).await;
        match driver.release(record, netns).await {
            Ok(freed) => {
                self.forget(record);
                drop(freed);
                Ok(())
            }
            Err(e) => {
                driver.abandon(record);
                self.attachments.remove(record);
                Err(e)
            }
        }
    }

    /// Routes the Service answers of an attachment whose interface sits on
    /// `vxnet` back through the nodes that translated them
    /// (`return_path.rs`); an interface behind the node needs nothing.
    fn route_answers(
        &self,
        record: &Record,
        vxnet: Option<&str>,
        driver: &dyn Driver,
        netns: Option<&Netns>,
    ) {
        let (Some(path), Some(vxnet), Some(netns)) = (&self.return_path, vxnet, netns) else {
            return;
        };
        if !driver.on_the_vxnet() {
            return;
        }
        match netns.try_clone() {
            Ok(netns) => path.attach(
                &record.key,
                return_path::Target {
                    netns: Arc::new(netns),
                    ifname: record.key.ifname.clone(),
                    vxnet: vxnet.to_string(),
                },
            ),
            Err(e) => {
                warn!(container = %record.key.container_id, error = %e, "the pod's Service answers are not routed back through their nodes")
            }
        }
    }

    /// Drops an attachment's record and its entry (its resource is the
    /// caller's to give back, after this).
    fn forget(&self, record: &Record) {
        if let Err(e) = self.store.remove(record.resource()) {
            // Left on disk, the next start releases it again.
            warn!(resource = %record.resource(), error = %e, "removing a record");
        }
        if let Some(path) = &self.return_path {
            path.detach(&record.key);
        }
        if let Some(netpol) = &self.netpol {
            netpol.forget(&record.key);
        }
        self.attachments.remove(record);
    }
}

/// Takes the pod's limits off its interface's ifb before the interface
/// goes (the ifb would stay in the pod's namespace). Best effort: a
/// namespace that is gone took it along.
async fn unshape(record: &Record, netns: Option<&Netns>) {
    if let (Some(_), Some(ns)) = (&record.bandwidth, netns)
        && let Err(e) = crate::shaping::clear(ns, &record.key.ifname).await
    {
        warn!(container = %record.key.container_id, error = %e, "taking a pod's bandwidth limits off");
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

fn validate_target(t: &Target) -> Result<()> {
    cni::validate_container_id(&t.container_id)?;
    cni::validate_ifname(&t.ifname).map_err(Error::from)
}
#[cfg(test)]
mod tests;
