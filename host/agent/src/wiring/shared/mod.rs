//! `shared`: the pod gets an address of its vxnet's shared range and a
//! veth, its node end behind the node's own NIC in the vxnet, which
//! answers for the address (`docs/shared-nic.md`). No NIC per pod, so no
//! cloud call per pod. What the node knows of its shared vxnets (held
//! addresses, blocks, sticky pins) is `crate::shared`; the kernel side is
//! `crate::shared::wiring`.

mod restore;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use hostnic_netlink::Netns;
use ipnet::Ipv4Net;
use tracing::{info, warn};

use super::{Adding, Handback, Outcome, Reservation, Wired};
use crate::cloud::source::CloudSource;
use crate::config::NicSpec;
use crate::error::{Error, Kind, Result};
use crate::nics::Nics;
use crate::plan::{Plan, Routes};
use crate::plumb::Wiring;
use crate::record::{Holds, Record, Resource, SharedHold};
use crate::shared::pins::pod_name;
use crate::shared::wiring::{self, NEXT_HOP};
use crate::shared::{Shared, SharedNet, Want};

/// How a shared-mode ADD came by its address (the decision audit's "how").
pub const HOW: &str = "an address of the vxnet's shared range, on the node's NIC";
/// The same for a sticky identity whose address was pinned already.
pub const HOW_PINNED: &str = "the address pinned for its sticky identity, on the node's NIC";

#[derive(Debug)]
pub struct SharedVeth {
    shared: Arc<Shared>,
    nics: Arc<Nics>,
    /// The cloud, which sets up the node's own NIC in a vxnet (`None`:
    /// the static inventory's node has none to set up).
    cloud: Option<Arc<CloudSource>>,
}

impl SharedVeth {
    pub fn new(
        shared: Arc<Shared>,
        nics: Arc<Nics>,
        cloud: Option<Arc<CloudSource>>,
    ) -> SharedVeth {
        SharedVeth {
            shared,
            nics,
            cloud,
        }
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
    ) -> Result<(Option<&'p str>, Option<Ipv4Addr>)> {
        let Some(id) = plan.sticky.as_deref().filter(|_| self.shared.has_claims()) else {
            return Ok((None, None));
        };
        if let Some(a) = self.shared.pinned_here(id) {
            self.shared.wait_released(a).await;
        }
        Ok((Some(id), self.shared.follow_pin(net, id, holder).await?))
    }

