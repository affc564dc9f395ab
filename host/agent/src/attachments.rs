//! The node's attachments: one table, whatever wired them, of which
//! attachment exists and its record as of now. Every verb finds an
//! attachment here; each entry has a lock its verbs take, so operations on
//! one attachment run one at a time while different attachments proceed
//! in parallel.
//!
//! An ADD claims its key before it decides anything ([`Attachments::claim`]):
//! a second ADD of the same key meanwhile is told to come back, never
//! given a second NIC. The claim holds the entry's lock until the ADD
//! commits or gives up, and a DEL's background release holds it until the
//! release is done, so whoever waits for an entry's lock waits for exactly
//! that work.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use hostnic_netlink::NsId;
use tokio::sync::OwnedMutexGuard;

use crate::record::{Key, Phase, Record, Resource};

pub type Lock = Arc<tokio::sync::Mutex<()>>;

#[derive(Debug)]
struct Entry {
    /// `None` while the ADD that claimed the key has reserved nothing yet.
    record: Option<Record>,
    lock: Lock,
}

#[derive(Debug, Default)]
pub struct Attachments {
    by_key: Mutex<BTreeMap<Key, Entry>>,
}

/// An attachment locked for a verb: its record as of the lock.
#[derive(Debug)]
pub struct Locked {
    pub record: Record,
    guard: OwnedMutexGuard<()>,
}

impl Locked {
    /// The lock, to hold across work that outlives the verb (a DEL's
    /// background release).
    pub fn into_guard(self) -> (Record, OwnedMutexGuard<()>) {
        (self.record, self.guard)
    }
}

/// A key claimed by an ADD: the entry exists (with no record until the ADD
/// reserves something) and its lock is held. Dropped without
/// [`Claim::commit`], the entry goes.
#[derive(Debug)]
pub struct Claim {
    table: Arc<Attachments>,
    key: Key,
    _guard: OwnedMutexGuard<()>,
    committed: bool,
}

/// Why [`Attachments::claim`] could not claim a key.
#[derive(Debug)]
pub enum Taken {
    /// An ADD for it committed: its record.
    Committed(Box<Record>),
    /// An ADD for it is under way, or its DEL's release is.
    Busy(Option<Phase>),
}

impl Attachments {
    fn entries(&self) -> MutexGuard<'_, BTreeMap<Key, Entry>> {
        // A panic while holding this short lock is a bug, but every
        // mutation is a single insert or remove: keep serving.
        self.by_key.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `key` for an ADD.
    pub fn claim(self: &Arc<Self>, key: &Key) -> Result<Claim, Taken> {
        let mut entries = self.entries();
        if let Some(e) = entries.get(key) {
            return Err(match &e.record {
                Some(r) if r.phase == Phase::Committed => Taken::Committed(Box::new(r.clone())),
                r => Taken::Busy(r.as_ref().map(|r| r.phase)),
            });
        }
        let lock = Lock::default();
        let guard = lock.clone().try_lock_owned().expect("a new lock is free");
        entries.insert(key.clone(), Entry { record: None, lock });
        Ok(Claim {
            table: self.clone(),
            key: key.clone(),
            _guard: guard,
            committed: false,
        })
    }

    /// Puts a record read back at start.
    pub fn restore(&self, record: Record) {
        self.entries().insert(
            record.key.clone(),
            Entry {
                record: Some(record),
                lock: Lock::default(),
            },
        );
    }

    /// The attachment's record, without its lock.
    pub fn get(&self, key: &Key) -> Option<Record> {
        self.entries().get(key)?.record.clone()
    }

    /// Whether `key` is claimed or held (an ADD that has not reserved
    /// anything yet has no record but is under way).
    pub fn contains(&self, key: &Key) -> bool {
        self.entries().contains_key(key)
    }

    /// The attachment, locked; `None` if there is none, or it went (or
    /// has no record yet) once its lock was ours.
    pub async fn lock(&self, key: &Key) -> Option<Locked> {
        let lock = self.entries().get(key)?.lock.clone();
        let guard = lock.clone().lock_owned().await;
        let record = {
            let entries = self.entries();
            let e = entries.get(key).filter(|e| Arc::ptr_eq(&e.lock, &lock))?;
            e.record.clone()?
        };
        Some(Locked { record, guard })
    }

    /// The attachment's record as it is now (its lock is the caller's).
    pub fn update(&self, record: &Record) {
        if let Some(e) = self.entries().get_mut(&record.key) {
            e.record = Some(record.clone());
        }
    }

