//! The vxnets' free addresses, counted once for the whole cluster.
//!
//! A vxnet's free addresses (its usable range minus its NICs: one
//! DescribeNics of one item) feed the vxnet guest's `free-ips`. With every
//! node counting every vxnet every `vxnet_count_seconds` (600), a node at
//! rest made 6 calls an hour per vxnet, on top of its 3 polls: more than
//! the whole at-rest budget of 4.
//!
//! - In Kubernetes, the Lease holder counts its vxnets and publishes the
//!   counts on the Lease (`hostnic.io/vxnet-counts`: NICs per vxnet and
//!   when they were counted, by the holder's clock); the other nodes take
//!   them from what their election rounds read, at no cloud call.
//! - A node counts a vxnet itself only where the Lease has no fresh count
//!   of it (a holder that does not count that vxnet, or of an older
//!   version): none for twice `vxnet_count_seconds` and a minute since it
//!   started, or the last one older than that.
//! - Outside Kubernetes every node counts its own.
//!
//! Counting waits for a quiet node: a node bringing up its pods needs its
//! slots of the account's rate for their NICs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{CloudPool, tagger};
use crate::apiserver::lease::notes;
use crate::nics::Nics;

/// The longest a node goes without looking at its counts (in memory: a
/// look costs a call only for a count that is due).
const LOOK: Duration = Duration::from_secs(5);

/// What a node reading the holder's counts allows beyond two of the
/// holder's intervals before it counts itself: a holder busy bringing up
/// its own pods counts only once quiet, and the Lease is read a few
/// seconds late.
const SLACK: Duration = Duration::from_secs(60);

/// One vxnet's count, as the holder publishes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counted {
    /// The NICs in the vxnet.
    pub nics: u64,
    /// When they were counted: seconds since the Unix epoch.
    pub at: u64,
}

/// The counts per vxnet, as published.
pub type Counts = BTreeMap<String, Counted>;

/// Who counts a node's vxnets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// No API server: the node counts its own.
    Alone,
    /// It holds the Lease: it counts for the cluster.
    Holder,
    /// Another node holds it: the node reads the holder's counts.
    Reader,
}

