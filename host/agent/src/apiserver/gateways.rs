//! The nodes' gateway NICs, through the API server: each agent writes its
//! own on its Node (the [`ANNOTATION`], a JSON object of vxnet → address
//! and MAC) and watches every Node's, so that each pod knows where its
//! Service answers go back (`return_path.rs`). Only the Nodes' metadata is
//! watched.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::return_path::{Gateway, Gateways};

/// The annotation on a Node naming its gateway NICs.
pub const ANNOTATION: &str = "hostnic.io/gateways";

/// Writes this node's gateway NICs on its Node whenever they change (a
/// failed write is retried), and returns every node's, kept current by a
/// watch of the Nodes: `None` until the watch has listed them all.
pub fn start(
    client: kube::Client,
    node: &str,
    own: watch::Receiver<BTreeMap<String, Gateway>>,
) -> watch::Receiver<Option<Gateways>> {
    tokio::spawn(publish(client.clone(), node.to_string(), own));
    let writer = reflector::store::Writer::<PartialObjectMeta<Node>>::default();
    let store = writer.as_reader();
    let (tx, rx) = watch::channel(None);
    let mut listed = false;
    let nodes = Api::<PartialObjectMeta<Node>>::all(client);
    let stream = watcher(nodes, watcher::Config::default())
        .default_backoff()
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

/// Every Node's gateway NICs, by vxnet. A Node whose annotation does not
/// parse is left out, with a warning.
fn gather(store: &Store<PartialObjectMeta<Node>>) -> Gateways {
    let mut all = Gateways::new();
    for node in store.state() {
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
                    all.entry(vxnet).or_default().insert(gateway);
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
async fn publish(
    client: kube::Client,
    node: String,
    mut own: watch::Receiver<BTreeMap<String, Gateway>>,
) {
    let nodes = Api::<Node>::all(client);
    loop {
        let value = own.borrow_and_update().clone();
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
