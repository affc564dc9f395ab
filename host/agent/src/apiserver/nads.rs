//! NetworkAttachmentDefinitions as the API server has them, from a watch
//! of every namespace (`[kubernetes] networks = true` only): an ADD reads a
//! pod's extra networks from memory. A definition the watch has not
//! delivered (the watch just started, or the object was made a moment ago)
//! is read once with a GET before the ADD is refused for it.

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

#[derive(Clone)]
pub struct NadCache {
    store: Store<DynamicObject>,
    client: kube::Client,
    resource: ApiResource,
}

impl std::fmt::Debug for NadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NadCache")
            .field("cached", &self.store.state().len())
            .finish()
    }
}

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

impl NadCache {
    /// Starts the watch. It restarts with backoff on errors (the CRD not
    /// installed yet, say); the cache serves what it has meanwhile.
    pub fn start(client: kube::Client) -> NadCache {
        let resource = resource();
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .applied_objects();
        super::drive(
            stream,
            "NetworkAttachmentDefinition",
            "retrying with backoff (is the CRD installed?)",
        );
        NadCache {
            store,
            client,
            resource,
        }
    }

    /// The `spec.config` of definition `namespace/name`: from the cache, else
    /// one GET. `Ok(None)`: there is no such definition.
    pub async fn config(&self, namespace: &str, name: &str) -> Result<Option<String>, String> {
        let key = ObjectRef::new_with(name, self.resource.clone()).within(namespace);
        let object = match self.store.get(&key) {
            Some(o) => Some((*o).clone()),
            None => Api::<DynamicObject>::namespaced_with(
                self.client.clone(),
                namespace,
                &self.resource,
            )
            .get_opt(name)
            .await
            .map_err(|e| format!("reading NetworkAttachmentDefinition {namespace}/{name}: {e}"))?,
        };
        let Some(object) = object else {
            return Ok(None);
        };
        match object.data["spec"]["config"].as_str() {
            Some(c) => Ok(Some(c.to_string())),
            None => Err(format!(
                "NetworkAttachmentDefinition {namespace}/{name} has no spec.config (a config file on the node by its name is Multus's convention, not hostnic's)"
            )),
        }
    }
}
