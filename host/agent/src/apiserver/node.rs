//! This node's VM, from its Node object: `spec.providerID`, never the node
//! name (a node may be named anything; its provider id is what the cloud
//! calls the VM).

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Node;
use kube::Api;

/// The QingCloud instance id in a provider id: `qingcloud://i-abc123`, or
/// with the zone, `qingcloud:///pek3a/i-abc123`.
pub fn instance_from_provider_id(provider_id: &str) -> anyhow::Result<String> {
    let Some(rest) = provider_id.strip_prefix("qingcloud://") else {
        bail!(
            "spec.providerID {provider_id:?} is not a QingCloud provider id (qingcloud://<instance id>)"
        );
    };
    let id = rest.rsplit('/').next().unwrap_or_default();
    let valid =
        id.starts_with("i-") && id.len() > 2 && id[2..].chars().all(|c| c.is_ascii_alphanumeric());
    if !valid {
        bail!("spec.providerID {provider_id:?} does not end in an instance id (i-xxxxxxxx)");
    }
    Ok(id.to_string())
}

/// Reads node `name`'s instance id from the API server.
pub async fn instance_id(client: &kube::Client, name: &str) -> anyhow::Result<String> {
    let node = Api::<Node>::all(client.clone())
        .get(name)
        .await
        .with_context(|| format!("reading node {name} from the API server"))?;
    let Some(provider_id) = node.spec.and_then(|s| s.provider_id) else {
        bail!(
            "node {name} has no spec.providerID, so its VM is unknown: start its kubelet with \
             --provider-id=qingcloud://<instance id> (or set cloud.instance_id / --instance-id)"
        );
    };
    instance_from_provider_id(&provider_id).with_context(|| format!("node {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids_name_the_instance() {
        assert_eq!(
            instance_from_provider_id("qingcloud://i-abc123").unwrap(),
            "i-abc123"
        );
        assert_eq!(
            instance_from_provider_id("qingcloud:///pek3a/i-abc123").unwrap(),
            "i-abc123"
        );
        for bad in [
            "aws:///us-east-1a/i-0abc",
            "qingcloud://",
            "qingcloud://node-1",
            "i-abc",
        ] {
            assert!(instance_from_provider_id(bad).is_err(), "{bad}");
        }
    }
}
