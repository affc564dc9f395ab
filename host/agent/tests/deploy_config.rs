//! The agent config shipped in `deploy/configmap.yaml` (the Helm chart's
//! defaults, rendered by scripts/render-deploy) is one the agent accepts,
//! and so is its commented `[hooks.vxnet]` example once an operator
//! uncomments it and fills in the digest; and it keeps the agent's own
//! defaults but where a DaemonSet on the cloud needs others.

use hostnic_agent::config::Config;

/// The `agent.toml: |` block of the ConfigMap, unindented.
fn shipped_agent_toml() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/configmap.yaml");
    let yaml = std::fs::read_to_string(path).expect("deploy/configmap.yaml");
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "agent.toml: |");
    lines.next().expect("an agent.toml block");
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

fn accepted(toml: &str) -> Config {
    let mut cfg = Config::parse(toml).unwrap_or_else(|e| panic!("{e:#}\n{toml}"));
    // The DaemonSet passes it per node (--node-name); the VM comes from the
    // Node's provider id.
    cfg.kubernetes.node_name = "node-1".into();
    cfg.validate().unwrap_or_else(|e| panic!("{e:#}\n{toml}"));
    cfg
}

#[test]
fn the_shipped_agent_config_is_accepted() {
    let cfg = accepted(&shipped_agent_toml());
    assert_eq!(cfg.vxnets.len(), 2);
    assert!(cfg.hooks.vxnet.path.is_none());
    assert!(cfg.kubernetes.enabled);
    assert!(cfg.cloud.instance_id.is_empty());
    assert_eq!(
        cfg.cloud.leak_sweep,
        hostnic_agent::config::LeakSweep::Cluster
    );
}

#[test]
fn its_commented_hooks_example_is_accepted_once_uncommented() {
    let text = shipped_agent_toml();
    let start = text
        .find("# [hooks.vxnet]")
        .expect("a commented [hooks.vxnet]");
    let mut out = text[..start].to_string();
    for line in text[start..].lines() {
        match line.strip_prefix("# ") {
            Some(l) if !l.starts_with(' ') => out += l,
            _ => out += line,
        }
        out.push('\n');
    }
    let out = out.replace("<64 hex digits: sha256sum of the file>", &"ab".repeat(32));
    let cfg = accepted(&out);
    assert_eq!(
        cfg.hooks.vxnet.path.as_deref(),
        Some(std::path::Path::new("/etc/hostnic/my_vxnet_policy.wasm"))
    );
    assert_eq!(cfg.hooks.vxnet.deadline_ms, Some(200));
}

/// The chart's defaults (which deploy/configmap.yaml is rendered from) are
/// the agent's own, but for what a DaemonSet on the cloud needs and says
/// so: the cloud inventory, the API server (and NetworkPolicy enforced
/// from it), the cluster-wide leak sweep, the credentials' mount, and the
/// site's zone and vxnets.
#[test]
fn the_shipped_config_keeps_the_agents_defaults_but_for_the_daemonsets() {
    use hostnic_agent::config::{LeakSweep, Source};
    let shipped = accepted(&shipped_agent_toml());
    let builtin = Config::parse("").unwrap();
    let debug = |v: &dyn std::fmt::Debug| format!("{v:?}");

    assert_eq!(shipped.inventory.source, Source::Cloud);
    assert!(shipped.inventory.nics.is_empty());
    let mut cloud = builtin.cloud.clone();
    cloud.leak_sweep = LeakSweep::Cluster;
    assert_eq!(debug(&shipped.cloud), debug(&cloud));
    let mut kubernetes = builtin.kubernetes.clone();
    kubernetes.enabled = true;
    kubernetes.network_policy = true;
    kubernetes.node_name = "node-1".into();
    assert_eq!(debug(&shipped.kubernetes), debug(&kubernetes));
    assert_eq!(
        shipped.iaas_credentials.as_deref(),
        Some(std::path::Path::new("/etc/qingcloud"))
    );
    assert_eq!(shipped.zone.as_deref(), Some("pek3a"));

    assert_eq!(shipped.socket, builtin.socket);
    assert_eq!(shipped.state_dir, builtin.state_dir);
    assert_eq!(shipped.iface, builtin.iface);
    assert_eq!(shipped.mtu, builtin.mtu);
    assert_eq!(shipped.policy, builtin.policy);
    assert_eq!(debug(&shipped.log), debug(&builtin.log));
    assert_eq!(debug(&shipped.hooks), debug(&builtin.hooks));
    assert_eq!(debug(&shipped.metrics), debug(&builtin.metrics));
    assert!(shipped.shared.is_empty());
}