    /// The node's NIC in the shared vxnet (set up if need be) with the
    /// vxnet's node-wide pieces in place: (link index, its spec).
    pub(crate) async fn shared_nic(&self, net: &SharedNet) -> Result<(u32, NicSpec)> {
        if let Some(cloud) = &self.cloud {
            cloud.node_gateway(&net.vxnet).await?;
        }
        let spec = self.nics.pool().gateway_in(&net.vxnet).ok_or_else(|| {
            Error::try_again(format!(
                "the node has no NIC of its own in {} yet",
                net.vxnet
            ))
        })?;
        let node = self.nics.plumber.node();
        let link = node
            .link_by_mac(spec.mac, Some(&spec.mac.gateway_name()))
            .await
            .map_err(|e| Error::internal(format!("finding the node's NIC in {}: {e}", net.vxnet)))?
            .ok_or_else(|| {
                Error::try_again(format!(
                    "the node's NIC {} in {} is not on the node",
                    spec.mac, net.vxnet
                ))
            })?;
        let mut prepared = self.shared.prepared.lock().await;
        if !prepared.contains(&net.vxnet) {
            self.shared.learn_cloud(net).await.map_err(|e| {
                Error::try_again(format!(
                    "asking the cloud which addresses of {} its NICs hold: {e:#}",
                    net.range
                ))
            })?;
            wiring::prepare_vxnet(
                self.nics.plumber.node_ns(),
                node,
                net,
                (link.index, &link.name),
            )
            .await
            .map_err(|e| {
                Error::internal(format!(
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

    /// The index of the node's NIC an attachment's proxy entry is on, if
    /// it is still on the node.
    async fn nic_index_of(&self, hold: &SharedHold) -> Option<u32> {
        self.nics
            .plumber
            .node()
            .link_by_mac(hold.nic, Some(&hold.nic.gateway_name()))
            .await
            .ok()
            .flatten()
            .map(|l| l.index)
    }

    /// How a reserved address goes back: free, or kept out of use; a pin
    /// taken for the ADD is let go either way.
    fn end(
        &self,
        address: Ipv4Addr,
        identity: Option<String>,
    ) -> impl FnOnce(Outcome) + Send + 'static {
        let shared = self.shared.clone();
        move |outcome| {
            if matches!(outcome, Outcome::Committed | Outcome::HandedOver) {
                return;
            }
            if matches!(outcome, Outcome::GivenBack | Outcome::Missing) {
                shared.free(address);
            }
            if let Some(id) = identity {
                tokio::spawn(async move { shared.let_go(&id, address).await });
            }
        }
    }
}

fn hold_of(record: &Record) -> Result<&SharedHold> {
    match &record.holds {
        Holds::Address(h) => Ok(h),
        Holds::Nic { .. } => Err(Error::internal(
            "the shared wiring was given a NIC's record",
        )),
    }
}

#[async_trait::async_trait]
impl super::Driver for SharedVeth {
    fn name(&self) -> &'static str {
        "shared"
    }

    /// The pod's frames leave through the node's NIC: what the pod's own
    /// namespace could do about its Service answers, the node would have to.
    fn on_the_vxnet(&self) -> bool {
        false
    }

    /// A shared vxnet's ADD needs no NIC of its own.
    fn ready(&self) -> bool {
        !self.shared.nets().is_empty()
    }

    /// A shared vxnet's range (`vxnet-facts.vxnet-shared-range`, contract
    /// 0.1.3) and, as its free addresses, the node's share of the range
    /// rather than the cloud's count.
    fn for_guests(&self, mut vxnet: hostnic_policy::Vxnet) -> hostnic_policy::Vxnet {
        let Some(net) = self.shared.net(&vxnet.id) else {
            return vxnet;
        };
        vxnet.free_ips = self.shared.free_addresses(&net.vxnet).unwrap_or(0);
        vxnet.live.shared_range = Some(net.range);
        // `free-ips-age-s`: none means `free-ips` is the node's own count.
        vxnet.live.free_ips_counted_s_ago = None;
        vxnet
    }

    /// An address of the vxnet's shared range (the one pinned for the
    /// pod's sticky identity, if it has one), with the node's NIC there
    /// ready to answer for it.
    async fn reserve(&self, add: &Adding<'_>) -> Result<Reservation> {
        let plan = add.plan;
        let net = plan
            .first_vxnet()
            .and_then(|v| self.shared.net(v))
            .cloned()
            .ok_or_else(|| Error::internal("the plan names no shared vxnet"))?;
        let (nic_index, nic) = self.shared_nic(&net).await?;
        let nics = self.node_addresses(&net);
        let holder = pod_name(add.pod);
        let (identity, pinned) = self.pin_for(plan, &net, &holder).await?;
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
        let address = match self.shared.reserve(&net, want).await {
            Ok(a) => a,
            Err(e) => {
                // A pin taken for this ADD is not held by it after all.
                if let (Some(id), Some(a)) = (identity, pinned) {
                    self.shared.let_go(id, a).await;
                }
                return Err(e);
            }
        };
        if let Some(id) = identity
            && pinned.is_none()
            && let Err(e) = self.shared.create_pin(&net, id, address, &holder).await
        {
            self.shared.free(address);
            return Err(e);
        }
        let hold = SharedHold {
            address,
            vxnet: net.vxnet.clone(),
            table: net.table,
            veth: wiring::veth_name(add.key),
            nic: nic.mac,
            mtu: add.mtu,
            routes: Vec::new(),
        };
        // The routes guest sees the pod's address in its vxnet; in the pod
        // every route goes through the node.
        let interface = NicSpec {
            mac: wiring::veth_mac(add.key),
            address: Ipv4Net::new(address, net.cidr.prefix_len())
                .map_err(|e| Error::internal(e.to_string()))?,
            gateway: net.gateway,
            vxnet: Some(net.vxnet.clone()),
        };
        let how = if pinned.is_some() { HOW_PINNED } else { HOW };
        let end = self.end(address, identity.map(str::to_string));
        let mut res = Reservation::new(interface, Holds::Address(hold), how, end);
        res.sticky = identity.map(str::to_string);
        res.node_link = Some(nic_index);
        Ok(res)
    }

    async fn wire(&self, add: &Adding<'_>, res: &mut Reservation, routes: Routes) -> Result<Wired> {
        let ifname = add.key.ifname.as_str();
        let mac = res.interface.mac;
        let subnet = res.interface.address.trunc();
        let nic_index = res
            .node_link
            .ok_or_else(|| Error::internal("the reservation names no node NIC"))?;
        let Holds::Address(hold) = &mut res.holds else {
            return Err(Error::internal("the shared wiring was given a NIC"));
        };
        hold.routes = through_node(subnet, &routes);
        let node = self.nics.plumber.node();
        let started = Instant::now();
        let made = match wiring::create_veth(node, add.netns, (ifname, mac), hold).await {
            Err(e) if e.is_exists() => Err(Error::invalid_env(format!(
                "the pod already has an interface named {ifname} (or the node a {})",
                hold.veth
            ))),
            Err(e) => Err(Error::internal(format!(
                "creating the veth {}: {e}",
                hold.veth
            ))),
            Ok(()) => wiring::configure(node, add.netns, ifname, hold, nic_index)
                .await
                .map_err(|e| {
                    Error::internal(format!("wiring {} for {}: {e}", hold.veth, hold.address))
                }),
        };
        let kernel = started.elapsed();
        if let Err(e) = made {
            if let Err(u) = wiring::unwire(node, hold, Some(nic_index)).await {
                // The next start sweeps what is left (it carries our
                // proto); the address stays taken until then.
                warn!(address = %hold.address, error = %u, "undoing a failed shared ADD");
                res.lose();
            }
            return Err(e);
        }
        self.shared.announce(nic_index, hold.nic, hold.address);
        info!(ip = %hold.address, vxnet = %hold.vxnet, container = %add.key.container_id,
              ifname, pod = ?add.pod.name, namespace = ?add.pod.namespace, "ADD (shared)");
        Ok(Wired {
            interface: Wiring {
                mac,
                ifname: ifname.to_string(),
                address: Ipv4Net::new(hold.address, 32).expect("a /32 is valid"),
                mtu: hold.mtu,
                routes: hold.routes.clone(),
            },
            gateway: NEXT_HOP,
            kernel,
        })
    }

    async fn verify(&self, record: &Record, netns: &Netns) -> Result<()> {
        let hold = hold_of(record)?;
        let Some(nic) = self.nic_index_of(hold).await else {
            return Err(Error::new(
                Kind::CheckFailed,
                format!("the node's NIC {} in {} is gone", hold.nic, hold.vxnet),
            ));
        };
        let node = self.nics.plumber.node();
        match wiring::verify(node, netns, &record.key.ifname, hold, nic).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(diff)) => Err(Error::new(Kind::CheckFailed, diff)),
            Err(e) => Err(Error::internal(format!(
                "checking {}: {e}",
                record.key.container_id
            ))),
        }
    }

    /// Unwires the attachment (deleting the veth takes the pod's end with
    /// it, wherever the pod is) and lets go of its pin.
    async fn release(&self, record: &Record, _netns: Option<&Netns>) -> Result<Handback> {
        let hold = hold_of(record)?;
        let nic = self.nic_index_of(hold).await;
        wiring::unwire(self.nics.plumber.node(), hold, nic)
            .await
            .map_err(|e| {
                Error::internal(format!("releasing {} ({}): {e}", hold.address, hold.veth))
            })?;
        if let Some(id) = &record.sticky {
            self.shared.let_go(id, hold.address).await;
        }
        info!(ip = %hold.address, container = %record.key.container_id, ifname = %record.key.ifname, "DEL (shared)");
        let (shared, address) = (self.shared.clone(), hold.address);
        Ok(Handback::new(move || shared.free(address)))
    }

    /// The address stays taken; the next start's sweep takes what is left
    /// of its wiring.
    fn abandon(&self, record: &Record) {
        if let Holds::Address(h) = &record.holds {
            warn!(address = %h.address, "releasing a shared attachment failed; the next start finishes it");
        }
    }

    async fn restore(
        &self,
        records: Vec<Record>,
        unreadable: &[Resource],
    ) -> anyhow::Result<Vec<Record>> {
        restore::restore(self, records, unreadable).await
    }
}

/// The guest's routes as the pod gets them in shared mode: every one via
/// the node, whatever next hop the template named (the node is the only
/// neighbour a shared pod has), and the vxnet's subnet first: with a /32
/// the pod has no connected route to it, as a NIC of its own would.
fn through_node(subnet: Ipv4Net, routes: &Routes) -> Routes {
    let mut out: Routes = vec![(subnet, Some(NEXT_HOP))];
    for (dst, _) in routes {
        if !out.iter().any(|(d, _)| d == dst) {
            out.push((*dst, Some(NEXT_HOP)));
        }
    }
    out
}
