//! Cold ADDs. An ADD that finds no warm NIC where its vxnet order wants one
//! waits while the node's provisioner creates NICs for every waiting ADD at
//! once (one CreateNics for the whole demand and as many more as are
//! coming: in Kubernetes the pods bound to the node still without a NIC,
//! at least the node's recent cold ADDs up to `warm_max`; attaches in
//! fives, in parallel),
//! moving down the order only as creating fails. The
//! provisioner runs on a task of its own, so a runtime timeout cannot cut
//! an attach in half; an ADD that waits longer than `cold_wait` answers
//! "try again later" and its retry finds the NIC warm.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{CloudPool, ProvisionError};
use crate::config::NicSpec;
use crate::error::{Error, Result};
use crate::nics::Nics;
use crate::pool::State;
use crate::record::Key;
use crate::source::still_attaching;
use hostnic_iaas::JobId;

/// NICs per provisioning batch (one CreateNics call).
const MAX_BATCH: usize = 20;

/// How far back the cold ADDs a batch looks ahead by are counted.
const LOOKAHEAD_WINDOW: Duration = Duration::from_secs(30);

/// How long after its start a node whose pods are bound but have not
/// asked yet expects them: kubelet asks once the node's network is ready.
const FIRST_PODS_WINDOW: Duration = Duration::from_secs(60);

/// A cold ADD waiting: its vxnet order, and since when.
type Waiter = (Vec<String>, Instant);

#[derive(Debug)]
pub struct Provisioner {
    /// How long a cold ADD waits for its NIC before "try again later".
    cold_wait: Duration,
    /// The cold ADDs waiting, each with its vxnet order and when it began:
    /// the demand, per vxnet.
    waiters: Mutex<HashMap<u64, Waiter>>,
    next_waiter: AtomicU64,
    /// The cold ADDs of the last [`LOOKAHEAD_WINDOW`]: when each came and
    /// its first choice of vxnet.
    recent: Mutex<VecDeque<(Instant, String)>>,
    /// Whether the provisioner task is running.
    running: AtomicBool,
    /// The VM had no room for another NIC: when, and the answer for the
    /// ADDs waiting then.
    full: Mutex<Option<(Instant, Error)>>,
    /// The latest failure to provide NICs in each vxnet: when, and the
    /// answer for an ADD whose every vxnet failed while it waited.
    failed: Mutex<BTreeMap<String, (Instant, Error)>>,
    /// When the agent started.
    started: Instant,
}

/// A cold ADD among the waiters while it lives.
struct Waiting<'a>(&'a Provisioner, u64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.0.waiters).remove(&self.1);
    }
}

