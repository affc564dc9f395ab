//! The guests' key-value store (`host.kv-get` / `host.kv-set`).
//!
//! One store per guest *name*, so that state survives module swaps (a new
//! version of `vxnet-select.wasm` keeps its rotation index) and restarts
//! (the store is a JSON file, `<state dir>/<name>.json`, rewritten
//! atomically: a temporary file renamed over the old one).
//!
//! A call sees the store through a [`KvTxn`]: its writes are buffered and
//! applied only if the call succeeds ([`KvTxn::commit`]). A call that traps,
//! runs out of time or memory, or answers something the host refuses
//! leaves the store as it was — an error is an error for that call only,
//! with no half-done side effects.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::limits::{KV_MAX_KEY_BYTES, KV_MAX_KEYS, KV_MAX_VALUE_BYTES};

/// Why a write was refused, or the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("kv key is {len} bytes; keys are at most {max}", max = KV_MAX_KEY_BYTES)]
    KeyTooLong { len: usize },
    #[error("kv key is empty")]
    EmptyKey,
    #[error("kv value for {key:?} is {len} bytes; values are at most {max}", max = KV_MAX_VALUE_BYTES)]
    ValueTooLong { key: String, len: usize },
    #[error("kv store is full ({max} keys); {key:?} is a new key", max = KV_MAX_KEYS)]
    TooManyKeys { key: String },
    #[error("reading kv state {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kv state {} is not a valid state file", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("kv state {} holds an entry over the limits", path.display())]
    OverLimits {
        path: PathBuf,
        #[source]
        source: Box<KvError>,
    },
    #[error("writing kv state {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The file format: versioned so that a later host can change it and still
/// read what this one wrote.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    entries: BTreeMap<String, String>,
}

const STATE_VERSION: u32 = 1;

/// One guest name's store. Shared by every hook and every concurrent call
/// that runs a guest of that name.
#[derive(Debug)]
pub struct KvStore {
    /// `None`: in memory only (tests, `policy bench` without a state dir).
    path: Option<PathBuf>,
    entries: Mutex<BTreeMap<String, String>>,
}

