//! `[inventory]` and `[cloud]`: where the node's NICs come from.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::bail;
use hostnic_netlink::Mac;
use ipnet::Ipv4Net;
use serde::Deserialize;

/// Where NICs come from: `cloud` creates and attaches them through the
/// QingCloud API (`vxnets`, `policy`, `iaas_credentials`, `[cloud]`);
/// `static` is a fixed list of NICs already attached to the node (bare-metal
/// nodes, tests).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    #[serde(default)]
    pub source: Source,
    #[serde(default)]
    pub nics: Vec<NicSpec>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    #[default]
    Static,
    Cloud,
}

/// The cloud NIC pool.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cloud {
    /// This node's VM; NICs are attached to it.
    #[serde(default)]
    pub instance_id: String,
    /// Names and tags every NIC the agent creates (`hostnic-<cluster>-…`),
    /// so that leaked ones can be found and reclaimed.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Free NICs to keep ready per vxnet, and the most to keep idle.
    #[serde(default = "default_warm_min")]
    pub warm_min: usize,
    #[serde(default = "default_warm_max")]
    pub warm_max: usize,
    /// NICs per VM, its primary and the gateway NICs included.
    #[serde(default = "default_max_nics")]
    pub max_nics: usize,
    /// A free NIC above `warm_max` is detached and deleted after this long.
    #[serde(default = "default_idle")]
    pub idle_seconds: u64,
    /// A detached NIC with our name older than this is a leak.
    #[serde(default = "default_leak_grace")]
    pub leak_grace_seconds: u64,
    /// How long a sticky NIC (one that follows a StatefulSet pod's
    /// identity, or a `hostnic.io/sticky` key, from node to node) is kept,
    /// detached, after its pod is gone, before the leak sweep deletes it
    /// and its address. 0: kept for ever.
    #[serde(default = "default_sticky_release")]
    pub sticky_release_seconds: u64,
    /// How often the node is checked without asking the cloud: the
    /// default route, NICs gone from the node, the warm pool's targets.
    /// Kernel changes (a link gone, a route changed) also trigger the check
    /// at once, from netlink notifications.
    #[serde(default = "default_reconcile")]
    pub reconcile_seconds: u64,
    /// How often the cloud is asked what is attached to this VM (one
    /// DescribeNics of the NICs named for this node, which also finds the
    /// ones it created and lost), jittered ±20% so nodes spread out. Slow
    /// by design: a node at rest costs 3600 / this calls an hour.
    #[serde(default = "default_cloud_poll")]
    pub cloud_poll_seconds: u64,
    /// How often each configured vxnet's NICs are counted in the cloud
    /// (one DescribeNics of one item per vxnet, jittered ±20%), for its
    /// free addresses: the vxnet guest's `free-ips` (MostFree). At start
    /// too. In Kubernetes the Lease holder counts for every node
    /// (`cloud::counts`). 0: never (`free-ips` stays 0 in cloud mode).
    #[serde(default = "default_vxnet_count")]
    pub vxnet_count_seconds: u64,
    /// Which leaked NICs this agent deletes: `node`, only those named for
    /// this node (what every node does); `cluster`, every detached NIC named
    /// for the cluster, those of dead nodes too — a duty for one node at a
    /// time (see the Lease election), never for all at once.
    #[serde(default)]
    pub leak_sweep: LeakSweep,
    /// How long a cold ADD waits for its NIC before answering "try again
    /// later"; the attach goes on and the retried ADD finds it warm. Keep it
    /// under the runtime's CNI timeout.
    #[serde(default = "default_cold_wait")]
    pub cold_add_wait_seconds: u64,
    /// Requests per second the cloud allows the account, every node's
    /// together. Each node sends all its requests, whatever the action, in
    /// its own slots of that rate: a share of it, among the Nodes in
    /// Kubernetes (from the API server, followed as nodes come and go), or
    /// as `api_rate_nodes` and `api_rate_slot` say outside it. A refusal
    /// for the rate (5100) slows the whole node down.
    #[serde(default = "default_account_rate")]
    pub account_api_rate: f64,
    /// Outside Kubernetes: how many nodes share `account_api_rate`, and
    /// this node's place among them (`0..api_rate_nodes`, each node its
    /// own): node `i` of `n` sends in the slots `i, i + n, …` of the
    /// account's rate.
    #[serde(default = "default_rate_nodes")]
    pub api_rate_nodes: u32,
    #[serde(default)]
    pub api_rate_slot: u32,
    /// The NIC bank (`cloud::bank`): created, unattached NICs the Lease
    /// holder keeps per vxnet for every node, so a node's cold ADDs need
    /// only an AttachNics. The holder keeps as many as nodes claimed in the
    /// last minute, twice over, within `bank_min..=bank_max`, and releases
    /// those above `bank_min` once no claim came for `idle_seconds`.
    /// `bank_max = 0` (the default): no bank. Needs `[kubernetes]` and
    /// `leak_sweep = "cluster"`.
    #[serde(default)]
    pub bank_min: usize,
    #[serde(default)]
    pub bank_max: usize,
}

/// See [`Cloud::leak_sweep`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakSweep {
    #[default]
    Node,
    Cluster,
}

impl Default for Cloud {
    fn default() -> Self {
        // Serde's defaults, from an empty table.
        toml::from_str("").expect("the [cloud] defaults parse")
    }
}

