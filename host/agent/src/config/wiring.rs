//! `wiring` and `[vxnet_wiring]`: how a pod's own NIC reaches it. The
//! agent-wide `wiring` serves every vxnet `[vxnet_wiring]` does not name;
//! a shared vxnet (`[[shared]]`) is always `shared`. Every NIC wiring is
//! built whatever is chosen, so attachments made under another choice
//! (before a config change) are still released by their own.

use std::collections::BTreeMap;

use anyhow::bail;
use serde::Deserialize;

/// A way of wiring a NIC of the pod's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicWiring {
    /// The NIC stays on the node; the pod gets a passthru macvlan of it,
    /// made straight in its namespace (no device move): an exclusive ADD
    /// at a fraction of a move's cost (`docs/performance.md`). The
    /// default: the whole suite runs under it, and under `move` with
    /// `HOSTNIC_TEST_WIRING=move`.
    #[default]
    Passthru,
    /// The NIC itself is moved into the pod: the pod sees the device
    /// (its driver, its offloads), at the cost of a device move per ADD
    /// and DEL.
    Move,
}

impl NicWiring {
    pub const ALL: [NicWiring; 2] = [NicWiring::Passthru, NicWiring::Move];

    /// The driver's name (`crate::wiring::Driver::name`).
    pub fn name(self) -> &'static str {
        match self {
            NicWiring::Passthru => "passthru",
            NicWiring::Move => "move",
        }
    }
}

/// Checks `[vxnet_wiring]` against the vxnets the agent has (`vxnets`,
/// or the static inventory's) and the shared ones.
pub(super) fn validate(
    by_vxnet: &BTreeMap<String, NicWiring>,
    vxnets: &[String],
    shared: &[String],
) -> anyhow::Result<()> {
    for vxnet in by_vxnet.keys() {
        if shared.contains(vxnet) {
            bail!(
                "vxnet_wiring names {vxnet}, a shared vxnet ([[shared]]): its pods share the node's NIC, there is no NIC of theirs to wire"
            );
        }
        if !vxnets.contains(vxnet) {
            bail!(
                "vxnet_wiring names {vxnet}, which is not one of this agent's vxnets ({})",
                vxnets.join(", ")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wiring_is_per_agent_and_per_vxnet() {
        let c = crate::config::Config::parse("").unwrap();
        assert_eq!(c.wiring, NicWiring::Passthru);
        let c = crate::config::Config::parse(
            "wiring = \"move\"\nvxnets = [\"vxnet-a\", \"vxnet-b\"]\n[vxnet_wiring]\nvxnet-b = \"passthru\"\n",
        )
        .unwrap();
        assert_eq!(c.wiring, NicWiring::Move);
        assert_eq!(c.vxnet_wiring["vxnet-b"], NicWiring::Passthru);
        let v = ["vxnet-a".to_string(), "vxnet-b".to_string()];
        validate(&c.vxnet_wiring, &v, &[]).unwrap();
        let e = validate(&c.vxnet_wiring, &v, &["vxnet-b".into()]).unwrap_err();
        assert!(e.to_string().contains("shared vxnet"), "{e}");
        let e = validate(&c.vxnet_wiring, &v[..1], &[]).unwrap_err();
        assert!(e.to_string().contains("not one of"), "{e}");
        let e = crate::config::Config::parse("wiring = \"shared\"").unwrap_err();
        assert!(e.to_string().contains("shared"), "{e}");
    }
}
