//! The Service controller (`[load_balancer] enabled = true`): every
//! Service of type LoadBalancer gets a cloud load balancer with one
//! listener per port, whose backends are the Service's ready pods' own
//! addresses (or, by choice, every node on the NodePort).
//!
//! It runs in the agent holding the cluster-duties Lease, so one node does
//! it at a time, with the node's cloud client (its credentials and its
//! share of the account's API rate) and no other Deployment to run. A
//! node that loses the Lease lets its reconciles finish and stops; the
//! next holder starts from what the API server and the cloud say — there
//! is no state of its own.
//!
//! Per Service, one reconcile ([`desired`], then [`converge`]):
//! - a finalizer first, so deleting the Service waits for its load
//!   balancer to be deleted;
//! - backends from the Service's EndpointSlices: ready endpoints only, so
//!   a terminating pod leaves the load balancer while it still serves (its
//!   open connections drain), and a new one joins once ready;
//! - EndpointSlice changes are debounced, so a rolling update's churn is
//!   batched into few UpdateLoadBalancers;
//! - `status.loadBalancer.ingress` set from the load balancer's address;
//! - a refused Service (a broken annotation) or a failing cloud is an event
//!   on the Service, and a retry.
//!
//! At rest a Service costs one describe every half hour (every five
//! minutes with NodePort backends, which follow the nodes so).
//!
//! A sweep at each start of holding and every half hour deletes the
//! cluster's load balancers (named `k8s_lb_<cluster>_…`) whose Service is
//! gone, replaced, or no longer of type LoadBalancer without its
//! finalizer.

pub mod converge;
pub mod desired;
mod sweep;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hostnic_iaas::{Client, TagFilter, TagId};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::apiserver::lease::Elector;
use crate::config::{Backends, LoadBalancer as Config};
use crate::publish;
use converge::{Calls, Outcome};
use desired::Names;

/// On every Service this controller made a load balancer for.
pub const FINALIZER: &str = "hostnic.io/load-balancer";
/// How long EndpointSlice changes gather before a reconcile.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// A Service at rest is looked at again this often (one describe), to
/// undo changes made to its load balancer by hand; with NodePort
/// backends, more often, as they follow the nodes this way.
const RESYNC: Duration = Duration::from_secs(1800);
const RESYNC_NODEPORT: Duration = Duration::from_secs(300);
const SWEEP: Duration = Duration::from_secs(1800);

