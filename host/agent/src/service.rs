//! The agent's answers to ADD, DEL, CHECK, GC and STATUS.
//!
//! Each handler validates first, then acts, and on failure undoes what it
//! did: a request that fails leaves the NIC parked and free, never half
//! wired, and never recorded for a pod that was not told "success".

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostnic_netlink::{Mac, Netns, NsId};
use hostnic_proto::cni::{
    self, AddResult, AttachmentKey, CniError, Interface, IpConfig, Route, RouteTemplate, code,
};
use hostnic_proto::rpc::{AddRequest, CheckRequest, DelRequest, GcRequest, Reply, Target};
use ipnet::{IpNet, Ipv4Net};
use tracing::{info, warn};

use crate::cloud::CloudPool;
use crate::config::{Config, NicSpec};
use crate::decisions::For;
use crate::plumb::{PlumbError, Plumber, Whereabouts, Wiring};
use crate::policy::{self, Policies, Sticky};
use crate::pool::{Pool, State};
use crate::store::{Allocation, Key, Phase, Store};
use hostnic_policy::IpRequest;

/// Why an ADD with one NIC did not work out.
enum AddFailure {
    /// The NIC was not in the node namespace: try another.
    Missing(Mac),
    Failed(CniError),
}

#[derive(Debug)]
pub struct Service {
    pub(crate) plumber: Plumber,
    pub(crate) store: Store,
    pub(crate) pool: Mutex<Pool>,
    pub(crate) default_mtu: u32,
    /// The cloud pool; `None` with a static inventory.
    pub(crate) cloud: Option<CloudPool>,
    /// The policy hooks; `None` when `hooks.enabled = false` (native code).
    pub(crate) policies: Option<Policies>,
    /// The API server's view; `None` outside Kubernetes.
    pub(crate) kube: Option<crate::apiserver::KubeView>,
    sticky: Sticky,
    /// The static inventory's vxnets (id, prefix, gateway) in the order
    /// they first appear in it: the vxnet hook's candidates without a cloud.
    static_vxnets: Vec<(String, Ipv4Net, Ipv4Addr)>,
    /// Releases under way per pod namespace: a NIC a DEL answered for may
    /// still sit in the pod under its interface name, so an ADD into the
    /// same namespace (a runtime re-connecting a container) waits for it.
    releasing_in: Mutex<HashMap<NsId, usize>>,
}

/// Counts a release under way in a namespace while it lives: taken before
/// DEL answers, dropped by the background task when the NIC is out.
struct ReleasingIn {
    svc: Arc<Service>,
    ns: Option<NsId>,
}

impl ReleasingIn {
    fn new(svc: &Arc<Service>, ns: Option<NsId>) -> Self {
        if let Some(id) = ns {
            *svc.releasing_in
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id)
                .or_default() += 1;
        }
        ReleasingIn {
            svc: svc.clone(),
            ns,
        }
    }
}

impl Drop for ReleasingIn {
    fn drop(&mut self) {
        let Some(id) = self.ns else { return };
        let mut map = self
            .svc
            .releasing_in
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                map.remove(&id);
            }
        }
    }
}

/// Addresses of an ip-policy range considered (a range serves a few pods).
const MAX_RANGE: usize = 1024;
/// How long an ADD with no free NIC waits for one a DEL is bringing back.
const RELEASE_WAIT: Duration = Duration::from_secs(5);
/// Creates tried for one ADD whose policy asks for specific addresses.
const MAX_ADDRESS_TRIES: usize = 16;

/// The vxnet facts of a NIC, for the hooks.
fn nic_vxnet(nic: &NicSpec) -> hostnic_policy::Vxnet {
    policy::vxnet(
        nic.vxnet.as_deref().unwrap_or("static"),
        nic.address.trunc(),
        nic.gateway,
    )
}

