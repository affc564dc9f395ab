//! The cluster's and the node's tags (`hostnic-<cluster>`,
//! `hostnic-<cluster>-<instance>`) on the NICs this node creates.
//!
//! A tag only helps an operator, and other nodes, find the cluster's NICs:
//! the name already marks a NIC as this node's, for its poll and its leak
//! sweep. So no pod waits for a tag. New NICs are queued and tagged
//! together, one AttachTags for all of them, once the node is quiet (no
//! cold ADD waiting, no NIC on its way) after [`QUIET`]: in a burst of
//! pods the node's slots of the account's rate go to creates and
//! attaches. The tags themselves are looked up (and made, if missing) the
//! first time they are needed, not at start, where every call delays the
//! node's first pod, and again after a failed AttachTags (a tag deleted
//! from the console). NICs whose tags were lost (an agent stopped before
//! its flush) are queued again by the cloud poll, which sees each NIC's
//! tags.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use hostnic_iaas::{Client, ResourceTagPair, TagFilter, TagId};
use hostnic_netlink::Mac;

/// How long the node waits before it looks whether it is quiet enough to
/// tag.
pub const QUIET: Duration = Duration::from_secs(5);

/// After a failed AttachTags the node tries again only this much later: a
/// node whose tagging keeps failing (a key without tag rights) stays
/// within a few calls an hour.
const RETRY_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct Tagger {
    /// The cluster's tag, then the node's.
    names: [String; 2],
    /// Their ids, once looked up or made.
    ids: tokio::sync::Mutex<Option<[TagId; 2]>>,
    /// NICs created and not tagged yet.
    queued: Mutex<Vec<Mac>>,
    /// When tagging last failed.
    failed: Mutex<Option<Instant>>,
}

impl Tagger {
    pub fn new(cluster: &str, instance: &str) -> Tagger {
        let cluster_tag = format!("hostnic-{cluster}");
        let node_tag = format!("{cluster_tag}-{instance}");
        Tagger {
            names: [cluster_tag, node_tag],
            ids: tokio::sync::Mutex::new(None),
            queued: Mutex::new(Vec::new()),
            failed: Mutex::new(None),
        }
    }

    fn queue_lock(&self) -> std::sync::MutexGuard<'_, Vec<Mac>> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues NICs to be tagged (once each).
    pub fn queue(&self, macs: impl IntoIterator<Item = Mac>) {
        let mut q = self.queue_lock();
        for m in macs {
            if !q.contains(&m) {
                q.push(m);
            }
        }
    }

    /// Whether a NIC of the cloud's answer lacks one of the two tags.
    pub fn lacks_tags(&self, nic: &hostnic_iaas::Nic) -> bool {
        self.names
            .iter()
            .any(|name| !nic.tags.iter().any(|t| &t.tag_name == name))
    }

    pub fn queued(&self) -> usize {
        self.queue_lock().len()
    }

    /// Whether to flush: NICs are queued and the last failure, if any, is
    /// [`RETRY_AFTER`] old.
    pub fn due(&self) -> bool {
        let failed = *self.failed.lock().unwrap_or_else(|p| p.into_inner());
        self.queued() > 0 && failed.is_none_or(|at| at.elapsed() >= RETRY_AFTER)
    }

    /// Tags the queued NICs that `exists` still knows, with one AttachTags
    /// (after looking the tags up, the first time). On failure they stay
    /// queued for the next flush, which looks the tags up again.
    pub async fn flush(&self, client: &Client, exists: impl Fn(Mac) -> bool) -> anyhow::Result<()> {
        let macs: Vec<Mac> = {
            let mut q = self.queue_lock();
            q.retain(|m| exists(*m));
            std::mem::take(&mut *q)
        };
        if macs.is_empty() {
            return Ok(());
        }
        let result = self.attach(client, &macs).await;
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = result.is_err().then(Instant::now);
        if result.is_err() {
            // A tag may be gone: looked up again next time.
            *self.ids.lock().await = None;
            self.queue(macs);
        }
        result
    }

    async fn attach(&self, client: &Client, macs: &[Mac]) -> anyhow::Result<()> {
        let ids = self.ids(client).await?;
        let pairs: Vec<ResourceTagPair> = macs
            .iter()
            .flat_map(|m| {
                ids.iter().map(|t| ResourceTagPair {
                    tag_id: t.clone(),
                    resource_type: "nic".into(),
                    resource_id: m.to_string(),
                })
            })
            .collect();
        client
            .attach_tags(&pairs)
            .await
            .with_context(|| format!("tagging {} new NICs", macs.len()))
    }

    /// The two tags' ids: looked up once (one DescribeTags finds both, the
    /// node's name starting with the cluster's), made where missing.
    async fn ids(&self, client: &Client) -> anyhow::Result<[TagId; 2]> {
        let mut ids = self.ids.lock().await;
        if let Some(ids) = &*ids {
            return Ok(ids.clone());
        }
        let existing = client
            .describe_tags(&TagFilter {
                search_word: Some(self.names[0].clone()),
                ..TagFilter::default()
            })
            .await
            .context("looking up the cluster's tags")?;
        let mut found = Vec::new();
        for name in &self.names {
            found.push(match existing.iter().find(|t| &t.tag_name == name) {
                Some(t) => t.tag_id.clone(),
                None => client
                    .create_tag(name)
                    .await
                    .with_context(|| format!("creating the tag {name}"))?,
            });
        }
        let found: [TagId; 2] = found
            .try_into()
            .map_err(|_| anyhow::anyhow!("two tags expected"))?;
        *ids = Some(found.clone());
        Ok(found)
    }
}
