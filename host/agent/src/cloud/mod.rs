//! The cloud NIC pool: NICs created, attached, kept warm, detached and
//! deleted through the QingCloud API, reconciled against the kernel and the
//! allocation record, with nothing leaked whatever fails.
//!
//! Every NIC the agent creates is named `hostnic-<cluster>-<instance>` and
//! tagged `hostnic-<cluster>` and `hostnic-<cluster>-<instance>`: the name
//! finds this node's NICs (also those whose create answer was lost), the
//! tags let an operator, and any node, find the cluster's and a node's NICs.
//!
//! Cloud calls happen outside the pool's lock: a cold ADD waiting for an
//! attach never delays a warm ADD.

pub mod provisioner;
mod rotation;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use hostnic_iaas::{
    Client, Credentials, NicFilter, NicStatus, Options, ResourceTagPair, TagFilter, TagId,
};
use hostnic_netlink::{Mac, RouteEntry};
use ipnet::Ipv4Net;
use tracing::{info, warn};

use crate::config::{self, Config, LeakSweep, NicSpec};
use crate::pool::State;
use crate::service::Service;
use rotation::Rotation;

/// How long start-up keeps retrying a busy or throttled cloud.
const START_PATIENCE: Duration = Duration::from_secs(600);

/// Runs a start-up cloud step until it succeeds, retrying transient
/// failures (busy, throttled, unreachable) with jittered backoff — 1 s
/// doubling to 30 s — for up to [`START_PATIENCE`]. A whole cluster's agents
/// start at once in a DaemonSet rollout and can meet the account's rate
/// limit together; exiting would only turn that into a crash loop that
/// calls again sooner. Anything else (credentials, a missing vxnet) fails
/// at once.
pub async fn patiently<T, F, Fut>(what: &str, mut step: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let started = std::time::Instant::now();
    let mut delay = Duration::from_secs(1);
    loop {
        match step().await {
            Ok(t) => return Ok(t),
            Err(e) if is_transient(&e) && started.elapsed() < START_PATIENCE => {
                let wait = delay.mul_f64(0.5 + fastrand::f64());
                warn!(error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "{what}: the cloud is busy; retrying");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<hostnic_iaas::Error>()
            .is_some_and(|e| e.is_transient())
    })
}

/// A vxnet's addressing, from DescribeVxNets.
#[derive(Clone, Copy, Debug)]
pub struct VxnetInfo {
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// Why provisioning a NIC did not work.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("the node has {have} of its {max} NICs (primary and gateway NICs included)")]
    Limit { have: usize, max: usize },
    #[error("{0}")]
    Cloud(#[from] hostnic_iaas::Error),
    #[error("NIC {0} was attached but its link never appeared on the node")]
    NoLink(Mac),
}

impl ProvisionError {
    /// Worth retrying later: the cloud was busy, not a hard limit.
    pub fn is_transient(&self) -> bool {
        match self {
            ProvisionError::Cloud(e) => e.is_transient(),
            ProvisionError::NoLink(_) => true,
            ProvisionError::Limit { .. } => false,
        }
    }
}

#[derive(Debug)]
pub struct CloudPool {
    client: Client,
    cfg: config::Cloud,
    /// The configured vxnets, in the configured order: the order the
    /// vxnet guest gets its candidates in (FailRotate starts at the first).
    vxnets: Vec<(String, VxnetInfo)>,
    rotation: Mutex<Rotation>,
    /// `hostnic-<cluster>` and `hostnic-<cluster>-<instance>`.
    tags: [TagId; 2],
    /// Failed creates per vxnet since its last success: the vxnet policy's
    /// `recent-failures` (FailRotate moves on when it is not zero).
    failures: Mutex<BTreeMap<String, (u32, std::time::Instant)>>,
    /// `hostnic-<cluster>-<instance>`: this node's NICs.
    name: String,
    /// The node's default route as found at start: (gateway, device index).
    default_route: Mutex<Option<RouteEntry>>,
    /// Held while a gateway NIC is set up, so concurrent ADDs that need
    /// one in the same vxnet make one, not one each.
    gateway_setup: tokio::sync::Mutex<()>,
    /// Creates NICs for the cold ADDs waiting.
    pub provisioner: provisioner::Provisioner,
}

impl CloudPool {
    /// Connects to the cloud: loads the credentials, checks every configured
    /// vxnet exists, and finds or creates the cluster's tag.
    pub async fn connect(cfg: &Config) -> anyhow::Result<CloudPool> {
        let path = cfg
            .iaas_credentials
            .as_deref()
            .context("iaas_credentials is not set")?;
        let creds = Credentials::load(path)?;
        let client = Client::new(creds, Options::default())?;
        Self::with_client(cfg, client).await
    }

    pub async fn with_client(cfg: &Config, client: Client) -> anyhow::Result<CloudPool> {
        let found = client
            .describe_vxnets(&cfg.vxnets)
            .await
            .context("describing the configured vxnets")?;
        let mut vxnets = Vec::new();
        for id in &cfg.vxnets {
            let Some(v) = found.iter().find(|v| &v.vxnet_id == id) else {
                bail!(
                    "vxnet {id} (in vxnets) does not exist in zone {}",
                    client.zone()
                );
            };
            let router = v.router.as_ref();
            let (Some(cidr), Some(gateway)) = (
                router.and_then(|r| r.ip_network),
                router.and_then(|r| r.manager_ip),
            ) else {
                bail!(
                    "vxnet {id} has no router (ip_network, manager_ip); hostnic needs a managed vxnet"
                );
            };
            vxnets.push((id.clone(), VxnetInfo { cidr, gateway }));
        }
        // One look-up finds both tags: the node's name starts with the
        // cluster's.
        let cluster_tag = format!("hostnic-{}", cfg.cloud.cluster);
        let node_tag = format!("{cluster_tag}-{}", cfg.cloud.instance_id);
        let existing = client
            .describe_tags(&TagFilter {
                search_word: Some(cluster_tag.clone()),
                ..TagFilter::default()
            })
            .await
            .context("looking up the cluster's tags")?;
        let mut tags = Vec::new();
        for name in [&cluster_tag, &node_tag] {
            tags.push(match existing.iter().find(|t| &t.tag_name == name) {
                Some(t) => t.tag_id.clone(),
                None => client
                    .create_tag(name)
                    .await
                    .with_context(|| format!("creating the tag {name}"))?,
            });
        }
        let tags: [TagId; 2] = tags
            .try_into()
            .map_err(|_| anyhow::anyhow!("two tags expected"))?;
        Ok(CloudPool {
            client,
            name: format!("hostnic-{}-{}", cfg.cloud.cluster, cfg.cloud.instance_id),
            cfg: cfg.cloud.clone(),
            vxnets,
            rotation: Mutex::new(Rotation::new(cfg.policy, cfg.vxnets.clone())),
            tags,
            failures: Mutex::default(),
            default_route: Mutex::new(None),
            gateway_setup: tokio::sync::Mutex::new(()),
            provisioner: provisioner::Provisioner::new(Duration::from_secs(
                cfg.cloud.cold_add_wait_seconds,
            )),
        })
    }

    /// The configured vxnets with their addressing, in the configured order.
    pub fn vxnets(&self) -> impl Iterator<Item = (&str, &VxnetInfo)> {
        self.vxnets.iter().map(|(id, v)| (id.as_str(), v))
    }

    fn vxnet(&self, id: &str) -> Option<&VxnetInfo> {
        self.vxnets
            .iter()
            .find(|(v, _)| v == id)
            .map(|(_, info)| info)
    }

    /// Failed creates on `vxnet` since its last success.
    pub fn recent_failures(&self, vxnet: &str) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(vxnet)
            .map_or(0, |(n, _)| *n)
    }

    fn note_create(&self, vxnet: &str, ok: bool) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            f.remove(vxnet);
        } else {
            let e = f
                .entry(vxnet.to_string())
                .or_insert((0, std::time::Instant::now()));
            *e = (e.0 + 1, std::time::Instant::now());
        }
    }

    /// The node as the vxnet policy sees it, with `pool_len` secondary NICs.
    pub fn node_facts(&self, pool_len: usize) -> hostnic_policy::Node {
        crate::policy::node(
            &self.cfg.instance_id,
            (pool_len + 1) as u32,
            self.cfg.max_nics as u32,
        )
    }

    /// One NIC with exactly `ip` (the ip policy's address), created,
    /// attached and parked; not batched.
    pub async fn provision_with_ip(
        &self,
        svc: &Service,
        vxnet: &str,
        ip: Ipv4Addr,
    ) -> Result<Mac, ProvisionError> {
        let macs = self
            .provision_ips(svc, vxnet, 1, &[ip], State::Free)
            .await?;
        macs.into_iter()
            .next()
            .ok_or(ProvisionError::Limit { have: 0, max: 0 })
    }

    /// Whether the VM can take another NIC, with `pool_len` secondary NICs
    /// (its primary takes one more place).
    pub fn has_room(&self, pool_len: usize) -> bool {
        pool_len + 1 < self.cfg.max_nics
    }

    fn rotation(&self) -> std::sync::MutexGuard<'_, Rotation> {
        self.rotation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The vxnets to take a NIC from, best first.
    pub fn order(&self) -> Vec<String> {
        self.rotation().order()
    }

    /// What a cloud NIC looks like to the pool.
    fn spec(&self, mac: Mac, vxnet: &str, ip: Ipv4Addr) -> Option<NicSpec> {
        let v = self.vxnet(vxnet)?;
        Some(NicSpec {
            mac,
            address: Ipv4Net::new(ip, v.cidr.prefix_len()).ok()?,
            gateway: v.gateway,
            vxnet: Some(vxnet.to_string()),
        })
    }

    /// This node's secondary NICs as the cloud sees them: the inventory the
    /// start-up reconciliation works on, and those among them whose attach
    /// is still under way (attached to this VM, not yet in use). One
    /// DescribeNics call.
    pub async fn inventory(&self) -> anyhow::Result<(Vec<NicSpec>, Vec<Mac>)> {
        let nics = self
            .client
            .describe_nics(&NicFilter {
                instances: vec![self.cfg.instance_id.clone()],
                ..NicFilter::default()
            })
            .await
            .context("describing this node's NICs")?;
        let ours = nics
            .iter()
            .filter(|n| !n.is_primary() && n.nic_name == self.name);
        let specs = ours
            .clone()
            .filter_map(|n| self.spec(n.nic_id.parse().ok()?, &n.vxnet_id, n.private_ip?))
            .collect();
        let attaching = ours
            .filter(|n| n.status == NicStatus::Available)
            .filter_map(|n| n.nic_id.parse().ok())
            .collect();
        Ok((specs, attaching))
    }

    /// NICs whose attach was under way when the agent (re)started: wait for
    /// each link on a task of its own and free the NIC when it appears.
    pub fn adopt_in_flight(&self, svc: &std::sync::Arc<Service>, macs: Vec<Mac>) {
        for mac in macs {
            if svc
                .pool()
                .transition(mac, &[State::Missing], State::Attaching)
                .is_none()
            {
                continue;
            }
            let svc = svc.clone();
            tokio::spawn(async move {
                let Some(cloud) = &svc.cloud else { return };
                if cloud.adopt_link(&svc, mac, State::Free).await {
                    info!(nic = %mac, "adopted a NIC whose attach was under way at start");
                } else {
                    svc.pool()
                        .transition(mac, &[State::Attaching], State::Missing);
                }
            });
        }
    }

    /// Creates `count` NICs in `vxnet`, tags them, attaches them to this node
    /// and parks them as they appear. Returns those that became free; any
    /// that failed are detached and deleted again (or left to the leak
    /// collector if even that fails).
    pub async fn provision(
        &self,
        svc: &Service,
        vxnet: &str,
        count: usize,
    ) -> Result<Vec<Mac>, ProvisionError> {
        self.provision_ips(svc, vxnet, count, &[], State::Free)
            .await
    }

    /// Creates, attaches and parks NICs; those that come up go from
    /// `Attaching` straight to `then` (free, or the node's gateway NIC,
    /// which no ADD may take in between).
    async fn provision_ips(
        &self,
        svc: &Service,
        vxnet: &str,
        count: usize,
        ips: &[Ipv4Addr],
        then: State,
    ) -> Result<Vec<Mac>, ProvisionError> {
        let have = svc.pool().len() + 1;
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
                self.note_create(vxnet, true);
                c
            }
            Err(e) => {
                self.note_create(vxnet, false);
                self.rotation().failed(vxnet);
                warn!(vxnet, error = %e, "creating NICs failed");
                return Err(e.into());
            }
        };
        let specs: Vec<NicSpec> = created
            .iter()
            .filter_map(|c| self.spec(c.nic_id.parse().ok()?, vxnet, c.private_ip?))
            .collect();
        let pairs: Vec<ResourceTagPair> = created
            .iter()
            .flat_map(|c| {
                self.tags.iter().map(|t| ResourceTagPair {
                    tag_id: t.clone(),
                    resource_type: "nic".into(),
                    resource_id: c.nic_id.clone(),
                })
            })
            .collect();
        // The name already marks them as ours; a missing tag only slows
        // leak collection from other nodes.
        if let Err(e) = self.client.attach_tags(&pairs).await {
            warn!(error = %e, "tagging new NICs");
        }
        {
            let mut pool = svc.pool();
            for s in &specs {
                pool.insert(s.clone(), State::Attaching, true);
            }
        }
        // Attach in fives (the API's limit per call), all chunks at once:
        // the token bucket paces the calls, the waits overlap.
        let chunks = specs
            .chunks(hostnic_iaas::MAX_NICS_PER_ATTACH)
            .map(|chunk| self.attach_chunk(svc, chunk, &then));
        let ready: Vec<Mac> = futures::future::join_all(chunks)
            .await
            .into_iter()
            .flatten()
            .collect();
        info!(vxnet, count = ready.len(), "NICs attached and ready");
        match (ready.is_empty(), specs.first()) {
            (true, Some(first)) => Err(ProvisionError::NoLink(first.mac)),
            _ => Ok(ready),
        }
    }

    /// Attaches up to five NICs with one call, waits for them, and frees
    /// those whose links appeared; the others are detached and deleted.
    async fn attach_chunk(&self, svc: &Service, chunk: &[NicSpec], then: &State) -> Vec<Mac> {
        let macs: Vec<String> = chunk.iter().map(|s| s.mac.to_string()).collect();
        let attached = match self.client.attach_nics(&macs, &self.cfg.instance_id).await {
            Ok(job) => {
                let last = chunk.last().map(|s| s.mac);
                let early = async {
                    if let Some(m) = last {
                        wait_for_link(svc, m).await;
                    }
                };
                self.client.wait_job(&job, early).await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = attached {
            warn!(nics = ?macs, error = %e, "attaching NICs failed; deleting them");
            let macs = chunk.iter().map(|s| s.mac).collect();
            self.discard(svc, macs, &[State::Attaching]).await;
            return Vec::new();
        }
        let mut ready = Vec::new();
        for s in chunk {
            if self.adopt_link(svc, s.mac, then.clone()).await {
                ready.push(s.mac);
            } else {
                self.discard(svc, vec![s.mac], &[State::Attaching]).await;
            }
        }
        ready
    }

    /// Waits for a freshly attached NIC's link, parks it and moves it from
    /// `Attaching` (the state of a NIC on its way) to `then`.
    async fn adopt_link(&self, svc: &Service, mac: Mac, then: State) -> bool {
        let found = tokio::time::timeout(Duration::from_secs(30), wait_for_link(svc, mac)).await;
        let link = match (found, svc.plumber.node().link_by_mac(mac, None).await) {
            (Ok(()), Ok(Some(l))) => l,
            _ => return false,
        };
        match svc.plumber.park(&link).await {
            Ok(()) => svc
                .pool()
                .transition(mac, &[State::Attaching], then)
                .is_some(),
            Err(e) => {
                warn!(nic = %mac, error = %e, "parking a new NIC");
                false
            }
        }
    }

    /// Forgets those of `macs` still in one of the states `from`, then
    /// detaches (if attached) and deletes them. A NIC that changed state
    /// since the caller chose it (an ADD reserved it) is left alone.
    async fn discard(&self, svc: &Service, macs: Vec<Mac>, from: &[State]) {
        let macs: Vec<Mac> = {
            let mut pool = svc.pool();
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

    /// Brings each vxnet up to `warm_min` free NICs.
    pub async fn top_up(&self, svc: &Service) {
        for (vxnet, _) in &self.vxnets {
            let have = svc
                .pool()
                .count_in(vxnet, &[State::Free, State::Attaching, State::Releasing]);
            if have >= self.cfg.warm_min {
                continue;
            }
            let want = (self.cfg.warm_min - have).min(self.cfg.warm_max);
            if let Err(e) = self.provision(svc, vxnet, want).await {
                warn!(vxnet, error = %e, "topping up the warm pool");
            }
        }
    }

    /// Detaches and deletes free NICs above `warm_max` that have been idle
    /// for `idle_seconds`.
    pub async fn trim(&self, svc: &Service) {
        let idle = Duration::from_secs(self.cfg.idle_seconds);
        for (vxnet, _) in &self.vxnets {
            let surplus = svc
                .pool()
                .count_in(vxnet, &[State::Free])
                .saturating_sub(self.cfg.warm_max);
            if surplus == 0 {
                continue;
            }
            let victims: Vec<Mac> = svc
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
                self.discard(svc, victims, &[State::Free]).await;
            }
        }
    }

    /// The node's own address in `vxnet`, on its gateway NIC, configured in
    /// the node namespace (created if the node has none): the next hop for
    /// `gw 0.0.0.0` route templates, so service traffic goes through the
    /// node where kube-proxy handles it.
    pub async fn gateway(&self, svc: &Service, vxnet: &str) -> anyhow::Result<Ipv4Addr> {
        if let Some(gw) = svc.pool().gateway_in(vxnet) {
            return Ok(gw.address.addr());
        }
        let _one = self.gateway_setup.lock().await;
        if let Some(gw) = svc.pool().gateway_in(vxnet) {
            return Ok(gw.address.addr());
        }
        // A free NIC of the vxnet (claimed, so no ADD takes it meanwhile),
        // else a new one that becomes the gateway as it comes up.
        let free = svc.pool().idle_in(vxnet, Duration::ZERO);
        let claimed = free.into_iter().find(|m| {
            svc.pool()
                .transition(*m, &[State::Free], State::Gateway)
                .is_some()
        });
        let mac = match claimed {
            Some(m) => m,
            None => *self
                .provision_ips(svc, vxnet, 1, &[], State::Gateway)
                .await?
                .first()
                .context("no NIC provisioned")?,
        };
        let spec = svc
            .pool()
            .spec(mac)
            .context("gateway NIC vanished from the pool")?;
        configure_gateway(svc, &spec).await?;
        info!(vxnet, nic = %mac, ip = %spec.address, "gateway NIC configured on the node");
        Ok(spec.address.addr())
    }

    /// Remembers the node's default route; later ticks put it back if it
    /// moves (a hot-plugged NIC's DHCP client takes it on some images).
    pub async fn remember_default_route(&self, svc: &Service, iface: &str) -> anyhow::Result<()> {
        let node = svc.plumber.node();
        let link = node
            .link_by_name(iface)
            .await?
            .with_context(|| format!("iface {iface} not found"))?;
        let route = node
            .routes()
            .await?
            .into_iter()
            .find(|r| r.dst.prefix_len() == 0 && r.oif == Some(link.index) && r.gw.is_some());
        match &route {
            Some(r) => info!(via = ?r.gw, dev = iface, "guarding the node's default route"),
            None => warn!(
                dev = iface,
                "the node has no default route via its primary interface to guard"
            ),
        }
        *self.default_route.lock().unwrap_or_else(|p| p.into_inner()) = route;
        Ok(())
    }

    /// One reconciliation pass of the three truths, then the warm targets.
    /// The node's periodic check: the kernel and the pool, then the warm
    /// pool's targets. No cloud call unless something needs one: a NIC gone
    /// from the node (only the cloud can say whether it was detached or
    /// vanished), the warm pool below `warm_min`, idle NICs above
    /// `warm_max`.
    pub async fn tick(&self, svc: &Service) {
        self.check_node(svc).await;
        self.top_up(svc).await;
        self.trim(svc).await;
    }

    /// What the kernel alone can tell: the default route, NICs that left or
    /// came back. Runs on every netlink notification too.
    async fn check_node(&self, svc: &Service) {
        if let Err(e) = self.guard_default_route(svc).await {
            warn!(error = %e, "checking the node's default route");
        }
        match self.check_links(svc).await {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = self.poll(svc).await {
                    warn!(error = %e, "asking the cloud about a NIC gone from the node");
                }
            }
            Err(e) => warn!(error = %e, "checking the node's NICs"),
        }
    }

    /// Parks and frees missing NICs that are back on the node; returns
    /// whether a NIC the pool has on the node (free, or the gateway NIC) is
    /// gone from it.
    async fn check_links(&self, svc: &Service) -> anyhow::Result<bool> {
        let links = svc.plumber.node().links().await?;
        let on_node = |m: Mac| links.iter().find(|l| l.mac == Some(m));
        let mut vanished = false;
        let snapshot = svc.pool().snapshot();
        for (mac, state) in snapshot {
            match state {
                State::Free | State::Gateway => vanished |= on_node(mac).is_none(),
                State::Missing => {
                    if let Some(link) = on_node(mac) {
                        svc.plumber.park(link).await?;
                        if svc
                            .pool()
                            .transition(mac, &[State::Missing], State::Free)
                            .is_some()
                        {
                            info!(nic = %mac, "missing NIC is back on the node");
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(vanished)
    }

    /// The slow cloud poll: one DescribeNics of the NICs named for this
    /// node, which is both what is attached here (reconciled with the pool
    /// and the kernel) and what this node created and lost (its leaks).
    pub async fn poll(&self, svc: &Service) -> anyhow::Result<()> {
        let described = Instant::now();
        let named: Vec<hostnic_iaas::Nic> = self
            .client
            .describe_nics(&NicFilter {
                nic_name: Some(self.name.clone()),
                ..NicFilter::default()
            })
            .await
            .context("describing the NICs named for this node")?
            .into_iter()
            .filter(|n| n.nic_name == self.name && !n.is_primary())
            .collect();
        let attached: Vec<NicSpec> = named
            .iter()
            .filter(|n| n.instance_id == self.cfg.instance_id)
            .filter_map(|n| self.spec(n.nic_id.parse().ok()?, &n.vxnet_id, n.private_ip?))
            .collect();
        self.reconcile(svc, &attached, described).await?;
        // The cluster-wide sweep is one node's duty: the Lease holder's
        // in Kubernetes; the others delete their own leaks only.
        let sweeper = svc.kube.as_ref().is_none_or(|k| k.elector.holds());
        let deleted = match self.cfg.leak_sweep {
            LeakSweep::Cluster if sweeper => self.collect_leaks(svc).await?,
            LeakSweep::Node | LeakSweep::Cluster => self.delete_leaks(svc, named).await?,
        };
        if deleted > 0 {
            info!(deleted, "deleted leaked NICs");
        }
        Ok(())
    }

    async fn guard_default_route(&self, svc: &Service) -> anyhow::Result<()> {
        let Some(want) = self
            .default_route
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(());
        };
        let node = svc.plumber.node();
        let defaults: Vec<RouteEntry> = node
            .routes()
            .await?
            .into_iter()
            .filter(|r| r.dst.prefix_len() == 0)
            .collect();
        if defaults == [want.clone()] {
            return Ok(());
        }
        warn!(found = ?defaults, "the node's default route moved; putting it back on the primary interface");
        let (Some(gw), Some(oif)) = (want.gw, want.oif) else {
            return Ok(());
        };
        node.replace_default_route(gw, oif).await?;
        // Whatever took it was a NIC of ours configured behind our back:
        // park every free one again (down, no address).
        for link in node.links().await? {
            let Some(mac) = link.mac else { continue };
            if svc.pool().state(mac) == Some(State::Free)
                && (link.up || !node.addresses(link.index).await?.is_empty())
            {
                svc.plumber.park(&link).await?;
            }
        }
        Ok(())
    }

    /// Cloud vs kernel vs pool. Adopts attached NICs of ours the pool does
    /// not know, forgets NICs detached behind our back, and re-attaches
    /// attached NICs whose link vanished from the node.
    /// `described` is when the cloud was asked: a NIC freed since then
    /// (a new one, or one a DEL returned) may be missing from its answer.
    async fn reconcile(
        &self,
        svc: &Service,
        attached: &[NicSpec],
        described: Instant,
    ) -> anyhow::Result<()> {
        let links = svc.plumber.node().links().await?;
        let on_node = |m: Mac| links.iter().find(|l| l.mac == Some(m));
        for spec in attached {
            let state = svc.pool().state(spec.mac);
            match state {
                None => {
                    if let Some(link) = on_node(spec.mac) {
                        svc.plumber.park(link).await?;
                        if svc.pool().insert_new(spec.clone(), State::Free) {
                            info!(nic = %spec.mac, "adopted an attached NIC of ours");
                        }
                    }
                }
                Some(State::Free | State::Gateway | State::Missing)
                    if on_node(spec.mac).is_none() =>
                {
                    self.reattach(svc, spec.mac).await;
                }
                Some(State::Missing) => {
                    if let Some(link) = on_node(spec.mac) {
                        svc.plumber.park(link).await?;
                        svc.pool()
                            .transition(spec.mac, &[State::Missing], State::Free);
                    }
                }
                _ => {}
            }
        }
        let gone: Vec<Mac> = {
            let pool = svc.pool();
            pool.snapshot()
                .into_iter()
                .filter(|(m, s)| {
                    matches!(s, State::Free | State::Missing)
                        && !attached.iter().any(|a| a.mac == *m)
                })
                .map(|(m, _)| m)
                .collect()
        };
        for mac in gone {
            let forgotten = svc
                .pool()
                .remove_if(mac, &[State::Free, State::Missing], described);
            if forgotten.is_some() {
                warn!(nic = %mac, "NIC is no longer attached to this node in the cloud; forgetting it");
            }
        }
        Ok(())
    }

    /// The original plugin's known reboot problem: the cloud says attached,
    /// the node has no such link. Detach and attach it again.
    async fn reattach(&self, svc: &Service, mac: Mac) {
        let reattachable = [State::Free, State::Gateway, State::Missing];
        let Some(was) = svc.pool().transition(mac, &reattachable, State::Attaching) else {
            return; // an ADD took it since the look
        };
        // The look at the node is older than the claim: a DEL may have
        // brought the NIC back since. Only a NIC absent now has vanished.
        if let Ok(Some(_)) = svc.plumber.node().link_by_mac(mac, None).await {
            svc.pool().transition(mac, &[State::Attaching], was);
            return;
        }
        warn!(nic = %mac, "NIC vanished from the node; re-attaching it");
        let id = [mac.to_string()];
        let result = async {
            for job in self.client.detach_nics(&id).await? {
                self.client.wait_job(&job, std::future::pending()).await?;
            }
            let job = self.client.attach_nics(&id, &self.cfg.instance_id).await?;
            self.client.wait_job(&job, wait_for_link(svc, mac)).await?;
            Ok::<_, hostnic_iaas::Error>(())
        }
        .await;
        // A gateway NIC comes back as the gateway, never free for a moment.
        let then = match was {
            State::Gateway => State::Gateway,
            _ => State::Free,
        };
        let ok = result.is_ok() && self.adopt_link(svc, mac, then.clone()).await;
        if ok {
            if then == State::Gateway {
                let spec = svc.pool().spec(mac);
                if let Some(spec) = spec
                    && let Err(e) = configure_gateway(svc, &spec).await
                {
                    warn!(nic = %mac, error = %e, "reconfiguring the gateway NIC");
                }
            }
            info!(nic = %mac, "re-attached");
        } else {
            warn!(nic = %mac, error = ?result.err(), "re-attaching failed; will retry");
            svc.pool()
                .transition(mac, &[State::Attaching], State::Missing);
        }
    }

    /// The cluster-wide sweep (`leak_sweep = "cluster"`): deletes detached
    /// NICs named for this cluster — those of dead nodes too — older than
    /// the grace period. One node at a time does this, never every node.
    pub async fn collect_leaks(&self, svc: &Service) -> anyhow::Result<usize> {
        let nics = self
            .client
            .describe_nics(&NicFilter {
                vxnets: self.vxnets.iter().map(|(id, _)| id.clone()).collect(),
                status: Some(NicStatus::Available),
                ..NicFilter::default()
            })
            .await?;
        self.delete_leaks(svc, nics).await
    }

    /// Deletes those of `nics` that are leaks: named for this cluster,
    /// detached, older than the grace period (which covers a create whose
    /// attach is still on its way) and unknown to the pool.
    async fn delete_leaks(
        &self,
        svc: &Service,
        nics: Vec<hostnic_iaas::Nic>,
    ) -> anyhow::Result<usize> {
        let prefix = format!("hostnic-{}-", self.cfg.cluster);
        let grace = Duration::from_secs(self.cfg.leak_grace_seconds);
        let now = SystemTime::now();
        let leaked: Vec<String> = nics
            .into_iter()
            .filter(|n| n.nic_name.starts_with(&prefix) && n.instance_id.is_empty())
            .filter(|n| {
                hostnic_iaas::sign::parse_time_stamp(&n.create_time)
                    .is_some_and(|t| now.duration_since(t).unwrap_or_default() >= grace)
            })
            .filter(|n| {
                n.nic_id
                    .parse::<Mac>()
                    .is_ok_and(|m| svc.pool().state(m).is_none())
            })
            .map(|n| n.nic_id)
            .collect();
        if !leaked.is_empty() {
            warn!(nics = ?leaked, "deleting leaked NICs");
            self.client.delete_nics(&leaked).await?;
        }
        Ok(leaked.len())
    }

    /// The agent's loop: the node check on every kernel notification
    /// (debounced) and every `reconcile_seconds`, with the warm pool's
    /// targets on the timer; the cloud poll every `cloud_poll_seconds`,
    /// jittered so the nodes of a cluster spread out.
    pub async fn run(&self, svc: &Service) {
        let local = Duration::from_secs(self.cfg.reconcile_seconds);
        let poll_every = || {
            Duration::from_secs(self.cfg.cloud_poll_seconds).mul_f64(0.8 + 0.4 * fastrand::f64())
        };
        let mut events = match svc.plumber.node_ns().watch().await {
            Ok(rx) => Some(rx),
            Err(e) => {
                warn!(error = %e, "watching the node's links and routes; checking every reconcile_seconds only");
                None
            }
        };
        let mut next_tick = tokio::time::Instant::now() + local;
        let mut next_poll = tokio::time::Instant::now() + poll_every();
        loop {
            let changed = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next_tick) => {
                    self.tick(svc).await;
                    next_tick = tokio::time::Instant::now() + local;
                }
                _ = tokio::time::sleep_until(next_poll) => {
                    if let Err(e) = self.poll(svc).await {
                        warn!(error = %e, "polling the cloud");
                    }
                    next_poll = tokio::time::Instant::now() + poll_every();
                }
                change = changed => {
                    if change.is_none() {
                        warn!("the node's netlink notifications stopped; checking every reconcile_seconds only");
                        events = None;
                        continue;
                    }
                    // A NIC move or a route change is a burst of messages:
                    // look once they settle.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Some(rx) = events.as_mut() {
                        while rx.try_recv().is_ok() {}
                    }
                    self.check_node(svc).await;
                }
            }
        }
    }
}

/// Resolves once a link with `mac` exists in the node namespace. A link
/// dump of a node is ~0.1 ms; every 5 ms during an attach is cheap and adds
/// at most 5 ms to a cold ADD.
async fn wait_for_link(svc: &Service, mac: Mac) {
    loop {
        if let Ok(Some(_)) = svc.plumber.node().link_by_mac(mac, None).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The gateway NIC in the node: named `gw<mac>`, up, with its address.
/// Only the vxnet's connected route comes with it, never a default route.
async fn configure_gateway(svc: &Service, spec: &NicSpec) -> anyhow::Result<()> {
    let node = svc.plumber.node();
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
