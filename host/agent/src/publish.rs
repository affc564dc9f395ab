//! What the agent tells the API server, off every request's path: each
//! ADD's decision on its pod (the NPWG `k8s.v1.cni.cncf.io/network-status`
//! annotation and `hostnic.io/decision`), and events (events.k8s.io/v1) an
//! operator must act on — on the pod for a failed ADD, on the node for
//! agent-level facts, on a Service for its load balancer.
//!
//! Callers hand a job to a bounded queue and go on; one task talks to the
//! API server. A full queue drops the job with a warning rather than slow
//! an ADD. Outside Kubernetes (nothing installed) every call is a no-op.
//! Events are deduplicated into series by kube-rs' recorder, and the same
//! reason on the same object is published at most once per
//! [`EVENT_INTERVAL`], so a pod retried in a loop cannot flood the API.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::audit::Audited;
use hostnic_proto::cni::AddResult;

/// The NPWG annotation Multus writes; hostnic writes the same shape.
pub const NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
/// hostnic's compact reason for the attachment.
pub const DECISION: &str = "hostnic.io/decision";
/// The least time between two events of one reason on one object.
pub const EVENT_INTERVAL: Duration = Duration::from_secs(30);
/// Jobs waiting for the API server before new ones are dropped.
const QUEUE: usize = 1024;

/// An agent-level fact worth an event on the node.
#[derive(Clone, Copy, Debug)]
pub enum NodeEvent {
    DefaultRouteRestored,
    NicReattached,
    LeakedNicsDeleted,
    LeakedLoadBalancersDeleted,
    PolicyModuleRefused,
    PolicyModuleSwapped,
}

impl NodeEvent {
    fn reason(self) -> &'static str {
        match self {
            NodeEvent::DefaultRouteRestored => "DefaultRouteRestored",
            NodeEvent::NicReattached => "NicReattached",
            NodeEvent::LeakedNicsDeleted => "LeakedNicsDeleted",
            NodeEvent::LeakedLoadBalancersDeleted => "LeakedLoadBalancersDeleted",
            NodeEvent::PolicyModuleRefused => "PolicyModuleRefused",
            NodeEvent::PolicyModuleSwapped => "PolicyModuleSwapped",
        }
    }

    fn kind(self) -> EventType {
        match self {
            NodeEvent::LeakedNicsDeleted
            | NodeEvent::LeakedLoadBalancersDeleted
            | NodeEvent::PolicyModuleSwapped => EventType::Normal,
            _ => EventType::Warning,
        }
    }
}

/// An annotation of a pod as the agent's pod cache last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub resource_version: String,
    pub value: Option<String>,
}

#[derive(Debug)]
enum Job {
    Annotate {
        namespace: String,
        pod: String,
        entry: Value,
        decision: String,
        seen: Option<Seen>,
    },
    Event {
        regarding: ObjectReference,
        reason: &'static str,
        kind: EventType,
        note: String,
    },
}

#[derive(Debug)]
struct Publisher {
    jobs: mpsc::Sender<Job>,
    node: String,
    annotate: bool,
    events: bool,
}

static PUBLISHER: OnceLock<Publisher> = OnceLock::new();

/// Starts the publishing task for node `node`. Called once, at start.
pub fn install(client: kube::Client, node: &str, annotate: bool, events: bool) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let publisher = Publisher {
        jobs: tx,
        node: node.to_string(),
        annotate,
        events,
    };
    if PUBLISHER.set(publisher).is_ok() {
        tokio::spawn(run(client, node.to_string(), rx));
    }
}

fn send(job: Job) {
    let Some(p) = PUBLISHER.get() else { return };
    if let Err(e) = p.jobs.try_send(job) {
        warn!(error = %e, "the API server is behind; an annotation or event was dropped");
    }
}

/// A successful ADD: its network-status entry and reason, for the pod.
/// `seen` is the pod's network-status as the pod cache has it, to write
/// over without reading the pod first.
pub fn added(audit: &Audited, reason: &str, result: &AddResult, seen: Option<Seen>) {
    let Some(p) = PUBLISHER.get() else { return };
    if !p.annotate || audit.pod.is_empty() || audit.namespace.is_empty() {
        return;
    }
    send(Job::Annotate {
        namespace: audit.namespace.clone(),
        pod: audit.pod.clone(),
        entry: network_status(&audit.network, result, audit.default_route),
        decision: reason.to_string(),
        seen,
    });
}

/// A failed ADD an operator may have to act on: a Warning on the pod.
pub fn add_failed(audit: &Audited, e: &crate::error::Error) {
    if audit.pod.is_empty() {
        return;
    }
    pod_event(
        &audit.namespace,
        &audit.pod,
        e.reason(),
        format!("{}: {}", audit.ifname, e),
    );
}

/// A Warning on pod `namespace/name`: a failed ADD, or its NetworkPolicy
/// rules that could not be written.
pub fn pod_event(namespace: &str, name: &str, reason: &'static str, note: impl Into<String>) {
    let Some(p) = PUBLISHER.get() else { return };
    if !p.events {
        return;
    }
    send(Job::Event {
        regarding: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace.to_string()),
            name: Some(name.to_string()),
            ..ObjectReference::default()
        },
        reason,
        kind: EventType::Warning,
        note: truncate(&note.into(), 1000),
    });
}

