//! Sticky NICs: a NIC that follows its identity — a StatefulSet pod's
//! ordinal, or a `hostnic.io/sticky` key — from node to node, keeping its
//! address and MAC (a QingCloud NIC keeps both when it moves between VMs).
//!
//! The cloud is the only shared state and the only lock; no agent talks to
//! another:
//!
//! - the NIC carries the tag `hostnic:<cluster>:sticky:<identity>` for its
//!   whole life (tags survive a move);
//! - attached to a VM, it is held there: by the identity's pod, or by one
//!   on its way out;
//! - detached, it is kept for the identity: since its `status_time`, until
//!   `sticky_release_seconds` have passed and the leak sweep deletes it;
//! - an ADD for the identity on any node attaches it there. Two nodes
//!   racing both send AttachNics; the cloud accepts one and refuses the
//!   other (1400), whose ADD answers code 11;
//! - still attached to another VM, it is taken from there (detached, then
//!   attached here) for a StatefulSet identity: Kubernetes runs one pod per
//!   ordinal and makes a new one only once the old one is deleted, so
//!   whatever holds the NIC there is the old pod on its way out. A
//!   `hostnic.io/sticky` key promises no such thing (two live pods may
//!   carry one), so its NIC is taken from a VM only once that VM no longer
//!   runs; until then its ADD answers code 11.

use std::time::{Duration, Instant, SystemTime};

use hostnic_iaas::{Nic, NicFilter, ResourceTagPair, TagFilter};
use hostnic_netlink::Mac;
use tracing::{info, warn};

use super::CloudPool;
use super::lifecycle::wait_for_link;
use crate::config::NicSpec;
use crate::error::{Error, Result};
use crate::metrics::{Reconciled, metrics};
use crate::nics::Nics;
use crate::pool::State;
use crate::record::Key;

/// How a StatefulSet identity begins (the default ip guest's form).
const STATEFULSET: &str = "statefulset/";

/// Attempts to detach a sticky NIC whose pod is gone (500 ms doubling:
/// about 15 s in all).
const KEEP_TRIES: u32 = 6;

/// How often the cloud is asked whether a NIC taken from another VM is
/// detached yet: at most this much is added to the move.
const DETACH_POLL: Duration = Duration::from_millis(250);

impl CloudPool {
    /// The tag that marks `identity`'s NIC. Not a substring search away
    /// from the cluster's and the nodes' tags (`hostnic-<cluster>…`), so
    /// looking those up never lists every identity.
    fn sticky_tag(&self, identity: &str) -> String {
        format!("{}{identity}", self.sticky_prefix())
    }

    fn sticky_prefix(&self) -> String {
        format!("hostnic:{}:sticky:", self.cfg.cluster)
    }

    /// The identity a NIC of the cloud's answer follows, from its tags.
    pub fn sticky_identity(&self, nic: &Nic) -> Option<String> {
        let prefix = self.sticky_prefix();
        nic.tags
            .iter()
            .find_map(|t| t.tag_name.strip_prefix(&prefix).map(str::to_string))
    }

    /// Whether a detached sticky NIC has been kept for its release TTL
    /// (never, with `sticky_release_seconds = 0`).
    pub fn sticky_expired(&self, nic: &Nic, now: SystemTime) -> bool {
        let ttl = self.cfg.sticky_release_seconds;
        ttl > 0
            && hostnic_iaas::sign::parse_time_stamp(&nic.status_time).is_some_and(|t| {
                now.duration_since(t).unwrap_or_default() >= Duration::from_secs(ttl)
            })
    }

    /// The identity's tag and the NICs that carry it (one DescribeTags).
    /// Tag names are not unique in the cloud: two nodes giving a new
    /// identity its first NIC at once can each create one. Every tag of
    /// the name counts, so no NIC of the identity is overlooked; the first
    /// one is reused.
    async fn sticky_nics(
        &self,
        identity: &str,
    ) -> Result<(Option<hostnic_iaas::TagId>, Vec<String>), hostnic_iaas::Error> {
        let name = self.sticky_tag(identity);
        let tags: Vec<_> = self
            .client
            .describe_tags(&TagFilter {
                search_word: Some(name.clone()),
                ..TagFilter::default()
            })
            .await?
            .into_iter()
            .filter(|t| t.tag_name == name)
            .collect();
        let nics = tags
            .iter()
            .flat_map(|t| &t.resource_tag_pairs)
            .filter(|p| p.resource_type == "nic")
            .map(|p| p.resource_id.clone())
            .collect();
        Ok((tags.into_iter().next().map(|t| t.tag_id), nics))
    }

