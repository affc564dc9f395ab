//! NetworkPolicy, enforced in each pod's own namespace.
//!
//! An exclusive NIC's traffic never passes the node's netfilter: it leaves
//! the pod's namespace straight onto the vxnet. So the rules live where
//! every wiring's traffic passes — the pod's namespace, one nftables table
//! per pod (`render.rs`), made from what the policies allow the pod
//! (`compile.rs`) and the API server's view (`apiserver/netpol.rs`).
//!
//! **No open window.** An ADD writes the pod's table before its interface
//! is wired, so the pod never has an address without its rules. An ADD
//! whose pod or policies the view does not hold yet fails (the runtime
//! retries) rather than wire a pod the policies may isolate.
//!
//! **Following changes.** Every change the watches deliver marks every
//! pod of the node; each pod's table is made again and written only when
//! it differs from what it has (only the sets that differ, when nothing
//! else does: `render.rs`). A pod's writes are one at a time, each
//! from the view of its moment, so the last write a pod gets is from the
//! newest view; different pods are written side by side. A failed write
//! is tried again. An API server that is away stops the news, never the
//! rules: what the kernel has stays.
//!
//! **Restarts.** The tables live in the kernel: an agent that stops
//! changes nothing a pod sees. At start it adopts its pods again and
//! rewrites each table from the view once the view has listed.

pub mod compile;
pub mod counters;
mod render;
pub mod select;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hostnic_netlink::nftables::{Command, Nftables, Script};
use hostnic_netlink::{Netns, NsId};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::metrics::metrics;
use crate::publish;
use crate::record::Key;

pub use render::TABLE;

/// The kernel's answer to adopting a table that was never `persist`.
const EOPNOTSUPP: i32 = 95;

/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// Pods whose tables are written at once after a change.
const PARALLEL: usize = 16;

/// What the enforcement reads of the cluster (`apiserver/netpol.rs`
/// watches the API server for it).
pub trait View: Send + Sync + std::fmt::Debug {
    /// True once every watch has listed.
    fn listed(&self) -> watch::Receiver<bool>;
    /// Bumped whenever anything changed, after the change is in what
    /// [`View::snapshot`] returns.
    fn changed(&self) -> watch::Receiver<u64>;
    /// The cluster as the view has it now.
    fn snapshot(&self) -> compile::Cluster;
    /// Pod `namespace/name` as the view has it now (without an address
    /// until its kubelet reports one).
    fn pod(&self, namespace: &str, name: &str) -> Option<compile::PodView>;
}

/// One pod interface whose namespace carries the pod's rules.
#[derive(Debug)]
struct Target {
    netns: Arc<Netns>,
    /// Its identity: the pod's interfaces share one table, and so one
    /// socket ([`Enforcer::socket`]).
    ns_id: Option<NsId>,
    /// One write at a time into this pod (see the module's comment).
    writing: Arc<tokio::sync::Mutex<()>>,
    namespace: String,
    name: String,
    /// The table it has, as last written.
    applied: Option<render::Table>,
    policies: Vec<String>,
}

/// The node's pods' rules, kept true to the view.
#[derive(Debug)]
pub struct Enforcer {
    view: Arc<dyn View>,
    /// The node's own addresses: its traffic to and from its pods
    /// (kubelet's probes) always passes.
    node: watch::Receiver<BTreeSet<Ipv4Addr>>,
    targets: Mutex<BTreeMap<Key, Target>>,
    /// The view's latest copy and the change count it was taken at.
    latest: Mutex<Option<(u64, Arc<compile::Cluster>)>>,
    /// How long an ADD waits for the view to list, or to hold its pod.
    wait: Duration,
    /// Whether tables are flagged `owner` and `persist` (until the
    /// kernel refuses them: [`Enforcer::unflagged`]).
    owned: AtomicBool,
    /// Each pod namespace's socket ([`Enforcer::socket`]).
    sockets: Mutex<HashMap<NsId, Nftables>>,
}

/// A pod's rules, for `status`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Enforced {
    pub namespace: String,
    pub name: String,
    pub policies: Vec<String>,
    /// What its table counted; `None` when it could not be read.
    pub counters: Option<counters::Counters>,
}

impl Enforcer {
    pub fn start(
        view: Arc<dyn View>,
        node: watch::Receiver<BTreeSet<Ipv4Addr>>,
        wait: Duration,
    ) -> Arc<Enforcer> {
        let enforcer = Arc::new(Enforcer {
            view,
            node,
            targets: Mutex::default(),
            latest: Mutex::default(),
            wait,
            owned: AtomicBool::new(true),
            sockets: Mutex::default(),
        });
        tokio::spawn(enforcer.clone().run());
        enforcer
    }