/// An event on any object (a Service's load balancer).
pub fn object_event(
    regarding: ObjectReference,
    kind: EventType,
    reason: &'static str,
    note: impl Into<String>,
) {
    let Some(p) = PUBLISHER.get() else { return };
    if !p.events {
        return;
    }
    send(Job::Event {
        regarding,
        reason,
        kind,
        note: truncate(&note.into(), 1000),
    });
}

/// An agent-level fact, as an event on this node.
pub fn node_event(what: NodeEvent, note: impl Into<String>) {
    let Some(p) = PUBLISHER.get() else { return };
    if !p.events {
        return;
    }
    send(Job::Event {
        regarding: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(p.node.clone()),
            ..ObjectReference::default()
        },
        reason: what.reason(),
        kind: what.kind(),
        note: truncate(&note.into(), 1000),
    });
}

/// One NPWG network-status entry.
pub fn network_status(network: &str, r: &AddResult, default: bool) -> Value {
    json!({
        "name": network,
        "interface": r.interface.name,
        "ips": r.ips.iter().map(|i| i.address.addr().to_string()).collect::<Vec<_>>(),
        "mac": r.interface.mac,
        "default": default,
        "dns": {},
        "gateway": r.ips.iter().filter_map(|i| i.gateway.map(|g| g.to_string())).collect::<Vec<_>>(),
    })
}

/// `entry` in place of the entry with its interface name (and network),
/// the others kept: a pod's other attachments (Multus' too) stay listed.
pub fn merge_status(current: Option<&str>, entry: &Value) -> Value {
    let mut list: Vec<Value> = current
        .and_then(|s| serde_json::from_str::<Vec<Value>>(s).ok())
        .unwrap_or_default();
    list.retain(|e| e["interface"] != entry["interface"]);
    list.push(entry.clone());
    Value::Array(list)
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

async fn run(client: kube::Client, node: String, mut jobs: mpsc::Receiver<Job>) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "hostnic-agent".into(),
            instance: Some(node),
        },
    );
    let mut last: HashMap<(String, &'static str), Instant> = HashMap::new();
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Annotate {
                namespace,
                pod,
                entry,
                decision,
                seen,
            } => {
                let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
                if let Err(e) = annotate(&api, &pod, (&entry, &decision), seen).await {
                    warn!(pod = %format!("{namespace}/{pod}"), error = %e, "writing the network-status annotation");
                }
            }
            Job::Event {
                regarding,
                reason,
                kind,
                note,
            } => {
                let object = format!(
                    "{}/{}/{}",
                    regarding.kind.as_deref().unwrap_or_default(),
                    regarding.namespace.as_deref().unwrap_or_default(),
                    regarding.name.as_deref().unwrap_or_default()
                );
                let now = Instant::now();
                last.retain(|_, at| now.duration_since(*at) < EVENT_INTERVAL);
                if last.contains_key(&(object.clone(), reason)) {
                    debug!(%object, reason, "event rate-limited");
                    continue;
                }
                last.insert((object.clone(), reason), now);
                let event = Event {
                    type_: kind,
                    reason: reason.into(),
                    note: Some(note),
                    action: "Attach".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&event, &regarding).await {
                    warn!(%object, reason, error = %e, "publishing an event");
                }
            }
        }
    }
}

/// Merge and write, guarded by the resourceVersion the merge started
/// from: first from the pod cache's copy (one call), then, when a
/// concurrent writer (Multus, kubelet) changed the pod since (409), from a
/// fresh read of what that writer left.
async fn annotate(
    api: &Api<Pod>,
    pod: &str,
    (entry, decision): (&Value, &str),
    mut seen: Option<Seen>,
) -> Result<(), kube::Error> {
    for _ in 0..5 {
        let base = match seen.take() {
            Some(s) => s,
            None => {
                let current = api.get_metadata(pod).await?;
                Seen {
                    resource_version: current.metadata.resource_version.unwrap_or_default(),
                    value: current
                        .metadata
                        .annotations
                        .and_then(|mut a| a.remove(NETWORK_STATUS)),
                }
            }
        };
        let status = merge_status(base.value.as_deref(), entry);
        let patch = json!({
            "metadata": {
                "resourceVersion": base.resource_version,
                "annotations": {
                    NETWORK_STATUS: serde_json::to_string_pretty(&status).unwrap_or_default(),
                    DECISION: decision,
                }
            }
        });
        match api
            .patch_metadata(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            other => return other.map(|_| ()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_merge_by_interface_and_reasons_follow_the_cause() {
        let eth0 = json!({"name": "hostnic", "interface": "eth0", "ips": ["10.0.1.5"]});
        let net1 = json!({"name": "storage", "interface": "net1", "ips": ["10.0.2.5"]});
        let two = merge_status(None, &eth0);
        let two = merge_status(Some(&two.to_string()), &net1);
        let renewed = json!({"name": "hostnic", "interface": "eth0", "ips": ["10.0.1.9"]});
        let merged = merge_status(Some(&two.to_string()), &renewed);
        assert_eq!(merged, json!([net1, renewed]));
        // Garbage in the annotation is replaced, not kept.
        assert_eq!(merge_status(Some("not json"), &eth0), json!([eth0]));

        assert_eq!(truncate("abcdef", 3), "abc…");
    }
}
