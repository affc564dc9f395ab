//! Shared-NIC mode (`docs/shared-nic.md`): pods of a shared vxnet get a
//! veth and an address of the vxnet's shared range; the node's NIC there
//! answers for them and carries their traffic. This module holds what the
//! node knows of its shared attachments — the vxnets, the records, which
//! addresses are held, which blocks of the range are the node's — and the
//! wiring; `service/shared.rs` runs the verbs and `service/shared_restore.rs`
//! the start.

pub mod addresses;
pub mod blocks;
pub mod pins;
pub mod record;
pub mod wiring;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use hostnic_proto::cni::{CniError, code};
use ipnet::Ipv4Net;

pub use addresses::SharedNet;
pub use blocks::{Claims, Listing};
pub use pins::Pin;
pub use record::{Records, SharedRecord};

use crate::config::{SharedVxnet, table_of};
use crate::source::NicSource;
use crate::store::{Key, Phase};

/// One attachment: its record, and the lock its verbs take.
#[derive(Debug)]
struct Entry {
    record: SharedRecord,
    lock: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug, Default)]
struct Held {
    by_key: BTreeMap<Key, Entry>,
    /// Every address an attachment holds (or an unreadable record names).
    taken: BTreeSet<Ipv4Addr>,
    /// The blocks this node holds per vxnet (with claims only).
    owned: BTreeMap<String, BTreeSet<Ipv4Net>>,
    /// Since when a held block has had no pod.
    empty_since: BTreeMap<Ipv4Net, Instant>,
    /// Addresses of the shared ranges the cloud gave NICs (id by address):
    /// never a pod's.
    cloud: BTreeMap<Ipv4Addr, String>,
    /// The addresses pinned for sticky identities (with claims): never
    /// another identity's.
    pins: BTreeMap<Ipv4Addr, Pin>,
}

#[derive(Debug)]
pub struct Shared {
    nets: Vec<SharedNet>,
    pub records: Records,
    held: Mutex<Held>,
    /// The cluster's block claims; `None`: each range is the node's alone.
    claims: Option<Arc<dyn Claims>>,
    /// The cloud, asked which addresses of a range its NICs hold.
    source: Arc<dyn NicSource>,
    /// One block claim or release at a time.
    claiming: tokio::sync::Mutex<()>,
    /// The vxnets whose node-wide pieces are in place.
    pub(crate) prepared: tokio::sync::Mutex<BTreeSet<String>>,
    /// Tells the vxnets where a pod's address is now (`None`: the socket
    /// could not be opened; reported at start).
    announcer: Option<hostnic_netlink::Announcer>,
}

/// What an ADD asks of [`Shared::reserve`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Want<'a> {
    /// The addresses that would do (the ip guest's answer); `None`: any.
    pub addresses: Option<&'a [Ipv4Addr]>,
    /// The sticky identity of the ADD, if any: its own pin is not kept
    /// from it.
    pub identity: Option<&'a str>,
    /// The address pinned for that identity and held by this node: the
    /// one address that will do, in the node's blocks or not.
    pub pinned: Option<Ipv4Addr>,
    /// The node's own NICs' addresses in the vxnet: never a pod's.
    pub nics: &'a [Ipv4Addr],
}

