//! DEL: the release is recorded and answered at once; the NIC comes back
//! from the pod in the background. Also the release GC shares.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hostnic_netlink::{Mac, Netns, NsId};
use hostnic_proto::cni::CniError;
use hostnic_proto::rpc::{DelRequest, Reply};
use tracing::{info, warn};

use super::{Service, internal, key_of};
use crate::plumb::Whereabouts;
use crate::store::{Key, Phase};

/// How long an ADD waits for a NIC still leaving the pod's namespace.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Counts a release under way in a namespace while it lives: taken before
/// DEL answers, dropped by the background task when the NIC is out.
pub(super) struct ReleasingIn {
    svc: Arc<Service>,
    ns: Option<NsId>,
}

impl ReleasingIn {
    pub(super) fn new(svc: &Arc<Service>, ns: Option<NsId>) -> Self {
        if let Some(id) = ns {
            *svc.releasing_in
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id)
                .or_default() += 1;
        }
        ReleasingIn {
            svc: svc.clone(),
            ns,
        }
    }
}

impl Drop for ReleasingIn {
    fn drop(&mut self) {
        let Some(id) = self.ns else { return };
        let mut map = self
            .svc
            .releasing_in
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                map.remove(&id);
            }
        }
    }
}

impl Service {
    /// DEL answers as soon as the release is recorded; the NIC comes back
    /// from the pod in the background (a device move costs ~20 ms of
    /// kernel time the runtime need not wait for). The task holds the pod's
    /// netns descriptor, so the namespace — and the NIC in it — lives until
    /// the NIC is out, whatever the runtime does after the answer; it holds
    /// the NIC's lock, and the NIC is not free until it is parked. A crash
    /// after the answer is finished by start-up reconciliation.
    pub(super) async fn del_one(
        self: &Arc<Self>,
        req: DelRequest,
        netns: Option<Netns>,
    ) -> Result<Reply, CniError> {
        let key = key_of(&req.target);
        if self.shared.peek(&key).is_some() {
            self.del_shared(&key).await?;
            return Ok(Reply::Deleted);
        }
        let Some((lease, _)) = self.nics.pool().lookup(&key) else {
            // Nothing recorded: already deleted, or never added. Both fine.
            return Ok(Reply::Deleted);
        };
        let guard = lease.lock.clone().lock_owned().await;
        // Re-check under the NIC's lock: a concurrent DEL may have won.
        match self.nics.pool().lookup(&key) {
            Some((l, _)) if l.spec.mac == lease.spec.mac => {}
            _ => return Ok(Reply::Deleted),
        }
        let mac = lease.spec.mac;
        let netns = self.release_netns(mac, &key, netns, req.target.netns.as_deref());
        if let Err(e) = self.mark_releasing(mac) {
            // Without the record a crash could lose the release: do it now.
            warn!(nic = %mac, error = %e, "recording a release; releasing in the foreground");
            self.release(mac, &key, netns.as_ref()).await?;
            return Ok(Reply::Deleted);
        }
        self.nics.pool().start_release(mac);
        let counted = ReleasingIn::new(self, netns.as_ref().and_then(|n| n.id().ok()));
        let svc = self.clone();
        tokio::spawn(async move {
            let (_guard, _counted) = (guard, counted);
            svc.finish_release(mac, &key, netns).await;
        });
        Ok(Reply::Deleted)
    }

    /// Waits (at most [`RELEASE_WAIT`]) until no NIC is on its way out of
    /// namespace `ns`, so an ADD never meets an interface a DEL answered
    /// for.
    pub(super) async fn wait_for_releases_in(&self, ns: NsId) {
        let deadline = Instant::now() + RELEASE_WAIT;
        let busy = || {
            self.releasing_in
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&ns)
        };
        while busy() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Rewrites the NIC's record as `releasing` (not fsynced: see store).
    fn mark_releasing(&self, mac: Mac) -> std::io::Result<()> {
        match self.store.get(mac)? {
            Some(mut record) => {
                record.phase = Phase::Releasing;
                self.store.put(&record)
            }
            // No record to update: nothing for a restart to finish either.
            None => Ok(()),
        }
    }

    /// The background half of DEL. A kernel error is retried; if the NIC
    /// still will not come back, it is marked missing (never free) and its
    /// `releasing` record stays for the next start.
    async fn finish_release(&self, mac: Mac, key: &Key, netns: Option<Netns>) {
        let mut delay = std::time::Duration::from_millis(50);
        for attempt in 1..=4 {
            match self.release(mac, key, netns.as_ref()).await {
                Ok(()) => return,
                Err(e) if attempt < 4 => {
                    warn!(nic = %mac, attempt, error = %e.msg, "bringing a NIC back after DEL; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
                Err(e) => {
                    tracing::error!(nic = %mac, error = %e.msg, "bringing a NIC back after DEL failed; marked missing until it reappears or the agent restarts");
                    self.nics.pool().release(mac, false);
                }
            }
        }
    }

    /// The pod's namespace to bring a NIC back from: the descriptor DEL
    /// sent if it is the namespace the NIC was recorded in, else the
    /// recorded path if it still names that namespace. Never the node's.
    pub(super) fn release_netns(
        &self,
        mac: Mac,
        key: &Key,
        sent: Option<Netns>,
        path: Option<&str>,
    ) -> Option<Netns> {
        let record = self.store.get(mac).ok().flatten();
        let recorded_id = record.as_ref().and_then(|a| a.netns_id);
        let sent = sent.filter(|ns| match self.nics.plumber.pod_ns_id(ns) {
            Ok(id) if recorded_id.is_none_or(|r| r == id) => true,
            Ok(id) => {
                warn!(nic = %mac, container = %key.container_id, sent = %id, recorded = ?recorded_id,
                      "the netns sent with DEL is not the one the NIC went into; using the recorded one");
                false
            }
            Err(e) => {
                warn!(nic = %mac, container = %key.container_id, error = %e, "ignoring the netns sent with DEL");
                false
            }
        });
        sent.or_else(|| {
            path.map(str::to_string)
                .or_else(|| record.and_then(|a| a.netns))
                .and_then(|p| self.nics.plumber.reopen(&p, recorded_id))
        })
    }

    /// Brings a NIC back from the pod's namespace (if reachable) and frees
    /// it, or marks it missing if it is nowhere to be found.
    pub(super) async fn release(
        &self,
        mac: Mac,
        key: &Key,
        netns: Option<&Netns>,
    ) -> Result<(), CniError> {
        let whereabouts = self.nics.plumber.detach(mac, netns).await.map_err(|e| {
            internal(format!(
                "returning NIC {mac} from container {}: {e}",
                key.container_id
            ))
        })?;
        if whereabouts == Whereabouts::Gone {
            warn!(nic = %mac, container = %key.container_id, "NIC not found in the pod or the node; marked missing");
        }
        self.forget(mac, whereabouts == Whereabouts::Parked);
        info!(nic = %mac, container = %key.container_id, ifname = %key.ifname, ?whereabouts, "DEL");
        Ok(())
    }
}
