//! `[load_balancer]`: Services of type LoadBalancer on the cloud's load
//! balancer, with the pods' own addresses as its backends.

use anyhow::bail;
use serde::Deserialize;

/// What a load balancer sends a Service's traffic to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backends {
    /// The ready pods' addresses, from the Service's EndpointSlices: no
    /// NodePort hop, no second connection tracking on a node.
    #[default]
    Pods,
    /// Every node's VM on the Service's NodePort, for pods that are not on
    /// the vxnet.
    Nodeport,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    /// Run the Service controller on the node holding the Lease.
    #[serde(default)]
    pub enabled: bool,
    /// The vxnet an internal load balancer takes its address on, unless a
    /// Service names another
    /// (`service.beta.kubernetes.io/qingcloud-load-balancer-vxnet-id`).
    #[serde(default)]
    pub vxnet: String,
    /// `pods` or `nodeport`; a Service may choose with
    /// `hostnic.io/load-balancer-backends`.
    #[serde(default)]
    pub backends: Backends,
    /// Each listener's `healthy_check_option`, `interval|timeout|fall|rise`
    /// (seconds, counts), unless a Service's annotation says otherwise.
    #[serde(default = "default_check")]
    pub health_check: String,
    /// The `spec.loadBalancerClass` served, besides Services without one.
    #[serde(default = "default_class")]
    pub class: String,
}

impl Default for LoadBalancer {
    fn default() -> Self {
        toml::from_str("").expect("the [load_balancer] defaults parse")
    }
}

fn default_check() -> String {
    "5|3|2|2".into()
}

pub fn default_class() -> String {
    "hostnic.io/qingcloud".into()
}

impl LoadBalancer {
    pub(super) fn validate(&self, kubernetes: bool, cloud: bool) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if !kubernetes || !cloud {
            bail!(
                "load_balancer.enabled needs kubernetes.enabled (Services come from the API server) and inventory.source = \"cloud\" (the load balancers are the cloud's)"
            );
        }
        if self.vxnet.is_empty() {
            bail!(
                "load_balancer.vxnet is required: the vxnet internal load balancers take their address on"
            );
        }
        let parts: Vec<&str> = self.health_check.split('|').collect();
        if parts.len() != 4 || parts.iter().any(|p| p.parse::<u32>().is_err()) {
            bail!(
                "load_balancer.health_check {:?} is not interval|timeout|fall|rise (e.g. \"5|3|2|2\")",
                self.health_check
            );
        }
        Ok(())
    }
}
