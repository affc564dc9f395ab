//! GC: the runtime lists the attachments it still has; every other one of
//! the network is released (natively, with the extra networks of the
//! containers it no longer lists).

use std::collections::BTreeSet;

use hostnic_netlink::Mac;
use hostnic_proto::cni::{AttachmentKey, CniError};
use hostnic_proto::rpc::{GcRequest, Reply};
use tracing::info;

use super::{Service, internal};
use crate::pool::State;
use crate::store::Key;

impl Service {
    /// Releases every attachment of the network that the runtime no longer
    /// lists. Errors are collected; one bad NIC does not stop the rest.
    pub async fn gc(&self, req: GcRequest) -> Result<Reply, CniError> {
        let extras = self.stale_extras(&req);
        let valid: BTreeSet<AttachmentKey> = req.valid.into_iter().collect();
        let stale: Vec<(Key, Mac)> = self
            .nics
            .pool()
            .held_in(&req.network)
            .into_iter()
            .filter(|(k, _)| {
                !valid.contains(&AttachmentKey {
                    container_id: k.container_id.clone(),
                    ifname: k.ifname.clone(),
                })
            })
            .chain(extras)
            .collect();
        let mut released = 0;
        let mut errors = Vec::new();
        for (key, mac) in stale {
            let Some(lease) = self.nics.pool().lease(mac) else {
                continue;
            };
            let _guard = lease.lock.lock().await;
            if !matches!(self.nics.pool().lookup(&key), Some((l, State::Held(_))) if l.spec.mac == mac)
            {
                continue;
            }
            let netns = self.release_netns(mac, &key, None, None);
            match self.release(mac, &key, netns.as_ref()).await {
                Ok(()) => released += 1,
                Err(e) => errors.push(e.msg),
            }
        }
        let native = self.native_networks();
        for record in self.shared.all() {
            if record.phase != crate::store::Phase::Committed {
                continue; // its ADD is under way
            }
            let listed = valid.contains(&AttachmentKey {
                container_id: record.key.container_id.clone(),
                ifname: record.key.ifname.clone(),
            });
            let ours = record.key.network == req.network;
            let container_listed = valid
                .iter()
                .any(|v| v.container_id == record.key.container_id);
            if (ours && listed) || (!ours && (!native || container_listed)) {
                continue;
            }
            match self.del_shared_now(&record.key).await {
                Ok(()) => released += 1,
                Err(e) => errors.push(e.msg),
            }
        }
        info!(network = %req.network, released, failed = errors.len(), "GC");
        if errors.is_empty() {
            Ok(Reply::Collected { released })
        } else {
            Err(internal(format!(
                "GC released {released} attachments but failed on: {}",
                errors.join("; ")
            )))
        }
    }
}
