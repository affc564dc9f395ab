//! The allocation record: which NIC went to which attachment.
//!
//! One small JSON file per NIC under `<state_dir>/allocations/`, named by
//! its MAC, replaced atomically (write a temporary file, rename over). Per-NIC
//! files mean concurrent ADDs on different NICs never contend for a lock or
//! rewrite each other's state.
//!
//! Two phases make an agent killed at any instant recoverable:
//!
//! - `reserved` is written *before* the NIC leaves the node namespace, with
//!   the pod's netns path, so a restarted agent knows where to look for it.
//!   It only has to survive the agent process dying, which the page cache
//!   already guarantees; it is not fsynced. (After a power loss every pod
//!   netns is gone too, and reconciliation releases the stale record.)
//! - `committed` is written and fsynced (file and directory) before ADD
//!   answers: a pod that was told "success" is on disk.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use hostnic_netlink::Mac;
use hostnic_proto::cni::AddResult;
use hostnic_proto::rpc::Pod;
use serde::{Deserialize, Serialize};

/// Which attachment holds a NIC: the CNI key within a network.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Reserved,
    Committed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub mac: Mac,
    pub phase: Phase,
    pub key: Key,
    /// The runtime's netns path, to find the NIC again after a restart.
    pub netns: Option<String>,
    #[serde(default)]
    pub pod: Pod,
    /// What ADD answered; present once committed.
    #[serde(default)]
    pub result: Option<AddResult>,
}

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(state_dir: &Path) -> io::Result<Store> {
        let dir = state_dir.join("allocations");
        fs::create_dir_all(&dir)?;
        Ok(Store { dir })
    }

    fn path(&self, mac: Mac) -> PathBuf {
        self.dir.join(format!("{}.json", mac.parked_name()))
    }

    /// Writes the record; fsynced when it is a commit.
    pub fn put(&self, a: &Allocation) -> io::Result<()> {
        let path = self.path(a.mac);
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(a).map_err(io::Error::other)?;
        let durable = a.phase == Phase::Committed;
        let mut f = File::create(&tmp)?;
        f.write_all(&body)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, &path)?;
        if durable {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Forgets a NIC's record. Already gone is fine.
    pub fn remove(&self, mac: Mac) -> io::Result<()> {
        match fs::remove_file(self.path(mac)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// One NIC's record, if it has one.
    pub fn get(&self, mac: Mac) -> io::Result<Option<Allocation>> {
        match fs::read(self.path(mac)) {
            Ok(bytes) => Ok(Some(parse(&self.path(mac), &bytes)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every record on disk. A file that cannot be read or parsed is an
    /// error naming it: guessing could give one NIC to two pods.
    pub fn load(&self) -> io::Result<Vec<Allocation>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {}
                // A temporary file is a write the agent did not finish; the
                // record it would have replaced is still in place.
                Some("tmp") => {
                    fs::remove_file(&path)?;
                    continue;
                }
                _ => continue,
            }
            out.push(parse(&path, &fs::read(&path)?)?);
        }
        out.sort_by_key(|a| a.mac);
        Ok(out)
    }
}

fn parse(path: &Path, bytes: &[u8]) -> io::Result<Allocation> {
    serde_json::from_slice(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "allocation record {} is corrupt: {e}; move it aside after checking which pod holds the NIC",
                path.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(mac: &str, phase: Phase) -> Allocation {
        Allocation {
            mac: mac.parse().unwrap(),
            phase,
            key: Key {
                network: "n".into(),
                container_id: "c".into(),
                ifname: "eth0".into(),
            },
            netns: Some("/var/run/netns/x".into()),
            pod: Pod::default(),
            result: None,
        }
    }

    #[test]
    fn records_survive_reopen_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = alloc("52:54:00:00:00:02", Phase::Reserved);
        let b = alloc("52:54:00:00:00:01", Phase::Committed);
        s.put(&a).unwrap();
        s.put(&b).unwrap();
        let mut a2 = a.clone();
        a2.phase = Phase::Committed;
        s.put(&a2).unwrap();
        let loaded = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(loaded, vec![b.clone(), a2]);
        s.remove(b.mac).unwrap();
        s.remove(b.mac).unwrap();
        assert_eq!(s.load().unwrap().len(), 1);
    }

    #[test]
    fn a_corrupt_record_is_an_error_that_names_it_and_leftovers_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        fs::write(dir.path().join("allocations/hn525400000009.tmp"), b"{half").unwrap();
        assert!(s.load().unwrap().is_empty());
        fs::write(dir.path().join("allocations/hn525400000009.json"), b"{half").unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("hn525400000009.json"), "{e}");
    }
}
