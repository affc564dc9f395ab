//! The cloud NIC pool: NICs created, attached, kept warm, detached and
//! deleted through the QingCloud API, reconciled against the kernel and the
//! allocation record, with nothing leaked whatever fails.
//!
//! Every NIC the agent creates is named `hostnic-<cluster>-<instance>` and
//! tagged `hostnic-<cluster>` and `hostnic-<cluster>-<instance>`: the name
//! finds this node's NICs (also those whose create answer was lost), the
//! tags, added once the node is quiet, let an operator, and any node, find
//! the cluster's and a node's NICs.
//!
//! Cloud calls happen outside the pool's lock: a cold ADD waiting for an
//! attach never delays a warm ADD.
//!
//! - this file: the connection (vxnets, tags, this node's NICs at start);
//! - `bank`: NICs the Lease holder keeps made for every node to claim;
//! - `counts`: the vxnets' free addresses, counted once for the cluster;
//! - `lifecycle`: a NIC created, attached and parked, or discarded; the
//!   warm targets; the node's gateway NIC;
//! - `provisioner`: the cold ADDs waiting and the batches made for them;
//! - `source`: the pool as an ADD's [`crate::source::NicSource`];
//! - `sticky`: NICs that follow a sticky identity from node to node;
//! - `tagger`: the cluster's and the node's tags on new NICs;
//! - `upkeep`: the node check, the slow cloud poll, re-attach and leaks.

mod bank;
pub mod counts;
pub mod kpis;
mod lifecycle;
pub mod pace;
pub mod provisioner;
pub mod source;
mod sticky;
mod tagger;
mod upkeep;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use hostnic_iaas::{Client, Credentials, Nic, NicFilter, NicStatus, Options};
use hostnic_netlink::{Mac, RouteEntry};
use ipnet::Ipv4Net;
use tracing::warn;

