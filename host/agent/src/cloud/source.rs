//! The cloud pool as an ADD's NIC source: a warm NIC where the plan wants
//! one, else one the provisioner creates for this cold ADD. Also what
//! only the cloud does, as `CloudSource`'s own methods for those who hold
//! one where there is a cloud: NICs that follow a sticky identity, the
//! node's own NIC in a vxnet, the cloud's NICs in a vxnet, its counts.

use std::net::Ipv4Addr;
use std::sync::Arc;

use hostnic_netlink::Mac;

use super::CloudPool;
use crate::error::{Error, Result};
use crate::nics::Nics;
use crate::pool::Pool;
use crate::record::Key;
use crate::source::{Acquired, How, NicSource, VxnetAddr, counted, shown, warm_with_address};

/// Creates tried for one ADD whose policy asks for specific addresses.
const MAX_ADDRESS_TRIES: usize = 16;

#[derive(Debug)]
pub struct CloudSource {
    cloud: Arc<CloudPool>,
    nics: Arc<Nics>,
}

impl CloudSource {
    pub fn new(cloud: Arc<CloudPool>, nics: Arc<Nics>) -> CloudSource {
        CloudSource { cloud, nics }
    }

    /// The NIC that follows sticky `identity` (the ip policy's
    /// `sticky(key)`), brought to this node for `key`; `None` when it has
    /// none yet. `vxnets`: the network's vxnets, which the NIC must be in.
    pub async fn acquire_sticky(
        &self,
        key: &Key,
        identity: &str,
        vxnets: Option<&[String]>,
    ) -> Result<Option<Acquired>> {
        Ok(self
            .cloud
            .follow(&self.nics, key, identity, vxnets)
            .await?
            .map(|nic| Acquired {
                nic,
                how: How::Followed,
            }))
    }

    /// Marks the NIC an ADD acquired as following `identity` from now on
    /// (a tag in the cloud), before the ADD answers.
    pub async fn tag_sticky(&self, mac: Mac, identity: &str) -> Result<()> {
        self.cloud.tag_sticky(mac, identity).await.map_err(|e| {
            Error::try_again(format!("tagging NIC {mac} for sticky {identity}: {e}"))
        })?;
        self.nics.pool().set_sticky(mac, identity);
        Ok(())
    }

    /// Takes a sticky NIC whose attachment is over off the node, to be
    /// kept for its identity: it never goes back to the free pool.
    pub async fn keep(&self, mac: Mac) -> anyhow::Result<()> {
        self.cloud.keep(&self.nics, mac).await
    }

    /// The next hop for `gw 0.0.0.0` route templates in `vxnet`: the
    /// node's own NIC there, set up if need be.
    pub async fn node_gateway(&self, vxnet: &str) -> Result<Ipv4Addr> {
        self.cloud.gateway(&self.nics, vxnet).await.map_err(|e| {
            Error::try_again(format!(
                "setting up the node's gateway NIC in {vxnet}: {e:#}"
            ))
        })
    }

    /// The VM's NICs (its primary included) and its limit, with
    /// `pool_len` NICs in the pool.
    pub fn vm_nics(&self, pool_len: usize) -> (usize, usize) {
        let node = self.cloud.node_facts(pool_len);
        (node.nics_in_use as usize, node.nic_limit as usize)
    }

    /// ADDs waiting for a NIC to be made for them.
    pub fn cold_adds_waiting(&self) -> usize {
        self.cloud.provisioner.waiting()
    }

    /// Cloud API requests sent so far per action, and the client's
    /// budget in words.
    pub fn calls(&self) -> (std::collections::BTreeMap<String, u64>, String) {
        self.cloud.calls()
    }
}

#[async_trait::async_trait]
impl crate::shared::CloudAddresses for CloudSource {
    async fn cloud_addresses(&self, vxnet: &str) -> anyhow::Result<Vec<(String, Ipv4Addr)>> {
        self.cloud.addresses_in(vxnet).await
    }
}

#[async_trait::async_trait]
impl NicSource for CloudSource {
    fn vxnets(&self) -> Vec<VxnetAddr> {
        self.cloud
            .vxnets()
            .map(|(id, info)| VxnetAddr {
                id: id.to_string(),
                cidr: info.cidr,
                gateway: info.gateway,
            })
            .collect()
    }

    fn facts(&self, pool: &Pool) -> (Vec<hostnic_policy::Vxnet>, hostnic_policy::Node) {
        let candidates = self
            .vxnets()
            .iter()
            .map(|v| {
                let mut facts = counted(pool, v);
                facts.recent_failures = self.cloud.recent_failures(&v.id);
                if let Some(free) = self.cloud.kpis.free_ips(&v.id) {
                    facts.free_ips = free;
                }
                facts.live = self.cloud.kpis.live(&v.id);
                facts
            })
            .collect();
        (candidates, self.cloud.node_facts(pool.len()))
    }

    /// The plan's first choice, warm; a vxnet further down the order only
    /// once creating a NIC in those before it has failed
    /// ([`super::provisioner`]).
    async fn acquire(&self, key: &Key, order: Option<&[String]>) -> Result<Acquired> {
        let native;
        let order = match order {
            Some(o) => o,
            None => {
                native = self.cloud.order();
                &native
            }
        };
        if let Some(l) = self
            .nics
            .wait_for_release(|p| p.reserve_in(&order[..1.min(order.len())], key))
            .await
        {
            return Ok(Acquired::warm(l));
        }
        let nic = self
            .cloud
            .provisioner
            .wait_for_nic((&self.cloud, &self.nics), key, order)
            .await?;
        Ok(Acquired {
            nic,
            how: How::Created,
        })
    }

    /// A free NIC already on the node with one of `addrs`, or one created
    /// with that address; the first address the cloud accepts wins.
    async fn acquire_address(
        &self,
        key: &Key,
        addrs: &[Ipv4Addr],
        vxnet: Option<&str>,
    ) -> Result<Acquired> {
        if let Some(l) = warm_with_address(&self.nics, key, addrs).await {
            return Ok(Acquired::warm(l));
        }
        let Some(vxnet) = vxnet else {
            return Err(Error::exhausted(format!(
                "no free NIC has the address the ip policy asked for ({})",
                shown(addrs)
            )));
        };
        let mut last = None;
        for ip in addrs.iter().take(MAX_ADDRESS_TRIES) {
            match self
                .cloud
                .provision_with_ip(&self.nics, vxnet, *ip, key)
                .await
            {
                Ok(nic) => {
                    return Ok(Acquired {
                        nic,
                        how: How::Created,
                    });
                }
                Err(e) => last = Some(e.to_string()),
            }
        }
        Err(Error::exhausted(format!(
            "could not get a NIC with the address the ip policy asked for ({}) in {vxnet}: {}",
            shown(addrs),
            last.unwrap_or_default()
        )))
    }

    fn can_create(&self, pool_len: usize) -> bool {
        self.cloud.has_room(pool_len)
    }
}
