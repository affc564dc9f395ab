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
//! - `releasing` is written before DEL answers, while the NIC is still in
//!   the pod: the NIC comes back in the background, and a restart finishes
//!   what a killed agent did not. Like `reserved` it only has to survive
//!   the process, not a power loss (after which the pod's netns is gone,
//!   and a `committed` record whose netns is gone is released at start).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use hostnic_netlink::{Mac, NsId};
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
    /// DEL answered; the NIC is being brought back in the background. A
    /// restart finishes the release.
    Releasing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub mac: Mac,
    pub phase: Phase,
    pub key: Key,
    /// The runtime's netns path, to find the NIC again after a restart.
    pub netns: Option<String>,
    /// The identity of the namespace that path named at ADD: the path is
    /// only trusted again while it still names the same namespace.
    #[serde(default)]
    pub netns_id: Option<NsId>,
    #[serde(default)]
    pub pod: Pod,
    /// What ADD answered; present once committed.
    #[serde(default)]
    pub result: Option<AddResult>,
    /// The sticky identity the NIC follows: when the attachment ends, the
    /// NIC leaves the node (kept in the cloud for it), also when a restart
    /// finishes the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
}

#[derive(Clone, Debug)]
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
        write_record(&self.path(a.mac), a, a.phase == Phase::Committed)
    }

    /// Whether a record could be written now (STATUS: an ADD that cannot
    /// record its reservation fails). Writes and removes a probe file.
    pub fn writable(&self) -> io::Result<()> {
        let probe = self.dir.join(".probe.tmp");
        File::create(&probe)
            .and_then(|mut f| f.write_all(b"probe"))
            .and_then(|()| fs::remove_file(&probe))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "the allocation record directory {} is not writable: {e}",
                        self.dir.display()
                    ),
                )
            })
    }

    /// Forgets a NIC's record. Already gone is fine.
    pub fn remove(&self, mac: Mac) -> io::Result<()> {
        remove_record(&self.path(mac))
    }

    /// One NIC's record, if it has one.
    pub fn get(&self, mac: Mac) -> io::Result<Option<Allocation>> {
        match fs::read(self.path(mac)) {
            Ok(bytes) => Ok(Some(parse(&self.path(mac), &bytes)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every record on disk.
    ///
    /// A record that cannot be trusted — zero-length or half-written (a
    /// `reserved` record is not fsynced, so a power cut can leave one), not
    /// JSON, or in a file whose name is not its NIC's — is moved aside as
    /// `<name>.corrupt-<unix time>` with a loud error, and the agent starts
    /// without it: its NIC is then reconciled from the kernel (and the
    /// cloud) like a NIC with no record. That never gives one NIC to two
    /// pods: a NIC not parked on the node is marked missing, not free.
    /// Refusing to start instead would leave the node down until someone
    /// acts.
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
            let problem = match parse(&path, &fs::read(&path)?) {
                Ok(a) if self.path(a.mac) == path => {
                    out.push(a);
                    continue;
                }
                Ok(a) => format!(
                    "allocation record {} holds NIC {}, whose record is {}",
                    path.display(),
                    a.mac,
                    self.path(a.mac).display()
                ),
                Err(e) => e.to_string(),
            };
            let aside = self.move_aside(&path)?;
            tracing::error!(
                record = %path.display(),
                moved_to = %aside.display(),
                "{problem}; moved it aside, its NIC is reconciled from the kernel and the cloud"
            );
        }
        out.sort_by_key(|a| a.mac);
        Ok(out)
    }

    fn move_aside(&self, path: &Path) -> io::Result<PathBuf> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let aside = self.dir.join(format!("{name}.corrupt-{stamp}"));
        fs::rename(path, &aside)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(aside)
    }
}

fn parse(path: &Path, bytes: &[u8]) -> io::Result<Allocation> {
    serde_json::from_slice(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("allocation record {} is corrupt: {e}", path.display()),
        )
    })
}

/// Replaces the record at `path` atomically (a temporary file renamed
/// over it); `durable`: fsynced, file and directory, before it returns.
pub(crate) fn write_record<T: Serialize>(path: &Path, record: &T, durable: bool) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    let mut f = File::create(&tmp)?;
    f.write_all(&body)?;
    if durable {
        f.sync_all()?;
    }
    drop(f);
    fs::rename(&tmp, path)?;
    if durable && let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Removes the record at `path`; already gone is fine.
pub(crate) fn remove_record(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
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
            netns_id: Some(NsId {
                dev: 4,
                ino: 4026532000,
            }),
            pod: Pod::default(),
            result: None,
            sticky: None,
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
    fn untrustworthy_records_are_moved_aside_and_the_rest_load() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let good = alloc("52:54:00:00:00:01", Phase::Committed);
        s.put(&good).unwrap();
        let records = dir.path().join("allocations");
        fs::write(records.join("hn525400000009.tmp"), b"{half").unwrap();
        // A power cut: zero-length and half-written records.
        fs::write(records.join("hn525400000002.json"), b"").unwrap();
        fs::write(records.join("hn525400000003.json"), b"{\"mac\": \"52:54").unwrap();
        // A record under another NIC's name.
        let other = alloc("52:54:00:00:00:05", Phase::Committed);
        fs::write(
            records.join("hn525400000004.json"),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        assert_eq!(s.load().unwrap(), vec![good.clone()]);
        let mut names: Vec<String> = fs::read_dir(&records)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 4, "{names:?}");
        assert_eq!(names[0], "hn525400000001.json");
        for (i, n) in ["2", "3", "4"].iter().enumerate() {
            assert!(
                names[i + 1].starts_with(&format!("hn52540000000{n}.json.corrupt-")),
                "{names:?}"
            );
        }
        // Loading again finds the same (the moved files are not records).
        assert_eq!(s.load().unwrap(), vec![good]);
    }

    #[test]
    fn an_unwritable_directory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.writable().unwrap();
        fs::remove_dir_all(dir.path().join("allocations")).unwrap();
        let e = s.writable().unwrap_err().to_string();
        assert!(e.contains("not writable"), "{e}");
    }
}