    /// The identity's NIC as the cloud sees it now (a DescribeTags and,
    /// if it has one, a DescribeNics). Should two carry the tag (an agent
    /// died between tagging one and rolling its ADD back), the one on this
    /// VM wins, then a detached one.
    async fn find_sticky(&self, identity: &str) -> Result<Option<Nic>, hostnic_iaas::Error> {
        let (_, ids) = self.sticky_nics(identity).await?;
        if ids.is_empty() {
            return Ok(None);
        }
        let mut found = self
            .client
            .describe_nics(&NicFilter {
                nics: ids,
                ..NicFilter::default()
            })
            .await?;
        found.sort_by_key(|n| {
            (
                n.instance_id != self.cfg.instance_id,
                !n.instance_id.is_empty(),
            )
        });
        Ok(found.into_iter().next())
    }

    /// Tags NIC `mac` with `identity` (creating the identity's tag the
    /// first time).
    pub async fn tag_sticky(&self, mac: Mac, identity: &str) -> Result<(), hostnic_iaas::Error> {
        let tag_id = match self.sticky_nics(identity).await? {
            (Some(id), _) => id,
            (None, _) => self.client.create_tag(&self.sticky_tag(identity)).await?,
        };
        self.client
            .attach_tags(&[ResourceTagPair {
                tag_id,
                resource_type: "nic".into(),
                resource_id: mac.to_string(),
            }])
            .await
    }

    /// Brings `identity`'s NIC to this node and reserves it for `key`;
    /// `None` if the identity has no NIC (its first ADD, or its NIC was
    /// released). `vxnets`: the network's, which the NIC must be in.
    pub async fn follow(
        &self,
        nics: &Nics,
        key: &Key,
        identity: &str,
        vxnets: Option<&[String]>,
    ) -> Result<Option<NicSpec>> {
        let busy = Error::try_again;
        let Some(nic) = self
            .find_sticky(identity)
            .await
            .map_err(|e| busy(format!("looking up the NIC of sticky {identity}: {e}")))?
        else {
            return Ok(None);
        };
        let mac: Mac = nic
            .nic_id
            .parse()
            .map_err(|e| busy(format!("the cloud's NIC id {:?}: {e}", nic.nic_id)))?;
        let usable =
            self.vxnet(&nic.vxnet_id).is_some() && vxnets.is_none_or(|v| v.contains(&nic.vxnet_id));
        let spec = nic
            .private_ip
            .and_then(|ip| self.spec(mac, &nic.vxnet_id, ip))
            .filter(|_| usable)
            .ok_or_else(|| {
                Error::invalid_config(format!(
                    "the NIC of sticky {identity} ({mac}) is in vxnet {}, which network {} does not use on this node ({}); a sticky identity keeps its vxnet",
                    nic.vxnet_id,
                    key.network,
                    vxnets.map(|v| v.join(", ")).unwrap_or_default()
                ))
            })?;
        let here = &self.cfg.instance_id;
        if nic.instance_id == *here && nics.pool().state(mac).is_none() {
            return self.adopt_here(nics, key, identity, spec).await.map(Some);
        }
        if nic.instance_id == *here {
            return nics
                .wait_for_release(|p| p.claim(mac, key, &[State::Free]))
                .await
                .map(Some)
                .ok_or_else(|| {
                    busy(format!(
                        "the NIC of sticky {identity} ({mac}) is on this node but not free ({}); try again",
                        nics.pool().state(mac).map_or("unknown", |s| s.name())
                    ))
                });
        }
        if !nic.instance_id.is_empty() {
            let from = nic.instance_id.as_str();
            if !self.may_take_from(identity, from).await {
                return Err(busy(format!(
                    "the NIC of sticky {identity} ({mac}) is attached to {from}, where a pod holds it; try again once it lets go"
                )));
            }
            info!(nic = %mac, identity, from, "taking a sticky NIC from the VM that had it");
            self.detach_from(mac, from).await.map_err(|e| {
                busy(format!(
                    "detaching the NIC of sticky {identity} ({mac}) from {from}: {e}"
                ))
            })?;
        }
        self.attach_here(nics, key, identity, spec).await.map(Some)
    }

    /// Whether this node may take `identity`'s NIC from VM `from`.
    async fn may_take_from(&self, identity: &str, from: &str) -> bool {
        if identity.starts_with(STATEFULSET) {
            return true;
        }
        match self.client.describe_instances(&[from]).await {
            Ok(found) => found
                .iter()
                .find(|i| i.instance_id == from)
                .is_none_or(|i| i.status != "running"),
            Err(e) => {
                warn!(instance = from, error = %e, "describing the VM that holds a sticky NIC");
                false
            }
        }
    }

