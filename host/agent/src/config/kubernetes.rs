//! `[kubernetes]`: the agent's view from the API server.

use std::path::PathBuf;

use anyhow::bail;
use serde::Deserialize;

/// The API server, for the DaemonSet: this node's VM from its Node's
/// `spec.providerID` (when `cloud.instance_id` is not set), the labels and
/// owner of its pods from a watch, and the Lease that elects the node doing
/// cluster-wide duties (`cloud.leak_sweep = "cluster"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    #[serde(default)]
    pub enabled: bool,
    /// A kubeconfig file; without it, the pod's ServiceAccount.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the DaemonSet passes `spec.nodeName` as
    /// `--node-name`).
    #[serde(default)]
    pub node_name: String,
    /// How long an ADD waits for a pod the watch has not delivered yet,
    /// before it goes on with what the runtime sent.
    #[serde(default = "default_pod_wait")]
    pub pod_wait_ms: u64,
    /// The Lease of the cluster-wide duties.
    #[serde(default = "default_lease_namespace")]
    pub lease_namespace: String,
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
    /// Write each ADD's decision on its pod: the NPWG
    /// `k8s.v1.cni.cncf.io/network-status` and `hostnic.io/decision`.
    #[serde(default = "yes")]
    pub annotate: bool,
    /// Publish events (events.k8s.io/v1): failed ADDs on the pod,
    /// agent-level facts on the node.
    #[serde(default = "yes")]
    pub events: bool,
    /// Native multi-network: read a pod's `k8s.v1.cni.cncf.io/networks`
    /// annotation and attach a NIC for each NetworkAttachmentDefinition it
    /// names, in the same ADD (no Multus needed). Leave it off when Multus
    /// is installed: Multus reads the annotation and calls hostnic for each
    /// network itself.
    #[serde(default)]
    pub networks: bool,
    /// Enforce NetworkPolicy in each pod's own namespace (`netpol/`):
    /// needs list and watch on networkpolicies, namespaces, services and
    /// pods. An ADD then waits for the policies to be listed.
    #[serde(default)]
    pub network_policy: bool,
}

impl Default for Kubernetes {
    fn default() -> Self {
        toml::from_str("").expect("the [kubernetes] defaults parse")
    }
}

fn yes() -> bool {
    true
}
fn default_pod_wait() -> u64 {
    1000
}
fn default_lease_namespace() -> String {
    "kube-system".into()
}
fn default_lease_name() -> String {
    "hostnic-cluster-duties".into()
}
fn default_lease_seconds() -> u64 {
    30
}

impl Kubernetes {
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        let k = self;
        if k.enabled {
            if k.node_name.is_empty() {
                bail!(
                    "kubernetes.node_name is required with kubernetes.enabled (the DaemonSet passes --node-name=$(NODE_NAME))"
                );
            }
            if k.lease_seconds < 3 || k.pod_wait_ms > 60_000 {
                bail!("kubernetes.lease_seconds must be at least 3 and pod_wait_ms at most 60000");
            }
        } else if k.networks {
            bail!(
                "kubernetes.networks needs kubernetes.enabled: NetworkAttachmentDefinitions come from the API server"
            );
        } else if k.network_policy {
            bail!(
                "kubernetes.network_policy needs kubernetes.enabled: NetworkPolicies come from the API server"
            );
        }
        Ok(())
    }
}