struct Context {
    kube: kube::Client,
    cloud: Client,
    cfg: Config,
    names: Names,
    /// The cluster's tag (`hostnic-<cluster>`), looked up once.
    tag: tokio::sync::OnceCell<Option<TagId>>,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("the cloud: {0}")]
    Cloud(#[from] hostnic_iaas::Error),
    #[error("the API server: {0}")]
    Kube(#[from] kube::Error),
}

/// Runs the controller whenever this node holds the Lease.
pub fn start(kube: kube::Client, cloud: Client, cfg: Config, cluster: &str, elector: Elector) {
    let ctx = Arc::new(Context {
        kube,
        cloud,
        cfg,
        names: Names {
            cluster: cluster.to_string(),
        },
        tag: tokio::sync::OnceCell::new(),
    });
    tokio::spawn(async move {
        loop {
            while !elector.holds() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            info!("this node holds the Lease: it runs the Service controller");
            let lost = {
                let elector = elector.clone();
                async move {
                    while elector.holds() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            tokio::select! {
                () = run(ctx.clone(), lost) => {}
                () = sweep::every(&ctx, SWEEP) => {}
            }
            info!("the Service controller stopped: this node no longer holds the Lease");
        }
    });
}

async fn run(
    ctx: Arc<Context>,
    lost: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let services: Api<Service> = Api::all(ctx.kube.clone());
    let slices: Api<EndpointSlice> = Api::all(ctx.kube.clone());
    Controller::new(services, watcher::Config::default())
        .with_config(ControllerConfig::default().debounce(DEBOUNCE))
        .watches(
            slices,
            watcher::Config::default(),
            |slice: EndpointSlice| {
                let ns = slice.namespace();
                slice.labels().get("kubernetes.io/service-name").map(|svc| {
                    ObjectRef::<Service>::new(svc).within(ns.as_deref().unwrap_or("default"))
                })
            },
        )
        .graceful_shutdown_on(lost)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(svc: Arc<Service>, e: &Error, _: Arc<Context>) -> Action {
    warn!(service = %key(&svc), error = %e, "reconciling the Service's load balancer failed; trying again");
    event(
        &svc,
        EventType::Warning,
        "SyncLoadBalancerFailed",
        e.to_string(),
    );
    // What the cloud refuses for good (a parameter, the credentials, a
    // quota) is not asked again every few seconds.
    let lasting = matches!(e, Error::Cloud(c) if !c.is_transient());
    Action::requeue(if lasting {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(5)
    })
}

fn key(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

fn event(svc: &Service, kind: EventType, reason: &'static str, note: String) {
    publish::object_event(svc.object_ref(&()), kind, reason, note);
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_else(|| "default".into());
    let name = svc.name_any();
    let uid = svc.uid().unwrap_or_default();
    let api: Api<Service> = Api::namespaced(ctx.kube.clone(), &ns);
    let lb_name = ctx.names.load_balancer(&ns, &name, &uid);
    let wants = desired::served(&svc, &ctx.cfg.class) && svc.metadata.deletion_timestamp.is_none();
    let finalized = svc.finalizers().iter().any(|f| f == FINALIZER);
    if !wants {
        if finalized {
            if let Some(id) = converge::remove(&ctx.cloud, &lb_name).await? {
                event(
                    &svc,
                    EventType::Normal,
                    "DeletedLoadBalancer",
                    format!("deleted load balancer {id}"),
                );
            }
            if svc.metadata.deletion_timestamp.is_none() {
                // No longer of type LoadBalancer: no address to show.
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": null}}})),
                )
                .await?;
            }
            set_finalizer(&api, &svc, false).await?;
        }
        return Ok(Action::await_change());
    }
    if !finalized {
        // Before anything is made in the cloud: a Service deleted from now
        // on waits for its load balancer to go.
        set_finalizer(&api, &svc, true).await?;
    }
    let slices: Vec<EndpointSlice> = Api::<EndpointSlice>::namespaced(ctx.kube.clone(), &ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await?
        .items;
    let nodeport = match svc.annotations().get(desired::BACKENDS).map(String::as_str) {
        Some(mode) => mode == "nodeport",
        None => ctx.cfg.backends == Backends::Nodeport,
    };
    let nodes = match nodeport {
        true => ready_nodes(&ctx.kube).await?,
        false => Vec::new(),
    };
    let want = match desired::desired(&svc, &slices, &nodes, &ctx.names, &ctx.cfg) {
        Ok(d) => d,
        Err(refused) => {
            event(&svc, EventType::Warning, "LoadBalancerRefused", refused.0);
            return Ok(Action::await_change());
        }
    };
    if want.left_out > 0 {
        event(
            &svc,
            EventType::Warning,
            "TooManyBackends",
            format!(
                "{} backends left out: a load balancer takes at most {} (every port's together)",
                want.left_out,
                hostnic_iaas::lb::MAX_BACKENDS_PER_LOAD_BALANCER
            ),
        );
    }
    let tag = ctx.tag.get_or_init(|| cluster_tag(&ctx)).await.clone();
    let mut calls = Calls::default();
    let outcome = converge::converge(&ctx.cloud, &want, tag.as_ref(), &mut calls).await?;
    if calls != Calls::default() {
        info!(service = %key(&svc), lb = %want.name, ?calls, ?outcome, "load balancer changed");
    }
    match outcome {
        Outcome::Pending(why, again) => {
            if calls.created {
                event(
                    &svc,
                    EventType::Normal,
                    "EnsuringLoadBalancer",
                    format!("created load balancer {}", want.name),
                );
            }
            tracing::debug!(service = %key(&svc), why, "load balancer pending");
            Ok(Action::requeue(again))
        }
        Outcome::Ready(addresses) => {
            let ingress: Vec<_> = addresses
                .iter()
                .map(|ip| json!({"ip": ip.to_string()}))
                .collect();
            let shown = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .map(|i| i.iter().filter_map(|e| e.ip.clone()).collect::<Vec<_>>())
                .unwrap_or_default();
            if shown
                != addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            {
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": ingress}}})),
                )
                .await?;
                event(
                    &svc,
                    EventType::Normal,
                    "EnsuredLoadBalancer",
                    format!("load balancer {} on {addresses:?}", want.name),
                );
            }
            Ok(Action::requeue(if nodeport {
                RESYNC_NODEPORT
            } else {
                RESYNC
            }))
        }
    }
}

/// Adds or removes the finalizer, conditional on the Service's
/// resourceVersion (a conflict is retried by the controller).
async fn set_finalizer(api: &Api<Service>, svc: &Service, on: bool) -> Result<(), kube::Error> {
    let mut list: Vec<String> = svc
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if on {
        list.push(FINALIZER.to_string());
    }
    let patch =
        json!({"metadata": {"resourceVersion": svc.resource_version(), "finalizers": list}});
    api.patch(
        &svc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

/// The VMs of the ready nodes, for NodePort backends.
async fn ready_nodes(kube: &kube::Client) -> Result<Vec<String>, kube::Error> {
    let nodes = Api::<Node>::all(kube.clone())
        .list(&ListParams::default())
        .await?;
    Ok(nodes
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| n.spec.as_ref()?.provider_id.as_deref())
        .filter_map(|p| crate::apiserver::node::instance_from_provider_id(p).ok())
        .collect())
}

/// The cluster's tag, made if missing; `None` (untagged load balancers)
/// if the cloud will not say or make it.
async fn cluster_tag(ctx: &Context) -> Option<TagId> {
    let name = format!("hostnic-{}", ctx.names.cluster);
    let found = ctx
        .cloud
        .describe_tags(&TagFilter {
            search_word: Some(name.clone()),
            ..TagFilter::default()
        })
        .await;
    match found {
        Ok(tags) => match tags.into_iter().find(|t| t.tag_name == name) {
            Some(t) => Some(t.tag_id),
            None => ctx.cloud.create_tag(&name).await.ok(),
        },
        Err(e) => {
            warn!(error = %e, "looking up the cluster's tag failed; load balancers go untagged");
            None
        }
    }
}