use crate::apiserver::Duties;
use crate::apiserver::pods::PodCache;
use crate::config::{self, Config, NicSpec};

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

    /// The answer for the cold ADDs that waited for it.
    pub fn answer(&self) -> crate::error::Error {
        use crate::error::{Cause, Error, cloud_cause};
        let msg = format!("no warm NIC on this node and creating one failed: {self}");
        let err = if self.is_transient() {
            Error::try_again(msg)
        } else {
            Error::exhausted(msg)
        };
        match self {
            ProvisionError::Limit { .. } => err.because(Cause::NicLimit),
            ProvisionError::Cloud(e) => match cloud_cause(e) {
                Some(c) => err.because(c),
                None => err,
            },
            ProvisionError::NoLink(_) => err,
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
    /// The vxnets in shared-NIC mode: their pods take no NIC, so no warm
    /// NIC is kept there (only the node's own, made at the first ADD).
    shared: Vec<String>,
    /// Tags the NICs this node creates, when the node is quiet.
    tagger: tagger::Tagger,
    /// Whether a task waits for the node to be quiet to tag.
    tagging: AtomicBool,
    /// What this node has seen of each vxnet: failed creates (the vxnet
    /// policy's `recent-failures`; FailRotate moves on when it is not
    /// zero), attach times, free addresses as counted.
    pub kpis: kpis::Kpis,
    /// `hostnic-<cluster>-<instance>`: this node's NICs.
    name: String,
    /// The node's default route as found at start: (gateway, device index).
    default_route: Mutex<Option<RouteEntry>>,
    /// Held while a gateway NIC is set up, so concurrent ADDs that need
    /// one in the same vxnet make one, not one each.
    gateway_setup: tokio::sync::Mutex<()>,
    /// Creates NICs for the cold ADDs waiting.
    pub provisioner: provisioner::Provisioner,
    /// The Lease election in Kubernetes (only its holder sweeps the
    /// cluster's leaks and releases kept sticky NICs) and the StatefulSets
    /// the release asks about. `None` outside Kubernetes.
    duties: Option<Duties>,
    /// The Nodes (in Kubernetes): a Node joining wakes the bank's keeper.
    nodes: Option<pace::NodeList>,
    /// The bank NICs this node tried to claim lately.
    bank: bank::Claims,
    /// The pods bound to this node (in Kubernetes): how many NICs a batch
    /// for cold ADDs makes ahead of them.
    pods: Option<PodCache>,
}

impl CloudPool {
    /// Connects to the cloud: loads the credentials, paces the client to
    /// this node's slots in the account's rate (following `nodes`, the
    /// Node list, in Kubernetes) and checks every configured vxnet exists.
    /// The tags are looked up later, when first needed (`tagger`).
    pub async fn connect(
        cfg: &Config,
        duties: Option<Duties>,
        mut nodes: Option<pace::NodeList>,
    ) -> anyhow::Result<CloudPool> {
        let path = cfg
            .iaas_credentials
            .as_deref()
            .context("iaas_credentials is not set")?;
        let mut creds = Credentials::load(path)?;
        if let Some(zone) = &cfg.zone {
            creds.zone.clone_from(zone);
        }
        let node = &cfg.kubernetes.node_name;
        let share = pace::at_start(&cfg.cloud, nodes.as_mut().map(|n| (n, node.as_str()))).await;
        let opts = Options {
            observer: Some(crate::metrics::CloudObserver::shared()),
            share: Some(share),
            ..Options::default()
        };
        let client = Client::new(creds, opts)?;
        let mut pool = Self::with_client(cfg, client, duties).await?;
        pool.nodes.clone_from(&nodes);
        if let Some(nodes) = nodes {
            pace::follow(pool.client.clone(), cfg.cloud.clone(), nodes, node.clone());
        }
        Ok(pool)
    }

    pub async fn with_client(
        cfg: &Config,
        client: Client,
        duties: Option<Duties>,
    ) -> anyhow::Result<CloudPool> {
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
        Ok(CloudPool {
            client,
            name: format!("hostnic-{}-{}", cfg.cloud.cluster, cfg.cloud.instance_id),
            cfg: cfg.cloud.clone(),
            vxnets,
            shared: cfg.shared.iter().map(|s| s.vxnet.clone()).collect(),
            tagger: tagger::Tagger::new(&cfg.cloud.cluster, &cfg.cloud.instance_id),
            tagging: AtomicBool::new(false),
            kpis: kpis::Kpis::default(),
            default_route: Mutex::new(None),
            gateway_setup: tokio::sync::Mutex::new(()),
            provisioner: provisioner::Provisioner::new(Duration::from_secs(
                cfg.cloud.cold_add_wait_seconds,
            )),
            duties,
            nodes: None,
            bank: bank::Claims::default(),
            pods: None,
        })
    }

    /// Sizes batches for cold ADDs by the pods the API server has bound
    /// to this node (`provisioner`).
    pub fn size_batches_by(&mut self, pods: PodCache) {
        self.pods = Some(pods);
    }

    /// The pods bound to this node that the pod network serves, by the
    /// API server; `None` outside Kubernetes, and with shared-NIC vxnets,
    /// whose pods take no NIC of their own, so their count says nothing
    /// of the NICs to make.
    pub(crate) fn networked_pods(&self) -> Option<usize> {
        let pods = self.pods.as_ref().filter(|_| self.shared.is_empty())?;
        Some(pods.networked())
    }

    /// Requests sent so far per action, and the client's budget in words.
    /// The node's cloud client: its credentials and its pace, shared with
    /// the Service controller.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn calls(&self) -> (BTreeMap<String, u64>, String) {
        let opts = self.client.options();
        let mut budget = format!(
            "{}/s, burst {} per action",
            opts.budget.per_second, opts.budget.burst
        );
        for (action, b) in &opts.budgets {
            budget += &format!("; {action} {}/s, burst {}", b.per_second, b.burst);
        }
        (self.client.calls(), budget)
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
        self.kpis.recent_failures(vxnet)
    }

    /// Every NIC of `vxnet` in the cloud with an address: (id, address).
    pub async fn addresses_in(&self, vxnet: &str) -> anyhow::Result<Vec<(String, Ipv4Addr)>> {
        let nics = self
            .client
            .describe_nics(&NicFilter {
                vxnets: vec![vxnet.to_string()],
                ..NicFilter::default()
            })
            .await?;
        Ok(nics
            .into_iter()
            .filter_map(|n| Some((n.nic_id, n.private_ip?)))
            .collect())
    }

    /// The node as the vxnet policy sees it, with `pool_len` secondary NICs.
    pub fn node_facts(&self, pool_len: usize) -> hostnic_policy::Node {
        crate::policy::node(
            &self.cfg.instance_id,
            (pool_len + 1) as u32,
            self.cfg.max_nics as u32,
        )
    }

    /// Whether the VM can take another NIC, with `pool_len` secondary NICs
    /// (its primary takes one more place).
    pub fn has_room(&self, pool_len: usize) -> bool {
        pool_len + 1 < self.cfg.max_nics
    }

    /// The configured vxnets, in the configured order: where a NIC is
    /// made for an ADD whose plan named none.
    pub fn order(&self) -> Vec<String> {
        self.vxnets.iter().map(|(id, _)| id.clone()).collect()
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

    /// What one DescribeNics asks for this node's NICs: those named for it
    /// (also those it created and lost); with the bank, whose NICs keep
    /// its name when a node claims them, those attached to it (its lost
    /// ones are then the Lease holder's leak sweep's).
    fn own_filter(&self) -> NicFilter {
        match self.banking() {
            true => NicFilter {
                instances: vec![self.cfg.instance_id.clone()],
                ..NicFilter::default()
            },
            false => NicFilter {
                nic_name: Some(self.name.clone()),
                ..NicFilter::default()
            },
        }
    }

    /// Whether `n`, found with [`Self::own_filter`], is one of this node's
    /// NICs: a secondary NIC named for it, or a bank NIC attached to it.
    fn is_own(&self, n: &Nic) -> bool {
        !n.is_primary()
            && (n.nic_name == self.name
                || (self.banking()
                    && n.nic_name == self.bank_name()
                    && n.instance_id == self.cfg.instance_id))
    }

    /// This node's NICs as the cloud sees them, from one DescribeNics (no
    /// other cloud call before the agent serves).
    pub async fn inventory(&self) -> anyhow::Result<Inventory> {
        let named = self
            .client
            .describe_nics(&self.own_filter())
            .await
            .context("describing this node's NICs")?;
        let (here, elsewhere): (Vec<_>, Vec<_>) = named
            .into_iter()
            .filter(|n| self.is_own(n))
            .partition(|n| n.instance_id == self.cfg.instance_id);
        Ok(Inventory {
            nics: here
                .iter()
                .filter_map(|n| self.spec(n.nic_id.parse().ok()?, &n.vxnet_id, n.private_ip?))
                .collect(),
            attaching: here
                .iter()
                .filter(|n| n.status == NicStatus::Available)
                .filter_map(|n| n.nic_id.parse().ok())
                .collect(),
            sticky: here
                .iter()
                .filter_map(|n| Some((n.nic_id.parse().ok()?, self.sticky_identity(n)?)))
                .collect(),
            stranded: elsewhere
                .into_iter()
                .filter(|n| n.instance_id.is_empty())
                .collect(),
        })
    }
}

/// This node's NICs at start.
#[derive(Debug)]
pub struct Inventory {
    /// Attached to this VM: what the start-up reconciliation works on.
    pub nics: Vec<NicSpec>,
    /// Among them, those whose attach is still under way.
    pub attaching: Vec<Mac>,
    /// Among them, those that follow a sticky identity (by their tag).
    pub sticky: Vec<(Mac, String)>,
    /// Named for this node and attached nowhere: made by an agent that died
    /// (or stopped) between the create and the attach, or between a detach
    /// and the delete. No create of this process can be among them, so they
    /// need not wait out the leak grace period.
    pub stranded: Vec<hostnic_iaas::Nic>,
}
