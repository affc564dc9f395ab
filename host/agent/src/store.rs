//! The records on disk: one small JSON file per held resource, named for
//! it — `<state_dir>/allocations/hn<mac>.json` for a NIC,
//! `<state_dir>/shared/<address>.json` for a shared address — replaced
//! atomically (a temporary file renamed over it). A file per resource
//! means concurrent ADDs never contend for a lock or rewrite each other's
//! state, and one resource can never have two records.
//!
//! One durability rule set, whatever the wiring:
//!
//! - `reserved` and `releasing` only have to survive the agent process
//!   dying, which the page cache already guarantees; they are not fsynced.
//!   (After a power loss every pod netns is gone too, and the restore
//!   releases the stale record.)
//! - `committed` is written and fsynced (file and directory) before ADD
//!   answers.
//! - A record that cannot be read — zero-length or half-written (a power
//!   cut after an unsynced write), not JSON, a directory, or in a file not
//!   named for its resource — is moved aside as `<name>.corrupt-<unix
//!   time>` with a loud error, and the agent starts without it; its
//!   resource is handed to its driver's restore as one without a record
//!   ([`Loaded::unreadable`]), which never hands it out unless the kernel
//!   shows nobody has it. Refusing to start instead would leave the node
//!   down until someone acts.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::record::{Phase, Record, Resource};

/// Where records go, behind a trait so the verbs can be tested with a
/// store that fails.
pub trait Records: Send + Sync + std::fmt::Debug {
    /// Writes the record; fsynced when it is a commit.
    fn put(&self, r: &Record) -> io::Result<()>;
    /// Forgets the record of `resource`. Already gone is fine.
    fn remove(&self, resource: Resource) -> io::Result<()>;
    /// Whether a record could be written now (STATUS: an ADD that cannot
    /// record its reservation fails).
    fn writable(&self) -> io::Result<()>;
}

/// The records under the state directory.
#[derive(Clone, Debug)]
pub struct Store {
    nics: PathBuf,
    shared: PathBuf,
}

/// What [`Store::load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<Record>,
    /// The resources of records that could not be read (moved aside).
    pub unreadable: Vec<Resource>,
}

impl Store {
    pub fn open(state_dir: &Path) -> io::Result<Store> {
        let store = Store {
            nics: state_dir.join("allocations"),
            shared: state_dir.join("shared"),
        };
        fs::create_dir_all(&store.nics)?;
        fs::create_dir_all(&store.shared)?;
        Ok(store)
    }

    fn path(&self, resource: Resource) -> PathBuf {
        match resource {
            Resource::Nic(mac) => self.nics.join(format!("{}.json", mac.parked_name())),
            Resource::Address(a) => self.shared.join(format!("{a}.json")),
        }
    }

    /// The resource a record file is named for.
    fn named(&self, path: &Path) -> Option<Resource> {
        let stem = path.file_stem()?.to_str()?;
        if path.parent()? == self.shared {
            return stem.parse().ok().map(Resource::Address);
        }
        let hex = stem.strip_prefix("hn")?;
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        Some(Resource::Nic(hostnic_netlink::Mac(bytes.try_into().ok()?)))
    }

    /// Every record on disk; the unreadable ones are moved aside (see the
    /// module's comment).
    pub fn load(&self) -> io::Result<Loaded> {
        let mut out = Loaded::default();
        for dir in [&self.nics, &self.shared] {
            for entry in fs::read_dir(dir)? {
                let path = entry?.path();
                match path.extension().and_then(|e| e.to_str()) {
                    Some("json") => {}
                    // A temporary file is a write the agent did not finish;
                    // the record it would have replaced is still in place.
                    Some("tmp") => {
                        remove_path(&path)?;
                        continue;
                    }
                    _ => continue,
                }
                let problem = match read(&path) {
                    Ok(r) if self.path(r.resource()) == path => {
                        out.records.push(r);
                        continue;
                    }
                    Ok(r) => format!(
                        "record {} holds {}, whose record is {}",
                        path.display(),
                        r.resource(),
                        self.path(r.resource()).display()
                    ),
                    Err(e) => e.to_string(),
                };
                let aside = move_aside(&path)?;
                tracing::error!(
                    record = %path.display(),
                    moved_to = %aside.display(),
                    "{problem}; moved it aside, what it named is reconciled from the kernel and the cloud"
                );
                out.unreadable.extend(self.named(&path));
            }
        }
        out.records.sort_by_key(Record::resource);
        out.unreadable.sort();
        Ok(out)
    }
}

impl Records for Store {
    fn put(&self, r: &Record) -> io::Result<()> {
        write_record(&self.path(r.resource()), r, r.phase == Phase::Committed)
    }

    fn remove(&self, resource: Resource) -> io::Result<()> {
        match fs::remove_file(self.path(resource)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Writes and removes a probe file in each directory.
    fn writable(&self) -> io::Result<()> {
        for dir in [&self.nics, &self.shared] {
            let probe = dir.join(".probe.tmp");
            File::create(&probe)
                .and_then(|mut f| f.write_all(b"probe"))
                .and_then(|()| fs::remove_file(&probe))
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "the record directory {} is not writable: {e}",
                            dir.display()
                        ),
                    )
                })?;
        }
        Ok(())
    }
}