/// The distinct vxnets of a static inventory, in order of appearance.
fn static_vxnets(nics: &[NicSpec]) -> Vec<(String, Ipv4Net, Ipv4Addr)> {
    let mut out: Vec<(String, Ipv4Net, Ipv4Addr)> = Vec::new();
    for n in nics {
        if let Some(id) = &n.vxnet
            && !out.iter().any(|(v, ..)| v == id)
        {
            out.push((id.clone(), n.address.trunc(), n.gateway));
        }
    }
    out
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

fn internal(what: impl std::fmt::Display) -> CniError {
    CniError::new(code::INTERNAL, what.to_string())
}

impl Service {
    pub fn new(
        cfg: &Config,
        plumber: Plumber,
        store: Store,
        pool: Pool,
        cloud: Option<CloudPool>,
        policies: Option<Policies>,
        kube: Option<crate::apiserver::KubeView>,
    ) -> Service {
        Service {
            plumber,
            store,
            pool: Mutex::new(pool),
            default_mtu: cfg.mtu,
            cloud,
            policies,
            kube,
            sticky: Sticky::new(&cfg.state_dir),
            static_vxnets: static_vxnets(&cfg.inventory.nics),
            releasing_in: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A panic while holding this short lock is a bug, but the pool's
        // data is still consistent (every mutation is a single assignment),
        // so keep serving rather than wedge every later request.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn add(
        self: &Arc<Self>,
        req: AddRequest,
        netns: Option<Netns>,
    ) -> Result<Reply, CniError> {
        let netns = netns.ok_or_else(|| {
            CniError::new(code::INVALID_ENV, "ADD needs the pod's netns descriptor")
        })?;
        // Before anything is recorded or moved: never wire a NIC into the
        // node's own namespace (CNI_NETNS=/proc/1/ns/net on a real node).
        let netns_id = self.plumber.pod_ns_id(&netns).map_err(|e| {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS: {e}; refusing to wire a NIC into it"),
            )
        })?;
        validate_target(&req.target)?;
        self.wait_for_releases_in(netns_id).await;
        let mtu = req.mtu.unwrap_or(self.default_mtu);
        if !cni::MTU_RANGE.contains(&mtu) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("mtu {mtu} is out of range"),
            ));
        }
        let key = key_of(&req.target);

        // A retried ADD for an attachment we already made answers as before.
        let existing = self.pool().lookup(&key);
        if let Some((lease, state)) = existing {
            return match state {
                State::Held(_) => {
                    let _g = lease.lock.lock().await;
                    self.recorded_result(lease.spec.mac)
                }
                _ => Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "an ADD for container {} {} is still in progress",
                        key.container_id, key.ifname
                    ),
                )),
            };
        }

        // The pod as the guests see it: the runtime's view, with labels
        // (and annotations the runtime did not send) from the API server.
        let pod = crate::apiserver::pod_for_guests(self.kube.as_ref(), &req.pod).await;
        // A NIC found missing when we reach for it is marked so and the next
        // free one is tried; each turn retires one NIC, so this ends.
        loop {
            let (lease, sticky) = self.lease_for(&key, &pod).await?;
            match self
                .add_with(&lease, &key, (&req, &pod), mtu, (&netns, netns_id))
                .await
            {
                Err(AddFailure::Missing(mac)) => {
                    warn!(nic = %mac, "reserved NIC is not in the node namespace; marked missing, trying another");
                }
                Err(AddFailure::Failed(e)) => return Err(e),
                Ok(result) => {
                    if let Some(k) = sticky
                        && let Err(e) = self.sticky.set(&k, lease.spec.address.addr())
                    {
                        warn!(key = %k, error = %e, "remembering a sticky address");
                    }
                    return Ok(Reply::Added(result));
                }
            }
        }
    }

    /// ADD with one reserved NIC: record the reservation, wire the NIC,
    /// commit. Any failure leaves the NIC parked (or marked missing) and no
    /// record behind.
    async fn add_with(
        &self,
        lease: &crate::pool::Lease,
        key: &Key,
        (req, pod): (&AddRequest, &hostnic_policy::Pod),
        mtu: u32,
        (netns, netns_id): (&Netns, NsId),
    ) -> Result<AddResult, AddFailure> {
        let _guard = lease.lock.lock().await;
        let nic = &lease.spec;
        let node_gw = match self.node_gateway(nic, &req.routes).await {
            Ok(gw) => gw,
            Err(e) => {
                self.pool().release(nic.mac, true);
                return Err(AddFailure::Failed(e));
            }
        };
        // The routes hook decides; with the hooks bypassed, the native
        // templates (the same semantics as the default guest).
        let routes = match &self.policies {
            Some(p) => {
                policy::routes_for(p, who(key), pod, nic, &nic_vxnet(nic), node_gw, &req.routes)
            }
            None => Ok(native_routes(
                nic,
                &req.routes,
                node_gw.unwrap_or(nic.gateway),
            )),
        };
        let routes = match routes {
            Ok(r) => r,
            Err(e) => {
                self.pool().release(nic.mac, true);
                return Err(AddFailure::Failed(e));
            }
        };
        let wiring = Wiring {
            mac: nic.mac,
            ifname: req.target.ifname.clone(),
            address: nic.address,
            mtu,
            routes,
        };
        let mut record = Allocation {
            mac: nic.mac,
            phase: Phase::Reserved,
            key: key.clone(),
            netns: req.target.netns.clone(),
            netns_id: Some(netns_id),
            pod: req.pod.clone(),
            result: None,
        };
        if let Err(e) = self.store.put(&record) {
            self.pool().release(nic.mac, true);
            return Err(AddFailure::Failed(internal(format!(
                "recording the reservation of NIC {}: {e}",
                nic.mac
            ))));
        }

        if let Err(e) = self.plumber.attach(&wiring, netns).await {
            // Ask the kernel where the NIC is rather than infer it from the
            // error: free only if it is back in the node namespace.
            let present = matches!(
                self.plumber
                    .node()
                    .link_by_mac(nic.mac, Some(&nic.mac.parked_name()))
                    .await,
                Ok(Some(_))
            );
            self.forget(nic.mac, present);
            if let PlumbError::NicMissing(mac) = e {
                return Err(AddFailure::Missing(mac));
            }
            warn!(nic = %nic.mac, container = %key.container_id, error = %e, "ADD failed; NIC released");
            let code = match e {
                PlumbError::NameTaken(_) => code::INVALID_ENV,
                _ => code::INTERNAL,
            };
            return Err(AddFailure::Failed(CniError::new(
                code,
                format!("attaching NIC {} as {}: {e}", nic.mac, key.ifname),
            )));
        }

        let result = add_result(
            &wiring,
            req.target.netns.as_deref().unwrap_or_default(),
            nic.gateway,
        );
        record.phase = Phase::Committed;
        record.result = Some(result.clone());
        if let Err(e) = self.store.put(&record) {
            // Not recorded, so not given: take the NIC back.
            let undo = self.plumber.detach(nic.mac, Some(netns)).await;
            self.forget(nic.mac, matches!(undo, Ok(Whereabouts::Parked)));
            return Err(AddFailure::Failed(internal(format!(
                "recording the allocation of NIC {}: {e}",
                nic.mac
            ))));
        }
        self.pool().commit(nic.mac);
        info!(nic = %nic.mac, ip = %nic.address, container = %key.container_id, ifname = %key.ifname,
              pod = ?req.pod.name, namespace = ?req.pod.namespace, "ADD");
        Ok(result)
    }

    /// The next hop for `gw 0.0.0.0` templates: the node's gateway NIC in
    /// the pod's vxnet (cloud), or the subnet gateway (static inventory,
    /// where the node has no NIC of its own in the subnet).
    async fn node_gateway(
        &self,
        nic: &NicSpec,
        templates: &[RouteTemplate],
    ) -> Result<Option<Ipv4Addr>, CniError> {
        let wanted = templates
            .iter()
            .any(|t| t.gw.is_some_and(|g| g.is_unspecified()));
        match (&self.cloud, &nic.vxnet) {
            (Some(cloud), Some(vxnet)) if wanted => {
                cloud.gateway(self, vxnet).await.map(Some).map_err(|e| {
                    CniError::new(
                        code::TRY_AGAIN_LATER,
                        format!("setting up the node's gateway NIC in {vxnet}: {e:#}"),
                    )
                })
            }
            _ => Ok(None),
        }
    }

    /// The NIC for an ADD, as the policies decide: the vxnet order and the
    /// address the pod must have. Also returns the sticky key to remember,
    /// if the ip policy gave one.
    async fn lease_for(
        self: &Arc<Self>,
        key: &Key,
        pod: &hostnic_policy::Pod,
    ) -> Result<(crate::pool::Lease, Option<String>), CniError> {
        let order = self.vxnet_order(key, pod)?;
        let (want, sticky) = self.wanted_addresses(key, pod, order.as_deref())?;
        let lease = match (want, &order) {
            (None, None) => self.reserve(key).await.ok_or_else(|| {
                CniError::new(code::NO_FREE_NIC, "no free NIC on this node").with_details(
                    "every NIC in the inventory is held by a pod or missing; add NICs or delete pods",
                )
            })?,
            (None, Some(order)) if self.cloud.is_some() => {
                self.reserve_or_provision(key, order).await?
            }
            (None, Some(order)) => self
                .wait_for_release(|p| p.reserve_in(order, key))
                .await
                .ok_or_else(|| {
                    CniError::new(
                        code::NO_FREE_NIC,
                        format!(
                            "no free NIC on this node in the vxnets the vxnet policy chose ({})",
                            order.join(", ")
                        ),
                    )
                })?,
            (Some(addrs), order) => {
                self.reserve_address(key, &addrs, order.as_ref().and_then(|o| o.first()))
                    .await?
            }
        };
        Ok((lease, sticky))
    }

    /// The vxnets to take a NIC from, best first: the vxnet hook's answer
    /// over the configured vxnets (the cloud's, or the static inventory's),
    /// or the native rotation. `None`: there is no vxnet to choose (a
    /// static inventory without vxnets).
    fn vxnet_order(
        &self,
        key: &Key,
        pod: &hostnic_policy::Pod,
    ) -> Result<Option<Vec<String>>, CniError> {
        let order = match (&self.policies, &self.cloud) {
            (None, Some(cloud)) => cloud.order(),
            (None, None) => return Ok(None),
            (Some(_), None) if self.static_vxnets.is_empty() => return Ok(None),
            (Some(p), cloud) => {
                let (candidates, node) = {
                    let pool = self.pool();
                    let candidates: Vec<hostnic_policy::Vxnet> = self
                        .vxnet_list()
                        .into_iter()
                        .map(|(id, cidr, gateway)| {
                            let mut v = policy::vxnet(&id, cidr, gateway);
                            v.warm_nics = pool.count_in(&id, &[State::Free]) as u32;
                            v.used_nics = pool.count_held_in(&id) as u32;
                            match cloud {
                                Some(c) => v.recent_failures = c.recent_failures(&id),
                                // A static NIC is an address the node can give.
                                None => v.free_ips = v.warm_nics,
                            }
                            v
                        })
                        .collect();
                    let node = match cloud {
                        Some(c) => c.node_facts(pool.len()),
                        // Every static NIC is attached already.
                        None => policy::node("", pool.len() as u32, pool.len() as u32),
                    };
                    (candidates, node)
                };
                p.select_vxnet(who(key), pod, &node, &candidates)?
            }
        };
        Ok(Some(order))
    }

    /// The vxnets to choose from, in configured order: (id, prefix, gateway).
    fn vxnet_list(&self) -> Vec<(String, Ipv4Net, Ipv4Addr)> {
        match &self.cloud {
            Some(cloud) => cloud
                .vxnets()
                .map(|(id, info)| (id.to_string(), info.cidr, info.gateway))
                .collect(),
            None => self.static_vxnets.clone(),
        }
    }

    /// What the ip hook asks for, as the addresses that would do (`None`:
    /// any). A sticky key with a remembered address asks for that address.
    #[allow(clippy::type_complexity)]
    fn wanted_addresses(
        &self,
        key: &Key,
        pod: &hostnic_policy::Pod,
        order: Option<&[String]>,
    ) -> Result<(Option<Vec<Ipv4Addr>>, Option<String>), CniError> {
        let Some(p) = &self.policies else {
            return Ok((None, None));
        };
        let facts = match order.and_then(|o| o.first()) {
            Some(first) => match self.vxnet_list().into_iter().find(|(id, ..)| id == first) {
                Some((id, cidr, gateway)) => policy::vxnet(&id, cidr, gateway),
                None => return Ok((None, None)),
            },
            // Static inventory without vxnets: the subnet of the first
            // free NIC.
            None => match self.pool().first_free() {
                Some(nic) => nic_vxnet(&nic),
                None => return Ok((None, None)),
            },
        };
        Ok(match p.ip_for(who(key), pod, &facts)? {
            IpRequest::Any => (None, None),
            IpRequest::Exact(ip) => (Some(vec![ip]), None),
            IpRequest::OneOf(ips) => (Some(ips), None),
            IpRequest::Range { first, last } => {
                let (a, b) = (u32::from(first), u32::from(last));
                (
                    Some((a..=b).take(MAX_RANGE).map(Ipv4Addr::from).collect()),
                    None,
                )
            }
            IpRequest::Sticky(k) => (self.sticky.get(&k).map(|ip| vec![ip]), Some(k)),
        })
    }

    /// A NIC with one of `addrs`: a free one already on the node, or (cloud)
    /// one created with that address; the first address the cloud accepts
    /// wins.
    async fn reserve_address(
        &self,
        key: &Key,
        addrs: &[Ipv4Addr],
        vxnet: Option<&String>,
    ) -> Result<crate::pool::Lease, CniError> {
        if let Some(l) = self
            .wait_for_release(|p| p.reserve_where(key, |s| addrs.contains(&s.address.addr())))
            .await
        {
            return Ok(l);
        }
        let shown = addrs
            .iter()
            .take(4)
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let (Some(cloud), Some(vxnet)) = (&self.cloud, vxnet) else {
            return Err(CniError::new(
                code::NO_FREE_NIC,
                format!("no free NIC has the address the ip policy asked for ({shown})"),
            ));
        };
        let mut last = None;
        for ip in addrs.iter().take(MAX_ADDRESS_TRIES) {
            match cloud.provision_with_ip(self, vxnet, *ip).await {
                Ok(mac) => {
                    if let Some(l) = self.pool().reserve_where(key, |s| s.mac == mac) {
                        return Ok(l);
                    }
                }
                Err(e) => last = Some(e.to_string()),
            }
        }
        Err(CniError::new(
            code::NO_FREE_NIC,
            format!(
                "could not get a NIC with the address the ip policy asked for ({shown}) in {vxnet}: {}",
                last.unwrap_or_default()
            ),
        ))
    }

    /// A warm NIC in the policy's first vxnet, or else one the node's
    /// provisioner makes for this cold ADD ([`crate::cloud::provisioner`]).
    async fn reserve_or_provision(
        self: &Arc<Self>,
        key: &Key,
        order: &[String],
    ) -> Result<crate::pool::Lease, CniError> {
        let Some(cloud) = &self.cloud else {
            return Err(internal("cold provisioning without a cloud"));
        };
        // The policy's first choice, warm; a vxnet further down the order
        // only once creating a NIC in those before it has failed.
        if let Some(l) = self
            .wait_for_release(|p| p.reserve_in(&order[..1.min(order.len())], key))
            .await
        {
            return Ok(l);
        }
        cloud.provisioner.wait_for_nic(self, key, order).await
    }

    /// Reserves a free NIC, waiting for one a DEL is bringing back, then
    /// looking once more for missing ones if none is free.
    async fn reserve(&self, key: &Key) -> Option<crate::pool::Lease> {
        if let Some(l) = self.wait_for_release(|p| p.reserve(key)).await {
            return Some(l);
        }
        self.rescan_missing().await;
        self.pool().reserve(key)
    }

    /// Tries `take` until it gives a NIC, while NICs that DELs answered for
    /// are still on their way back (a device move: ~20 ms each, serialised
    /// by the kernel), for at most [`RELEASE_WAIT`].
    async fn wait_for_release<T>(&self, take: impl Fn(&mut Pool) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + RELEASE_WAIT;
        loop {
            let releasing = {
                let mut pool = self.pool();
                if let Some(t) = take(&mut pool) {
                    return Some(t);
                }
                pool.count_all(&[State::Releasing])
            };
            if releasing == 0 || Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// NICs that reappeared in the node namespace become free again.
    pub async fn rescan_missing(&self) {
        let missing = self.pool().missing();
        if missing.is_empty() {
            return;
        }
        let links = match self.plumber.node().links().await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "listing node links to find missing NICs");
                return;
            }
        };
        for link in links
            .iter()
            .filter(|l| l.mac.is_some_and(|m| missing.contains(&m)))
        {
            match self.plumber.park(link).await {
                Ok(()) => {
                    info!(nic = ?link.mac, "missing NIC is back in the node namespace");
                    if let Some(mac) = link.mac {
                        self.pool().mark_found(mac);
                    }
                }
                Err(e) => warn!(nic = ?link.mac, error = %e, "parking a NIC that reappeared"),
            }
        }
    }

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
        if let Err(e) = self.store.remove(mac) {
            // The stale reservation is rolled back at the next start.
            warn!(nic = %mac, error = %e, "removing an allocation record");
        }
        self.pool().release(mac, present);
    }

    /// DEL answers as soon as the release is recorded; the NIC comes back
    /// from the pod in the background (a device move costs ~20 ms of
    /// kernel time the runtime need not wait for). The task holds the pod's
    /// netns descriptor, so the namespace — and the NIC in it — lives until
    /// the NIC is out, whatever the runtime does after the answer; it holds
    /// the NIC's lock, and the NIC is not free until it is parked. A crash
    /// after the answer is finished by start-up reconciliation.
    pub async fn del(
        self: &Arc<Self>,
        req: DelRequest,
        netns: Option<Netns>,
    ) -> Result<Reply, CniError> {
        let key = key_of(&req.target);
        let Some((lease, _)) = self.pool().lookup(&key) else {
            // Nothing recorded: already deleted, or never added. Both fine.
            return Ok(Reply::Deleted);
        };
        let guard = lease.lock.clone().lock_owned().await;
        // Re-check under the NIC's lock: a concurrent DEL may have won.
        match self.pool().lookup(&key) {
            Some((l, _)) if l.spec.mac == lease.spec.mac => {}
            _ => return Ok(Reply::Deleted),
        }
        let mac = lease.spec.mac;
        let netns = self.release_netns(mac, &key, netns, req.target.netns.as_deref());
        if let Err(e) = self.mark_releasing(mac) {
            // Without the record a crash could lose the release: do it now.
            warn!(nic = %mac, error = %e, "recording a release; releasing in the foreground");
            self.release(mac, &key, netns.as_ref()).await?;
            return Ok(Reply::Deleted);
        }
        self.pool().start_release(mac);
        let counted = ReleasingIn::new(self, netns.as_ref().and_then(|n| n.id().ok()));
        let svc = self.clone();
        tokio::spawn(async move {
            let (_guard, _counted) = (guard, counted);
            svc.finish_release(mac, &key, netns).await;
        });
        Ok(Reply::Deleted)
    }

    /// Waits (at most [`RELEASE_WAIT`]) until no NIC is on its way out of
    /// namespace `ns`, so an ADD never meets an interface a DEL answered
    /// for.
    async fn wait_for_releases_in(&self, ns: NsId) {
        let deadline = Instant::now() + RELEASE_WAIT;
        let busy = || {
            self.releasing_in
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&ns)
        };
        while busy() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Rewrites the NIC's record as `releasing` (not fsynced: see store).
    fn mark_releasing(&self, mac: Mac) -> std::io::Result<()> {
        match self.store.get(mac)? {
            Some(mut record) => {
                record.phase = Phase::Releasing;
                self.store.put(&record)
            }
            // No record to update: nothing for a restart to finish either.
            None => Ok(()),
        }
    }

    /// The background half of DEL. A kernel error is retried; if the NIC
    /// still will not come back, it is marked missing (never free) and its
    /// `releasing` record stays for the next start.
    async fn finish_release(&self, mac: Mac, key: &Key, netns: Option<Netns>) {
        let mut delay = std::time::Duration::from_millis(50);
        for attempt in 1..=4 {
            match self.release(mac, key, netns.as_ref()).await {
                Ok(()) => return,
                Err(e) if attempt < 4 => {
                    warn!(nic = %mac, attempt, error = %e.msg, "bringing a NIC back after DEL; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
                Err(e) => {
                    tracing::error!(nic = %mac, error = %e.msg, "bringing a NIC back after DEL failed; marked missing until it reappears or the agent restarts");
                    self.pool().release(mac, false);
                }
            }
        }
    }

    /// The pod's namespace to bring a NIC back from: the descriptor DEL
    /// sent if it is the namespace the NIC was recorded in, else the
    /// recorded path if it still names that namespace. Never the node's.
    fn release_netns(
        &self,
        mac: Mac,
        key: &Key,
        sent: Option<Netns>,
        path: Option<&str>,
    ) -> Option<Netns> {
        let record = self.store.get(mac).ok().flatten();
        let recorded_id = record.as_ref().and_then(|a| a.netns_id);
        let sent = sent.filter(|ns| match self.plumber.pod_ns_id(ns) {
            Ok(id) if recorded_id.is_none_or(|r| r == id) => true,
            Ok(id) => {
                warn!(nic = %mac, container = %key.container_id, sent = %id, recorded = ?recorded_id,
                      "the netns sent with DEL is not the one the NIC went into; using the recorded one");
                false
            }
            Err(e) => {
                warn!(nic = %mac, container = %key.container_id, error = %e, "ignoring the netns sent with DEL");
                false
            }
        });
        sent.or_else(|| {
            path.map(str::to_string)
                .or_else(|| record.and_then(|a| a.netns))
                .and_then(|p| self.plumber.reopen(&p, recorded_id))
        })
    }

    /// Brings a NIC back from the pod's namespace (if reachable) and frees
    /// it, or marks it missing if it is nowhere to be found.
    async fn release(&self, mac: Mac, key: &Key, netns: Option<&Netns>) -> Result<(), CniError> {
        let whereabouts = self.plumber.detach(mac, netns).await.map_err(|e| {
            internal(format!(
                "returning NIC {mac} from container {}: {e}",
                key.container_id
            ))
        })?;
        if whereabouts == Whereabouts::Gone {
            warn!(nic = %mac, container = %key.container_id, "NIC not found in the pod or the node; marked missing");
        }
        self.forget(mac, whereabouts == Whereabouts::Parked);
        info!(nic = %mac, container = %key.container_id, ifname = %key.ifname, ?whereabouts, "DEL");
        Ok(())
    }

    pub async fn check(&self, req: CheckRequest, netns: Option<Netns>) -> Result<Reply, CniError> {
        let netns = netns.ok_or_else(|| {
            CniError::new(code::INVALID_ENV, "CHECK needs the pod's netns descriptor")
        })?;
        let key = key_of(&req.target);
        let (lease, state) = self.pool().lookup(&key).ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "hostnic has no attachment for container {} {}",
                    key.container_id, key.ifname
                ),
            )
        })?;
        if !matches!(state, State::Held(_)) {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                "the attachment's ADD is still in progress",
            ));
        }
        let _guard = lease.lock.lock().await;
        let Reply::Added(result) = self.recorded_result(lease.spec.mac)? else {
            unreachable!("recorded_result only returns Added")
        };
        check_prev_result(&result, req.prev_result.as_ref())?;
        let w = wiring_from_result(&result, lease.spec.mac)?;
        match self.plumber.verify(&w, &netns).await {
            Ok(Ok(())) => Ok(Reply::Checked),
            Ok(Err(diff)) => Err(CniError::new(code::CHECK_FAILED, diff)),
            Err(e) => Err(internal(format!(
                "checking container {}: {e}",
                key.container_id
            ))),
        }
    }

    /// Releases every attachment of the network that the runtime no longer
    /// lists. Errors are collected; one bad NIC does not stop the rest.
    pub async fn gc(&self, req: GcRequest) -> Result<Reply, CniError> {
        let valid: BTreeSet<AttachmentKey> = req.valid.into_iter().collect();
        let stale: Vec<(Key, Mac)> = self
            .pool()
            .held_in(&req.network)
            .into_iter()
            .filter(|(k, _)| {
                !valid.contains(&AttachmentKey {
                    container_id: k.container_id.clone(),
                    ifname: k.ifname.clone(),
                })
            })
            .collect();
        let mut released = 0;
        let mut errors = Vec::new();
        for (key, mac) in stale {
            let Some(lease) = self.pool().lease(mac) else {
                continue;
            };
            let _guard = lease.lock.lock().await;
            if !matches!(self.pool().lookup(&key), Some((l, State::Held(_))) if l.spec.mac == mac) {
                continue;
            }
            let netns = self.release_netns(mac, &key, None, None);
            match self.release(mac, &key, netns.as_ref()).await {
                Ok(()) => released += 1,
                Err(e) => errors.push(e.msg),
            }
        }
        info!(network = %req.network, released, failed = errors.len(), "GC");
        if errors.is_empty() {
            Ok(Reply::Collected { released })
        } else {
            Err(internal(format!(
                "GC released {released} attachments but failed on: {}",
                errors.join("; ")
            )))
        }
    }

    /// Cheap by design (kubelet polls it every few seconds): a look at the
    /// pool, no syscalls.
    pub fn status(&self) -> Result<Reply, CniError> {
        // Ready means "an ADD could succeed now": it must be able to record
        // its reservation and to open its descriptors.
        let not_available = |msg: String| Err(CniError::new(code::NOT_AVAILABLE, msg));
        if let Err(e) = self.store.writable() {
            return not_available(format!("{e}: ADD would fail"));
        }
        match crate::fds::usage() {
            Ok((open, limit)) if open + crate::fds::ADD_HEADROOM > limit => {
                return not_available(format!(
                    "the agent has {open} of its {limit} descriptors open: ADD would fail"
                ));
            }
            Ok(_) => {}
            Err(e) => return not_available(format!("counting the agent's descriptors: {e}")),
        }
        // A NIC on its way back from a DEL serves the next ADD in ms.
        let free = self.pool().count_all(&[State::Free, State::Releasing]);
        // With the cloud an ADD can still create a NIC while the VM has room.
        let can_create = self
            .cloud
            .as_ref()
            .is_some_and(|c| c.has_room(self.pool().len()));
        if free == 0 && !can_create {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                "no free NIC on this node: ADD would fail",
            ));
        }
        Ok(Reply::Status {
            free_nics: free as u32,
        })
    }
}