    /// Writes pod `namespace/name`'s rules into `netns` (an ADD's, before
    /// its interface is wired) and keeps them true from now on.
    pub async fn enforce(
        &self,
        key: &Key,
        namespace: &str,
        name: &str,
        netns: &Netns,
    ) -> Result<()> {
        if !self.listed(self.wait).await {
            return Err(Error::try_again(
                "the API server's NetworkPolicies are not listed yet; the pod is not wired without its rules",
            ));
        }
        self.wait_for_pod(namespace, name).await?;
        let netns = netns.try_clone().map_err(|e| {
            Error::internal(format!("holding the pod's namespace for its rules: {e}"))
        })?;
        self.adopt(key, namespace, name, Arc::new(netns));
        if let Err(e) = self.write(key, true).await {
            self.forget(key);
            return Err(Error::internal(format!(
                "writing the pod's NetworkPolicy rules: {e:#}"
            )));
        }
        Ok(())
    }

    /// A pod interface whose rules are kept from now on: one an ADD
    /// makes, or one found at start (its rules are rewritten once the
    /// view has listed; they stay as the kernel has them meanwhile).
    pub fn adopt(&self, key: &Key, namespace: &str, name: &str, netns: Arc<Netns>) {
        self.targets().insert(
            key.clone(),
            Target {
                ns_id: netns.id().ok(),
                netns,
                writing: Arc::default(),
                namespace: namespace.to_string(),
                name: name.to_string(),
                applied: None,
                policies: Vec::new(),
            },
        );
    }

    /// The interface is gone (its table goes with its namespace).
    pub fn forget(&self, key: &Key) {
        let mut targets = self.targets();
        let Some(gone) = targets.remove(key) else {
            return;
        };
        // The pod's last interface: its socket closes (the table stays,
        // ownerless, and goes with the namespace).
        if let Some(id) = gone.ns_id
            && !targets.values().any(|t| t.ns_id == Some(id))
        {
            self.sockets().remove(&id);
        }
    }

    /// The nf_tables socket that owns the table of `netns`, opened at its
    /// first write and shared by the pod's interfaces: a table owned by
    /// one socket refuses every other.
    async fn socket(&self, netns: &Netns) -> hostnic_netlink::Result<Nftables> {
        let id = netns.id()?;
        if let Some(s) = self.sockets().get(&id) {
            return Ok(s.clone());
        }
        let made = netns.nftables().await?;
        // Another interface's write may have opened one meanwhile; one
        // that has not written yet owns nothing, and goes.
        Ok(self.sockets().entry(id).or_insert(made).clone())
    }

    fn sockets(&self) -> std::sync::MutexGuard<'_, HashMap<NsId, Nftables>> {
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pods whose rules this node keeps, the policies selecting
    /// each and what its table counted.
    pub async fn enforced(&self) -> Vec<Enforced> {
        let mut seen = BTreeSet::new();
        let pods: Vec<(Arc<Netns>, Enforced)> = self
            .targets()
            .values()
            .filter(|t| seen.insert((t.namespace.clone(), t.name.clone())))
            .map(|t| {
                let pod = Enforced {
                    namespace: t.namespace.clone(),
                    name: t.name.clone(),
                    policies: t.policies.clone(),
                    counters: None,
                };
                (t.netns.clone(), pod)
            })
            .collect();
        let mut out = Vec::with_capacity(pods.len());
        for (netns, mut pod) in pods {
            let listed = netns.nft_list_json(&format!("table inet {TABLE}")).await;
            pod.counters = match listed.map(|l| counters::read(&l)) {
                Ok(Ok(c)) => Some(c),
                Ok(Err(e)) => {
                    warn!(pod = %format!("{}/{}", pod.namespace, pod.name), error = %e, "reading the NetworkPolicy counters");
                    None
                }
                Err(e) => {
                    debug!(pod = %format!("{}/{}", pod.namespace, pod.name), error = %e, "listing the NetworkPolicy table");
                    None
                }
            };
            out.push(pod);
        }
        out
    }

