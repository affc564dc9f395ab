//! A cloud NIC's life on this node: created, tagged, attached, parked and
//! handed to the pool, or detached and deleted again; the warm pool's
//! targets; and the node's own gateway NIC in a vxnet.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hostnic_iaas::JobId;
use hostnic_netlink::Mac;
use tracing::{info, warn};

use super::{CloudPool, ProvisionError};
use crate::config::NicSpec;
use crate::nics::Nics;
use crate::pool::State;
use crate::record::Key;

impl CloudPool {
    /// One NIC with exactly `ip` (the ip policy's address), created,
    /// attached and parked, and reserved for `key` as it comes up: never
    /// free in between, where another ADD could take it. Not batched.
    pub async fn provision_with_ip(
        &self,
        nics: &Nics,
        vxnet: &str,
        ip: Ipv4Addr,
        key: &Key,
    ) -> Result<NicSpec, ProvisionError> {
        let macs = self
            .provision_ips(nics, vxnet, 1, &[ip], State::Reserved(key.clone()))
            .await?;
        macs.into_iter()
            .next()
            .and_then(|mac| nics.pool().spec(mac))
            .ok_or(ProvisionError::Limit { have: 0, max: 0 })
    }

    /// NICs whose attach was under way when the agent (re)started: wait for
    /// each link on a task of its own and free the NIC when it appears.
    pub fn adopt_in_flight(self: &Arc<Self>, nics: &Arc<Nics>, macs: Vec<Mac>) {
        for mac in macs {
            if nics
                .pool()
                .transition(mac, &[State::Missing], State::Attaching)
                .is_none()
            {
                continue;
            }
            let (cloud, nics) = (self.clone(), nics.clone());
            tokio::spawn(async move {
                if cloud.adopt_link(&nics, mac, State::Free).await {
                    info!(nic = %mac, "adopted a NIC whose attach was under way at start");
                } else {
                    nics.pool()
                        .transition(mac, &[State::Attaching], State::Missing);
                }
            });
        }
    }

    /// Creates `count` NICs in `vxnet`, attaches them to this node
    /// and parks them as they appear. Returns those that became free; any
    /// that failed are detached and deleted again (or left to the leak
    /// collector if even that fails).
    pub async fn provision(
        &self,
        nics: &Nics,
        vxnet: &str,
        count: usize,
    ) -> Result<Vec<Mac>, ProvisionError> {
        self.provision_ips(nics, vxnet, count, &[], State::Free)
            .await
    }

    /// Creates, attaches and parks NICs; those that come up go from
    /// `Attaching` straight to `then` (free, the node's gateway NIC, or
    /// reserved for the ADD that asked: no other ADD may take them in
    /// between).
    async fn provision_ips(
        &self,
        nics: &Nics,
        vxnet: &str,
        count: usize,
        ips: &[Ipv4Addr],
        then: State,
    ) -> Result<Vec<Mac>, ProvisionError> {
        let specs = self.create_batch(nics, vxnet, count, ips).await?;
        self.attach_batch(nics, vxnet, &specs, &then).await
    }

    /// Creates up to `count` NICs in `vxnet` (fewer if the VM has no room
    /// for them) and puts them in the pool as `Attaching`: counted as on
    /// their way from then on, so no other batch is made for the same
    /// demand.
    pub(super) async fn create_batch(
        &self,
        nics: &Nics,
        vxnet: &str,
        count: usize,
        ips: &[Ipv4Addr],
    ) -> Result<Vec<NicSpec>, ProvisionError> {
        let have = nics.pool().len() + 1;
        let count = count.min(self.cfg.max_nics.saturating_sub(have));
        if count == 0 {
            return Err(ProvisionError::Limit {
                have,
                max: self.cfg.max_nics,
            });
        }
        let created = match self
            .client
            .create_nics(vxnet, &self.name, count as u32, ips)
            .await
        {
            Ok(c) => {
                self.kpis.created(vxnet, Ok(()));
                c
            }
            Err(e) => {
                self.kpis.created(vxnet, Err(e.ret_code()));
                warn!(vxnet, error = %e, "creating NICs failed");
                return Err(e.into());
            }
        };
        let specs: Vec<NicSpec> = created
            .iter()
            .filter_map(|c| self.spec(c.nic_id.parse().ok()?, vxnet, c.private_ip?))
            .collect();
        self.on_their_way(nics, &specs);
        Ok(specs)
    }

