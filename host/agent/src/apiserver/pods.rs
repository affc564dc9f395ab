//! The pods of this node as the API server has them, from a watch (a
//! kube-rs reflector with the field selector `spec.nodeName=<node>`): an
//! ADD reads the pod's labels and owner from memory and never waits on a
//! GET. A pod the watch has not delivered yet is waited for a bounded
//! moment; after that the ADD goes on with what the runtime sent.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

/// What the API server adds to the runtime's view of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The controller that owns the pod, if any.
    pub owner: Option<Owner>,
}

pub use hostnic_policy::Owner;

use crate::publish::Seen;

#[derive(Debug, Clone)]
pub struct PodCache {
    store: Store<Pod>,
    /// Told whenever the watch applied a pod: an ADD waiting for its pod
    /// looks again.
    applied: Arc<tokio::sync::Notify>,
    wait: Duration,
    /// Pods waited for in vain lately, and when: a pod with several
    /// networks asks once per attachment, and should wait once, not once
    /// each, while the watch is behind or the API server away.
    missed: Arc<Mutex<HashMap<(String, String), Instant>>>,
}

/// How long a pod waited for in vain is not waited for again.
const MISS_MEMORY: Duration = Duration::from_secs(30);

impl PodCache {
    /// Starts watching the pods bound to `node`. The watch restarts with
    /// backoff on errors; the cache serves what it has meanwhile.
    pub fn start(client: kube::Client, node: &str, wait: Duration) -> PodCache {
        use futures::StreamExt;
        let (store, writer) = reflector::store();
        let cache = PodCache::new(store, wait);
        let applied = cache.applied.clone();
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let stream = watcher(Api::<Pod>::all(client), config)
            .default_backoff()
            .reflect(writer)
            .applied_objects()
            .inspect(move |_| applied.notify_waiters());
        super::drive(
            stream,
            "pod",
            "retrying with backoff, ADDs use the runtime's view meanwhile",
        );
        cache
    }

    fn new(store: Store<Pod>, wait: Duration) -> PodCache {
        PodCache {
            store,
            applied: Arc::default(),
            wait,
            missed: Arc::default(),
        }
    }

    /// Pod `namespace/name`, waiting up to the configured moment for the
    /// watch to deliver it. With `uid` (the runtime's `K8S_POD_UID`), a
    /// cached pod of that name but another uid (a StatefulSet pod recreated)
    /// does not count.
    /// A pod waited for in vain within the last [`MISS_MEMORY`] is looked
    /// up without waiting.
    pub async fn get(&self, namespace: &str, name: &str, uid: Option<&str>) -> Option<PodFacts> {
        let key = ObjectRef::new(name).within(namespace);
        let who = (namespace.to_string(), name.to_string());
        let recently_missed = self
            .missed()
            .get(&who)
            .is_some_and(|at| at.elapsed() < MISS_MEMORY);
        let deadline = tokio::time::Instant::now()
            + if recently_missed {
                Duration::ZERO
            } else {
                self.wait
            };
        // Woken by every pod the watch applies, not by a timer.
        loop {
            let applied = self.applied.notified();
            tokio::pin!(applied);
            applied.as_mut().enable();
            if let Some(pod) = self.store.get(&key) {
                let facts = facts(&pod);
                if uid.is_none_or(|u| u.is_empty() || u == facts.uid) {
                    self.missed().remove(&who);
                    return Some(facts);
                }
            }
            if tokio::time::timeout_at(deadline, applied).await.is_err() {
                let mut missed = self.missed();
                missed.retain(|_, at| at.elapsed() < MISS_MEMORY);
                missed.entry(who).or_insert_with(Instant::now);
                return None;
            }
        }
    }

