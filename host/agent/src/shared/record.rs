//! The record of a shared-mode attachment: which address went to which
//! attachment, and what was wired for it. One JSON file per address under
//! `<state_dir>/shared/`, written like the NIC records (`store.rs`): the
//! reservation before anything is wired, the commit fsynced before ADD
//! answers. A restart reads them back to know what is hostnic's.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use hostnic_netlink::{Mac, NsId};
use hostnic_proto::cni::AddResult;
use hostnic_proto::rpc::Pod;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::store::{Key, Phase, remove_record, write_record};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedRecord {
    pub key: Key,
    pub phase: Phase,
    /// The pod's address (a /32 in the pod).
    pub address: Ipv4Addr,
    pub vxnet: String,
    /// The vxnet's policy-routing table (the `from` rule's).
    pub table: u32,
    /// The node's end of the veth.
    pub veth: String,
    /// The node's NIC in the vxnet, which answers for the address.
    pub nic: Mac,
    pub mtu: u32,
    /// The pod's routes (all through the node), for CHECK and restart.
    #[serde(default)]
    pub routes: Vec<(Ipv4Net, Option<Ipv4Addr>)>,
    pub netns: Option<String>,
    #[serde(default)]
    pub netns_id: Option<NsId>,
    #[serde(default)]
    pub pod: Pod,
    /// What ADD answered; present once committed.
    #[serde(default)]
    pub result: Option<AddResult>,
    /// The sticky identity whose pinned address this is (with claims):
    /// its DEL keeps the pin for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn open(state_dir: &Path) -> io::Result<Records> {
        let dir = state_dir.join("shared");
        fs::create_dir_all(&dir)?;
        Ok(Records { dir })
    }

    fn path(&self, address: Ipv4Addr) -> PathBuf {
        self.dir.join(format!("{address}.json"))
    }

    /// Writes the record; fsynced (file and directory) when it is a commit.
    pub fn put(&self, r: &SharedRecord) -> io::Result<()> {
        write_record(&self.path(r.address), r, r.phase == Phase::Committed)
    }

    pub fn remove(&self, address: Ipv4Addr) -> io::Result<()> {
        remove_record(&self.path(address))
    }

    /// Every record, and the addresses of unreadable ones: those are
    /// reported and stay taken until an operator looks.
    pub fn load(&self) -> io::Result<(Vec<SharedRecord>, Vec<Ipv4Addr>)> {
        let mut out = Vec::new();
        let mut stuck = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e,
                        "unreadable shared-mode record; left in place, its address stays taken");
                    if let Some(a) = path.file_stem().and_then(|s| s.to_str()?.parse().ok()) {
                        stuck.push(a);
                    }
                }
            }
        }
        Ok((out, stuck))
    }
}
