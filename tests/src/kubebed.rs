//! A cloud testbed with a real Kubernetes API server and no kubelet: the
//! control plane on the simulated VMs' primary network, the agent's
//! ServiceAccount and RBAC from `deploy/`, a Node object per VM, and agents
//! run as the DaemonSet runs them. The API-server tests and the
//! observability benchmark share it.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use crate::Agent;
use crate::cloudbed::CloudBed;
use crate::cluster::Cluster;
use crate::controlplane::ControlPlane;

/// The agent's ServiceAccount and RBAC, as operators apply them.
pub const RBAC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/namespace-rbac.yaml");
/// hostnic's CustomResourceDefinitions.
pub const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds.yaml");

/// The control plane for `bed`, with the RBAC applied as deploy/README.md
/// says and a Node object per VM (`node-<i>`, its provider id naming the
/// VM; none for node `bare`), and the default namespace's ServiceAccount.
pub fn control_plane(bed: &CloudBed, bare: Option<usize>) -> anyhow::Result<ControlPlane> {
    let addr: Ipv4Addr = match bed.sim.node_addr.ip() {
        std::net::IpAddr::V4(a) => a,
        other => bail!("the simulator's node address {other} is not IPv4"),
    };
    let cp = ControlPlane::start(bed.sim.sdn_ns(), addr)?;
    cp.kubectl(&["apply", "-f", CRDS])?;
    cp.kubectl(&["apply", "-f", RBAC])?;
    for (i, node) in bed.sim.nodes.iter().enumerate() {
        let provider = if bare == Some(i) {
            Value::Null
        } else {
            json!(format!("qingcloud://{}", node.instance))
        };
        let obj = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("node-{i}")},
            "spec": {"providerID": provider},
        });
        cp.apply(&obj.to_string())?;
    }
    // The pods' namespace needs its ServiceAccount (no controller manager
    // makes it here).
    cp.apply(r#"{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "default"}}"#)?;
    Ok(cp)
}

/// An agent on VM `i` as the DaemonSet runs it: no instance id, the node's
/// name, the API server through the hostnic ServiceAccount's token; `cloud`
/// are its `[cloud]` keys, `kube` more `[kubernetes]` keys, `extra` more
/// tables.
pub fn agent(
    bed: &CloudBed,
    cp: &ControlPlane,
    i: usize,
    (cloud, kube): (&str, &str),
    extra: &str,
) -> anyhow::Result<Agent> {
    let kubeconfig = cp.service_account_kubeconfig("kube-system", "hostnic")?;
    let vxnets = bed.vxnet_ids();
    let config = agent_config(bed, i, &vxnets, &kubeconfig, (cloud, kube), extra);
    spawn_agent(bed, i, &config, Duration::from_secs(30))
}

/// [`agent`]'s configuration, with the node's `vxnets` chosen and the
/// ServiceAccount's `kubeconfig` made once for many agents. The Lease
/// lasts 3 s unless `kube` sets `lease_seconds`.
pub fn agent_config(
    bed: &CloudBed,
    i: usize,
    vxnets: &[String],
    kubeconfig: &std::path::Path,
    (cloud, kube): (&str, &str),
    extra: &str,
) -> String {
    let instance = format!("instance_id = {:?}\n", bed.sim.nodes[i].instance);
    let lease = match kube.contains("lease_seconds") {
        true => "",
        false => "lease_seconds = 3\n",
    };
    bed.agent_config_in(i, vxnets, cloud).replace(&instance, "")
        + &format!(
            "{extra}\n[kubernetes]\nenabled = true\nkubeconfig = {kubeconfig:?}\nnode_name = \"node-{i}\"\npod_wait_ms = 300\n{lease}{kube}"
        )
}

/// Starts the agent of VM `i` with `config`, waiting up to `limit` for it
/// to serve.
pub fn spawn_agent(
    bed: &CloudBed,
    i: usize,
    config: &str,
    limit: Duration,
) -> anyhow::Result<Agent> {
    let dir = bed
        .socket(i)
        .parent()
        .expect("a socket has a directory")
        .to_path_buf();
    std::fs::create_dir_all(&dir)?;
    Agent::spawn_within(&bed.sim.nodes[i].ns, &dir, config, bed.socket(i), limit)
}

/// A field of the cluster-duties Lease (a kubectl jsonpath, e.g.
/// `{.spec.holderIdentity}`); empty when it has none.
pub fn lease(cp: &ControlPlane, path: &str) -> String {
    cp.kubectl(&[
        "get",
        "lease",
        "hostnic-cluster-duties",
        "-n",
        "kube-system",
        "-o",
        &format!("jsonpath={path}"),
    ])
    .unwrap_or_default()
    .trim()
    .to_string()
}

/// Reports `ip` as pod `name`'s address (namespace default), as its
/// kubelet would once the sandbox is up.
pub fn report_pod_ip(cp: &ControlPlane, name: &str, ip: std::net::Ipv4Addr) -> anyhow::Result<()> {
    report_pod_ip_in(cp, "default", name, ip)
}

/// The same for pod `namespace/name`.
pub fn report_pod_ip_in(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
    ip: std::net::Ipv4Addr,
) -> anyhow::Result<()> {
    let ip = ip.to_string();
    cp.kubectl(&[
        "patch",
        "pod",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        &json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}}).to_string(),
    ])?;
    Ok(())
}

/// A pod object bound to node `node` (namespace default), as the
/// scheduler would leave it.
pub fn pod_object(name: &str, node: &str) -> String {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "busybox"}]},
    })
    .to_string()
}

/// Replaces `cluster`'s test-run agents (`Install::Agents`) with agents run
/// as the DaemonSet runs them (`agent` above: the API server through the
/// ServiceAccount, whose RBAC is applied first), so they watch their pods
/// and take part in the Lease; `cloud` and `extra` as for `agent`.
pub fn watching_agents(cluster: &mut Cluster, cloud: &str, extra: &str) -> anyhow::Result<()> {
    cluster.kubectl(&["apply", "-f", CRDS])?;
    cluster.kubectl(&["apply", "-f", RBAC])?;
    for i in 0..cluster.agents.len() {
        cluster.agents[i].stop()?;
        cluster.agents[i] = agent(&cluster.bed, &cluster.cp, i, (cloud, ""), extra)?;
    }
    Ok(())
}

/// The agents' `[load_balancer]` table for the testbed: internal load
/// balancers on the first vxnet, health checked every second.
pub const LOAD_BALANCER: &str =
    "[load_balancer]\nenabled = true\nvxnet = \"vxnet-pods\"\nhealth_check = \"1|1|2|1\"\n";

/// [`watching_agents`] with the Service controller on ([`LOAD_BALANCER`]
/// appended to `extra`), and the chart's RBAC rendered with it on (the
/// plain manifests in deploy/ have it off).
pub fn load_balancing_agents(
    cluster: &mut Cluster,
    cloud: &str,
    extra: &str,
) -> anyhow::Result<()> {
    watching_agents(cluster, cloud, &format!("{extra}\n{LOAD_BALANCER}"))?;
    let helm = crate::helm::Helm::offline()?;
    for object in helm.template(&[
        "--show-only",
        "templates/rbac.yaml",
        "--set",
        "config.vxnets={vxnet-pods},config.load_balancer.enabled=true",
    ])? {
        cluster.cp.apply(&object.to_string())?;
    }
    Ok(())
}
