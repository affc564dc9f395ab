//! Cold ADDs. An ADD that finds no warm NIC where its vxnet order wants one
//! waits while the node's provisioner creates NICs for every waiting ADD at
//! once (one CreateNics for the whole demand, attaches in fives, in
//! parallel), moving down the order only as creating fails. The
//! provisioner runs on a task of its own, so a runtime timeout cannot cut
//! an attach in half; an ADD that waits longer than `cold_wait` answers
//! "try again later" and its retry finds the NIC warm.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostnic_proto::cni::{CniError, code};

use super::ProvisionError;
use crate::pool::{Lease, State};
use crate::service::Service;
use crate::store::Key;

/// NICs per provisioning batch (one CreateNics call).
const MAX_BATCH: usize = 20;

#[derive(Debug)]
pub struct Provisioner {
    /// How long a cold ADD waits for its NIC before "try again later".
    cold_wait: Duration,
    /// The vxnet order of the latest cold ADD.
    last_order: Mutex<Vec<String>>,
    /// Cold ADDs waiting for a NIC: the demand.
    waiters: AtomicUsize,
    /// Whether the provisioner task is running.
    running: AtomicBool,
    /// Its last failure, reported to the ADDs that were waiting then.
    failure: Mutex<Option<(Instant, CniError)>>,
}

/// Counts a cold ADD among the waiters while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Provisioner {
    pub fn new(cold_wait: Duration) -> Provisioner {
        Provisioner {
            cold_wait,
            last_order: Mutex::new(Vec::new()),
            waiters: AtomicUsize::new(0),
            running: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }

    /// Remembers the vxnet order the policy gave an ADD.
    pub fn note_order(&self, order: &[String]) {
        *self.last_order.lock().unwrap_or_else(|p| p.into_inner()) = order.to_vec();
    }

    /// A NIC for a cold ADD: waits while the provisioner creates NICs, and
    /// takes one from the vxnets of `order` the ADD accepts by now (its
    /// first choice, and each next one once creating in those before it
    /// has failed since the wait began).
    pub async fn wait_for_nic(
        &self,
        svc: &Arc<Service>,
        key: &Key,
        order: &[String],
    ) -> Result<Lease, CniError> {
        let Some(cloud) = &svc.cloud else {
            return Err(CniError::new(
                code::INTERNAL,
                "cold provisioning without a cloud",
            ));
        };
        let started = Instant::now();
        let _waiting = Waiting::new(&self.waiters);
        self.kick(svc);
        loop {
            let accepted = cloud.accepted(order, started);
            if let Some(l) = svc.pool().reserve_in(accepted, key) {
                return Ok(l);
            }
            // A NIC counted as on its way may have gone elsewhere (the
            // node's gateway NIC): the demand is looked at again.
            if self.unmet_demand(svc) > 0 {
                self.kick(svc);
            }
            if let Some(e) = self.failure_since(started) {
                return Err(e);
            }
            if started.elapsed() >= self.cold_wait {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    "no warm NIC on this node; NICs are being attached for the waiting pods, try again shortly",
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Cold ADDs waiting that no free or attaching NIC will serve.
    fn unmet_demand(&self, svc: &Service) -> usize {
        let pool = svc.pool();
        let supply = pool.count_all(&[State::Free, State::Attaching, State::Releasing]);
        self.waiters.load(Ordering::SeqCst).saturating_sub(supply)
    }

    /// Starts the provisioner task unless it is running.
    fn kick(&self, svc: &Arc<Service>) {
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let svc = svc.clone();
        tokio::spawn(async move {
            if let Some(cloud) = &svc.cloud {
                cloud.provisioner.run(&svc).await;
            }
        });
    }

    /// Creates NICs in batches while cold ADDs wait for more than are on
    /// their way. One batch at a time: demand that arrives during a batch is
    /// served by the next, so a burst of pods costs a few calls, not a few
    /// per pod.
    async fn run(&self, svc: &Arc<Service>) {
        let Some(cloud) = &svc.cloud else { return };
        loop {
            let demand = self.unmet_demand(svc);
            if demand == 0 {
                self.running.store(false, Ordering::SeqCst);
                // A waiter may have come between the look and the store.
                if self.unmet_demand(svc) > 0 && !self.running.swap(true, Ordering::SeqCst) {
                    continue;
                }
                return;
            }
            let batch = demand.min(MAX_BATCH);
            let mut failure = None;
            let mut order = self
                .last_order
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if order.is_empty() {
                order = cloud.order();
            }
            for vxnet in order {
                match cloud.provision(svc, &vxnet, batch).await {
                    Ok(_) => {
                        failure = None;
                        break;
                    }
                    Err(e @ ProvisionError::Limit { .. }) => {
                        failure = Some(e);
                        break;
                    }
                    Err(e) => failure = Some(e),
                }
            }
            if let Some(e) = failure {
                let code = if e.is_transient() {
                    code::TRY_AGAIN_LATER
                } else {
                    code::NO_FREE_NIC
                };
                let err = CniError::new(
                    code,
                    format!("no warm NIC on this node and creating one failed: {e}"),
                );
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), err));
                self.running.store(false, Ordering::SeqCst);
                return;
            }
        }
    }

    fn failure_since(&self, since: Instant) -> Option<CniError> {
        let last = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, e)| e.clone())
    }
}
