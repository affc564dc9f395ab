//! The nodes' gateway NICs, through the API server: each agent writes its
//! own on its Node (the [`ANNOTATION`], a JSON object of vxnet → address
//! and MAC) and watches every Node's, so that each pod knows where its
//! Service answers go back (`return_path/`), every Node's addresses
//! (a hostNetwork backend answers from them), and every Node's name (the
//! nodes sharing the cloud account's API rate, `cloud::pace`). Of each Node only its
//! metadata and addresses are kept: status (images, conditions) and
//! managed fields are dropped as they arrive.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::return_path::{Gateway, Nodes, OwnGateway};

/// The annotation on a Node naming its gateway NICs.
pub const ANNOTATION: &str = "hostnic.io/gateways";

/// Writes this node's gateway NICs on its Node whenever they change (a
/// failed write is retried).
pub fn publish(
    client: kube::Client,
    node: &str,
    own: watch::Receiver<BTreeMap<String, OwnGateway>>,
) {
    tokio::spawn(publishing(client, node.to_string(), own));
}

/// Every node's gateway NICs and addresses, and every Node's name,
/// kept current by a watch of the Nodes: `None` until the watch has listed
/// them all.
pub fn watch(client: kube::Client) -> watch::Receiver<Option<Nodes>> {
    let writer = reflector::store::Writer::<Node>::default();
    let store = writer.as_reader();
    let (tx, rx) = watch::channel(None);
    let mut listed = false;
    let nodes = Api::<Node>::all(client);
    let stream = watcher(nodes, watcher::Config::default())
        .default_backoff()
        .modify(|node| {
            node.metadata.managed_fields = None;
            node.spec = None;
            if let Some(status) = node.status.take() {
                node.status = Some(NodeStatus {
                    addresses: status.addresses,
                    ..NodeStatus::default()
                });
            }
        })
        .reflect(writer)
        .inspect(move |event| {
            listed |= matches!(event, Ok(watcher::Event::InitDone));
            if !listed {
                return;
            }
            let now = Some(gather(&store));
            tx.send_if_modified(|seen| {
                let differs = *seen != now;
                *seen = now;
                differs
            });
        });
    super::drive(stream, "Node", "retrying with backoff");
    rx
}

/// Every Node's gateway NICs, by vxnet, and addresses. A Node whose
/// annotation does not parse is left out of the gateways, with a warning.
fn gather(store: &Store<Node>) -> Nodes {
    let mut all = Nodes::default();
    for node in store.state() {
        all.names.extend(node.metadata.name.clone());
        let addresses = node
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten());
        all.addresses.extend(
            addresses
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse::<std::net::Ipv4Addr>().ok()),
        );
        let Some(value) = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION))
        else {
            continue;
        };
        match serde_json::from_str::<BTreeMap<String, Gateway>>(value) {
            Ok(own) => {
                for (vxnet, gateway) in own {
                    all.gateways.entry(vxnet).or_default().insert(gateway);
                }
            }
            Err(e) => warn!(
                node = node.metadata.name.as_deref().unwrap_or_default(),
                error = %e,
                "the node's {ANNOTATION} annotation does not parse; its pods' Service answers go straight back"
            ),
        }
    }
    all
}

/// Keeps this node's annotation equal to `own`.
async fn publishing(
    client: kube::Client,
    node: String,
    mut own: watch::Receiver<BTreeMap<String, OwnGateway>>,
) {
    let nodes = Api::<Node>::all(client);
    loop {
        let value: BTreeMap<String, Gateway> = own
            .borrow_and_update()
            .iter()
            .map(|(vxnet, g)| (vxnet.clone(), g.gateway))
            .collect();
        let patch = json!({"metadata": {"annotations": {
            ANNOTATION: serde_json::to_string(&value).unwrap_or_default()
        }}});
        match nodes
            .patch_metadata(&node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(
                    vxnets = value.len(),
                    "this node's gateway NICs written on its Node"
                );
                if own.changed().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "writing this node's gateway NICs on its Node failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}