    /// Drops the attachment (its lock is the caller's), if it is still the
    /// one of `record`'s resource.
    pub fn remove(&self, record: &Record) {
        let mut entries = self.entries();
        let same = entries
            .get(&record.key)
            .and_then(|e| e.record.as_ref())
            .is_some_and(|r| r.resource() == record.resource());
        if same {
            entries.remove(&record.key);
        }
    }

    /// Every attachment's record.
    pub fn all(&self) -> Vec<Record> {
        self.entries()
            .values()
            .filter_map(|e| e.record.clone())
            .collect()
    }

    /// The keys of container `container_id`'s attachments (its networks)
    /// that an ADD committed.
    pub fn of_container(&self, container_id: &str) -> Vec<Key> {
        self.entries()
            .iter()
            .filter(|(k, e)| {
                k.container_id == container_id
                    && e.record
                        .as_ref()
                        .is_some_and(|r| r.phase == Phase::Committed)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The lock of the release under way of `resource`, if one is.
    pub fn releasing_of(&self, resource: Resource) -> Option<Lock> {
        self.entries()
            .values()
            .find(|e| {
                e.record
                    .as_ref()
                    .is_some_and(|r| r.phase == Phase::Releasing && r.resource() == resource)
            })
            .map(|e| e.lock.clone())
    }

    /// The locks of releases under way in namespace `ns`: an ADD into it
    /// waits for them, so it never meets an interface a DEL answered for.
    pub fn releasing_in(&self, ns: NsId) -> Vec<Lock> {
        self.entries()
            .values()
            .filter(|e| {
                e.record
                    .as_ref()
                    .is_some_and(|r| r.phase == Phase::Releasing && r.netns_id == Some(ns))
            })
            .map(|e| e.lock.clone())
            .collect()
    }
}

impl Claim {
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The ADD's record as it is now.
    pub fn set(&self, record: &Record) {
        if let Some(e) = self.table.entries().get_mut(&self.key) {
            e.record = Some(record.clone());
        }
    }

    /// The ADD committed: the entry stays (and its lock is let go).
    pub fn commit(mut self, record: &Record) {
        self.set(record);
        self.committed = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.committed {
            self.table.entries().remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Holds;

    fn key(c: &str) -> Key {
        Key {
            network: "n".into(),
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    fn record(c: &str, phase: Phase) -> Record {
        Record {
            key: key(c),
            phase,
            netns: None,
            netns_id: Some(NsId { dev: 4, ino: 7 }),
            pod: Default::default(),
            result: None,
            sticky: None,
            bandwidth: None,
            holds: Holds::Nic {
                mac: "52:54:00:00:00:01".parse().unwrap(),
            },
        }
    }

    #[tokio::test]
    async fn a_key_is_claimed_once_and_a_dropped_claim_lets_go() {
        let t = Arc::new(Attachments::default());
        let c = t.claim(&key("a")).unwrap();
        assert!(matches!(t.claim(&key("a")), Err(Taken::Busy(None))));
        c.set(&record("a", Phase::Reserved));
        assert!(matches!(
            t.claim(&key("a")),
            Err(Taken::Busy(Some(Phase::Reserved)))
        ));
        drop(c);
        assert!(t.get(&key("a")).is_none());
        let c = t.claim(&key("a")).unwrap();
        c.commit(&record("a", Phase::Committed));
        assert!(matches!(t.claim(&key("a")), Err(Taken::Committed(_))));
        assert_eq!(t.of_container("a"), vec![key("a")]);
        let locked = t.lock(&key("a")).await.unwrap();
        assert_eq!(locked.record.phase, Phase::Committed);
    }

    #[tokio::test]
    async fn a_release_under_way_is_waited_for_by_its_namespace() {
        let t = Arc::new(Attachments::default());
        t.restore(record("a", Phase::Committed));
        let locked = t.lock(&key("a")).await.unwrap();
        let (mut r, guard) = locked.into_guard();
        r.phase = Phase::Releasing;
        t.update(&r);
        let waiting = t.releasing_in(NsId { dev: 4, ino: 7 });
        assert_eq!(waiting.len(), 1);
        assert!(waiting[0].try_lock().is_err(), "the release holds it");
        t.remove(&r);
        drop(guard);
        assert!(waiting[0].try_lock().is_ok());
        assert!(t.releasing_in(NsId { dev: 4, ino: 7 }).is_empty());
    }
}
