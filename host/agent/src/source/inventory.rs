//! The static inventory: NICs listed in the config, attached to the node
//! already. Nothing is ever created; an ADD gets a free one or an error.

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::{Acquired, NicSource, VxnetAddr, counted, shown, warm_with_address};
use crate::config::NicSpec;
use crate::error::{Error, Result};
use crate::nics::Nics;
use crate::pool::Pool;
use crate::record::Key;

#[derive(Debug)]
pub struct StaticInventory {
    nics: Arc<Nics>,
    /// The inventory's vxnets in the order they first appear in it: the
    /// vxnet hook's candidates without a cloud.
    vxnets: Vec<VxnetAddr>,
}

impl StaticInventory {
    pub fn new(nics: Arc<Nics>, inventory: &[NicSpec]) -> StaticInventory {
        StaticInventory {
            nics,
            vxnets: vxnets_of(inventory),
        }
    }
}

/// The distinct vxnets of a static inventory, in order of appearance.
fn vxnets_of(nics: &[NicSpec]) -> Vec<VxnetAddr> {
    let mut out: Vec<VxnetAddr> = Vec::new();
    for n in nics {
        if let Some(id) = &n.vxnet
            && !out.iter().any(|v| &v.id == id)
        {
            out.push(VxnetAddr {
                id: id.clone(),
                cidr: n.address.trunc(),
                gateway: n.gateway,
            });
        }
    }
    out
}

#[async_trait::async_trait]
impl NicSource for StaticInventory {
    fn vxnets(&self) -> Vec<VxnetAddr> {
        self.vxnets.clone()
    }

    fn facts(&self, pool: &Pool) -> (Vec<hostnic_policy::Vxnet>, hostnic_policy::Node) {
        let candidates = self
            .vxnets
            .iter()
            .map(|v| {
                let mut v = counted(pool, v);
                // A static NIC is an address the node can give.
                v.free_ips = v.warm_nics;
                v
            })
            .collect();
        // Every static NIC is attached already.
        let node = crate::policy::node("", pool.len() as u32, pool.len() as u32);
        (candidates, node)
    }

    async fn acquire(&self, key: &Key, order: Option<&[String]>) -> Result<Acquired> {
        let Some(order) = order else {
            // Any free NIC; with none, look once more for missing ones.
            if let Some(l) = self.nics.wait_for_release(|p| p.reserve(key)).await {
                return Ok(Acquired::warm(l));
            }
            self.nics.rescan_missing().await;
            let nic = self.nics.pool().reserve(key).ok_or_else(|| {
                Error::exhausted("no free NIC on this node").with_details(
                    "every NIC in the inventory is held by a pod or missing; add NICs or delete pods",
                )
            })?;
            return Ok(Acquired::warm(nic));
        };
        self.nics
            .wait_for_release(|p| p.reserve_in(order, key))
            .await
            .map(Acquired::warm)
            .ok_or_else(|| {
                Error::exhausted(format!(
                    "no free NIC on this node in the vxnets the vxnet policy chose ({})",
                    order.join(", ")
                ))
            })
    }

    async fn acquire_address(
        &self,
        key: &Key,
        addrs: &[Ipv4Addr],
        _vxnet: Option<&str>,
    ) -> Result<Acquired> {
        warm_with_address(&self.nics, key, addrs)
            .await
            .map(Acquired::warm)
            .ok_or_else(|| {
                Error::exhausted(format!(
                    "no free NIC has the address the ip policy asked for ({})",
                    shown(addrs)
                ))
            })
    }

    fn can_create(&self, _pool_len: usize) -> bool {
        false
    }
}
