//! `HostnicBlock`: a node's claim on a block of a shared vxnet's range
//! (`docs/shared-nic.md`, "Addressing"). Cluster-scoped, named for the
//! block, labelled with its vxnet and node, owned by the Node object, so
//! the garbage collector releases a deleted node's blocks. The claim is a
//! create: the API server's AlreadyExists decides a race, as a Lease does.
//! The CRD is `deploy/crds.yaml`.

use anyhow::Context;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use serde_json::json;

use crate::shared::Claims;

const NODE_LABEL: &str = "hostnic.io/node";
const VXNET_LABEL: &str = "hostnic.io/vxnet";

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("hostnic.io", "v1", "HostnicBlock"),
        "hostnicblocks",
    )
}

/// The object's name: the vxnet and the block, `vxnet-a.10-100-0-128-28`.
pub fn name(vxnet: &str, block: Ipv4Net) -> String {
    format!(
        "{vxnet}.{}-{}",
        block.addr().to_string().replace('.', "-"),
        block.prefix_len()
    )
}

/// The claim as an object.
pub fn object(vxnet: &str, block: Ipv4Net, node: &str, node_uid: Option<&str>) -> DynamicObject {
    let mut meta = json!({
        "name": name(vxnet, block),
        "labels": {NODE_LABEL: node, VXNET_LABEL: vxnet},
    });
    if let Some(uid) = node_uid {
        meta["ownerReferences"] = json!([{
            "apiVersion": "v1", "kind": "Node", "name": node, "uid": uid,
        }]);
    }
    serde_json::from_value(json!({
        "apiVersion": "hostnic.io/v1",
        "kind": "HostnicBlock",
        "metadata": meta,
        "spec": {"vxnet": vxnet, "cidr": block.to_string(), "node": node},
    }))
    .expect("a well-formed object")
}

/// (cidr, node) of a claim; `None` for one that is not well formed.
pub fn parse(o: &DynamicObject) -> Option<(Ipv4Net, String)> {
    let spec = o.data.get("spec")?;
    let cidr: Ipv4Net = spec.get("cidr")?.as_str()?.parse().ok()?;
    let node = spec.get("node")?.as_str()?.to_string();
    Some((cidr, node))
}

/// The claims in the API server, for this node.
#[derive(Clone)]
pub struct ApiBlocks {
    api: Api<DynamicObject>,
    node: String,
    /// The Node's uid, for the owner reference; `None` if it could not be
    /// read (the claims then outlive a deleted node until an operator
    /// deletes them).
    node_uid: Option<String>,
}

impl std::fmt::Debug for ApiBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiBlocks")
            .field("node", &self.node)
            .finish()
    }
}

impl ApiBlocks {
    pub async fn new(client: kube::Client, node: &str) -> ApiBlocks {
        let node_uid = match Api::<Node>::all(client.clone()).get(node).await {
            Ok(n) => n.metadata.uid,
            Err(e) => {
                tracing::warn!(node, error = %e, "reading the Node's uid; block claims get no owner");
                None
            }
        };
        ApiBlocks {
            api: Api::all_with(client, &resource()),
            node: node.to_string(),
            node_uid,
        }
    }
}

#[async_trait::async_trait]
impl Claims for ApiBlocks {
    fn node(&self) -> &str {
        &self.node
    }

    async fn list(&self, vxnet: &str) -> anyhow::Result<Vec<(Ipv4Net, String)>> {
        let list = self
            .api
            .list(&ListParams::default().labels(&format!("{VXNET_LABEL}={vxnet}")))
            .await
            .with_context(|| {
                format!("listing the HostnicBlocks of {vxnet} (is deploy/crds.yaml applied?)")
            })?;
        Ok(list.items.iter().filter_map(parse).collect())
    }

    async fn claim(&self, vxnet: &str, block: Ipv4Net) -> anyhow::Result<bool> {
        let obj = object(vxnet, block, &self.node, self.node_uid.as_deref());
        match self.api.create(&PostParams::default(), &obj).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => {
                Err(e).with_context(|| format!("creating HostnicBlock {}", name(vxnet, block)))
            }
        }
    }

    async fn release(&self, vxnet: &str, block: Ipv4Net) -> anyhow::Result<()> {
        match self
            .api
            .delete(&name(vxnet, block), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("deleting HostnicBlock {}", name(vxnet, block)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_round_trips_and_is_named_for_its_block() {
        let block: Ipv4Net = "10.100.0.128/28".parse().unwrap();
        let o = object("vxnet-a", block, "node-0", Some("uid-1"));
        assert_eq!(o.metadata.name.as_deref(), Some("vxnet-a.10-100-0-128-28"));
        assert_eq!(parse(&o), Some((block, "node-0".to_string())));
        let owner = &o.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", "uid-1"));
        assert_eq!(o.metadata.labels.as_ref().unwrap()[VXNET_LABEL], "vxnet-a");
        assert!(
            object("vxnet-a", block, "node-0", None)
                .metadata
                .owner_references
                .is_none()
        );
    }
}