    /// NICs this node is about to attach (made here, or claimed from the
    /// bank): in the pool as `Attaching`, counted as on their way, and
    /// queued for the node's tags.
    pub(super) fn on_their_way(&self, nics: &Nics, specs: &[NicSpec]) {
        {
            let mut pool = nics.pool();
            for s in specs {
                pool.insert(s.clone(), State::Attaching, true);
            }
        }
        self.tagger.queue(specs.iter().map(|s| s.mac));
    }

    /// Attaches a batch [`Self::create_batch`] made and parks its NICs as
    /// they appear, moving them to `then`. Returns those that did; any
    /// that failed are detached and deleted again (or left to the leak
    /// collector if even that fails).
    pub(super) async fn attach_batch(
        &self,
        nics: &Nics,
        vxnet: &str,
        specs: &[NicSpec],
        then: &State,
    ) -> Result<Vec<Mac>, ProvisionError> {
        // Attach in fives (the API's limit per call), all chunks at once:
        // the node's pace spaces the calls, the waits overlap. The tags
        // come later, when the node is quiet (`tagger`).
        let chunks = specs
            .chunks(hostnic_iaas::MAX_NICS_PER_ATTACH)
            .map(|chunk| self.attach_chunk(nics, chunk, then));
        let ready = futures::future::join_all(chunks).await;
        let ready: Vec<Mac> = ready.into_iter().flatten().collect();
        info!(vxnet, count = ready.len(), "NICs attached and ready");
        match (ready.is_empty(), specs.first()) {
            (true, Some(first)) => Err(ProvisionError::NoLink(first.mac)),
            _ => Ok(ready),
        }
    }

    /// Attaches up to five NICs with one call, waits for them, and frees
    /// those whose links appeared; the others are detached and deleted.
    async fn attach_chunk(&self, nics: &Nics, chunk: &[NicSpec], then: &State) -> Vec<Mac> {
        let macs: Vec<String> = chunk.iter().map(|s| s.mac.to_string()).collect();
        let started = Instant::now();
        let job = self.client.attach_nics(&macs, &self.cfg.instance_id).await;
        self.settle_attach(nics, chunk, then, job, (started, false))
            .await
    }

    /// Waits for the attach of NICs claimed from the bank (their
    /// AttachNics was the claim) and frees those whose links appeared. If
    /// the attach failed they are the bank's again: forgotten, not deleted.
    pub(super) async fn settle_claim(
        &self,
        nics: &Nics,
        chunk: &[NicSpec],
        job: JobId,
    ) -> Vec<Mac> {
        self.settle_attach(nics, chunk, &State::Free, Ok(job), (Instant::now(), true))
            .await
    }

