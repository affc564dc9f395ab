//! GC: the runtime lists the attachments it still has; every other one of
//! the network is released (natively, with the extra networks of the
//! containers it no longer lists).

use std::collections::BTreeSet;

use hostnic_proto::cni::AttachmentKey;
use hostnic_proto::rpc::{GcRequest, Reply};
use tracing::info;

use super::Service;
use crate::error::{Error, Result};
use crate::record::{Key, Phase};

impl Service {
    /// Releases every attachment of the network that the runtime no longer
    /// lists. Errors are collected; one bad attachment does not stop the
    /// rest.
    pub async fn gc(&self, req: GcRequest) -> Result<Reply> {
        let valid: BTreeSet<AttachmentKey> = req.valid.iter().cloned().collect();
        let native = self.native_networks();
        let stale: Vec<Key> = self
            .attachments
            .all()
            .into_iter()
            // An attachment whose ADD or DEL is under way is not GC's.
            .filter(|r| r.phase == Phase::Committed)
            .map(|r| r.key)
            .filter(|k| {
                let listed = valid.contains(&AttachmentKey {
                    container_id: k.container_id.clone(),
                    ifname: k.ifname.clone(),
                });
                if k.network == req.network {
                    return !listed;
                }
                // Natively, a container's extra networks go with it.
                native && !valid.iter().any(|v| v.container_id == k.container_id)
            })
            .collect();
        let mut released = 0;
        let mut errors = Vec::new();
        for key in stale {
            let Some(locked) = self.attachments.lock(&key).await else {
                continue;
            };
            if locked.record.phase != Phase::Committed {
                continue;
            }
            let netns = self.release_netns(&locked.record, None, None);
            match self.release_now(&locked.record, netns.as_ref()).await {
                Ok(()) => released += 1,
                Err(e) => errors.push(e.msg),
            }
        }
        info!(network = %req.network, released, failed = errors.len(), "GC");
        if errors.is_empty() {
            Ok(Reply::Collected { released })
        } else {
            Err(Error::internal(format!(
                "GC released {released} attachments but failed on: {}",
                errors.join("; ")
            )))
        }
    }
}