impl Service {
    /// The latest policy decisions, as many as fit in a reply frame.
    pub fn decisions(&self, limit: Option<u32>) -> Result<Reply, CniError> {
        let Some(p) = &self.policies else {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "policy hooks are disabled on this agent (hooks.enabled = false): it records no decisions",
            ));
        };
        let limit = limit.map_or(usize::MAX, |n| n as usize);
        // Leave room in the frame for the envelope.
        let budget = hostnic_proto::rpc::MAX_FRAME - 4096;
        Ok(Reply::Decisions {
            calls: p.log.export(limit, budget),
        })
    }
}

fn validate_target(t: &Target) -> Result<(), CniError> {
    cni::validate_container_id(&t.container_id)?;
    cni::validate_ifname(&t.ifname)
}

/// The pod's routes: the default route via the subnet gateway, then the
/// templates. A template gateway of 0.0.0.0 means "the node's own NIC in the
/// pod's vxnet" (`node_gw`), as in the original plugin. A template without
/// a gateway is an on-link route; a default-route template replaces ours.
pub fn native_routes(
    nic: &NicSpec,
    templates: &[RouteTemplate],
    node_gw: Ipv4Addr,
) -> Vec<(Ipv4Net, Option<Ipv4Addr>)> {
    let resolve = |gw: Option<IpAddr>| match gw {
        Some(IpAddr::V4(g)) if g.is_unspecified() => Some(node_gw),
        Some(IpAddr::V4(g)) => Some(g),
        // IPv6 templates are refused by the executable's config validation.
        _ => None,
    };
    let mut routes = Vec::new();
    if !templates.iter().any(|t| t.dst.prefix_len() == 0) {
        routes.push((Ipv4Net::default(), Some(nic.gateway)));
    }
    for t in templates {
        if let IpNet::V4(dst) = t.dst
            && !routes.iter().any(|(d, _)| *d == dst)
        {
            routes.push((dst, resolve(t.gw)));
        }
    }
    routes
}

