//! DEL: the release is recorded and answered at once; the driver takes
//! the attachment apart in the background (a device move or a veth delete
//! costs ~20 ms of RTNL the runtime need not wait for).

use std::sync::Arc;
use std::time::Duration;

use hostnic_netlink::Netns;
use hostnic_proto::rpc::{DelRequest, Reply};
use tracing::warn;

use super::{Service, key_of};
use crate::error::Result;
use crate::record::{Phase, Record};

/// Attempts of a background release before it is given up (50 ms, then
/// four times longer each time: about 3.4 s in all).
const RELEASE_TRIES: u32 = 4;

impl Service {
    /// DEL answers as soon as the release is recorded. The background task
    /// holds the pod's netns descriptor, so the namespace — and what is
    /// wired in it — lives until the release is done, whatever the runtime
    /// does after the answer; it holds the attachment's lock, so an ADD
    /// into the same namespace waits for it. A crash after the answer is
    /// finished by the next start.
    pub(super) async fn del_one(
        self: &Arc<Self>,
        req: DelRequest,
        netns: Option<Netns>,
    ) -> Result<Reply> {
        let key = key_of(&req.target);
        // Nothing recorded: already deleted, or never added. Both fine. An
        // ADD under way holds the lock: this waits for it to end.
        let Some(locked) = self.attachments.lock(&key).await else {
            return Ok(Reply::Deleted);
        };
        let (mut record, guard) = locked.into_guard();
        let netns = self.release_netns(&record, netns, req.target.netns.as_deref());
        record.phase = Phase::Releasing;
        if let Err(e) = self.store.put(&record) {
            // Without the record a crash could lose the release: do it now.
            warn!(resource = %record.resource(), error = %e, "recording a release; releasing in the foreground");
            self.release_now(&record, netns.as_ref()).await?;
            return Ok(Reply::Deleted);
        }
        self.attachments.update(&record);
        if let Some(path) = &self.return_path {
            path.detach(&record.key);
        }
        self.drivers.for_record(&record).releasing(&record);
        let svc = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            svc.finish_release(&record, netns).await;
        });
        Ok(Reply::Deleted)
    }

    /// The background half of DEL. A failure is retried; a release that
    /// will not succeed is given up: its resource stays out of use and its
    /// `releasing` record on disk for the next start.
    async fn finish_release(&self, record: &Record, netns: Option<Netns>) {
        let driver = self.drivers.for_record(record);
        super::unshape(record, netns.as_ref()).await;
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=RELEASE_TRIES {
            match driver.release(record, netns.as_ref()).await {
                Ok(freed) => {
                    self.forget(record);
                    drop(freed);
                    return;
                }
                Err(e) if attempt < RELEASE_TRIES => {
                    warn!(resource = %record.resource(), attempt, error = %e, "releasing after DEL; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
                Err(e) => {
                    tracing::error!(resource = %record.resource(), error = %e, "releasing after DEL failed; left for the next start");
                    driver.abandon(record);
                    self.attachments.remove(record);
                }
            }
        }
    }

    /// The pod's namespace to release an attachment from: the descriptor
    /// DEL sent if it is the namespace the ADD wired, else the recorded
    /// path if it still names that namespace. Never the node's.
    pub(super) fn release_netns(
        &self,
        record: &Record,
        sent: Option<Netns>,
        path: Option<&str>,
    ) -> Option<Netns> {
        let plumber = &self.namespaces;
        let recorded = record.netns_id;
        let key = &record.key;
        let sent = sent.filter(|ns| match plumber.pod_ns_id(ns) {
            Ok(id) if recorded.is_none_or(|r| r == id) => true,
            Ok(id) => {
                warn!(container = %key.container_id, sent = %id, recorded = ?recorded,
                      "the netns sent with DEL is not the one the ADD wired; using the recorded one");
                false
            }
            Err(e) => {
                warn!(container = %key.container_id, error = %e, "ignoring the netns sent with DEL");
                false
            }
        });
        sent.or_else(|| {
            path.or(record.netns.as_deref())
                .and_then(|p| plumber.reopen(p, recorded))
        })
    }
}
