//! The real Multus thin plugin in front of hostnic on a test cluster's
//! nodes: its binary (built from source by `scripts/multus-build`), the
//! NetworkAttachmentDefinition CRD, and each node's `00-multus.conf`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use serde_json::json;

use crate::controlplane::{ControlPlane, built_by};

/// The NetworkAttachmentDefinition CRD of the Network Plumbing Working
/// Group's multi-network spec (group `k8s.cni.cncf.io`, version v1): an
/// object whose `spec.config` is a CNI configuration as a JSON string.
pub const NAD_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: network-attachment-definitions.k8s.cni.cncf.io
spec:
  group: k8s.cni.cncf.io
  scope: Namespaced
  names:
    plural: network-attachment-definitions
    singular: network-attachment-definition
    kind: NetworkAttachmentDefinition
    shortNames: [net-attach-def]
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            apiVersion: {type: string}
            kind: {type: string}
            metadata: {type: object}
            spec:
              type: object
              properties:
                config: {type: string}
"#;

/// The Multus binary: `scripts/multus-build`'s (built on first use on a
/// machine, about three minutes; then cached).
pub fn multus_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| built_by("multus-build"))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Creates the CRD and waits until the API server serves it.
pub fn install_crd(cp: &ControlPlane) -> anyhow::Result<()> {
    cp.apply(NAD_CRD)?;
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/network-attachment-definitions.k8s.cni.cncf.io",
    ])
    .map(drop)
}

/// Multus as the CNI of the node in `dir` (whose `cni/net.d` already holds
/// `10-hostnic.conflist`): `00-multus.conf` sorts first, so containerd runs
/// Multus, which delegates the cluster network to that conflist. The
/// default agent socket of the node's mount namespace leads to the test's
/// agent (`socket`), for NetworkAttachmentDefinitions, which are
/// cluster-wide and name no node's socket. Returns the directory holding
/// the multus binary, for containerd's `bin_dirs`.
pub fn install_on_node(
    dir: &Path,
    socket: &Path,
    hostnic_dir: &str,
    kubeconfig: &Path,
) -> anyhow::Result<String> {
    let multus = multus_bin()?;
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "multus-cni-network",
        "type": "multus",
        "kubeconfig": kubeconfig,
        "clusterNetwork": dir.join("cni/net.d/10-hostnic.conflist"),
        "cniDir": dir.join("var-lib-cni/multus"),
        "binDir": hostnic_dir,
        "logFile": dir.join("varlog/multus.log"),
        "logLevel": "verbose",
    });
    std::fs::write(dir.join("cni/net.d/00-multus.conf"), conf.to_string())?;
    let link = dir.join("run-hostnic/agent.sock");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(socket, &link)
        .with_context(|| format!("linking {} to the agent socket", link.display()))?;
    Ok(multus
        .parent()
        .context("the multus binary's directory")?
        .display()
        .to_string())
}

/// A NetworkAttachmentDefinition `name` in namespace `default` whose
/// config is hostnic's with NICs from `vxnets`, taking the `ips` and `mac`
/// capabilities (Multus passes them only to a plugin that declares them).
pub fn hostnic_nad(name: &str, vxnets: &[&str]) -> String {
    let config = json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": "hostnic",
        "vxnets": vxnets,
        "capabilities": {"ips": true, "mac": true},
    });
    json!({
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"config": config.to_string()},
    })
    .to_string()
}