fn add_result(w: &Wiring, sandbox: &str, gateway: Ipv4Addr) -> AddResult {
    AddResult {
        interface: Interface {
            name: w.ifname.clone(),
            mac: w.mac.to_string(),
            sandbox: sandbox.to_string(),
            mtu: w.mtu,
        },
        ips: vec![IpConfig {
            address: IpNet::V4(w.address),
            gateway: Some(IpAddr::V4(gateway)),
        }],
        routes: w
            .routes
            .iter()
            .map(|(dst, gw)| Route {
                dst: IpNet::V4(*dst),
                gw: gw.map(IpAddr::V4),
            })
            .collect(),
    }
}

fn wiring_from_result(r: &AddResult, mac: Mac) -> Result<Wiring, CniError> {
    let address = match r.ips.first().map(|i| i.address) {
        Some(IpNet::V4(a)) => a,
        _ => return Err(internal("the recorded result has no IPv4 address")),
    };
    let v4 = |gw: Option<IpAddr>| match gw {
        Some(IpAddr::V4(g)) => Some(g),
        _ => None,
    };
    Ok(Wiring {
        mac,
        ifname: r.interface.name.clone(),
        address,
        mtu: r.interface.mtu,
        routes: r
            .routes
            .iter()
            .filter_map(|rt| match rt.dst {
                IpNet::V4(d) => Some((d, v4(rt.gw))),
                IpNet::V6(_) => None,
            })
            .collect(),
    })
}