    /// Waits for an attach `job` and parks the NICs of `chunk` as their
    /// links appear, moving them to `then`. An attach that failed leaves
    /// NICs this node made to be deleted, and the bank's (`from_bank`) to
    /// the bank.
    async fn settle_attach(
        &self,
        nics: &Nics,
        chunk: &[NicSpec],
        then: &State,
        job: Result<JobId, hostnic_iaas::Error>,
        (started, from_bank): (Instant, bool),
    ) -> Vec<Mac> {
        let attached = match job {
            Ok(job) => {
                let last = chunk.last().map(|s| s.mac);
                let early = async {
                    if let Some(m) = last {
                        wait_for_link(nics, m).await;
                    }
                };
                self.client.wait_job(&job, early).await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        if attached.is_ok()
            && let Some(vxnet) = chunk.first().and_then(|s| s.vxnet.as_deref())
        {
            self.kpis.attached(vxnet, started.elapsed());
        }
        if let Err(e) = attached {
            let macs: Vec<Mac> = chunk.iter().map(|s| s.mac).collect();
            if from_bank {
                warn!(nics = ?macs, error = %e, "attaching NICs claimed from the bank failed; they stay the bank's");
                let mut pool = nics.pool();
                for m in macs {
                    pool.remove_if(m, &[State::Attaching], Instant::now());
                }
                return Vec::new();
            }
            warn!(nics = ?macs, error = %e, "attaching NICs failed; deleting them");
            self.discard(nics, macs, &[State::Attaching]).await;
            return Vec::new();
        }
        let mut ready = Vec::new();
        for s in chunk {
            if self.adopt_link(nics, s.mac, then.clone()).await {
                ready.push(s.mac);
            } else {
                self.discard(nics, vec![s.mac], &[State::Attaching]).await;
            }
        }
        ready
    }

    /// Waits for a freshly attached NIC's link, parks it and moves it from
    /// `Attaching` (the state of a NIC on its way) to `then` (`Reserved`:
    /// claimed for that ADD).
    pub(super) async fn adopt_link(&self, nics: &Nics, mac: Mac, then: State) -> bool {
        let found = tokio::time::timeout(Duration::from_secs(30), wait_for_link(nics, mac)).await;
        let link = match (found, nics.plumber.node().link_by_mac(mac, None).await) {
            (Ok(()), Ok(Some(l))) => l,
            _ => return false,
        };
        match nics.plumber.park(&link).await {
            Ok(()) => {
                let mut pool = nics.pool();
                match &then {
                    State::Reserved(key) => pool.claim(mac, key, &[State::Attaching]).is_some(),
                    _ => pool.transition(mac, &[State::Attaching], then).is_some(),
                }
            }
            Err(e) => {
                warn!(nic = %mac, error = %e, "parking a new NIC");
                false
            }
        }
    }

    /// Forgets those of `macs` still in one of the states `from`, then
    /// detaches (if attached) and deletes them. A NIC that changed state
    /// since the caller chose it (an ADD reserved it) is left alone.
    async fn discard(&self, nics: &Nics, macs: Vec<Mac>, from: &[State]) {
        let macs: Vec<Mac> = {
            let mut pool = nics.pool();
            let now = Instant::now();
            macs.into_iter()
                .filter(|m| pool.remove_if(*m, from, now).is_some())
                .collect()
        };
        if macs.is_empty() {
            return;
        }
        let ids: Vec<String> = macs.iter().map(Mac::to_string).collect();
        match self.client.detach_nics(&ids).await {
            Ok(jobs) => {
                for job in jobs {
                    if let Err(e) = self.client.wait_job(&job, std::future::pending()).await {
                        warn!(error = %e, "waiting for a detach");
                    }
                }
            }
            // Not attached (a failed attach): nothing to detach.
            Err(hostnic_iaas::Error::Denied { .. }) => {}
            Err(e) => {
                warn!(nics = ?ids, error = %e, "detaching NICs; the leak collector will retry")
            }
        }
        if let Err(e) = self.client.delete_nics(&ids).await {
            warn!(nics = ?ids, error = %e, "deleting NICs; the leak collector will retry");
        }
    }

    /// The free NICs to keep in `vxnet`: `(warm_min, warm_max)`, none in a
    /// shared vxnet.
    pub(super) fn warm_targets(&self, vxnet: &str) -> (usize, usize) {
        match self.shared.iter().any(|s| s == vxnet) {
            true => (0, 0),
            false => (self.cfg.warm_min, self.cfg.warm_max),
        }
    }

    /// Brings each vxnet up to its warm minimum of free NICs.
    pub async fn top_up(&self, nics: &Nics) {
        for (vxnet, _) in &self.vxnets {
            let (warm_min, warm_max) = self.warm_targets(vxnet);
            let have = nics
                .pool()
                .count_in(vxnet, &[State::Free, State::Attaching, State::Releasing]);
            if have >= warm_min {
                continue;
            }
            let want = (warm_min - have).min(warm_max);
            if let Err(e) = self.provision(nics, vxnet, want).await {
                warn!(vxnet, error = %e, "topping up the warm pool");
            }
        }
    }

    /// Detaches and deletes free NICs above the warm maximum that have been
    /// idle for `idle_seconds`.
    pub async fn trim(&self, nics: &Nics) {
        let idle = Duration::from_secs(self.cfg.idle_seconds);
        for (vxnet, _) in &self.vxnets {
            let surplus = nics
                .pool()
                .count_in(vxnet, &[State::Free])
                .saturating_sub(self.warm_targets(vxnet).1);
            if surplus == 0 {
                continue;
            }
            let victims: Vec<Mac> = nics
                .pool()
                .idle_in(vxnet, idle)
                .into_iter()
                .take(surplus)
                .collect();
            if !victims.is_empty() {
                info!(
                    vxnet,
                    count = victims.len(),
                    "releasing idle NICs above warm_max"
                );
                self.discard(nics, victims, &[State::Free]).await;
            }
        }
    }

    /// The node's own address in `vxnet`, on its gateway NIC, configured in
    /// the node namespace (created if the node has none): the next hop for
    /// `gw 0.0.0.0` route templates, so service traffic goes through the
    /// node where kube-proxy handles it.
    pub async fn gateway(&self, nics: &Nics, vxnet: &str) -> anyhow::Result<Ipv4Addr> {
        if let Some(gw) = nics.pool().gateway_in(vxnet) {
            return Ok(gw.address.addr());
        }
        let _one = self.gateway_setup.lock().await;
        if let Some(gw) = nics.pool().gateway_in(vxnet) {
            return Ok(gw.address.addr());
        }
        // A free NIC of the vxnet (claimed, so no ADD takes it meanwhile),
        // else a new one that becomes the gateway as it comes up.
        let free = nics.pool().idle_in(vxnet, Duration::ZERO);
        let claimed = free.into_iter().find(|m| {
            nics.pool()
                .transition(*m, &[State::Free], State::Gateway)
                .is_some()
        });
        let mac = match claimed {
            Some(m) => m,
            None => *self
                .provision_ips(nics, vxnet, 1, &[], State::Gateway)
                .await?
                .first()
                .context("no NIC provisioned")?,
        };
        let spec = nics
            .pool()
            .spec(mac)
            .context("gateway NIC vanished from the pool")?;
        configure_gateway(nics, &spec).await?;
        info!(vxnet, nic = %mac, ip = %spec.address, "gateway NIC configured on the node");
        Ok(spec.address.addr())
    }
}

/// Resolves once a link with `mac` exists in the node namespace (woken by
/// the kernel's link notifications).
pub(super) async fn wait_for_link(nics: &Nics, mac: Mac) {
    nics.wait_for_link(mac, true).await
}

/// The gateway NIC in the node: named `gw<mac>`, up, with its address.
/// Only the vxnet's connected route comes with it, never a default route.
pub(super) async fn configure_gateway(nics: &Nics, spec: &NicSpec) -> anyhow::Result<()> {
    let node = nics.plumber.node();
    let link = node
        .link_by_mac(spec.mac, Some(&spec.mac.parked_name()))
        .await?
        .with_context(|| format!("gateway NIC {} is not on the node", spec.mac))?;
    let name = spec.mac.gateway_name();
    if link.name != name {
        node.rename(link.index, &name).await?;
    }
    let addrs = node.addresses(link.index).await?;
    if !addrs.contains(&ipnet::IpNet::V4(spec.address)) {
        node.add_address(link.index, spec.address).await?;
    }
    node.set_mtu_up(link.index, link.mtu.max(68)).await?;
    Ok(())
}
