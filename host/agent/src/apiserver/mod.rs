//! The agent's view from the Kubernetes API server, when `[kubernetes]
//! enabled = true` (the DaemonSet sets it): this node's VM from its Node's
//! `spec.providerID`, the node's pods from a watch, a Lease that elects
//! the one node doing cluster-wide duties, and (native multi-network) the
//! NetworkAttachmentDefinitions. Without it the agent works from
//! what the runtime sends, as on a node outside Kubernetes.

pub mod blocks;
pub mod gateways;
pub mod lease;
pub mod nads;
pub mod netpol;
pub mod node;
pub mod pods;
pub mod statefulsets;

use std::time::Duration;

use anyhow::Context;
use hostnic_proto::rpc;
use tracing::warn;

use crate::config::Kubernetes;
use crate::policy;

/// What the agent keeps of the API server.
#[derive(Debug, Clone)]
pub struct KubeView {
    pub node: String,
    pub pods: pods::PodCache,
    pub duties: Duties,
    /// NetworkAttachmentDefinitions, with `[kubernetes] networks = true`.
    pub nads: Option<nads::NadCache>,
    /// Every Node's gateway NICs, addresses and name: `None` until the
    /// watch has listed them.
    pub nodes: tokio::sync::watch::Receiver<Option<crate::return_path::Nodes>>,
    /// What NetworkPolicy enforcement reads, with `[kubernetes]
    /// network_policy = true`.
    pub policies: Option<netpol::PolicyView>,
}

/// A client from the configured kubeconfig, or the pod's ServiceAccount.
pub async fn client(cfg: &Kubernetes) -> anyhow::Result<kube::Client> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("the kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster()
            .context("no kubernetes.kubeconfig and not in a pod (KUBERNETES_SERVICE_HOST unset)")?,
    };
    kube::Client::try_from(config).context("creating the Kubernetes client")
}

impl KubeView {
    /// Starts the pod and Node watches and the Lease election for this node.
    pub fn start(client: kube::Client, cfg: &Kubernetes) -> KubeView {
        let pods = pods::PodCache::start(
            client.clone(),
            &cfg.node_name,
            Duration::from_millis(cfg.pod_wait_ms),
        );
        let nads = cfg.networks.then(|| nads::NadCache::start(client.clone()));
        let owners = statefulsets::Owners::new(client.clone());
        let nodes = gateways::watch(client.clone());
        let policies = cfg
            .network_policy
            .then(|| netpol::PolicyView::start(client.clone()));
        let elector = lease::Elector::start(
            client,
            &cfg.lease_namespace,
            &cfg.lease_name,
            &cfg.node_name,
            Duration::from_secs(cfg.lease_seconds),
        );
        KubeView {
            node: cfg.node_name.clone(),
            pods,
            duties: Duties { elector, owners },
            nads,
            nodes,
            policies,
        }
    }
}

/// What the once-per-cluster duties need of the API server: the Lease that
/// elects the node doing them, and the StatefulSets the sticky release
/// asks about.
#[derive(Clone, Debug)]
pub struct Duties {
    pub elector: lease::Elector,
    pub owners: statefulsets::Owners,
}

/// The pod as the policy guests see it: the runtime's view (its
/// annotations win when it sent any), with the labels, the owner, and the
/// annotations it did not send, from the API server's watch.
pub async fn pod_for_guests(view: Option<&KubeView>, p: &rpc::Pod) -> hostnic_policy::Pod {
    let mut pod = policy::pod(p);
    let (Some(view), Some(namespace), Some(name)) = (view, &p.namespace, &p.name) else {
        return pod;
    };
    match view.pods.get(namespace, name, p.uid.as_deref()).await {
        Some(facts) => {
            pod.labels = facts.labels;
            pod.owner = facts.owner;
            if p.annotations.is_empty() {
                pod.annotations = facts.annotations;
            }
        }
        None => warn!(
            pod = %format!("{namespace}/{name}"),
            "the pod is not in the API server's view yet; deciding with what the runtime sent (no labels)"
        ),
    }
    pod
}

/// Drives a reflector's watch stream for as long as the agent runs,
/// logging once when it fails (`failed`, then retried with backoff by the
/// stream) and once when it is back.
pub(crate) fn drive<T, E: std::fmt::Display>(
    stream: impl futures::Stream<Item = Result<T, E>> + Send + 'static,
    what: &'static str,
    failed: &'static str,
) {
    use futures::StreamExt;
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut healthy = true;
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) if !healthy => {
                    healthy = true;
                    tracing::info!("the {what} watch is back");
                }
                Ok(_) => {}
                Err(e) => {
                    if healthy {
                        warn!(error = %e, "the {what} watch failed; {failed}");
                    }
                    healthy = false;
                }
            }
        }
    });
}

/// Reads this node's VM from its Node, retrying while the API server is
/// unreachable or failing (a DaemonSet may start before it answers), for up
/// to ten minutes; a Node without a provider id fails at once.
pub async fn instance_id(client: &kube::Client, node: &str) -> anyhow::Result<String> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_secs(1);
    loop {
        match node::instance_id(client, node).await {
            Ok(id) => return Ok(id),
            Err(e) if transient(&e) && started.elapsed() < Duration::from_secs(600) => {
                warn!(error = %format!("{e:#}"), "reading this node's VM from the API server; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// An API server that did not answer, or answered 5xx/429.
fn transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| match c.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(s)) => s.code >= 500 || s.code == 429,
        Some(_) => true,
        None => false,
    })
}
