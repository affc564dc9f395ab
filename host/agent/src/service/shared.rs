//! The verbs for attachments in shared-NIC mode (`shared/`): ADD takes an
//! address of the vxnet's shared range and wires a veth, DEL unwires and
//! frees it, CHECK compares, GC releases what the runtime no longer lists.
//! The plan (the guests' vxnet order and address) is the same as for a NIC
//! of its own; only acquire and wire differ.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use hostnic_netlink::{Netns, NsId};
use hostnic_proto::cni::{AddResult, CniError, code};
use hostnic_proto::rpc::AddRequest;
use ipnet::Ipv4Net;
use tracing::{info, warn};

use super::plan::Plan;
use super::{Service, internal};
use crate::audit::Audited;
use crate::config::NicSpec;
use crate::plumb::Wiring;
use crate::shared::pins::pod_name;
use crate::shared::wiring::{self, NEXT_HOP};
use crate::shared::{SharedNet, SharedRecord, Want};
use crate::store::{Key, Phase};

/// How a shared-mode ADD came by its address (the decision audit's "how").
pub const HOW: &str = "an address of the vxnet's shared range, on the node's NIC";
/// The same for a sticky identity whose address was pinned already.
pub const HOW_PINNED: &str = "the address pinned for its sticky identity, on the node's NIC";

impl Service {
    /// ADD in shared mode, after the plan chose `net`: reserve an address,
    /// record it, create the veth, decide the routes, wire, commit. Any
    /// failure unwires what was made and frees the address.
    pub(super) async fn add_shared(
        &self,
        key: &Key,
        (plan, net): (&Plan, &SharedNet),
        (req, pod): (&AddRequest, &hostnic_policy::Pod),
        mtu: u32,
        (netns, netns_id): (&Netns, NsId),
        audit: &mut Audited,
    ) -> Result<AddResult, CniError> {
        let started = Instant::now();
        let (nic_index, nic) = self.shared_nic(net).await?;
        let nics = self.node_addresses(net);
        let holder = pod_name(&req.pod);
        let (identity, pinned) = self.pin_for(plan, net, &holder).await?;
        let want = Want {
            addresses: if identity.is_some() {
                None
            } else {
                plan.addresses.as_deref()
            },
            identity,
            pinned,
            nics: &nics,
        };
        let reserved = self
            .shared
            .reserve(net, want, |address| SharedRecord {
                key: key.clone(),
                phase: Phase::Reserved,
                address,
                vxnet: net.vxnet.clone(),
                table: net.table,
                veth: wiring::veth_name(key),
                nic: nic.mac,
                mtu,
                routes: Vec::new(),
                netns: req.target.netns.clone(),
                netns_id: Some(netns_id),
                pod: req.pod.clone(),
                result: None,
                identity: identity.map(str::to_string),
            })
            .await;
        let mut locked = match (reserved, identity.zip(pinned)) {
            (Ok(locked), _) => locked,
            (Err(e), pin) => {
                // A pin taken for this ADD is not held by it after all.
                if let Some((id, a)) = pin {
                    self.shared.let_go(id, a).await;
                }
                return Err(e);
            }
        };
        if let Some(id) = identity
            && pinned.is_none()
            && let Err(e) = self
                .shared
                .create_pin(net, id, locked.record.address, &holder)
                .await
        {
            self.shared.forget(&locked.record);
            return Err(e);
        }
        audit.how = if pinned.is_some() { HOW_PINNED } else { HOW }.to_string();
        audit.vxnet = Some(net.vxnet.clone());
        audit.acquire_us = started.elapsed().as_micros() as u64;
        let record = &mut locked.record;
        let wired = self
            .wire_shared(record, (req, pod), (netns, nic_index), &mut audit.attach_us)
            .await;
        let result = match wired {
            Ok(r) => r,
            Err(e) => {
                let undo = wiring::unwire(self.nics.plumber.node(), record, Some(nic_index)).await;
                match undo {
                    Ok(()) => self.drop_shared(record),
                    Err(u) => {
                        // The next start sweeps what is left (it carries
                        // our proto); the address stays taken until then.
                        warn!(address = %record.address, error = %u, "undoing a failed shared ADD");
                        self.shared.abandon(record);
                    }
                }
                if let Some(id) = identity {
                    self.shared.let_go(id, record.address).await;
                }
                return Err(e);
            }
        };
        audit.mac = result.interface.mac.clone();
        if let Some(k) = plan.sticky.as_ref().filter(|_| identity.is_none())
            && let Err(e) = self.sticky.set(k, record.address)
        {
            warn!(key = %k, error = %e, "remembering a sticky address");
        }
        info!(ip = %record.address, vxnet = %net.vxnet, container = %key.container_id,
              ifname = %key.ifname, pod = ?req.pod.name, namespace = ?req.pod.namespace, "ADD (shared)");
        Ok(result)
    }