/// An attachment locked for a verb: its record as of the lock.
#[derive(Debug)]
pub struct Locked {
    pub record: SharedRecord,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Shared {
    /// The configured shared vxnets, resolved against what the source
    /// knows of them (subnet and gateway).
    pub fn new(
        config: &[SharedVxnet],
        source: Arc<dyn NicSource>,
        records: Records,
        claims: Option<Arc<dyn Claims>>,
    ) -> anyhow::Result<Shared> {
        let known = source.vxnets();
        let mut nets = Vec::new();
        for (n, s) in config.iter().enumerate() {
            let Some((_, cidr, gateway)) = known.iter().find(|(id, ..)| *id == s.vxnet) else {
                bail!(
                    "shared vxnet {}: the node knows no such vxnet (its vxnets: {})",
                    s.vxnet,
                    known
                        .iter()
                        .map(|(id, ..)| id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            if !cidr.contains(&s.range) {
                bail!(
                    "shared range {} is not inside vxnet {} ({cidr})",
                    s.range,
                    s.vxnet
                );
            }
            nets.push(SharedNet {
                vxnet: s.vxnet.clone(),
                cidr: *cidr,
                gateway: *gateway,
                range: s.range,
                table: table_of(n),
                block_prefix: s.block_prefix,
                block_idle: Duration::from_secs(s.block_idle_seconds),
            });
        }
        // Opened here, in the node's namespace, and kept (see `Announcer`).
        let announcer = match (nets.is_empty(), hostnic_netlink::Announcer::open()) {
            (true, _) => None,
            (false, Ok(a)) => Some(a),
            (false, Err(e)) => {
                tracing::warn!(error = %e, "shared addresses will not be announced: peers learn a moved address only as their ARP entries age out");
                None
            }
        };
        Ok(Shared {
            nets,
            records,
            held: Mutex::default(),
            claims,
            source,
            claiming: tokio::sync::Mutex::default(),
            prepared: tokio::sync::Mutex::default(),
            announcer,
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn nets(&self) -> &[SharedNet] {
        &self.nets
    }

    /// The shared vxnet an ADD with this vxnet order goes to: its first
    /// choice, when that one is shared.
    pub fn net_for(&self, first: Option<&str>) -> Option<&SharedNet> {
        self.nets.iter().find(|n| Some(n.vxnet.as_str()) == first)
    }

    pub fn net(&self, vxnet: &str) -> Option<&SharedNet> {
        self.nets.iter().find(|n| n.vxnet == vxnet)
    }

    /// The attachment's record, without its lock (to answer a retried ADD
    /// or to see whether a key is shared at all).
    pub fn peek(&self, key: &Key) -> Option<SharedRecord> {
        self.held().by_key.get(key).map(|e| e.record.clone())
    }

    /// The attachment, locked; `None` if there is none (or it went while
    /// we waited for its lock).
    pub async fn lock(&self, key: &Key) -> Option<Locked> {
        let lock = self.held().by_key.get(key)?.lock.clone();
        let guard = lock.lock_owned().await;
        let record = self.held().by_key.get(key)?.record.clone();
        Some(Locked {
            record,
            _guard: guard,
        })
    }

    /// An address of `net` for a new attachment — what `want` asks, none
    /// of the node's own NICs' nor any a cloud NIC holds nor any pinned
    /// for another identity — held with its lock until the record is
    /// committed or dropped; the record is `make(address)`. A new block of
    /// the range is claimed when the node's blocks have no room.
    pub async fn reserve(
        &self,
        net: &SharedNet,
        want: Want<'_>,
        make: impl Fn(Ipv4Addr) -> SharedRecord,
    ) -> Result<Locked, CniError> {
        loop {
            match self.reserve_now(net, want, &make) {
                Err(e)
                    if e.code == code::TRY_AGAIN_LATER
                        && want.pinned.is_none()
                        && self.grow(net, want.addresses).await? => {}
                other => return other,
            }
        }
    }

    /// [`Shared::reserve`] within the blocks the node holds now.
    fn reserve_now(
        &self,
        net: &SharedNet,
        want: Want<'_>,
        make: impl FnOnce(Ipv4Addr) -> SharedRecord,
    ) -> Result<Locked, CniError> {
        let mut held = self.held();
        // A pinned address is the identity's wherever its block is.
        let (wanted, owned) = match &want.pinned {
            Some(a) => (Some(std::slice::from_ref(a)), None),
            None => (
                want.addresses,
                self.claims
                    .as_ref()
                    .map(|_| held.owned.get(&net.vxnet).cloned().unwrap_or_default()),
            ),
        };
        let pinned = held.pinned_for_others(want.identity);
        let taken: std::borrow::Cow<'_, BTreeSet<Ipv4Addr>> =
            if held.cloud.is_empty() && want.nics.is_empty() && pinned.is_empty() {
                std::borrow::Cow::Borrowed(&held.taken)
            } else {
                let all = held.taken.iter().chain(held.cloud.keys()).chain(want.nics);
                std::borrow::Cow::Owned(all.chain(&pinned).copied().collect())
            };
        let address = net.pick(&taken, wanted, owned.as_ref())?;
        let record = make(address);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let guard = lock.clone().try_lock_owned().expect("a new lock is free");
        held.taken.insert(address);
        held.by_key.insert(
            record.key.clone(),
            Entry {
                record: record.clone(),
                lock,
            },
        );
        Ok(Locked {
            record,
            _guard: guard,
        })
    }

    /// Puts a record read back at start (its address held again).
    pub fn restore(&self, record: SharedRecord) {
        let mut held = self.held();
        held.taken.insert(record.address);
        held.by_key.insert(
            record.key.clone(),
            Entry {
                record,
                lock: Arc::default(),
            },
        );
    }

    /// Tells the vxnet, from the node's NIC (link `nic_index`), that the
    /// record's address is at that NIC now: peers that knew it at another
    /// node's (a sticky identity's last node, a block's last holder) send
    /// here at once instead of once their entries age out. The pod works
    /// without it, so a failure is only reported.
    pub fn announce(&self, nic_index: u32, record: &SharedRecord) {
        let Some(a) = &self.announcer else { return };
        if let Err(e) = a.announce(nic_index, record.nic, record.address) {
            tracing::warn!(address = %record.address, error = %e, "announcing a shared address");
        }
    }

    /// Waits until no attachment is releasing `address` (a DEL's kernel
    /// work runs in the background, holding the attachment's lock): a
    /// sticky identity back on the node wants the address its last pod
    /// had.
    pub async fn wait_released(&self, address: Ipv4Addr) {
        let releasing = self
            .held()
            .by_key
            .values()
            .find(|e| e.record.address == address && e.record.phase == Phase::Releasing)
            .map(|e| e.lock.clone());
        if let Some(lock) = releasing {
            let _ = lock.lock().await;
        }
    }

    /// The address this node holds pinned for `identity`, as last known.
    pub fn pinned_here(&self, identity: &str) -> Option<Ipv4Addr> {
        let me = self.claims.as_ref()?.node().to_string();
        self.held()
            .pins
            .values()
            .find(|p| p.identity == identity && p.node == me)
            .map(|p| p.address)
    }

    /// Whether nodes share the ranges through claims (with Kubernetes).
    pub fn has_claims(&self) -> bool {
        self.claims.is_some()
    }

    /// Keeps addresses taken whose records cannot be read.
    pub fn hold_stuck(&self, addresses: Vec<Ipv4Addr>) {
        self.held().taken.extend(addresses);
    }

    /// The attachment's record as it is now (committed, releasing).
    pub fn update(&self, record: &SharedRecord) {
        if let Some(e) = self.held().by_key.get_mut(&record.key) {
            e.record = record.clone();
        }
    }

    /// Drops the attachment and frees its address.
    pub fn forget(&self, record: &SharedRecord) {
        self.drop_entry(record, true);
    }

    /// Drops the attachment but keeps its address taken: what it wired
    /// could not all be undone, so the address waits for the next start's
    /// sweep (its record stays on disk), while a retried ADD goes on with
    /// another.
    pub fn abandon(&self, record: &SharedRecord) {
        self.drop_entry(record, false);
    }

    /// Drops `record`'s attachment if it is still that one (same address),
    /// and with `free`, its address.
    fn drop_entry(&self, record: &SharedRecord, free: bool) {
        let mut held = self.held();
        let same = |e: &Entry| e.record.address == record.address;
        if held.by_key.get(&record.key).is_some_and(same) {
            held.by_key.remove(&record.key);
            if free {
                held.taken.remove(&record.address);
            }
        }
    }

    /// Every attachment's record.
    pub fn all(&self) -> Vec<SharedRecord> {
        self.held()
            .by_key
            .values()
            .map(|e| e.record.clone())
            .collect()
    }

    /// The attachments of a container (its networks).
    pub fn held_by_container(&self, container_id: &str) -> Vec<Key> {
        self.held()
            .by_key
            .keys()
            .filter(|k| k.container_id == container_id)
            .cloned()
            .collect()
    }

    /// Per shared vxnet: the addresses held and the blocks the node holds
    /// (0 without claims), for the metrics and `status`.
    pub fn counts(&self) -> BTreeMap<String, (usize, usize)> {
        let held = self.held();
        let mut out: BTreeMap<String, (usize, usize)> = self
            .nets
            .iter()
            .map(|n| {
                let blocks = held.owned.get(&n.vxnet).map_or(0, BTreeSet::len);
                (n.vxnet.clone(), (0, blocks))
            })
            .collect();
        for e in held.by_key.values() {
            out.entry(e.record.vxnet.clone()).or_default().0 += 1;
        }
        out
    }

    /// The addresses of `vxnet`'s shared range this node could give a pod
    /// now ([`SharedNet::free_count`]; with claims an upper bound, as the
    /// node does not know other nodes' blocks): what guests see as its
    /// `free-ips`. `None`: `vxnet` is not shared.
    pub fn free_addresses(&self, vxnet: &str) -> Option<u32> {
        let net = self.net(vxnet)?;
        let held = self.held();
        let cloud: BTreeSet<Ipv4Addr> = held.cloud.keys().copied().collect();
        let none = BTreeSet::new();
        let owned = self
            .claims
            .as_ref()
            .map(|_| held.owned.get(vxnet).unwrap_or(&none));
        // A pinned address is its identity's, not any pod's.
        let taken: std::borrow::Cow<'_, BTreeSet<Ipv4Addr>> = if held.pins.is_empty() {
            std::borrow::Cow::Borrowed(&held.taken)
        } else {
            std::borrow::Cow::Owned(held.taken.iter().chain(held.pins.keys()).copied().collect())
        };
        Some(net.free_count(&taken, &cloud, owned))
    }
}