fn default_cloud_poll() -> u64 {
    1200
}
fn default_vxnet_count() -> u64 {
    600
}
fn default_cluster() -> String {
    "kubernetes".into()
}
fn default_warm_min() -> usize {
    1
}
fn default_warm_max() -> usize {
    4
}
fn default_max_nics() -> usize {
    64
}
fn default_idle() -> u64 {
    300
}
fn default_leak_grace() -> u64 {
    600
}
fn default_sticky_release() -> u64 {
    600
}
fn default_reconcile() -> u64 {
    60
}
fn default_cold_wait() -> u64 {
    20
}
/// QingCloud documents no rate, only a daily quota; 20 a second is what a
/// cluster's agents together hold to unless told the account allows more.
fn default_account_rate() -> f64 {
    20.0
}
fn default_rate_nodes() -> u32 {
    1
}

/// One NIC of the static inventory.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    pub mac: Mac,
    /// The address the pod gets, with its subnet's prefix.
    pub address: Ipv4Net,
    /// The subnet's gateway: the pod's default route.
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub vxnet: Option<String>,
}

impl Cloud {
    /// The `[cloud]` keys, when the inventory is the cloud.
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if self.warm_min > self.warm_max {
            bail!(
                "cloud.warm_min {} is above cloud.warm_max {}",
                self.warm_min,
                self.warm_max
            );
        }
        if !(2..=64).contains(&self.max_nics) {
            bail!(
                "cloud.max_nics {} must be 2..=64 (a VM takes at most 64 NICs, its primary included)",
                self.max_nics
            );
        }
        if self.cluster.is_empty()
            || !self
                .cluster
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        {
            bail!(
                "cloud.cluster {:?} must be letters, digits and '-'",
                self.cluster
            );
        }
        if self.reconcile_seconds == 0
            || self.cold_add_wait_seconds == 0
            || self.cloud_poll_seconds == 0
        {
            bail!(
                "cloud.reconcile_seconds, cloud.cloud_poll_seconds and cloud.cold_add_wait_seconds must be at least 1"
            );
        }
        if !(self.account_api_rate.is_finite() && self.account_api_rate > 0.0) {
            bail!(
                "cloud.account_api_rate {} must be a number of requests per second above 0",
                self.account_api_rate
            );
        }
        const MAX_BANK: usize = hostnic_iaas::MAX_NICS_PER_CREATE as usize;
        if self.bank_min > self.bank_max || self.bank_max > MAX_BANK {
            bail!(
                "cloud.bank_min {} and cloud.bank_max {} must be 0 <= bank_min <= bank_max <= {MAX_BANK} (NICs per vxnet; one CreateNics makes at most {MAX_BANK})",
                self.bank_min,
                self.bank_max
            );
        }
        if self.bank_max > 0 && self.leak_sweep != LeakSweep::Cluster {
            bail!(
                "cloud.bank_max {} needs cloud.leak_sweep = \"cluster\": a node's poll finds the NICs attached to it, and its own detached leaks are the Lease holder's to sweep",
                self.bank_max
            );
        }
        if self.api_rate_slot >= self.api_rate_nodes {
            bail!(
                "cloud.api_rate_slot {} must be below cloud.api_rate_nodes {} (0 for the first node)",
                self.api_rate_slot,
                self.api_rate_nodes
            );
        }
        Ok(())
    }
}

impl Inventory {
    /// The static NICs: distinct, addressable, and their vxnets whole.
    pub(super) fn validate_static(&self) -> anyhow::Result<()> {
        let mut macs = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, nic) in self.nics.iter().enumerate() {
            let key = format!("inventory.nics[{i}]");
            if !macs.insert(nic.mac) {
                bail!("{key}.mac {} is listed twice", nic.mac);
            }
            if !addrs.insert(nic.address.addr()) {
                bail!("{key}.address {} is given to two NICs", nic.address.addr());
            }
            if nic.address.prefix_len() >= 31 {
                bail!(
                    "{key}.address {}: a pod subnet needs a prefix shorter than /31",
                    nic.address
                );
            }
            if nic.address.addr() == nic.address.network()
                || nic.address.addr() == nic.address.broadcast()
            {
                bail!(
                    "{key}.address {} is the subnet's network or broadcast address",
                    nic.address
                );
            }
            if !nic.address.contains(&nic.gateway) || nic.gateway == nic.address.addr() {
                bail!(
                    "{key}.gateway {} must be another address inside {}",
                    nic.gateway,
                    nic.address.trunc()
                );
            }
        }
        self.validate_vxnets()
    }

    /// A static inventory gives every NIC a vxnet or none (the vxnet hook
    /// chooses among vxnets; a NIC outside all of them could never be
    /// chosen), and the NICs of one vxnet share its subnet and gateway.
    fn validate_vxnets(&self) -> anyhow::Result<()> {
        let nics = &self.nics;
        let with = nics.iter().filter(|n| n.vxnet.is_some()).count();
        if with > 0 && with < nics.len() {
            let i = nics.iter().position(|n| n.vxnet.is_none()).unwrap_or(0);
            bail!(
                "inventory.nics[{i}] has no vxnet while other NICs have one: give every static NIC a vxnet, or none"
            );
        }
        for (i, nic) in nics.iter().enumerate() {
            let first = nics
                .iter()
                .position(|n| n.vxnet.is_some() && n.vxnet == nic.vxnet)
                .unwrap_or(i);
            let f = &nics[first];
            if f.address.trunc() != nic.address.trunc() || f.gateway != nic.gateway {
                bail!(
                    "inventory.nics[{i}] is in vxnet {} with subnet {} via {}, but inventory.nics[{first}] puts that vxnet at {} via {}",
                    nic.vxnet.as_deref().unwrap_or_default(),
                    nic.address.trunc(),
                    nic.gateway,
                    f.address.trunc(),
                    f.gateway
                );
            }
        }
        Ok(())
    }
}