    /// The node's own NICs' addresses in `net`'s vxnet: the cloud gave
    /// them, so never a pod's (the cloud check at the vxnet's first ADD
    /// may predate a NIC made since).
    fn node_addresses(&self, net: &SharedNet) -> Vec<Ipv4Addr> {
        self.nics
            .pool()
            .rows()
            .into_iter()
            .filter(|(s, ..)| s.vxnet.as_deref() == Some(net.vxnet.as_str()))
            .map(|(s, ..)| s.address.addr())
            .collect()
    }

    /// The sticky identity whose address is pinned (with claims), and its
    /// pin's address, now held by this node for `holder`: (`None`, `None`)
    /// without claims (the node's own memory, `plan.addresses`, serves);
    /// (identity, `None`) for its first ADD. A pin this node's last pod of
    /// the identity is still releasing waits for it.
    async fn pin_for<'p>(
        &self,
        plan: &'p Plan,
        net: &SharedNet,
        holder: &str,
    ) -> Result<(Option<&'p str>, Option<Ipv4Addr>), CniError> {
        let Some(id) = plan.sticky.as_deref().filter(|_| self.shared.has_claims()) else {
            return Ok((None, None));
        };
        if let Some(a) = self.shared.pinned_here(id) {
            self.shared.wait_released(a).await;
        }
        Ok((Some(id), self.shared.follow_pin(net, id, holder).await?))
    }

    /// Records the reservation, wires, commits: the record is on disk
    /// before anything is made, and committed before the pod is told.
    /// `kernel_us`: the time netlink took (the decision audit's attach).
    async fn wire_shared(
        &self,
        record: &mut SharedRecord,
        (req, pod): (&AddRequest, &hostnic_policy::Pod),
        (netns, nic_index): (&Netns, u32),
        kernel_us: &mut u64,
    ) -> Result<AddResult, CniError> {
        self.shared.records.put(record).map_err(|e| {
            internal(format!(
                "recording the reservation of {}: {e}",
                record.address
            ))
        })?;
        let node = self.nics.plumber.node();
        let creating = Instant::now();
        let created = wiring::create_veth(node, netns, record).await;
        *kernel_us = creating.elapsed().as_micros() as u64;
        let mac = match created {
            Ok(m) => m,
            Err(e) if e.is_exists() => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!(
                        "the pod already has an interface named {} (or the node a {})",
                        record.key.ifname, record.veth
                    ),
                ));
            }
            Err(e) => return Err(internal(format!("creating the veth {}: {e}", record.veth))),
        };
        // The routes guest sees the pod's address in its vxnet; in the pod
        // every route goes through the node.
        let spec = NicSpec {
            mac,
            address: Ipv4Net::new(record.address, shared_prefix(record, &self.shared))
                .map_err(|e| internal(e.to_string()))?,
            gateway: self
                .shared
                .net(&record.vxnet)
                .map_or(NEXT_HOP, |n| n.gateway),
            vxnet: Some(record.vxnet.clone()),
        };
        let routes = self
            .routes(&record.key, pod, &spec, &req.routes, &req.hooks)
            .await?;
        record.routes = through_node(spec.address.trunc(), &routes);
        let configuring = Instant::now();
        let configured = wiring::configure(node, netns, record, nic_index).await;
        *kernel_us += configuring.elapsed().as_micros() as u64;
        configured.map_err(|e| {
            internal(format!(
                "wiring {} for {}: {e}",
                record.veth, record.address
            ))
        })?;
        self.shared.announce(nic_index, record);
        let w = Wiring {
            mac,
            ifname: record.key.ifname.clone(),
            address: Ipv4Net::new(record.address, 32).expect("a /32 is valid"),
            mtu: record.mtu,
            routes: record.routes.clone(),
        };
        let result = super::add::add_result(
            &w,
            req.target.netns.as_deref().unwrap_or_default(),
            NEXT_HOP,
        );
        record.phase = Phase::Committed;
        record.result = Some(result.clone());
        self.shared.records.put(record).map_err(|e| {
            internal(format!(
                "recording the allocation of {}: {e}",
                record.address
            ))
        })?;
        self.shared.update(record);
        Ok(result)
    }

    /// The node's NIC in the shared vxnet (set up if need be) with the
    /// vxnet's node-wide pieces in place: (link index, its spec).
    pub(crate) async fn shared_nic(&self, net: &SharedNet) -> Result<(u32, NicSpec), CniError> {
        self.source.node_gateway(&net.vxnet).await?;
        let spec = self.nics.pool().gateway_in(&net.vxnet).ok_or_else(|| {
            CniError::new(
                code::TRY_AGAIN_LATER,
                format!("the node has no NIC of its own in {} yet", net.vxnet),
            )
        })?;
        let node = self.nics.plumber.node();
        let link = node
            .link_by_mac(spec.mac, Some(&spec.mac.gateway_name()))
            .await
            .map_err(|e| internal(format!("finding the node's NIC in {}: {e}", net.vxnet)))?
            .ok_or_else(|| {
                CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "the node's NIC {} in {} is not on the node",
                        spec.mac, net.vxnet
                    ),
                )
            })?;
        let mut prepared = self.shared.prepared.lock().await;
        if !prepared.contains(&net.vxnet) {
            self.shared.learn_cloud(net).await.map_err(|e| {
                CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "asking the cloud which addresses of {} its NICs hold: {e:#}",
                        net.range
                    ),
                )
            })?;
            wiring::prepare_vxnet(
                self.nics.plumber.node_ns(),
                node,
                net,
                (link.index, &link.name),
            )
            .await
            .map_err(|e| {
                internal(format!(
                    "preparing the node for shared vxnet {}: {e}",
                    net.vxnet
                ))
            })?;
            info!(vxnet = %net.vxnet, table = net.table, nic = %link.name, range = %net.range,
                  "shared vxnet ready on the node");
            prepared.insert(net.vxnet.clone());
        }
        Ok((link.index, spec))
    }

    /// DEL of a shared attachment: the release is recorded and answered at
    /// once; the kernel's part (deleting a veth costs ~20 ms of RTNL) runs
    /// in the background, holding the attachment's lock, and the address
    /// is free once it is done. An ADD into the same namespace waits for
    /// it; a restart finishes it.
    pub(super) async fn del_shared(self: &Arc<Self>, key: &Key) -> Result<(), CniError> {
        let Some(mut locked) = self.shared.lock(key).await else {
            return Ok(());
        };
        locked.record.phase = Phase::Releasing;
        if let Err(e) = self.shared.records.put(&locked.record) {
            warn!(address = %locked.record.address, error = %e, "recording a release; releasing in the foreground");
            return self.release_shared(&locked.record).await;
        }
        self.shared.update(&locked.record);
        let counted = super::del::ReleasingIn::new(self, locked.record.netns_id);
        let svc = self.clone();
        tokio::spawn(async move {
            let _counted = counted;
            if let Err(e) = svc.release_shared(&locked.record).await {
                warn!(address = %locked.record.address, error = %e.msg,
                    "releasing a shared attachment; the next start finishes it");
            }
        });
        Ok(())
    }

    /// The same in the foreground (GC).
    pub(super) async fn del_shared_now(&self, key: &Key) -> Result<(), CniError> {
        let Some(locked) = self.shared.lock(key).await else {
            return Ok(());
        };
        self.release_shared(&locked.record).await
    }

    /// Unwires an attachment and frees its address.
    pub(crate) async fn release_shared(&self, record: &SharedRecord) -> Result<(), CniError> {
        let nic = self.nic_index_of(record).await;
        wiring::unwire(self.nics.plumber.node(), record, nic)
            .await
            .map_err(|e| {
                internal(format!(
                    "releasing {} ({}): {e}",
                    record.address, record.veth
                ))
            })?;
        if let Some(id) = &record.identity {
            self.shared.let_go(id, record.address).await;
        }
        self.drop_shared(record);
        info!(ip = %record.address, container = %record.key.container_id, ifname = %record.key.ifname, "DEL (shared)");
        Ok(())
    }

    /// The record goes, then the address is free again.
    pub(crate) fn drop_shared(&self, record: &SharedRecord) {
        if let Err(e) = self.shared.records.remove(record.address) {
            // Left on disk, the next start releases it again.
            warn!(address = %record.address, error = %e, "removing a shared-mode record");
        }
        self.shared.forget(record);
    }

    /// The index of the NIC a record's proxy entry is on, if it is still
    /// on the node.
    pub(crate) async fn nic_index_of(&self, record: &SharedRecord) -> Option<u32> {
        self.nics
            .plumber
            .node()
            .link_by_mac(record.nic, Some(&record.nic.gateway_name()))
            .await
            .ok()
            .flatten()
            .map(|l| l.index)
    }

    /// CHECK of a shared attachment against its record.
    pub(super) async fn check_shared(
        &self,
        key: &Key,
        netns: &Netns,
    ) -> Result<AddResult, CniError> {
        let locked = self
            .shared
            .lock(key)
            .await
            .ok_or_else(|| CniError::new(code::UNKNOWN_CONTAINER, "the attachment is gone"))?;
        let r = &locked.record;
        let Some(result) = r.result.clone().filter(|_| r.phase == Phase::Committed) else {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                "the attachment's ADD is still in progress",
            ));
        };
        let Some(nic) = self.nic_index_of(r).await else {
            return Err(CniError::new(
                code::CHECK_FAILED,
                format!("the node's NIC {} in {} is gone", r.nic, r.vxnet),
            ));
        };
        match wiring::verify(self.nics.plumber.node(), netns, r, nic).await {
            Ok(Ok(())) => Ok(result),
            Ok(Err(diff)) => Err(CniError::new(code::CHECK_FAILED, diff)),
            Err(e) => Err(internal(format!("checking {}: {e}", key.container_id))),
        }
    }
}

/// The prefix the routes guest sees for a shared address: its vxnet's.
fn shared_prefix(record: &SharedRecord, shared: &crate::shared::Shared) -> u8 {
    shared
        .net(&record.vxnet)
        .map_or(32, |n| n.cidr.prefix_len())
}

/// The guest's routes as the pod gets them in shared mode: every one via
/// the node, whatever next hop the template named (the node is the only
/// neighbour a shared pod has), and the vxnet's subnet first: with a /32
/// the pod has no connected route to it, as a NIC of its own would.
fn through_node(
    subnet: Ipv4Net,
    routes: &[(Ipv4Net, Option<Ipv4Addr>)],
) -> Vec<(Ipv4Net, Option<Ipv4Addr>)> {
    let mut out: Vec<(Ipv4Net, Option<Ipv4Addr>)> = vec![(subnet, Some(NEXT_HOP))];
    for (dst, _) in routes {
        if !out.iter().any(|(d, _)| d == dst) {
            out.push((*dst, Some(NEXT_HOP)));
        }
    }
    out
}