    /// Whether the view has listed, waiting up to `wait` for it.
    async fn listed(&self, wait: Duration) -> bool {
        let mut listed = self.view.listed();
        tokio::time::timeout(wait, listed.wait_for(|l| *l))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn wait_for_pod(&self, namespace: &str, name: &str) -> Result<()> {
        let mut changed = self.view.changed();
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            changed.borrow_and_update();
            if self.view.pod(namespace, name).is_some() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Err(Error::try_again(format!(
                    "pod {namespace}/{name} is not in the API server's view yet; its NetworkPolicies cannot be decided"
                )));
            }
        }
    }

    /// Makes `key`'s table from the view now and writes it if it differs
    /// from what the pod has.
    async fn write(&self, key: &Key, add: bool) -> anyhow::Result<()> {
        let written = self.write_now(key).await;
        let result = match &written {
            Ok(true) => "written",
            Ok(false) => "unchanged",
            Err(_) => "error",
        };
        metrics().netpol_write(add, result);
        written.map(drop)
    }

    /// [`Enforcer::write`]'s work: whether it wrote.
    async fn write_now(&self, key: &Key) -> anyhow::Result<bool> {
        let Some(writing) = self.targets().get(key).map(|t| t.writing.clone()) else {
            return Ok(false);
        };
        let _one = writing.lock().await;
        let Some((netns, namespace, name, applied)) = self.targets().get(key).map(|t| {
            (
                t.netns.clone(),
                t.namespace.clone(),
                t.name.clone(),
                t.applied.clone(),
            )
        }) else {
            return Ok(false);
        };
        // A pod the view lost (deleted while its sandbox lives on) keeps
        // the rules it has.
        let Some(pod) = self.view.pod(&namespace, &name) else {
            return Ok(false);
        };
        let making = Instant::now();
        let rules = compile::compile(&self.cluster(), &pod);
        let table = render::table(&rules, &self.node.borrow());
        // Only the sets whose elements changed, when they alone did.
        let script = match &applied {
            None => Some(table.replacing(None)),
            Some(before) => match table.changes(before) {
                Some(sets) if sets.is_empty() => None,
                Some(sets) => Some(sets),
                None => Some(table.replacing(Some(before))),
            },
        };
        let made = making.elapsed();
        let differs = script.is_some();
        if let Some(script) = script {
            let started = Instant::now();
            let socket = self.socket(&netns).await?;
            let mut script = script;
            script.owned = self.owned.load(Ordering::Relaxed);
            let pod = format!("{namespace}/{name}");
            match socket.apply(&script).await {
                Err(e) if applied.is_none() && script.owned && e.errno() == Some(EOPNOTSUPP) => {
                    self.unflagged(&socket, script, &pod).await?
                }
                written => written?,
            }
            debug!(
                pod = %format!("{namespace}/{name}"),
                policies = rules.policies.len(),
                first = applied.is_none(),
                made_us = made.as_micros() as u64,
                elapsed_us = started.elapsed().as_micros() as u64,
                "NetworkPolicy rules written"
            );
        }
        if let Some(t) = self.targets().get_mut(key) {
            t.applied = Some(table);
            t.policies = rules.policies;
        }
        Ok(differs)
    }

    /// A first write the kernel would not flag `owner` and `persist`:
    /// the pod's table predates the flags (an agent before them made it,
    /// and `persist` is given only at creation), so it is destroyed and
    /// made again in the same transaction; or the kernel has no `persist`
    /// (Linux before 6.9), and tables are written without the flags from
    /// now on (an owned table would go with each agent restart).
    async fn unflagged(
        &self,
        socket: &Nftables,
        mut script: Script,
        pod: &str,
    ) -> hostnic_netlink::Result<()> {
        let mut again = script.clone();
        again.commands.insert(0, Command::Destroy);
        match socket.apply(&again).await {
            Err(e) if e.errno() == Some(EOPNOTSUPP) => {
                if self.owned.swap(false, Ordering::Relaxed) {
                    warn!(
                        "this kernel has no nftables `persist` flag (Linux before 6.9): pods' NetworkPolicy tables are written without an owner, so a pod with CAP_NET_ADMIN can delete its own"
                    );
                }
                script.owned = false;
                socket.apply(&script).await
            }
            done => {
                info!(
                    pod,
                    "the pod's NetworkPolicy table predated its owner flags; made again with them"
                );
                done
            }
        }
    }

    /// Rewrites every pod's rules whenever the view or the node's
    /// addresses change; failures are tried again after [`RETRY`].
    async fn run(self: Arc<Self>) {
        let mut changed = self.view.changed();
        let mut node = self.node.clone();
        let mut listed = self.view.listed();
        if listed.wait_for(|l| *l).await.is_err() {
            return;
        }
        info!("NetworkPolicy view listed; enforcing");
        let mut since = Instant::now();
        loop {
            changed.borrow_and_update();
            node.borrow_and_update();
            let keys: Vec<Key> = self.targets().keys().cloned().collect();
            // Pods are written side by side: a write that replaces rules
            // waits out an RCU grace period in the kernel, not the CPU.
            let this = &self;
            let results: Vec<(Key, anyhow::Result<()>)> = futures::stream::iter(keys)
                .map(|key| async move {
                    let r = this.write(&key, false).await;
                    (key, r)
                })
                .buffer_unordered(PARALLEL)
                .collect()
                .await;
            let mut failed = false;
            for (key, result) in results {
                if let Err(e) = result {
                    failed = true;
                    let (namespace, name) = self
                        .targets()
                        .get(&key)
                        .map(|t| (t.namespace.clone(), t.name.clone()))
                        .unwrap_or_default();
                    warn!(pod = %format!("{namespace}/{name}"), container = %key.container_id, error = %format!("{e:#}"),
                          "writing a pod's NetworkPolicy rules failed; it keeps its last ones, trying again");
                    publish::pod_event(
                        &namespace,
                        &name,
                        "NetworkPolicyNotWritten",
                        format!("the pod keeps its last NetworkPolicy rules: {e:#}"),
                    );
                }
            }
            if !failed {
                let targets = self.targets();
                let isolated = targets.values().filter(|t| !t.policies.is_empty()).count();
                let size = targets
                    .values()
                    .filter_map(|t| t.applied.as_ref())
                    .fold((0, 0), |(r, e), t| (r + t.rules(), e + t.elements()));
                drop(targets);
                metrics().netpol_synced(since.elapsed(), isolated, size);
            }
            let retry = async {
                if failed {
                    tokio::time::sleep(RETRY).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                r = node.changed() => if r.is_err() { return },
                _ = retry => {}
            }
            since = Instant::now();
            // A burst of changes (a namespace of pods coming up) is taken
            // as one.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The view as it is now. Writes of one moment share one copy (a
    /// pass over 1,000 pods copies the view once, not 1,000 times): a copy
    /// is kept with the change count read before it was taken, and given
    /// out while the count is unchanged, so no write gets an older view
    /// than a write before it.
    fn cluster(&self) -> Arc<compile::Cluster> {
        let version = *self.view.changed().borrow();
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        match &*latest {
            Some((v, cluster)) if *v == version => cluster.clone(),
            Some((v, _)) if *v > version => Arc::new(self.view.snapshot()),
            _ => {
                let cluster = Arc::new(self.view.snapshot());
                *latest = Some((version, cluster.clone()));
                cluster
            }
        }
    }

    fn targets(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Target>> {
        self.targets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The node's own addresses (every IPv4 address in its namespace but
/// loopback's), read again whenever `again` says its NICs changed.
pub fn node_addresses<T: Send + Sync + 'static>(
    node: Netns,
    mut again: watch::Receiver<T>,
) -> watch::Receiver<BTreeSet<Ipv4Addr>> {
    let (tx, rx) = watch::channel(BTreeSet::new());
    tokio::spawn(async move {
        loop {
            again.borrow_and_update();
            match read_addresses(&node).await {
                Ok(now) => {
                    tx.send_if_modified(|seen| {
                        let differs = *seen != now;
                        *seen = now;
                        differs
                    });
                }
                Err(e) => warn!(error = %e, "reading the node's addresses for NetworkPolicy"),
            }
            if again.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

async fn read_addresses(node: &Netns) -> hostnic_netlink::Result<BTreeSet<Ipv4Addr>> {
    let nl = node.connect().await?;
    let mut out = BTreeSet::new();
    for link in nl.links().await? {
        for addr in nl.addresses(link.index).await? {
            if let ipnet::IpNet::V4(v4) = addr
                && !v4.addr().is_loopback()
            {
                out.insert(v4.addr());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A view that counts its copies.
    #[derive(Debug)]
    struct Counting {
        listed: watch::Sender<bool>,
        changed: watch::Sender<u64>,
        copies: AtomicUsize,
    }

    impl View for Counting {
        fn listed(&self) -> watch::Receiver<bool> {
            self.listed.subscribe()
        }
        fn changed(&self) -> watch::Receiver<u64> {
            self.changed.subscribe()
        }
        fn snapshot(&self) -> compile::Cluster {
            self.copies.fetch_add(1, Ordering::SeqCst);
            compile::Cluster::default()
        }
        fn pod(&self, _: &str, _: &str) -> Option<compile::PodView> {
            None
        }
    }

    #[tokio::test]
    async fn writes_between_two_changes_share_one_copy_of_the_view() {
        let view = Arc::new(Counting {
            listed: watch::channel(false).0,
            changed: watch::channel(0).0,
            copies: AtomicUsize::new(0),
        });
        let (_node, rx) = watch::channel(BTreeSet::new());
        let enforcer = Enforcer::start(view.clone(), rx, Duration::from_millis(10));
        let first = enforcer.cluster();
        for _ in 0..100 {
            assert!(Arc::ptr_eq(&first, &enforcer.cluster()));
        }
        assert_eq!(view.copies.load(Ordering::SeqCst), 1);
        view.changed.send_modify(|n| *n += 1);
        assert!(!Arc::ptr_eq(&first, &enforcer.cluster()));
        enforcer.cluster();
        assert_eq!(view.copies.load(Ordering::SeqCst), 2);
    }
}
