//! Once-per-cluster duties (the cluster-wide leak sweep) go to one node at
//! a time, elected with a `coordination.k8s.io/v1` Lease, by the protocol
//! client-go's leader election uses:
//!
//! - the holder renews `renewTime` every third of `leaseDurationSeconds`;
//! - another node takes the Lease only once it has seen the same record,
//!   unchanged, for a whole lease duration by its own clock (so clock skew
//!   between nodes does not matter);
//! - every write carries the `resourceVersion` it read, so of two nodes
//!   racing for the Lease the API server accepts one and refuses the other
//!   (409 Conflict).
//!
//! A holder that cannot renew in time stops acting as the holder before
//! the others may take over.
//!
//! The Lease also carries what the holder publishes for every node, one
//! annotation each (the NIC bank's list, `cloud::bank`; the vxnets'
//! counts, `cloud::counts`): the holder writes
//! them with its renewals, the others read them with their rounds, so
//! publishing costs no request of its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tracing::{info, warn};

/// The annotations the holder publishes in (JSON each).
pub mod notes {
    /// The NIC bank's list (`cloud::bank`).
    pub const BANK: &str = "hostnic.io/nic-bank";
    /// The vxnets' NIC counts (`cloud::counts`).
    pub const VXNET_COUNTS: &str = "hostnic.io/vxnet-counts";
}

/// Annotations of the Lease that are notes of ours.
const NOTES_PREFIX: &str = "hostnic.io/";

#[derive(Debug, Clone)]
pub struct Elector {
    held: Arc<AtomicBool>,
    notes: Arc<Notes>,
}

/// What the holder publishes on the Lease, and what the last round read.
#[derive(Debug, Default)]
struct Notes {
    /// Written with this node's renewals while it holds the Lease, by
    /// annotation.
    to_publish: Mutex<BTreeMap<&'static str, String>>,
    /// The notes as the last round read them (or, for the holder, wrote
    /// them), by annotation.
    seen: Mutex<BTreeMap<String, String>>,
    /// Wakes the election for a round before its time (at most one a
    /// second): to publish at once, or to read afresh.
    wake: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Elector {
    /// Starts competing for Lease `namespace/name` as `identity` (the node's
    /// name).
    pub fn start(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Elector {
        let held = Arc::new(AtomicBool::new(false));
        let notes = Arc::new(Notes::default());
        let mut election = Election {
            notes: notes.clone(),
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            observed: None,
        };
        let flag = held.clone();
        tokio::spawn(async move {
            let mut renewed = Instant::now();
            loop {
                let result = election.round().await;
                let was = flag.load(Ordering::SeqCst);
                let now = match result {
                    Ok(holds) => {
                        if holds {
                            renewed = Instant::now();
                        }
                        holds
                    }
                    Err(e) => {
                        warn!(lease = %election.name, error = %e, "the Lease could not be read or renewed");
                        // Keep acting as the holder only while the last
                        // renewal is surely still valid for the others.
                        was && renewed.elapsed() < duration * 2 / 3
                    }
                };
                if now != was {
                    info!(lease = %election.name, holder = now, "{}", if now { "this node holds the Lease: it does the cluster-wide duties" } else { "this node no longer holds the Lease" });
                }
                if was && !now {
                    // A later holding publishes afresh, not this one's notes.
                    lock(&election.notes.to_publish).clear();
                }
                flag.store(now, Ordering::SeqCst);
                let soonest = tokio::time::Instant::now() + Duration::from_secs(1);
                tokio::select! {
                    _ = tokio::time::sleep(duration / 3) => {}
                    _ = election.notes.wake.notified() => tokio::time::sleep_until(soonest).await,
                }
            }
        });
        Elector { held, notes }
    }

    /// Publishes `value` in annotation `note` (one of [`notes`]) with this
    /// node's next renewal (only while it holds the Lease; a former
    /// holder's value stays on the Lease until the next holder publishes
    /// its own).
    pub fn publish(&self, note: &'static str, value: String) {
        let changed = lock(&self.notes.to_publish).insert(note, value.clone()) != Some(value);
        if changed {
            self.notes.wake.notify_one();
        }
    }

    /// Asks for the next round now (or a second after the last): a node
    /// that found nothing for it in what was published reads again.
    pub fn refresh(&self) {
        self.notes.wake.notify_one();
    }

    /// What the Lease carried in annotation `note` at the last round: at
    /// most a third of the Lease's duration old.
    pub fn published(&self, note: &str) -> Option<String> {
        lock(&self.notes.seen).get(note).cloned()
    }

    /// Whether this node holds the Lease now.
    pub fn holds(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }
}

/// What identifies a version of the Lease's record: its holder and renewal.
type Record = (Option<String>, Option<MicroTime>);

struct Election {
    notes: Arc<Notes>,
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The last record seen (holder, renewTime) and when, by our clock.
    observed: Option<(Record, Instant)>,
}

impl Election {
    /// One try to take or renew the Lease; whether we hold it after.
    async fn round(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        *lock(&self.notes.seen) = lease
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(NOTES_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        let seen_since = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => Instant::now(),
        };
        self.observed = Some((record, seen_since));
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let vacant = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        let their_duration = spec
            .lease_duration_seconds
            .map_or(self.duration, |s| Duration::from_secs(s.max(0) as u64));
        if !ours && !vacant && seen_since.elapsed() < their_duration {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        let to_publish = lock(&self.notes.to_publish).clone();
        if !to_publish.is_empty() {
            let annotations = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
            for (note, value) in &to_publish {
                annotations.insert(note.to_string(), value.clone());
            }
            let written = conflict_is_false(
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await,
            );
            if matches!(written, Ok(true)) {
                let mut seen = lock(&self.notes.seen);
                for (note, value) in to_publish {
                    seen.insert(note.to_string(), value);
                }
            }
            return written;
        }
        // The read resourceVersion stays in `lease.metadata`: a write over a
        // newer record is refused.
        conflict_is_false(
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await,
        )
    }
}

/// A write refused because someone else wrote first: we do not hold it.
fn conflict_is_false(r: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