    fn missed(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Instant>> {
        self.missed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pod `namespace/name` as the cache has it now, without waiting: its
    /// resourceVersion and annotation `key` (what a guarded write of that
    /// annotation starts from).
    pub fn peek(&self, namespace: &str, name: &str, key: &str) -> Option<Seen> {
        let pod = self.store.get(&ObjectRef::new(name).within(namespace))?;
        Some(Seen {
            resource_version: pod.metadata.resource_version.clone()?,
            value: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .cloned(),
        })
    }

    /// Pods in the cache now.
    pub fn len(&self) -> usize {
        self.store.state().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pods bound to this node that the pod network serves: not on
    /// the host's network, not finished, not being deleted. The scheduler
    /// binds a node's pods before kubelet asks for their sandboxes, so
    /// this is the demand for NICs a moment ahead of the ADDs.
    pub fn networked(&self) -> usize {
        self.store.state().iter().filter(|p| networked(p)).count()
    }
}

/// Whether the pod network serves `pod` (see [`PodCache::networked`]).
fn networked(pod: &Pod) -> bool {
    let host = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    !host && !finished && pod.metadata.deletion_timestamp.is_none()
}

fn facts(pod: &Arc<Pod>) -> PodFacts {
    let meta = &pod.metadata;
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| Owner {
            kind: o.kind.clone(),
            name: o.name.clone(),
            ordinal: (o.kind == "StatefulSet")
                .then(|| ordinal(meta.name.as_deref().unwrap_or_default(), &o.name))
                .flatten(),
        });
    PodFacts {
        uid: meta.uid.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        owner,
    }
}

/// The ordinal of StatefulSet `set`'s pod `pod` (`<set>-<ordinal>`).
fn ordinal(pod: &str, set: &str) -> Option<u32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networked_pods_leave_out_host_network_finished_and_deleting_ones() {
        let pod = |meta: serde_json::Value, spec: serde_json::Value, phase: &str| -> Pod {
            let mut meta = meta;
            meta["name"] = "p".into();
            serde_json::from_value(serde_json::json!({
                "metadata": meta, "spec": spec, "status": {"phase": phase},
            }))
            .unwrap()
        };
        let (none, plain) = (serde_json::json!({}), serde_json::json!({"containers": []}));
        assert!(networked(&pod(none.clone(), plain.clone(), "Pending")));
        assert!(networked(&pod(none.clone(), plain.clone(), "Running")));
        let host = serde_json::json!({"containers": [], "hostNetwork": true});
        assert!(!networked(&pod(none.clone(), host, "Pending")));
        assert!(!networked(&pod(none.clone(), plain.clone(), "Succeeded")));
        assert!(!networked(&pod(none, plain.clone(), "Failed")));
        let deleting = serde_json::json!({"deletionTimestamp": "2026-12-07T00:00:00Z"});
        assert!(!networked(&pod(deleting, plain, "Running")));
    }

    #[tokio::test]
    async fn a_pod_waited_for_in_vain_is_not_waited_for_again() {
        let (store, mut writer) = reflector::store::<Pod>();
        let cache = PodCache::new(store, Duration::from_millis(300));
        let t = Instant::now();
        assert_eq!(cache.get("default", "web", None).await, None);
        assert!(t.elapsed() >= Duration::from_millis(300));
        // Its other attachments ask at once.
        let t = Instant::now();
        assert_eq!(cache.get("default", "web", None).await, None);
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        // Another pod still gets its wait.
        let t = Instant::now();
        assert_eq!(cache.get("default", "db", None).await, None);
        assert!(t.elapsed() >= Duration::from_millis(300));
        // Once the watch delivers it, it is found, and forgotten as missed.
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1",
                         "labels": {"app": "web"}},
        }))
        .unwrap();
        // Delivered while an ADD waits for it: found at once, not at the
        // end of its wait.
        let waiting = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get("default", "late", None).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let late: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "late", "namespace": "default", "uid": "u2"},
        }))
        .unwrap();
        let t = Instant::now();
        writer.apply_watcher_event(&watcher::Event::Apply(late));
        cache.applied.notify_waiters();
        assert_eq!(waiting.await.unwrap().unwrap().uid, "u2");
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        writer.apply_watcher_event(&watcher::Event::Apply(pod));
        let facts = cache.get("default", "web", None).await.unwrap();
        assert_eq!(facts.labels["app"], "web");
        assert!(
            !cache
                .missed()
                .contains_key(&("default".into(), "web".into()))
        );
    }

    #[test]
    fn statefulset_ordinals() {
        assert_eq!(ordinal("web-3", "web"), Some(3));
        assert_eq!(ordinal("web-db-0", "web-db"), Some(0));
        assert_eq!(ordinal("web-x", "web"), None);
        assert_eq!(ordinal("other-1", "web"), None);
    }
}
