//! `[[shared]]`: vxnets whose pods share the node's NIC there instead of
//! getting one each (shared-NIC mode, `docs/shared-nic.md`). The mode
//! belongs to the vxnet, so every network that names it — the cluster
//! network, a NetworkAttachmentDefinition — gets it; a namespace cannot
//! switch it on or off.

use anyhow::bail;
use ipnet::Ipv4Net;
use serde::Deserialize;

/// One shared vxnet and the part of it pods are addressed from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedVxnet {
    /// The vxnet (one of `vxnets`).
    pub vxnet: String,
    /// The addresses pods get. The operator keeps the cloud's own
    /// allocation out of it (the vxnet's DHCP range); the agent refuses an
    /// address the cloud gave a NIC. Without Kubernetes the range is this
    /// node's alone.
    pub range: Ipv4Net,
    /// With Kubernetes, nodes claim the range in blocks of this prefix
    /// (`HostnicBlock` objects); 28 is 16 addresses.
    #[serde(default = "default_block_prefix")]
    pub block_prefix: u8,
    /// How long a node keeps a block no pod uses before it gives it back.
    #[serde(default = "default_block_idle")]
    pub block_idle_seconds: u64,
}

fn default_block_prefix() -> u8 {
    28
}

fn default_block_idle() -> u64 {
    300
}

/// The policy-routing table of the `n`th shared vxnet: the node's NIC there
/// and the vxnet's gateway.
pub fn table_of(n: usize) -> u32 {
    1001 + n as u32
}

/// Checks the list on its own; the range within the vxnet is checked once
/// the cloud has said what the vxnet is.
pub(super) fn validate(shared: &[SharedVxnet], vxnets: &[String]) -> anyhow::Result<()> {
    for (i, s) in shared.iter().enumerate() {
        if !vxnets.is_empty() && !vxnets.contains(&s.vxnet) {
            bail!(
                "shared vxnet {} is not one of vxnets ({})",
                s.vxnet,
                vxnets.join(", ")
            );
        }
        if s.range.prefix_len() > 30 {
            bail!(
                "shared range {} of {} is too small: at least a /30",
                s.range,
                s.vxnet
            );
        }
        if s.block_prefix < s.range.prefix_len() || s.block_prefix > 32 {
            bail!(
                "block_prefix {} of {} must be between the range's prefix ({}) and 32",
                s.block_prefix,
                s.vxnet,
                s.range.prefix_len()
            );
        }
        if s.range.trunc() != s.range {
            bail!(
                "shared range {} of {} has host bits set; did you mean {}?",
                s.range,
                s.vxnet,
                s.range.trunc()
            );
        }
        if let Some(o) = shared[..i].iter().find(|o| o.vxnet == s.vxnet) {
            bail!("vxnet {} is listed twice in [[shared]]", o.vxnet);
        }
        if let Some(o) = shared[..i]
            .iter()
            .find(|o| o.range.contains(&s.range) || s.range.contains(&o.range))
        {
            bail!(
                "shared ranges {} ({}) and {} ({}) overlap",
                o.range,
                o.vxnet,
                s.range,
                s.vxnet
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(vxnet: &str, range: &str) -> SharedVxnet {
        SharedVxnet {
            vxnet: vxnet.into(),
            range: range.parse().unwrap(),
            block_prefix: 28,
            block_idle_seconds: 300,
        }
    }

    #[test]
    fn bad_lists_are_refused_by_name() {
        let v = vec!["vxnet-a".to_string(), "vxnet-b".to_string()];
        assert!(validate(&[s("vxnet-a", "10.0.0.128/25")], &v).is_ok());
        let e = |l: &[SharedVxnet]| validate(l, &v).unwrap_err().to_string();
        assert!(e(&[s("vxnet-z", "10.0.0.128/25")]).contains("vxnet-z is not one of vxnets"));
        assert!(e(&[s("vxnet-a", "10.0.0.129/25")]).contains("did you mean 10.0.0.128/25"));
        assert!(e(&[s("vxnet-a", "10.0.0.4/31")]).contains("too small"));
        let mut wide = s("vxnet-a", "10.0.0.0/24");
        wide.block_prefix = 23;
        assert!(e(&[wide]).contains("block_prefix 23"));
        assert!(e(&[s("vxnet-a", "10.0.0.0/25"), s("vxnet-a", "10.0.1.0/25")]).contains("twice"));
        assert!(
            e(&[s("vxnet-a", "10.0.0.0/24"), s("vxnet-b", "10.0.0.128/25")]).contains("overlap")
        );
    }
}
