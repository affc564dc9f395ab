//! Service answers back through the node that translated them.
//!
//! A pod's request to a ClusterIP goes to its node (`gw 0.0.0.0` routes
//! the Service CIDR to the node's own NIC in the vxnet), where kube-proxy
//! translates it to a backend and sends it on over the vxnet. A backend
//! with a NIC of its own would answer straight over the vxnet, from its
//! own address, and the client — which spoke to the ClusterIP — drops the
//! answer. kube-proxy's `masqueradeAll` hides this by making every request
//! come from a node, at the price of the client's address (for logs, rate
//! limits and NetworkPolicy).
//!
//! Instead, a pod whose interface sits on the vxnet remembers, per
//! connection, which node's NIC the connection's first packet came from
//! (a conntrack mark, looked up from the frame's source MAC among the
//! nodes' own NICs in the vxnet), and sends that connection's answers back
//! to that MAC (the destination MAC rewritten as the answer leaves the
//! interface). The answer reaches the node that translated the request,
//! whose conntrack reverses the translation. kube-proxy keeps its defaults
//! and everything it does (session affinity, traffic policies); no
//! per-Service state reaches a pod, only one entry per node of its vxnet.
//! Traffic from anything that is not a node's NIC is left alone.
//!
//! The nodes' NICs come from the API server: every agent publishes its
//! own ([`own_gateways`], `apiserver/gateways.rs`) and watches the others'.
//! The rules are applied off the ADD's path: a pod's containers start, and
//! it becomes a Service's endpoint, well after its ADD answers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostnic_netlink::{Mac, Netns};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::nics::Nics;
use crate::record::Key;

mod node;
mod rules;

pub use node::start_node_rules;
pub use rules::ruleset;

/// How long a failed application waits before it is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// A node's own NIC in a vxnet: where its pods' Service traffic is
/// translated, and where the answers must go back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gateway {
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

/// Every node's gateway NIC, by vxnet.
pub type Gateways = BTreeMap<String, BTreeSet<Gateway>>;

/// What the cluster's Nodes tell the return path: every node's gateway
/// NICs, and every node's own addresses (where a hostNetwork backend
/// answers from).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nodes {
    pub gateways: Gateways,
    pub addresses: BTreeSet<Ipv4Addr>,
    /// Every Node's name: how many nodes share the account's API rate,
    /// and each one's place among them (`cloud::pace`).
    pub names: BTreeSet<String>,
}

/// One of this node's gateway NICs, as its namespace has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnGateway {
    pub gateway: Gateway,
    /// Its vxnet's subnet.
    pub cidr: Ipv4Net,
    pub ifname: String,
}

/// This node's gateway NICs by vxnet, as the pool has them, sent whenever
/// they change.
pub fn own_gateways(nics: Arc<Nics>) -> watch::Receiver<BTreeMap<String, OwnGateway>> {
    let read = |nics: &Nics| -> BTreeMap<String, OwnGateway> {
        nics.pool()
            .gateways()
            .into_iter()
            .filter_map(|s| {
                let own = OwnGateway {
                    gateway: Gateway {
                        ip: s.address.addr(),
                        mac: s.mac,
                    },
                    cidr: s.address.trunc(),
                    ifname: s.mac.gateway_name(),
                };
                Some((s.vxnet?, own))
            })
            .collect()
    };
    let (tx, rx) = watch::channel(read(&nics));
    tokio::spawn(async move {
        loop {
            let changed = nics.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = read(&nics);
            tx.send_if_modified(|seen| {
                let differs = *seen != now;
                *seen = now;
                differs
            });
            changed.await;
        }
    });
    rx
}

/// One pod interface: its namespace (held open while it is attached, so
/// the path the runtime named need not be visible to the agent), its
/// name, its vxnet.
#[derive(Clone, Debug)]
pub struct Target {
    pub netns: Arc<Netns>,
    pub ifname: String,
    pub vxnet: String,
}

/// The pod interfaces on a vxnet of this node and the rules each needs,
/// kept true as nodes come and go.
#[derive(Debug)]
pub struct ReturnPath {
    /// What the Nodes say; `None` until the API server has said.
    nodes: watch::Receiver<Option<Nodes>>,
    targets: Mutex<BTreeMap<Key, Target>>,
    /// Interfaces whose rules are to be (re)applied.
    dirty: Mutex<BTreeSet<Key>>,
    wake: Notify,
}