    /// Attaches a detached sticky NIC to this VM and reserves it for
    /// `key` once its link is parked. The cloud decides races: AttachNics
    /// of a NIC another node attached first is refused.
    async fn attach_here(
        &self,
        nics: &Nics,
        key: &Key,
        identity: &str,
        spec: NicSpec,
    ) -> Result<NicSpec> {
        let mac = spec.mac;
        let vxnet = spec.vxnet.clone().unwrap_or_default();
        take_slot(nics, identity, spec)?;
        let started = Instant::now();
        let attached = match self
            .client
            .attach_nics(&[mac.to_string()], &self.cfg.instance_id)
            .await
        {
            Ok(job) => self
                .client
                .wait_job(&job, wait_for_link(nics, mac))
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = attached {
            nics.pool()
                .remove_if(mac, &[State::Attaching], Instant::now());
            return Err(Error::try_again(format!(
                "attaching the NIC of sticky {identity} ({mac}) to this node: {e}"
            )));
        }
        self.kpis.attached(&vxnet, started.elapsed());
        self.settle_here(nics, key, identity, mac).await
    }

    /// A sticky NIC attached to this VM that the pool does not know: an
    /// ADD brought it here and its agent died before answering (or its
    /// attach outlived the wait). The retried ADD takes it as it is.
    async fn adopt_here(
        &self,
        nics: &Nics,
        key: &Key,
        identity: &str,
        spec: NicSpec,
    ) -> Result<NicSpec> {
        let mac = spec.mac;
        if !matches!(
            nics.plumber.node().link_by_mac(mac, None).await,
            Ok(Some(_))
        ) {
            // The cloud's answer is older than a detach (or newer than
            // the link): look again on the retry.
            return Err(Error::try_again(format!(
                "the NIC of sticky {identity} ({mac}) is attached to this VM but not on the node; try again"
            )));
        }
        take_slot(nics, identity, spec)?;
        info!(nic = %mac, identity, "a sticky NIC already attached here; taking it");
        self.settle_here(nics, key, identity, mac).await
    }

    /// Parks a sticky NIC's link and reserves the NIC for `key`; if its
    /// link never shows, the NIC leaves the node again, kept.
    async fn settle_here(
        &self,
        nics: &Nics,
        key: &Key,
        identity: &str,
        mac: Mac,
    ) -> Result<NicSpec> {
        if self.adopt_link(nics, mac, State::Attaching).await
            && let Some(nic) = nics.pool().claim(mac, key, &[State::Attaching])
        {
            info!(nic = %mac, identity, "sticky NIC attached here");
            return Ok(nic);
        }
        nics.pool()
            .transition(mac, &[State::Attaching], State::Leaving);
        if let Err(e) = self.detach_kept(nics, mac).await {
            warn!(nic = %mac, error = %e, "detaching a sticky NIC whose link never appeared");
        }
        nics.pool()
            .remove_if(mac, &[State::Leaving], Instant::now());
        Err(Error::try_again(format!(
            "the NIC of sticky {identity} ({mac}) was attached but its link never appeared on this node"
        )))
    }

    /// Detaches a sticky NIC from this VM, without deleting it, and waits
    /// until its link has left the node (or the cloud's job ends). Not
    /// attached (1400) or gone (2100): nothing to do.
    pub async fn detach_kept(&self, nics: &Nics, mac: Mac) -> Result<(), hostnic_iaas::Error> {
        let gone = nics.wait_for_link(mac, false);
        match self.client.detach_nics(&[mac.to_string()]).await {
            Ok(jobs) => {
                let mut gone = std::pin::pin!(gone);
                for job in jobs {
                    self.client.wait_job(&job, gone.as_mut()).await?;
                }
                Ok(())
            }
            Err(hostnic_iaas::Error::NotFound { .. }) => Ok(()),
            // Not attached — or not yet: the link shows before the attach
            // job reports success, so a pod can be done with the NIC while
            // the cloud still calls it attaching. Ask which.
            Err(denied @ hostnic_iaas::Error::Denied { .. }) => {
                let now = self
                    .client
                    .describe_nics(&NicFilter {
                        nics: vec![mac.to_string()],
                        ..NicFilter::default()
                    })
                    .await?;
                match now.first() {
                    Some(n) if !n.instance_id.is_empty() => Err(denied),
                    _ => Ok(()),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Detaches a sticky NIC from another VM `from` and waits until the
    /// cloud lists it detached: this node cannot see the link go, and the
    /// job's own poll (every `job_poll_interval`, 5 s) would add seconds
    /// to the pod's reschedule. A NIC already on its way off (1400) is
    /// waited for too.
    async fn detach_from(&self, mac: Mac, from: &str) -> Result<(), hostnic_iaas::Error> {
        match self.client.detach_nics(&[mac.to_string()]).await {
            Ok(_) | Err(hostnic_iaas::Error::Denied { .. }) => {}
            Err(hostnic_iaas::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        let deadline = Instant::now() + Duration::from_secs(self.cfg.cold_add_wait_seconds);
        let filter = NicFilter {
            nics: vec![mac.to_string()],
            ..NicFilter::default()
        };
        loop {
            tokio::time::sleep(DETACH_POLL).await;
            match self.client.describe_nics(&filter).await?.first() {
                None => return Ok(()),
                Some(n) if n.instance_id.is_empty() => return Ok(()),
                Some(n) if Instant::now() >= deadline => {
                    return Err(hostnic_iaas::Error::Denied {
                        action: "DetachNics".into(),
                        message: format!("still attached to {} (was {from})", n.instance_id),
                    });
                }
                Some(_) => {}
            }
        }
    }

    /// The sticky release, one node's duty: deletes the kept (detached)
    /// sticky NICs among `found` once `sticky_release_seconds` have passed
    /// since they were detached, or at once when their StatefulSet was
    /// deleted or scaled below their ordinal. One at a time: a NIC an ADD
    /// attached since the look is refused by the cloud (1400) and stays.
    pub async fn release_sticky(&self, nics: &Nics, found: &[Nic]) {
        let prefix = format!("hostnic-{}-", self.cfg.cluster);
        let now = SystemTime::now();
        for n in found
            .iter()
            .filter(|n| n.nic_name.starts_with(&prefix) && n.instance_id.is_empty())
        {
            let Some(identity) = self.sticky_identity(n) else {
                continue;
            };
            // Being attached here since the look.
            if n.nic_id
                .parse()
                .is_ok_and(|m| nics.pool().state(m).is_some())
            {
                continue;
            }
            let why = if self.sticky_expired(n, now) {
                "kept for sticky_release_seconds"
            } else if let Some(owners) = self.duties.as_ref().map(|d| &d.owners)
                && owners.wants(&identity).await == Some(false)
            {
                "its StatefulSet no longer has its ordinal"
            } else {
                continue;
            };
            match self
                .client
                .delete_nics(std::slice::from_ref(&n.nic_id))
                .await
            {
                Ok(()) => {
                    info!(nic = %n.nic_id, ip = ?n.private_ip, identity, why, "released a sticky NIC");
                    metrics().reconciled(Reconciled::StickyReleased, 1);
                }
                Err(e) => {
                    warn!(nic = %n.nic_id, identity, error = %e, "releasing a sticky NIC; the next sweep retries")
                }
            }
        }
    }

    /// Takes a sticky NIC whose attachment is over off this node, to be
    /// kept in the cloud for its identity, and forgets it. A busy cloud,
    /// or an attach not yet reported done, is retried (for about 15 s); a
    /// NIC still here after that stays `leaving` (never handed out) and the
    /// next start finishes the job.
    pub async fn keep(&self, nics: &Nics, mac: Mac) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=KEEP_TRIES {
            match self.detach_kept(nics, mac).await {
                Ok(()) => {
                    nics.pool()
                        .remove_if(mac, &[State::Leaving], Instant::now());
                    info!(nic = %mac, "sticky NIC detached and kept for its identity");
                    return Ok(());
                }
                Err(e)
                    if attempt < KEEP_TRIES
                        && (e.is_transient()
                            || matches!(e, hostnic_iaas::Error::Denied { .. })) =>
                {
                    warn!(nic = %mac, attempt, error = %e, "detaching a sticky NIC; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// Puts a sticky NIC on its way here into the pool (`attaching`, so no
/// other ADD takes it). A `leaving` slot is this node's own keep, done in
/// the cloud but not yet told: replaced.
fn take_slot(nics: &Nics, identity: &str, spec: NicSpec) -> Result<()> {
    let mac = spec.mac;
    let mut pool = nics.pool();
    pool.remove_if(mac, &[State::Leaving], Instant::now());
    if !pool.insert_new(spec, State::Attaching) {
        return Err(Error::try_again(format!(
            "the NIC of sticky {identity} ({mac}) is {} on this node; try again",
            pool.state(mac).map_or("unknown", |s| s.name())
        )));
    }
    pool.set_sticky(mac, identity);
    Ok(())
}
