//! An attachment's record: which attachment holds what, how it was wired,
//! and what ADD answered. One type whatever the wiring; what differs is
//! what the attachment holds ([`Holds`]): a NIC of its own, or an address
//! of a shared vxnet behind the node's NIC there.
//!
//! Three phases make an agent killed at any instant recoverable (the files
//! and their durability are `store.rs`'s):
//!
//! - `reserved` is written before anything is wired, with the pod's netns
//!   path, so a restarted agent knows where to look;
//! - `committed` is written (fsynced) before ADD answers: a pod that was
//!   told "success" is on disk;
//! - `releasing` is written before DEL answers, while the pod still has its
//!   interface: the release finishes in the background, and a restart
//!   finishes what a killed agent did not.

use std::net::Ipv4Addr;

use hostnic_netlink::{Mac, NsId};
use hostnic_proto::cni::{AddResult, Bandwidth};
use hostnic_proto::rpc::Pod;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Which attachment: the CNI key within a network.
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
    /// DEL answered; the release finishes in the background. A restart
    /// finishes it.
    Releasing,
}

impl Phase {
    /// The phase's name in `status`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Reserved => "reserved",
            Phase::Committed => "committed",
            Phase::Releasing => "releasing",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: Key,
    pub phase: Phase,
    /// The runtime's netns path, to find the pod again after a restart.
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
    /// The sticky identity the attachment's resource follows: a NIC that
    /// leaves the node with its pod (kept in the cloud for it), or a
    /// shared address pinned for it. Records of shared attachments written
    /// before the drivers call it `identity`.
    #[serde(default, alias = "identity", skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
    /// The limits put on the pod's interface (the `bandwidth`
    /// capability), for CHECK and for taking them off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
    #[serde(flatten)]
    pub holds: Holds,
}

/// What an attachment holds, and so which driver wired it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Holds {
    /// A NIC of its own: the cloud NIC (or inventory NIC) with this MAC.
    Nic { mac: Mac },
    /// An address of a shared vxnet, on the node's NIC there.
    Address(SharedHold),
}

/// A shared attachment's pieces: what `shared/wiring.rs` made for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedHold {
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
}

/// What a record's file is named for: the resource no two attachments may
/// hold at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Nic(Mac),
    Address(Ipv4Addr),
}

impl Record {
    pub fn resource(&self) -> Resource {
        self.holds.resource()
    }

    /// The wiring that made it: `move` for a NIC, `shared` for a shared
    /// address (a driver's [`crate::wiring::Driver::name`]).
    pub fn wiring(&self) -> &'static str {
        match &self.holds {
            Holds::Nic { .. } => "move",
            Holds::Address(_) => "shared",
        }
    }

    /// The NIC the attachment holds, if it holds one.
    pub fn mac(&self) -> Option<Mac> {
        match &self.holds {
            Holds::Nic { mac } => Some(*mac),
            Holds::Address(_) => None,
        }
    }

    /// The pod's `namespace/name`, or "" when the runtime sent neither.
    pub fn pod_name(&self) -> String {
        match (&self.pod.namespace, &self.pod.name) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            (None, Some(name)) => name.clone(),
            _ => String::new(),
        }
    }
}

impl Holds {
    pub fn resource(&self) -> Resource {
        match self {
            Holds::Nic { mac } => Resource::Nic(*mac),
            Holds::Address(s) => Resource::Address(s.address),
        }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Nic(mac) => write!(f, "NIC {mac}"),
            Resource::Address(a) => write!(f, "address {a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records written before the drivers (one type per mode) read as
    /// the same record.
    #[test]
    fn records_of_either_mode_written_before_read_back() {
        let nic: Record = serde_json::from_str(
            r#"{"mac": "52:54:00:00:00:01", "phase": "committed",
                "key": {"network": "n", "container_id": "c", "ifname": "eth0"},
                "netns": "/var/run/netns/p", "sticky": "statefulset/ns/db-0"}"#,
        )
        .unwrap();
        assert_eq!(
            nic.resource(),
            Resource::Nic("52:54:00:00:00:01".parse().unwrap())
        );
        assert_eq!(nic.sticky.as_deref(), Some("statefulset/ns/db-0"));
        let shared: Record = serde_json::from_str(
            r#"{"key": {"network": "n", "container_id": "c", "ifname": "eth0"},
                "phase": "releasing", "address": "10.0.1.200", "vxnet": "vxnet-a",
                "table": 1001, "veth": "hs0123456789ab", "nic": "52:54:00:00:00:09",
                "mtu": 1500, "routes": [["10.0.1.0/24", "169.254.1.1"]],
                "netns": null, "identity": "statefulset/ns/db-1"}"#,
        )
        .unwrap();
        assert_eq!(
            shared.resource(),
            Resource::Address("10.0.1.200".parse().unwrap())
        );
        assert_eq!(shared.sticky.as_deref(), Some("statefulset/ns/db-1"));
        let Holds::Address(hold) = &shared.holds else {
            panic!("{shared:?}")
        };
        assert_eq!(hold.routes.len(), 1);
        // And each reads back as it is written now.
        for r in [nic, shared] {
            let again: Record = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
            assert_eq!(again, r);
        }
    }
}