/// Drops the cold ADDs older than [`LOOKAHEAD_WINDOW`].
fn forget_old(recent: &mut VecDeque<(Instant, String)>) {
    while recent
        .front()
        .is_some_and(|(at, _)| at.elapsed() > LOOKAHEAD_WINDOW)
    {
        recent.pop_front();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Provisioner {
    pub fn new(cold_wait: Duration) -> Provisioner {
        Provisioner {
            cold_wait,
            waiters: Mutex::new(HashMap::new()),
            next_waiter: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
            running: AtomicBool::new(false),
            full: Mutex::new(None),
            failed: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
        }
    }

    /// The cold ADDs waiting now.
    pub fn waiting(&self) -> usize {
        lock(&self.waiters).len()
    }

    /// No cold ADD waits and no batch is being made.
    pub fn idle(&self) -> bool {
        self.waiting() == 0 && !self.running.load(Ordering::SeqCst)
    }

    /// Pods bound to the node will ask for NICs soon: some hold none and
    /// wait for none, and the node is bringing pods up (a cold ADD in the
    /// last [`LOOKAHEAD_WINDOW`], or its first [`FIRST_PODS_WINDOW`]). A
    /// pod that never asks (its kubelet is away) does not keep the node
    /// from what waits for a quiet moment for longer than that.
    pub fn expecting(&self, cloud: &CloudPool, nics: &Nics) -> bool {
        let bringing_up = self.started.elapsed() < FIRST_PODS_WINDOW || {
            let mut recent = lock(&self.recent);
            forget_old(&mut recent);
            !recent.is_empty()
        };
        bringing_up
            && self
                .unasked(cloud, nics)
                .is_some_and(|(coming, _)| coming > 0)
    }

    /// A NIC for a cold ADD: waits while the provisioner creates NICs, and
    /// takes one from the vxnets of `order` the ADD accepts by now (its
    /// first choice, and each next one once providing NICs in those before
    /// it has failed since the wait began).
    pub async fn wait_for_nic(
        &self,
        (cloud, nics): (&Arc<CloudPool>, &Arc<Nics>),
        key: &Key,
        order: &[String],
    ) -> Result<NicSpec> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + self.cold_wait);
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        lock(&self.waiters).insert(id, (order.to_vec(), started));
        if let Some(first) = order.first() {
            let mut recent = lock(&self.recent);
            forget_old(&mut recent);
            recent.push_back((started, first.clone()));
        }
        let _waiting = Waiting(self, id);
        self.kick(cloud, nics);
        // Woken by every change of the pool (a NIC attached and parked)
        // and by the provisioner giving up or stopping.
        loop {
            let changed = nics.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(nic) = nics.pool().reserve_in(self.accepted(order, started), key) {
                return Ok(nic);
            }
            if let Some(e) = self.gave_up(order, started) {
                return Err(e);
            }
            // A NIC counted as on its way may have gone elsewhere (the
            // node's gateway NIC) after the provisioner stopped: the demand
            // is looked at again.
            if !self.running.load(Ordering::SeqCst) && !self.unmet_demand(nics).is_empty() {
                self.kick(cloud, nics);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(still_attaching());
            }
        }
    }

    /// The vxnets of `order` an ADD waiting since `since` takes a NIC
    /// from: its first choice, and each next one only once providing NICs
    /// in all before it has failed since then.
    fn accepted<'a>(&self, order: &'a [String], since: Instant) -> &'a [String] {
        let failed = lock(&self.failed);
        let k = order
            .iter()
            .position(|v| failed.get(v).is_none_or(|(at, _)| *at < since))
            .unwrap_or(order.len().saturating_sub(1));
        &order[..(k + 1).min(order.len())]
    }

    /// The vxnet an ADD waiting since `since` needs a NIC created in: the
    /// last it accepts, unless that failed too.
    fn target(&self, order: &[String], since: Instant) -> Option<String> {
        let last = self.accepted(order, since).last()?;
        let failed = lock(&self.failed);
        let gone = failed.get(last).is_some_and(|(at, _)| *at >= since);
        (!gone).then(|| last.clone())
    }

    /// The answer for an ADD waiting since `since` that can no longer get
    /// a NIC: the VM is full, or every vxnet of its order failed.
    fn gave_up(&self, order: &[String], since: Instant) -> Option<Error> {
        if let Some((at, e)) = &*lock(&self.full)
            && *at >= since
        {
            return Some(e.clone());
        }
        if order.is_empty() {
            return Some(Error::exhausted(
                "the vxnet policy named no vxnet to create a NIC in",
            ));
        }
        if self.target(order, since).is_some() {
            return None;
        }
        let failed = lock(&self.failed);
        order
            .last()
            .and_then(|v| failed.get(v))
            .map(|(_, e)| e.clone())
    }

    /// Per vxnet, the cold ADDs waiting for a NIC there that no free,
    /// attaching or returning NIC of that vxnet will serve.
    fn unmet_demand(&self, nics: &Nics) -> Vec<(String, usize)> {
        let waiters: Vec<Waiter> = lock(&self.waiters).values().cloned().collect();
        let mut want: BTreeMap<String, usize> = BTreeMap::new();
        for (order, since) in &waiters {
            if let Some(v) = self.target(order, *since) {
                *want.entry(v).or_default() += 1;
            }
        }
        let pool = nics.pool();
        want.into_iter()
            .filter_map(|(v, n)| {
                let supply = pool.count_in(&v, &[State::Free, State::Attaching, State::Releasing]);
                (n > supply).then(|| (v, n - supply))
            })
            .collect()
    }

    /// NICs a batch for `n` waiting ADDs in `vxnet` makes beyond them.
    /// kubelet starts a node's pods a few at a time, so a node bringing up
    /// many pods sees only some of them waiting, and one batch now costs
    /// fewer of the account's calls than one per handful later. How many
    /// more are coming:
    ///
    /// - in Kubernetes, the pods the scheduler has bound to the node that
    ///   hold no NIC and do not wait for one yet ([`Self::pods_coming`]);
    /// - and at least as many as the node's cold ADDs for that vxnet in
    ///   the last [`LOOKAHEAD_WINDOW`], up to the vxnet's `warm_max` (what
    ///   the node keeps idle anyway): outside Kubernetes the recent demand
    ///   is all the node knows.
    ///
    /// Never more than the addresses the vxnet was last counted to have.
    /// What is not taken stays warm, and above `warm_max` is trimmed as
    /// ever.
    fn lookahead(&self, (cloud, nics): (&CloudPool, &Nics), vxnet: &str, n: usize) -> usize {
        let recent = {
            let mut recent = lock(&self.recent);
            forget_old(&mut recent);
            recent.iter().filter(|(_, v)| v == vxnet).count()
        };
        let room = cloud
            .kpis
            .free_ips(vxnet)
            .map_or(usize::MAX, |free| (free as usize).saturating_sub(n));
        recent
            .min(cloud.warm_targets(vxnet).1)
            .max(self.pods_coming((cloud, nics), vxnet))
            .min(room)
    }

    /// `vxnet`'s part of the pods bound to this node (by the API server)
    /// that neither hold a NIC nor wait for one: as large a part as its
    /// share of the cold ADDs waiting now, which is where the vxnet
    /// policy sends a node's pods. 0 outside Kubernetes.
    fn pods_coming(&self, (cloud, nics): (&CloudPool, &Nics), vxnet: &str) -> usize {
        let Some((coming, waiters)) = self.unasked(cloud, nics) else {
            return 0;
        };
        let here = waiters
            .iter()
            .filter(|(order, since)| self.target(order, *since).as_deref() == Some(vxnet))
            .count();
        (coming * here).div_ceil(waiters.len().max(1))
    }

    /// The pods bound to this node that neither hold a NIC nor wait for
    /// one, and the cold ADDs waiting; `None` when the node does not know
    /// its pods ([`CloudPool::networked_pods`]).
    fn unasked(&self, cloud: &CloudPool, nics: &Nics) -> Option<(usize, Vec<Waiter>)> {
        let networked = cloud.networked_pods()?;
        let waiters: Vec<Waiter> = lock(&self.waiters).values().cloned().collect();
        let coming = networked.saturating_sub(nics.pool().count_held() + waiters.len());
        Some((coming, waiters))
    }

    /// Attaches a batch on a task of its own: the NICs count as on their
    /// way, and the next batch, for ADDs that came since, can be created
    /// while this one attaches. If none of the batch comes up, its vxnet
    /// failed for the ADDs waiting now.
    fn attach_aside(
        &self,
        cloud: &Arc<CloudPool>,
        nics: &Arc<Nics>,
        vxnet: String,
        specs: Vec<NicSpec>,
    ) {
        let (cloud, nics) = (cloud.clone(), nics.clone());
        tokio::spawn(async move {
            if let Err(e) = cloud
                .attach_batch(&nics, &vxnet, &specs, &State::Free)
                .await
            {
                lock(&cloud.provisioner.failed).insert(vxnet, (Instant::now(), e.answer()));
                nics.wake_waiters();
            }
        });
    }

    /// Waits for NICs claimed from the bank on a task of its own, as
    /// [`Self::attach_aside`] does for a batch made here. A claim that
    /// does not come up fails nothing: the next round creates NICs.
    fn settle_aside(
        &self,
        cloud: &Arc<CloudPool>,
        nics: &Arc<Nics>,
        specs: Vec<NicSpec>,
        job: JobId,
    ) {
        let (cloud, nics) = (cloud.clone(), nics.clone());
        tokio::spawn(async move {
            cloud.settle_claim(&nics, &specs, job).await;
            nics.wake_waiters();
        });
    }

    /// Starts the provisioner task unless it is running.
    fn kick(&self, cloud: &Arc<CloudPool>, nics: &Arc<Nics>) {
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let (cloud, nics) = (cloud.clone(), nics.clone());
        tokio::spawn(async move {
            cloud.provisioner.run(&cloud, &nics).await;
            cloud.tag_when_quiet(&nics);
        });
    }

    /// Creates NICs while cold ADDs wait for more than are on their way:
    /// per vxnet, one batch for all the ADDs waiting for one there when
    /// the node's next call may leave, attached on a task of its own.
    /// Demand that arrives during a batch is served by the next, so a
    /// burst of pods costs a few calls, not a few per pod. A failure in a vxnet
    /// moves its waiters on to the next vxnet of their order.
    async fn run(&self, cloud: &Arc<CloudPool>, nics: &Arc<Nics>) {
        loop {
            if self.unmet_demand(nics).is_empty() {
                self.running.store(false, Ordering::SeqCst);
                nics.wake_waiters();
                // A waiter may have come between the look and the store.
                if !self.unmet_demand(nics).is_empty() && !self.running.swap(true, Ordering::SeqCst)
                {
                    continue;
                }
                return;
            }
            // A batch is sized when its CreateNics can leave, in the
            // node's next slot of the account's rate (`cloud::pace`): the
            // ADDs that arrive while the node waits for it join the batch
            // instead of making the next one.
            cloud.client.paced().await;
            for (vxnet, n) in self.unmet_demand(nics) {
                let ahead = self.lookahead((cloud, nics), &vxnet, n);
                let batch = (n + ahead).min(MAX_BATCH);
                // The bank first: its NICs need only the attach.
                if let Some((specs, job)) = cloud.claim(nics, &vxnet, batch).await {
                    self.settle_aside(cloud, nics, specs, job);
                    continue;
                }
                let mut made = cloud.create_batch(nics, &vxnet, batch, &[]).await;
                // A vxnet with room for the waiting ADDs' NICs but not for
                // those ahead of them still serves the waiting ones.
                if ahead > 0 && matches!(&made, Err(ProvisionError::Cloud(e)) if !e.is_transient())
                {
                    made = cloud
                        .create_batch(nics, &vxnet, n.min(MAX_BATCH), &[])
                        .await;
                }
                let e = match made {
                    Ok(specs) => {
                        self.attach_aside(cloud, nics, vxnet, specs);
                        continue;
                    }
                    Err(e) => e,
                };
                let err = e.answer();
                if let ProvisionError::Limit { .. } = e {
                    *lock(&self.full) = Some((Instant::now(), err));
                    self.running.store(false, Ordering::SeqCst);
                    nics.wake_waiters();
                    return;
                }
                lock(&self.failed).insert(vxnet, (Instant::now(), err));
                nics.wake_waiters();
            }
        }
    }
}