/// The runtime's cached result must still show our address.
fn check_prev_result(ours: &AddResult, prev: Option<&serde_json::Value>) -> Result<(), CniError> {
    let Some(prev) = prev else { return Ok(()) };
    let want = ours
        .ips
        .first()
        .map(|i| i.address.to_string())
        .unwrap_or_default();
    let listed = prev["ips"]
        .as_array()
        .is_some_and(|ips| ips.iter().any(|ip| ip["address"].as_str() == Some(&want)));
    if listed {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_FAILED,
            format!(
                "prevResult does not list the address {want} that hostnic gave this attachment"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic() -> NicSpec {
        NicSpec {
            mac: "52:54:00:00:00:01".parse().unwrap(),
            address: "10.0.1.10/24".parse().unwrap(),
            gateway: "10.0.1.1".parse().unwrap(),
            vxnet: None,
        }
    }

    fn tpl(dst: &str, gw: Option<&str>) -> RouteTemplate {
        RouteTemplate {
            dst: dst.parse().unwrap(),
            gw: gw.map(|g| g.parse().unwrap()),
        }
    }

    #[test]
    fn templates_follow_the_original_semantics() {
        let routes = native_routes(
            &nic(),
            &[
                tpl("10.96.0.0/12", Some("0.0.0.0")),
                tpl("192.168.0.0/16", Some("10.0.1.254")),
                tpl("172.16.0.0/16", None),
            ],
            "10.0.1.9".parse().unwrap(),
        );
        let gw = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
        // 0.0.0.0 is the node's own NIC in the vxnet; the default route
        // stays on the vxnet gateway.
        assert_eq!(
            routes,
            vec![
                ("0.0.0.0/0".parse().unwrap(), gw("10.0.1.1")),
                ("10.96.0.0/12".parse().unwrap(), gw("10.0.1.9")),
                ("192.168.0.0/16".parse().unwrap(), gw("10.0.1.254")),
                ("172.16.0.0/16".parse().unwrap(), None),
            ]
        );
        // A default-route template replaces the built-in default.
        let routes = native_routes(
            &nic(),
            &[tpl("0.0.0.0/0", Some("10.0.1.254"))],
            nic().gateway,
        );
        assert_eq!(
            routes,
            vec![("0.0.0.0/0".parse().unwrap(), gw("10.0.1.254"))]
        );
    }

    #[test]
    fn result_and_wiring_round_trip() {
        let w = Wiring {
            mac: nic().mac,
            ifname: "eth1".into(),
            address: nic().address,
            mtu: 9000,
            routes: native_routes(
                &nic(),
                &[tpl("10.96.0.0/12", Some("0.0.0.0"))],
                nic().gateway,
            ),
        };
        let r = add_result(&w, "/var/run/netns/p", nic().gateway);
        assert_eq!(wiring_from_result(&r, nic().mac).unwrap(), w);
        assert!(check_prev_result(&r, None).is_ok());
        let prev = r.encode(cni::Version::V1_0_0, None);
        assert!(check_prev_result(&r, Some(&prev)).is_ok());
        let other = serde_json::json!({"ips": [{"address": "10.9.9.9/24"}]});
        assert_eq!(
            check_prev_result(&r, Some(&other)).unwrap_err().code,
            code::CHECK_FAILED
        );
    }
}