impl KvStore {
    /// A store that is never written to disk.
    pub fn in_memory() -> KvStore {
        KvStore {
            path: None,
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    /// Opens the store persisted at `path`; a missing file is an empty
    /// store. A file that cannot be parsed, or that holds entries over the
    /// limits (written by hand, or by a host with other limits), is an
    /// error: the caller decides whether to start empty.
    pub fn open(path: &Path) -> Result<KvStore, KvError> {
        let entries = match fs::read(path) {
            Ok(bytes) => {
                let file: StateFile =
                    serde_json::from_slice(&bytes).map_err(|source| KvError::Parse {
                        path: path.to_owned(),
                        source,
                    })?;
                check_all(&file.entries).map_err(|e| KvError::OverLimits {
                    path: path.to_owned(),
                    source: Box::new(e),
                })?;
                file.entries
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(KvError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Ok(KvStore {
            path: Some(path.to_owned()),
            entries: Mutex::new(entries),
        })
    }

    /// An empty store that persists to `path`, whatever is there now (used
    /// when the file there could not be read; the caller moved it aside).
    pub fn empty_at(path: &Path) -> KvStore {
        KvStore {
            path: Some(path.to_owned()),
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.lock().get(key).cloned()
    }

    /// A copy of every entry (introspection, tests).
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.lock().clone()
    }

    /// Sets one entry now and persists it: [`KvTxn`] with one write.
    pub fn set(&self, key: &str, value: &str) -> Result<(), KvError> {
        let mut txn = KvTxn::default();
        txn.set(self, key, value)?;
        txn.commit(self).map(drop)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // A poisoned lock means a panic while holding it; every update below
        // is a single insert, so the map is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the file: a temporary beside it, renamed over the old one. A
    /// process crash (an agent restart) leaves either the old or the new
    /// file, never a torn one.
    ///
    /// No fsync, on purpose: it costs 1-8 ms per write on this project's
    /// disks (measured with the `hook-latency` example), and a rotating
    /// policy writes on every call. What an fsync would add is durability
    /// across a power loss, after which the worst case is an empty or stale
    /// file: an empty one is unreadable, set aside by the runtime, and the
    /// guest starts over — for rotation counters and the like, the right
    /// trade. Called with the entries lock held, so concurrent commits
    /// write in the order they applied.
    fn persist(&self, entries: &BTreeMap<String, String>) -> Result<(), KvError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |source| KvError::Write {
            path: path.clone(),
            source,
        };
        let file = StateFile {
            version: STATE_VERSION,
            entries: entries.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| err(e.into()))?;
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, &bytes).map_err(err)?;
        fs::rename(&tmp, path).map_err(err)
    }
}

/// Checks one write against the per-entry limits.
fn check_entry(key: &str, value: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if key.len() > KV_MAX_KEY_BYTES {
        return Err(KvError::KeyTooLong { len: key.len() });
    }
    if value.len() > KV_MAX_VALUE_BYTES {
        return Err(KvError::ValueTooLong {
            key: key.to_owned(),
            len: value.len(),
        });
    }
    Ok(())
}

fn check_all(entries: &BTreeMap<String, String>) -> Result<(), KvError> {
    if entries.len() > KV_MAX_KEYS {
        let key = entries.keys().next_back().cloned().unwrap_or_default();
        return Err(KvError::TooManyKeys { key });
    }
    entries.iter().try_for_each(|(k, v)| check_entry(k, v))
}

/// One call's view of a store: reads see the call's own writes first;
/// writes are buffered until [`KvTxn::commit`].
#[derive(Debug, Default)]
pub struct KvTxn {
    writes: BTreeMap<String, String>,
}

impl KvTxn {
    pub fn get(&self, store: &KvStore, key: &str) -> Option<String> {
        match self.writes.get(key) {
            Some(v) => Some(v.clone()),
            None => store.get(key),
        }
    }

    /// Buffers a write after checking it against the limits, counting the
    /// store's keys plus this call's new ones.
    pub fn set(&mut self, store: &KvStore, key: &str, value: &str) -> Result<(), KvError> {
        check_entry(key, value)?;
        if !self.writes.contains_key(key) {
            let entries = store.lock();
            if !entries.contains_key(key) {
                let new_keys = self
                    .writes
                    .keys()
                    .filter(|k| !entries.contains_key(*k))
                    .count();
                if entries.len() + new_keys + 1 > KV_MAX_KEYS {
                    return Err(KvError::TooManyKeys {
                        key: key.to_owned(),
                    });
                }
            }
        }
        self.writes.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// Applies the buffered writes and persists the store if anything
    /// changed (a write of the value already there changes nothing and
    /// costs no disk write). Returns whether the store changed.
    ///
    /// Two calls in flight may both have added new keys within the limit
    /// that together exceed it; the key count is checked again here, and a
    /// new key that no longer fits is refused (the other writes still
    /// apply).
    pub fn commit(self, store: &KvStore) -> Result<bool, KvError> {
        if self.writes.is_empty() {
            return Ok(false);
        }
        let mut entries = store.lock();
        let mut changed = false;
        let mut refused = None;
        for (k, v) in self.writes {
            if entries.get(&k) == Some(&v) {
                continue;
            }
            if !entries.contains_key(&k) && entries.len() >= KV_MAX_KEYS {
                refused = Some(KvError::TooManyKeys { key: k });
                continue;
            }
            entries.insert(k, v);
            changed = true;
        }
        if changed {
            store.persist(&entries)?;
        }
        match refused {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_across_opens_and_only_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.json");
        let store = KvStore::open(&path).unwrap();
        assert_eq!(store.get("index"), None);

        let mut txn = KvTxn::default();
        txn.set(&store, "index", "3").unwrap();
        // The call sees its own write; the store does not, yet.
        assert_eq!(txn.get(&store, "index").as_deref(), Some("3"));
        assert_eq!(store.get("index"), None);
        assert!(!path.exists());
        assert!(txn.commit(&store).unwrap());

        let again = KvStore::open(&path).unwrap();
        assert_eq!(again.get("index").as_deref(), Some("3"));
        // No temporary left behind.
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_dropped_txn_changes_nothing() {
        let store = KvStore::in_memory();
        store.set("a", "1").unwrap();
        let mut txn = KvTxn::default();
        txn.set(&store, "a", "2").unwrap();
        drop(txn);
        assert_eq!(store.get("a").as_deref(), Some("1"));
    }

    #[test]
    fn rewriting_the_same_value_is_not_a_change() {
        let store = KvStore::in_memory();
        store.set("a", "1").unwrap();
        let mut txn = KvTxn::default();
        txn.set(&store, "a", "1").unwrap();
        assert!(!txn.commit(&store).unwrap());
    }

    #[test]
    fn entry_limits_inside_and_over() {
        let store = KvStore::in_memory();
        let key = "k".repeat(KV_MAX_KEY_BYTES);
        let value = "v".repeat(KV_MAX_VALUE_BYTES);
        store.set(&key, &value).unwrap();
        assert!(matches!(
            store.set(&"k".repeat(KV_MAX_KEY_BYTES + 1), "v"),
            Err(KvError::KeyTooLong { .. })
        ));
        assert!(matches!(
            store.set("k", &"v".repeat(KV_MAX_VALUE_BYTES + 1)),
            Err(KvError::ValueTooLong { .. })
        ));
        assert!(matches!(store.set("", "v"), Err(KvError::EmptyKey)));
    }

    #[test]
    fn key_count_inside_and_over() {
        let store = KvStore::in_memory();
        for i in 0..KV_MAX_KEYS - 1 {
            store.set(&format!("k{i}"), "v").unwrap();
        }
        // The last key fits, counted together with the call's own new keys.
        let mut txn = KvTxn::default();
        txn.set(&store, "last", "v").unwrap();
        let err = txn.set(&store, "one-too-many", "v").unwrap_err();
        assert!(err.to_string().contains("is full"), "{err}");
        // Overwriting an existing key is always fine.
        txn.set(&store, "k0", "w").unwrap();
        txn.commit(&store).unwrap();
        assert_eq!(store.snapshot().len(), KV_MAX_KEYS);
        assert!(store.set("another", "v").is_err());
        store.set("k1", "changed").unwrap();
    }

    #[test]
    fn concurrent_txns_cannot_exceed_the_key_count_together() {
        let store = KvStore::in_memory();
        for i in 0..KV_MAX_KEYS - 1 {
            store.set(&format!("k{i}"), "v").unwrap();
        }
        let mut a = KvTxn::default();
        let mut b = KvTxn::default();
        a.set(&store, "a", "1").unwrap();
        b.set(&store, "b", "1").unwrap();
        a.commit(&store).unwrap();
        assert!(matches!(b.commit(&store), Err(KvError::TooManyKeys { .. })));
        assert_eq!(store.snapshot().len(), KV_MAX_KEYS);
    }

    #[test]
    fn a_corrupt_or_oversized_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.json");
        fs::write(&path, b"{not json").unwrap();
        assert!(matches!(KvStore::open(&path), Err(KvError::Parse { .. })));
        let big = serde_json::json!({
            "version": 1,
            "entries": { "k": "v".repeat(KV_MAX_VALUE_BYTES + 1) }
        });
        fs::write(&path, big.to_string()).unwrap();
        assert!(matches!(
            KvStore::open(&path),
            Err(KvError::OverLimits { .. })
        ));
    }
}