fn read(path: &Path) -> io::Result<Record> {
    let bytes = fs::read(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("record {} cannot be read: {e}", path.display()),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("record {} is corrupt: {e}", path.display()),
        )
    })
}

fn move_aside(path: &Path) -> io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let dir = path.parent().unwrap_or(Path::new("."));
    let aside = dir.join(format!("{name}.corrupt-{stamp}"));
    fs::rename(path, &aside)?;
    File::open(dir)?.sync_all()?;
    Ok(aside)
}

/// Removes a file, or a directory that stands where a file should.
fn remove_path(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => fs::remove_dir_all(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Replaces the file at `path` atomically (a temporary file renamed over
/// it); `durable`: fsynced, file and directory, before it returns.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Holds, Key, SharedHold};
    use hostnic_netlink::{Mac, NsId};
    use hostnic_proto::rpc::Pod;

    fn key() -> Key {
        Key {
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
        }
    }

    fn nic(mac: &str, phase: Phase) -> Record {
        Record {
            key: key(),
            phase,
            netns: Some("/var/run/netns/x".into()),
            netns_id: Some(NsId {
                dev: 4,
                ino: 4026532000,
            }),
            pod: Pod::default(),
            result: None,
            sticky: None,
            bandwidth: None,
            wiring: None,
            holds: Holds::Nic {
                mac: mac.parse().unwrap(),
            },
        }
    }

    fn shared(address: &str) -> Record {
        Record {
            wiring: None,
            holds: Holds::Address(SharedHold {
                address: address.parse().unwrap(),
                vxnet: "vxnet-a".into(),
                table: 1001,
                veth: "hs0123456789ab".into(),
                nic: "52:54:00:00:00:09".parse().unwrap(),
                mtu: 1500,
                routes: Vec::new(),
            }),
            ..nic("52:54:00:00:00:01", Phase::Committed)
        }
    }

    #[test]
    fn records_survive_reopen_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = nic("52:54:00:00:00:02", Phase::Reserved);
        let b = nic("52:54:00:00:00:01", Phase::Committed);
        let c = shared("10.0.1.200");
        s.put(&a).unwrap();
        s.put(&b).unwrap();
        s.put(&c).unwrap();
        let mut a2 = a.clone();
        a2.phase = Phase::Committed;
        s.put(&a2).unwrap();
        let loaded = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(loaded.records, vec![b.clone(), a2, c.clone()]);
        assert!(loaded.unreadable.is_empty());
        s.remove(b.resource()).unwrap();
        s.remove(b.resource()).unwrap();
        s.remove(c.resource()).unwrap();
        assert_eq!(s.load().unwrap().records.len(), 1);
    }

    /// Whatever the wiring, an unreadable record is moved aside and named
    /// to its driver; the rest load.
    #[test]
    fn untrustworthy_records_are_moved_aside_and_the_rest_load() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let good = nic("52:54:00:00:00:01", Phase::Committed);
        s.put(&good).unwrap();
        let nics = dir.path().join("allocations");
        let shared_dir = dir.path().join("shared");
        fs::write(nics.join("hn525400000009.tmp"), b"{half").unwrap();
        // A power cut: zero-length and half-written records.
        fs::write(nics.join("hn525400000002.json"), b"").unwrap();
        fs::write(nics.join("hn525400000003.json"), b"{\"mac\": \"52:54").unwrap();
        // A record under another NIC's name.
        let other = nic("52:54:00:00:00:05", Phase::Committed);
        fs::write(
            nics.join("hn525400000004.json"),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        // A shared record cut short, and a directory named like a record.
        fs::write(shared_dir.join("10.0.1.7.json"), b"{\"key\":").unwrap();
        fs::create_dir(shared_dir.join("10.0.1.8.json")).unwrap();
        let loaded = s.load().unwrap();
        assert_eq!(loaded.records, vec![good.clone()]);
        let mac = |last: u8| Resource::Nic(Mac([0x52, 0x54, 0, 0, 0, last]));
        assert_eq!(
            loaded.unreadable,
            vec![
                mac(2),
                mac(3),
                mac(4),
                Resource::Address("10.0.1.7".parse().unwrap()),
                Resource::Address("10.0.1.8".parse().unwrap()),
            ]
        );
        let names = |d: &Path| {
            let mut v: Vec<String> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let n = names(&nics);
        assert_eq!(n.len(), 4, "{n:?}");
        assert_eq!(n[0], "hn525400000001.json");
        for (i, m) in ["2", "3", "4"].iter().enumerate() {
            assert!(
                n[i + 1].starts_with(&format!("hn52540000000{m}.json.corrupt-")),
                "{n:?}"
            );
        }
        assert!(
            names(&shared_dir)
                .iter()
                .all(|n| n.contains(".json.corrupt-")),
            "{:?}",
            names(&shared_dir)
        );
        // Loading again finds the same (the moved files are not records).
        let again = s.load().unwrap();
        assert_eq!(again.records, vec![good]);
        assert!(again.unreadable.is_empty());
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