impl ReturnPath {
    /// Starts keeping the rules of the interfaces [`ReturnPath::attach`]
    /// names true to `gateways`.
    pub fn start(nodes: watch::Receiver<Option<Nodes>>) -> Arc<ReturnPath> {
        let path = Arc::new(ReturnPath {
            nodes,
            targets: Mutex::default(),
            dirty: Mutex::default(),
            wake: Notify::new(),
        });
        tokio::spawn(path.clone().run());
        path
    }

    /// An interface on a vxnet: its rules are applied (soon, not before
    /// this returns) and kept true.
    pub fn attach(&self, key: &Key, target: Target) {
        if let Err(e) = ruleset(&target.ifname, &BTreeSet::new()) {
            warn!(container = %key.container_id, error = %format!("{e:#}"), "the pod's Service answers are not routed back through their nodes");
            return;
        }
        lock(&self.targets).insert(key.clone(), target);
        lock(&self.dirty).insert(key.clone());
        self.wake.notify_one();
    }

    /// The interface is gone (its rules go with it, or with its
    /// namespace; an ADD of the same name replaces them).
    pub fn detach(&self, key: &Key) {
        lock(&self.targets).remove(key);
        lock(&self.dirty).remove(key);
    }

    /// The interfaces it keeps, for `status` and tests.
    pub fn targets(&self) -> usize {
        lock(&self.targets).len()
    }

    async fn run(self: Arc<Self>) {
        let mut gateways = self.nodes.clone();
        // Nothing is applied before the nodes are known: a restarted agent
        // must not empty the maps its pods have.
        let Some(mut seen) = known(&mut gateways).await.map(|n| n.gateways) else {
            return;
        };
        loop {
            self.apply_dirty(&seen).await;
            tokio::select! {
                changed = gateways.changed() => {
                    if changed.is_err() {
                        // No more news of the nodes: what is applied stays.
                        gateways = watch::channel(Some(Nodes {
                            gateways: seen.clone(),
                            ..Nodes::default()
                        }))
                        .1;
                        continue;
                    }
                    let Some(now) = gateways.borrow_and_update().clone().map(|n| n.gateways) else {
                        continue;
                    };
                    let touched: BTreeSet<&String> = now
                        .iter()
                        .filter(|(v, g)| seen.get(*v) != Some(g))
                        .map(|(v, _)| v)
                        .chain(seen.keys().filter(|v| !now.contains_key(*v)))
                        .collect();
                    let keys: Vec<Key> = lock(&self.targets)
                        .iter()
                        .filter(|(_, t)| touched.contains(&t.vxnet))
                        .map(|(k, _)| k.clone())
                        .collect();
                    lock(&self.dirty).extend(keys);
                    seen = now;
                }
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Applies every dirty interface's rules; the failures are tried again
    /// after [`RETRY`].
    async fn apply_dirty(self: &Arc<Self>, gateways: &Gateways) {
        let keys = std::mem::take(&mut *lock(&self.dirty));
        let mut failed = Vec::new();
        for key in keys {
            let Some(target) = lock(&self.targets).get(&key).cloned() else {
                continue;
            };
            let none = BTreeSet::new();
            let nodes = gateways.get(&target.vxnet).unwrap_or(&none);
            match apply(&target, nodes).await {
                Ok(()) => {
                    debug!(container = %key.container_id, ifname = %key.ifname, nodes = nodes.len(), "Service answers routed back through their nodes")
                }
                Err(e) => {
                    warn!(container = %key.container_id, ifname = %key.ifname, error = %format!("{e:#}"),
                          "routing the pod's Service answers back through their nodes failed; trying again");
                    failed.push(key);
                }
            }
        }
        if !failed.is_empty() {
            let path = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RETRY).await;
                lock(&path.dirty).extend(failed);
                path.wake.notify_one();
            });
        }
    }
}

/// Applies one interface's rules.
async fn apply(target: &Target, nodes: &BTreeSet<Gateway>) -> anyhow::Result<()> {
    target
        .netns
        .nft_apart(ruleset(&target.ifname, nodes)?)
        .await?;
    Ok(())
}

/// What the Nodes say, once the API server has said it; `None` if it
/// never will.
async fn known(nodes: &mut watch::Receiver<Option<Nodes>>) -> Option<Nodes> {
    loop {
        if let Some(known) = nodes.borrow_and_update().clone() {
            return Some(known);
        }
        nodes.changed().await.ok()?;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
