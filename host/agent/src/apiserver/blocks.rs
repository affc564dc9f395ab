//! `HostnicBlock`: a node's claim on a block of a shared vxnet's range
//! (`docs/shared-nic.md`, "Addressing"), or on one address pinned for a
//! sticky identity (a `/32` with `spec.identity`, "Sticky"). Cluster-scoped,
//! named for the block, labelled with its vxnet and node (and a pin with a
//! hash of its identity, for the lookup), owned by the Node object, so the
//! garbage collector releases a deleted node's claims. A claim is a
//! create: the API server's AlreadyExists decides a race, as a Lease does;
//! a pin moves by a replace and goes by a delete, both conditional on its
//! resourceVersion. The CRD is `deploy/crds.yaml`.

use std::time::SystemTime;

use anyhow::Context;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
    Preconditions,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::statefulsets::Owners;
use crate::shared::{Claims, Listing, Pin};

const NODE_LABEL: &str = "hostnic.io/node";
const VXNET_LABEL: &str = "hostnic.io/vxnet";
/// A hash of a pin's identity: identities hold `/`, which label values
/// may not.
const IDENTITY_LABEL: &str = "hostnic.io/identity";

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

/// The label value for `identity`: 40 hex digits of its SHA-256.
fn identity_label(identity: &str) -> String {
    let hash = Sha256::digest(identity.as_bytes());
    hash.iter().take(20).map(|b| format!("{b:02x}")).collect()
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

/// A pin as an object: a `/32` claim with its identity, the pod holding
/// it (if any), and since when it has been kept without one.
pub fn pin_object(pin: &Pin, node_uid: Option<&str>) -> DynamicObject {
    let block = Ipv4Net::from(pin.address);
    let mut o = object(&pin.vxnet, block, &pin.node, node_uid);
    o.metadata
        .labels
        .get_or_insert_default()
        .insert(IDENTITY_LABEL.into(), identity_label(&pin.identity));
    o.metadata.resource_version = pin.version.clone();
    let released = pin
        .released
        .and_then(|t| Timestamp::try_from(t).ok())
        .map(|t| t.to_string());
    let spec = &mut o.data["spec"];
    spec["identity"] = json!(pin.identity);
    spec["pod"] = json!(pin.pod);
    spec["released"] = json!(released);
    o
}

/// A claim read back.
#[derive(Debug)]
pub enum Parsed {
    Block(Ipv4Net, String),
    Pin(Pin),
}

/// `None` for a claim that is not well formed.
pub fn parse(o: &DynamicObject) -> Option<Parsed> {
    let spec = o.data.get("spec")?;
    let cidr: Ipv4Net = spec.get("cidr")?.as_str()?.parse().ok()?;
    let node = spec.get("node")?.as_str()?.to_string();
    let Some(identity) = spec.get("identity").and_then(|i| i.as_str()) else {
        return Some(Parsed::Block(cidr, node));
    };
    let text = |k: &str| spec.get(k).and_then(|v| v.as_str()).map(str::to_string);
    Some(Parsed::Pin(Pin {
        vxnet: spec.get("vxnet")?.as_str()?.to_string(),
        address: (cidr.prefix_len() == 32).then(|| cidr.addr())?,
        identity: identity.to_string(),
        node,
        pod: text("pod"),
        released: text("released")
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map(SystemTime::from),
        version: o.metadata.resource_version.clone(),
    }))
}

/// The claims in the API server, for this node.
#[derive(Clone)]
pub struct ApiBlocks {
    api: Api<DynamicObject>,
    /// Whether a StatefulSet still wants a pinned identity.
    owners: Owners,
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
            owners: Owners::new(client.clone()),
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

    async fn list(&self, vxnet: &str) -> anyhow::Result<Listing> {
        let list = self
            .api
            .list(&ListParams::default().labels(&format!("{VXNET_LABEL}={vxnet}")))
            .await
            .with_context(|| {
                format!("listing the HostnicBlocks of {vxnet} (is deploy/crds.yaml applied?)")
            })?;
        let mut out = Listing::default();
        for parsed in list.items.iter().filter_map(parse) {
            match parsed {
                Parsed::Block(b, node) => out.blocks.push((b, node)),
                Parsed::Pin(p) => out.pins.push(p),
            }
        }
        Ok(out)
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

    async fn pin_of(&self, identity: &str) -> anyhow::Result<Option<Pin>> {
        let list = self
            .api
            .list(
                &ListParams::default()
                    .labels(&format!("{IDENTITY_LABEL}={}", identity_label(identity))),
            )
            .await
            .with_context(|| format!("looking up the pinned address of sticky {identity}"))?;
        Ok(list.items.iter().filter_map(parse).find_map(|p| match p {
            Parsed::Pin(p) if p.identity == identity => Some(p),
            _ => None,
        }))
    }

    async fn create_pin(&self, pin: &Pin) -> anyhow::Result<Option<Pin>> {
        let obj = pin_object(pin, self.node_uid.as_deref());
        match self.api.create(&PostParams::default(), &obj).await {
            Ok(o) => Ok(parsed_pin(&o)),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
            Err(e) => Err(e)
                .with_context(|| format!("pinning {} for sticky {}", pin.address, pin.identity)),
        }
    }

    async fn replace_pin(&self, pin: &Pin) -> anyhow::Result<Option<Pin>> {
        let uid = (pin.node == self.node)
            .then_some(self.node_uid.as_deref())
            .flatten();
        let obj = pin_object(pin, uid);
        let name = obj.metadata.name.clone().unwrap_or_default();
        match self.api.replace(&name, &PostParams::default(), &obj).await {
            Ok(o) => Ok(parsed_pin(&o)),
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(None),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "updating the pin of {} for sticky {}",
                    pin.address, pin.identity
                )
            }),
        }
    }

    async fn delete_pin(&self, pin: &Pin) -> anyhow::Result<bool> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: pin.version.clone(),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        let name = name(&pin.vxnet, Ipv4Net::from(pin.address));
        match self.api.delete(&name, &params).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e).with_context(|| format!("deleting HostnicBlock {name}")),
        }
    }

    async fn wants(&self, identity: &str) -> Option<bool> {
        self.owners.wants(identity).await
    }
}

fn parsed_pin(o: &DynamicObject) -> Option<Pin> {
    match parse(o)? {
        Parsed::Pin(p) => Some(p),
        Parsed::Block(..) => None,
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
        assert!(matches!(parse(&o), Some(Parsed::Block(b, n)) if b == block && n == "node-0"));
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

    #[test]
    fn a_pin_round_trips_with_its_identity_hashed_into_a_label() {
        let mut pin = Pin {
            vxnet: "vxnet-a".into(),
            address: "10.100.0.130".parse().unwrap(),
            identity: "statefulset/default/db/0@hostnic".into(),
            node: "node-1".into(),
            pod: None,
            released: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)),
            version: Some("42".into()),
        };
        let o = pin_object(&pin, Some("uid-1"));
        assert_eq!(o.metadata.name.as_deref(), Some("vxnet-a.10-100-0-130-32"));
        let label = &o.metadata.labels.as_ref().unwrap()[IDENTITY_LABEL];
        assert_eq!(label.len(), 40);
        assert!(label.chars().all(|c| c.is_ascii_hexdigit()), "{label}");
        assert_ne!(label, &identity_label("statefulset/default/db/1@hostnic"));
        assert!(matches!(parse(&o), Some(Parsed::Pin(p)) if p == pin));
        pin.pod = Some("default/db-0".into());
        pin.released = None;
        assert!(matches!(parse(&pin_object(&pin, None)), Some(Parsed::Pin(p)) if p == pin));
    }
}
