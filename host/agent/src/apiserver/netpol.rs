//! What NetworkPolicy enforcement reads from the API server, from four
//! watches (kube-rs reflectors): the NetworkPolicies, the Namespaces'
//! labels, every pod's labels, address and named ports, and the Services'
//! ClusterIPs and selectors. Only those fields are kept; the rest of each
//! object is dropped as it arrives. Every change bumps one counter the
//! enforcement waits on; it never re-lists on a timer.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, PodStatus, Service, ServiceSpec};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::netpol::View;
use crate::netpol::compile::{Cluster, NamedPort, PodView, ServicePort, ServiceView, protocol};

/// The four caches, and the counter their changes bump.
#[derive(Clone, Debug)]
pub struct PolicyView {
    policies: Store<NetworkPolicy>,
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    services: Store<Service>,
    changed: watch::Receiver<u64>,
    listed: watch::Receiver<bool>,
}

impl PolicyView {
    pub fn start(client: kube::Client) -> PolicyView {
        let (tx, changed) = watch::channel(0u64);
        let policies = cache(
            Api::all(client.clone()),
            "NetworkPolicy",
            &tx,
            |p: &mut NetworkPolicy| {
                p.metadata.managed_fields = None;
            },
        );
        let namespaces = cache(
            Api::all(client.clone()),
            "Namespace",
            &tx,
            |n: &mut Namespace| {
                n.metadata.managed_fields = None;
                n.metadata.annotations = None;
                n.spec = None;
                n.status = None;
            },
        );
        let pods = cache(
            Api::all(client.clone()),
            "pod (all namespaces)",
            &tx,
            |p: &mut Pod| {
                p.metadata.managed_fields = None;
                p.metadata.annotations = None;
                p.metadata.owner_references = None;
                if let Some(spec) = p.spec.take() {
                    let mut containers = spec.containers;
                    for c in &mut containers {
                        let ports = c.ports.take();
                        *c = Default::default();
                        c.ports = ports;
                    }
                    p.spec = Some(PodSpec {
                        containers,
                        host_network: spec.host_network,
                        ..PodSpec::default()
                    });
                }
                if let Some(status) = p.status.take() {
                    p.status = Some(PodStatus {
                        pod_ip: status.pod_ip,
                        phase: status.phase,
                        ..PodStatus::default()
                    });
                }
            },
        );
        let services = cache(Api::all(client), "Service", &tx, |s: &mut Service| {
            s.metadata.managed_fields = None;
            s.metadata.annotations = None;
            s.status = None;
            if let Some(spec) = s.spec.take() {
                s.spec = Some(ServiceSpec {
                    cluster_ip: spec.cluster_ip,
                    selector: spec.selector,
                    ports: spec.ports,
                    ..ServiceSpec::default()
                });
            }
        });
        let (tx, listed) = watch::channel(false);
        let stores = (
            policies.clone(),
            namespaces.clone(),
            pods.clone(),
            services.clone(),
        );
        tokio::spawn(async move {
            let _ = stores.0.wait_until_ready().await;
            let _ = stores.1.wait_until_ready().await;
            let _ = stores.2.wait_until_ready().await;
            let _ = stores.3.wait_until_ready().await;
            let _ = tx.send(true);
        });
        PolicyView {
            policies,
            namespaces,
            pods,
            services,
            changed,
            listed,
        }
    }
}

impl View for PolicyView {
    fn listed(&self) -> watch::Receiver<bool> {
        self.listed.clone()
    }

    fn changed(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }

    fn snapshot(&self) -> Cluster {
        Cluster {
            policies: self.policies.state(),
            namespaces: self
                .namespaces
                .state()
                .iter()
                .filter_map(|n| {
                    Some((
                        n.metadata.name.clone()?,
                        n.metadata.labels.clone().unwrap_or_default(),
                    ))
                })
                .collect(),
            pods: self
                .pods
                .state()
                .iter()
                .filter_map(|p| pod_view(p))
                .collect(),
            services: self
                .services
                .state()
                .iter()
                .filter_map(|s| service_view(s))
                .collect(),
        }
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<PodView> {
        let pod = self.pods.get(&ObjectRef::new(name).within(namespace))?;
        pod_view(&pod).or_else(|| {
            // A pod whose address is not reported yet is still itself.
            Some(PodView {
                namespace: namespace.to_string(),
                name: name.to_string(),
                labels: pod.metadata.labels.clone().unwrap_or_default(),
                ip: None,
                ports: named_ports(&pod),
            })
        })
    }
}

/// A reflector of `api` whose objects `strip` trims, bumping `tx` on each
/// event.
fn cache<K>(
    api: Api<K>,
    what: &'static str,
    tx: &watch::Sender<u64>,
    strip: impl FnMut(&mut K) + Send + 'static,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let tx = tx.clone();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(strip)
        .reflect(writer)
        .inspect(move |e| {
            if e.is_ok() {
                tx.send_modify(|n| *n += 1);
            }
        });
    super::drive(
        stream,
        what,
        "retrying with backoff; NetworkPolicy rules stay as they were meanwhile",
    );
    store
}

/// A pod on the pod network with an address, as the policies see it;
/// `None` for a hostNetwork pod, one without an address yet, or one that
/// has ended (its address may be another pod's already).
fn pod_view(pod: &Pod) -> Option<PodView> {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    Some(PodView {
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ip: Some(status.pod_ip.as_deref()?.parse().ok()?),
        ports: named_ports(pod),
    })
}

fn named_ports(pod: &Pod) -> Vec<NamedPort> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone()?,
                proto: protocol(p.protocol.as_deref())?,
                port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect()
}

/// A Service with a ClusterIP and a selector; `None` for a headless one
/// (clients address its pods directly) or one without a selector.
fn service_view(svc: &Service) -> Option<ServiceView> {
    let spec = svc.spec.as_ref()?;
    let cluster_ip = spec.cluster_ip.as_deref()?.parse().ok()?;
    Some(ServiceView {
        namespace: svc.metadata.namespace.clone()?,
        cluster_ip,
        selector: spec.selector.clone().filter(|s| !s.is_empty())?,
        ports: spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(ServicePort {
                    proto: protocol(p.protocol.as_deref())?,
                    port: u16::try_from(p.port).ok()?,
                    target: p.target_port.clone().unwrap_or(
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0),
                    ),
                })
            })
            .collect(),
    })
}