/// Whether a node in `role` counts a vxnet itself now: last counted `age`
/// ago (`None`: never), counting every `every`, started `up` ago.
fn due(role: Role, age: Option<Duration>, every: Duration, up: Duration) -> bool {
    match (role, age) {
        (Role::Alone | Role::Holder, None) => true,
        (Role::Alone | Role::Holder, Some(age)) => age >= every,
        // The holder had its chance.
        (Role::Reader, None) => up >= every * 2 + SLACK,
        (Role::Reader, Some(age)) => age >= every * 2 + SLACK,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl CloudPool {
    /// The count loop (`[cloud] vxnet_count_seconds`; 0: never): every
    /// configured vxnet counted by this node or taken from the Lease
    /// holder's counts, as the module says.
    pub async fn keep_counts(&self, nics: &Nics) {
        if self.cfg.vxnet_count_seconds == 0 {
            return;
        }
        // Jittered once per node, so the nodes of a cluster spread out.
        let every =
            Duration::from_secs(self.cfg.vxnet_count_seconds).mul_f64(0.8 + 0.4 * fastrand::f64());
        let started = Instant::now();
        let mut unreadable = None;
        loop {
            let role = match self.duties.as_ref().map(|d| d.elector.holds()) {
                None => Role::Alone,
                Some(true) => Role::Holder,
                Some(false) => Role::Reader,
            };
            let published = self.published_counts(&mut unreadable);
            if role == Role::Reader {
                self.take_counts(&published);
            }
            let to_count: Vec<String> = self
                .vxnets()
                .map(|(id, _)| id)
                .filter(|id| due(role, self.kpis.count_age(id), every, started.elapsed()))
                .map(str::to_string)
                .collect();
            if to_count.is_empty() {
                tokio::time::sleep(every.min(LOOK)).await;
                continue;
            }
            if !self.quiet(nics) {
                tokio::time::sleep(tagger::QUIET).await;
                continue;
            }
            let counted = self.count(&to_count).await;
            if role == Role::Holder
                && !counted.is_empty()
                && let Some(duties) = &self.duties
            {
                let mut all = published;
                all.extend(counted);
                // A vxnet no holder counted for long is dropped.
                let stale = every.as_secs() * 3;
                all.retain(|_, c| unix_now().saturating_sub(c.at) < stale);
                if let Ok(value) = serde_json::to_string(&all) {
                    duties.elector.publish(notes::VXNET_COUNTS, value);
                }
            }
            tokio::time::sleep(every.min(LOOK)).await;
        }
    }

    /// The counts on the Lease at its last read (none outside Kubernetes,
    /// or if they do not parse: said once per value, kept in `unreadable`).
    fn published_counts(&self, unreadable: &mut Option<String>) -> Counts {
        let Some(value) = self
            .duties
            .as_ref()
            .and_then(|d| d.elector.published(notes::VXNET_COUNTS))
        else {
            return Counts::new();
        };
        serde_json::from_str(&value).unwrap_or_else(|e| {
            if unreadable.as_ref() != Some(&value) {
                warn!(error = %e, annotation = notes::VXNET_COUNTS, "the vxnet counts on the Lease do not parse; ignoring them (the holder's next count replaces them)");
                *unreadable = Some(value);
            }
            Counts::new()
        })
    }

    /// Takes the published counts of this node's vxnets (those newer than
    /// its own).
    fn take_counts(&self, published: &Counts) {
        let now = unix_now();
        for (id, v) in self.vxnets() {
            if let Some(c) = published.get(id) {
                let ago = Duration::from_secs(now.saturating_sub(c.at));
                self.kpis.counted_ago(id, v.cidr, c.nics, ago);
            }
        }
    }

    /// Counts `vxnets` (one DescribeNics of one item each): what was
    /// counted.
    async fn count(&self, vxnets: &[String]) -> Counts {
        let mut counted = Counts::new();
        for (id, v) in self
            .vxnets()
            .filter(|(id, _)| vxnets.iter().any(|c| c == id))
        {
            match self.client.count_nics(id).await {
                Ok(n) => {
                    self.kpis.counted(id, v.cidr, n);
                    counted.insert(
                        id.to_string(),
                        Counted {
                            nics: n,
                            at: unix_now(),
                        },
                    );
                }
                Err(e) => warn!(vxnet = %id, error = %e, "counting the vxnet's NICs"),
            }
        }
        counted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(600);

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_node_alone_or_holding_the_lease_counts_when_its_count_is_old() {
        for role in [Role::Alone, Role::Holder] {
            assert!(due(role, None, EVERY, s(0)), "{role:?}: at start");
            assert!(!due(role, Some(s(599)), EVERY, s(3600)), "{role:?}");
            assert!(due(role, Some(s(600)), EVERY, s(3600)), "{role:?}");
        }
    }

    #[test]
    fn a_node_reading_the_holders_counts_counts_only_where_it_has_none_fresh() {
        // At start, the holder has two intervals and a minute to publish.
        assert!(!due(Role::Reader, None, EVERY, s(0)));
        assert!(!due(Role::Reader, None, EVERY, s(1259)));
        // None came (the holder does not count this vxnet): count it.
        assert!(due(Role::Reader, None, EVERY, s(1260)));
        // The holder's count is an interval old, or a little more (its
        // jitter, the Lease read late, the holder busy): fine.
        assert!(!due(Role::Reader, Some(s(1000)), EVERY, s(3600)));
        // The holder stopped counting.
        assert!(due(Role::Reader, Some(s(1260)), EVERY, s(3600)));
    }

    #[test]
    fn the_published_counts_read_as_json() {
        let counts: Counts =
            serde_json::from_str(r#"{"vxnet-a": {"nics": 12, "at": 1796000000}}"#).unwrap();
        assert_eq!(
            counts["vxnet-a"],
            Counted {
                nics: 12,
                at: 1_796_000_000
            }
        );
    }
}
