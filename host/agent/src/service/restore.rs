//! The start: every driver makes the kernel match the records it wired,
//! and what lives on goes into the attachment table. One path whatever
//! the wiring: the records are read once (`store.rs`, which moves the
//! unreadable ones aside), each driver gets its own, and the records of
//! attachments that did not live on are removed.

use anyhow::Context;
use tracing::{info, warn};

use super::Service;
use crate::record::Resource;
use crate::store::Loaded;

impl Service {
    pub async fn restore(&self, loaded: Loaded) -> anyhow::Result<()> {
        let Loaded {
            mut records,
            unreadable,
        } = loaded;
        for driver in self.drivers.all() {
            let (mine, rest) = records.into_iter().partition(|r| driver.restores(r));
            records = rest;
            let resources: Vec<Resource> = mine.iter().map(|r| r.resource()).collect();
            let live = driver
                .restore(mine, &unreadable)
                .await
                .with_context(|| format!("restoring the {} attachments", driver.name()))?;
            for resource in resources {
                if !live.iter().any(|r| r.resource() == resource)
                    && let Err(e) = self.store.remove(resource)
                {
                    warn!(%resource, error = %e, "removing the record of an attachment that did not live on");
                }
            }
            if !live.is_empty() {
                info!(
                    wiring = driver.name(),
                    attachments = live.len(),
                    "attachments restored"
                );
            }
            for r in live {
                let vxnet = r
                    .mac()
                    .and_then(|m| self.nics.pool().spec(m))
                    .and_then(|s| s.vxnet);
                let netns = r
                    .netns
                    .as_deref()
                    .and_then(|p| self.namespaces.reopen(p, r.netns_id));
                self.route_answers(&r, vxnet.as_deref(), driver.as_ref(), netns.as_ref());
                if let (Some(netpol), Some(ns), Some(namespace), Some(name)) =
                    (&self.netpol, netns, &r.pod.namespace, &r.pod.name)
                {
                    netpol.adopt(&r.key, namespace, name, std::sync::Arc::new(ns));
                }
                self.attachments.restore(r);
            }
        }
        Ok(())
    }
}
