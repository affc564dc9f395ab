//! The load balancers nobody will delete: the cluster's (named
//! `k8s_lb_<cluster>_<namespace>_<name>_<uid>`) whose Service is gone (its
//! finalizer removed by force, or the Service deleted while no controller
//! ran), replaced by a new one of the same name (another uid), or no longer
//! served and without the finalizer that would have cleaned it up.

use std::time::Duration;

use hostnic_iaas::lb::{LoadBalancerFilter, LoadBalancerStatus};
use k8s_openapi::api::core::v1::Service;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::{Context, FINALIZER, desired};

/// Sweeps now and then every `period`, for ever.
pub(super) async fn every(ctx: &Context, period: Duration) {
    loop {
        match once(ctx).await {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, "deleted load balancers whose Service is gone"),
            Err(e) => warn!(error = %e, "sweeping the cluster's load balancers failed"),
        }
        tokio::time::sleep(period).await;
    }
}

/// One sweep; how many load balancers it deleted.
pub(super) async fn once(ctx: &Context) -> anyhow::Result<usize> {
    let ours = ctx
        .cloud
        .describe_load_balancers(&LoadBalancerFilter {
            search_word: Some(ctx.names.prefix()),
            status: vec![LoadBalancerStatus::Active, LoadBalancerStatus::Stopped],
            ..LoadBalancerFilter::default()
        })
        .await?;
    let mut orphans = Vec::new();
    for lb in ours {
        let Some((ns, name, uid)) = ctx.names.parse(&lb.loadbalancer_name) else {
            continue;
        };
        let svc = Api::<Service>::namespaced(ctx.kube.clone(), ns)
            .get_opt(name)
            .await?;
        let owned = svc.as_ref().is_some_and(|s| {
            s.uid().is_some_and(|u| u.split('-').next() == Some(uid))
                && (desired::served(s, &ctx.cfg.class)
                    || s.finalizers().iter().any(|f| f == FINALIZER))
        });
        if !owned {
            orphans.push((lb.loadbalancer_id, format!("{ns}/{name}")));
        }
    }
    for (id, service) in &orphans {
        ctx.cloud
            .delete_load_balancers(std::slice::from_ref(id))
            .await?;
        info!(lb = %id, %service, "deleted a load balancer whose Service is gone");
        crate::publish::node_event(
            crate::publish::NodeEvent::LeakedLoadBalancersDeleted,
            format!("deleted load balancer {id}: Service {service} is gone"),
        );
    }
    Ok(orphans.len())
}
