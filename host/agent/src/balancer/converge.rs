//! Making the cloud match a [`Desired`] load balancer, in as few calls as
//! the API allows: found by its name, created if missing; listeners added,
//! replaced (when their settings changed) or deleted; backends added and
//! deleted in one call per listener and one for all deletions; then one
//! UpdateLoadBalancers, only if something changed or was left unapplied.
//! The update is not waited for: the next pass sees the load balancer
//! busy until it is applied (one describe a second), and changes that
//! arrive meanwhile go into the next update together. Every step reads the
//! cloud first, so a run cut short (a killed agent, a failing cloud) is
//! finished by the next.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use hostnic_iaas::lb::{
    BackendId, BackendTarget, Listener, ListenerId, LoadBalancer, LoadBalancerFilter,
    LoadBalancerId, LoadBalancerStatus, NewBackend, NewListener, NewLoadBalancer,
};
use hostnic_iaas::{Client, Error, ResourceTagPair, TagId};
use tracing::info;

use super::desired::{Desired, DesiredListener};

/// How often a load balancer being created is looked at (the real cloud
/// takes tens of seconds).
const CREATING: Duration = Duration::from_secs(3);
/// How often one being updated is (its job takes seconds; changes wait).
const APPLYING: Duration = Duration::from_secs(1);

/// Where a load balancer stands after one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarding as desired, on these addresses.
    Ready(Vec<Ipv4Addr>),
    /// Being created or changed by the cloud: look again after this long.
    Pending(&'static str, Duration),
}

/// What one pass did, for the log and the tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    pub created: bool,
    pub listeners_added: usize,
    pub listeners_deleted: usize,
    pub backends_added: usize,
    pub backends_deleted: usize,
    pub updated: bool,
    /// Load balancers of the same name deleted (the oldest is kept).
    pub duplicates_deleted: usize,
}

/// The live load balancers (pending, active or stopped) named `name`,
/// oldest first. More than one is a create the cloud took twice (its
/// answer lost, the call made again).
pub async fn find_all(client: &Client, name: &str) -> Result<Vec<LoadBalancer>, Error> {
    let filter = LoadBalancerFilter {
        search_word: Some(name.to_string()),
        status: vec![
            LoadBalancerStatus::Pending,
            LoadBalancerStatus::Active,
            LoadBalancerStatus::Stopped,
        ],
        verbose: true,
        ..LoadBalancerFilter::default()
    };
    let mut all: Vec<LoadBalancer> = client
        .describe_load_balancers(&filter)
        .await?
        .into_iter()
        .filter(|lb| lb.loadbalancer_name == name)
        .collect();
    all.sort_by(|a, b| {
        (&a.create_time, &a.loadbalancer_id).cmp(&(&b.create_time, &b.loadbalancer_id))
    });
    Ok(all)
}

/// The load balancer named `name` (the oldest, if the cloud has several).
pub async fn find(client: &Client, name: &str) -> Result<Option<LoadBalancer>, Error> {
    Ok(find_all(client, name).await?.into_iter().next())
}

/// Deletes the load balancers in `extra` that can be deleted now (not
/// pending or in a transition: those go on a later pass).
async fn delete_settled(client: &Client, extra: &[LoadBalancer]) -> Result<usize, Error> {
    let ids: Vec<LoadBalancerId> = extra
        .iter()
        .filter(|lb| lb.status != LoadBalancerStatus::Pending && lb.transition_status.is_empty())
        .map(|lb| lb.loadbalancer_id.clone())
        .collect();
    if !ids.is_empty() {
        client.delete_load_balancers(&ids).await?;
        info!(lbs = ?ids, "deleted load balancers");
    }
    Ok(ids.len())
}

/// One pass towards `desired`. `tag` marks what it creates as the
/// cluster's.
pub async fn converge(
    client: &Client,
    desired: &Desired,
    tag: Option<&TagId>,
    calls: &mut Calls,
) -> Result<Outcome, Error> {
    let mut found = find_all(client, &desired.name).await?;
    let extra = if found.len() > 1 {
        found.split_off(1)
    } else {
        Vec::new()
    };
    // A second load balancer of the same name would be a leak no sweep
    // finds (its name is a live Service's).
    calls.duplicates_deleted += delete_settled(client, &extra).await?;
    let lb = match found.pop() {
        Some(lb) => lb,
        None => {
            let (id, _job) = client
                .create_load_balancer(&NewLoadBalancer {
                    name: desired.name.clone(),
                    network: desired.network.clone(),
                    loadbalancer_type: desired.lb_type,
                    security_group: None,
                })
                .await?;
            calls.created = true;
            info!(lb = %id, name = %desired.name, "created a load balancer");
            if let Some(tag) = tag {
                // Only for operators and the console: the sweep goes by
                // name, so a failed tag is logged, not retried.
                let pair = ResourceTagPair {
                    tag_id: tag.clone(),
                    resource_type: "loadbalancer".into(),
                    resource_id: id.0.clone(),
                };
                if let Err(e) = client.attach_tags(&[pair]).await {
                    tracing::warn!(lb = %id, error = %e, "tagging the load balancer failed");
                }
            }
            return Ok(Outcome::Pending("being created", CREATING));
        }
    };
    if lb.status != LoadBalancerStatus::Active || !lb.transition_status.is_empty() {
        return Ok(Outcome::Pending("busy in the cloud", APPLYING));
    }
    let id = &lb.loadbalancer_id;
    let mut changed = false;

    // Listeners: ours are named for the Service; any other on the load
    // balancer is not touched.
    let wanted: BTreeMap<&str, &DesiredListener> = desired
        .listeners
        .iter()
        .map(|l| (l.listener.name.as_str(), l))
        .collect();
    let mut keep: Vec<(&Listener, &DesiredListener)> = Vec::new();
    let mut stale: Vec<ListenerId> = Vec::new();
    let prefix = &desired.listener_prefix;
    for have in &lb.listeners {
        match wanted.get(have.loadbalancer_listener_name.as_str()) {
            Some(want) if same_listener(have, &want.listener) => keep.push((have, want)),
            Some(_) => stale.push(have.loadbalancer_listener_id.clone()),
            None if have.loadbalancer_listener_name.starts_with(prefix.as_str()) => {
                stale.push(have.loadbalancer_listener_id.clone());
            }
            None => {}
        }
    }
    if !stale.is_empty() {
        client.delete_listeners(&stale).await?;
        calls.listeners_deleted += stale.len();
        changed = true;
    }
    let kept: BTreeSet<&str> = keep.iter().map(|(_, w)| w.listener.name.as_str()).collect();
    let missing: Vec<&DesiredListener> = desired
        .listeners
        .iter()
        .filter(|l| !kept.contains(l.listener.name.as_str()))
        .collect();
    if !missing.is_empty() {
        let new: Vec<NewListener> = missing.iter().map(|l| l.listener.clone()).collect();
        let ids = client.add_listeners(id, &new).await?;
        calls.listeners_added += ids.len();
        changed = true;
        for (lid, want) in ids.iter().zip(&missing) {
            add_backends(client, lid, want.backends.iter(), calls).await?;
        }
    }

    // Backends of the listeners kept.
    let mut gone: Vec<BackendId> = Vec::new();
    for (have, want) in &keep {
        let present: BTreeSet<(BackendTarget, u16)> =
            have.backends.iter().map(|b| (b.target(), b.port)).collect();
        gone.extend(
            have.backends
                .iter()
                .filter(|b| !want.backends.contains(&(b.target(), b.port)))
                .map(|b| b.loadbalancer_backend_id.clone()),
        );
        let add: Vec<&(BackendTarget, u16)> = want.backends.difference(&present).collect();
        if !add.is_empty() {
            changed = true;
            add_backends(
                client,
                &have.loadbalancer_listener_id,
                add.into_iter(),
                calls,
            )
            .await?;
        }
    }
    if !gone.is_empty() {
        client.delete_backends(&gone).await?;
        calls.backends_deleted += gone.len();
        changed = true;
    }

    if changed || !lb.is_applied() {
        client
            .update_load_balancers(std::slice::from_ref(id))
            .await?;
        calls.updated = true;
        return Ok(Outcome::Pending("applying", APPLYING));
    }
    Ok(Outcome::Ready(lb.addresses()))
}

async fn add_backends(
    client: &Client,
    listener: &ListenerId,
    backends: impl Iterator<Item = &(BackendTarget, u16)>,
    calls: &mut Calls,
) -> Result<(), Error> {
    let new: Vec<NewBackend> = backends
        .map(|(target, port)| NewBackend {
            name: target.resource_id(),
            target: target.clone(),
            port: *port,
            weight: 1,
        })
        .collect();
    if !new.is_empty() {
        calls.backends_added += client.add_backends(listener, &new).await?.len();
    }
    Ok(())
}

/// Whether a listener in the cloud has the settings asked for (a changed
/// port, protocol, balance mode or health check means a new listener, as
/// the cloud cannot change a port or protocol in place).
fn same_listener(have: &Listener, want: &NewListener) -> bool {
    have.listener_port == want.port
        && have.listener_protocol == want.protocol.as_str()
        && have.balance_mode == want.balance_mode.as_str()
        && have.healthy_check_method == want.health_check.method()
        && have.healthy_check_option == want.health_check.option()
}

/// Deletes the load balancers named `name` (several, if the cloud took a
/// create twice); already gone is done. Whether there was one.
pub async fn remove(client: &Client, name: &str) -> Result<Option<LoadBalancerId>, Error> {
    let all = find_all(client, name).await?;
    let Some(first) = all.first().map(|lb| lb.loadbalancer_id.clone()) else {
        return Ok(None);
    };
    // A pending one is refused (1400, transient): the finalizer waits for
    // a later pass.
    let ids: Vec<LoadBalancerId> = all.iter().map(|lb| lb.loadbalancer_id.clone()).collect();
    client.delete_load_balancers(&ids).await?;
    info!(lbs = ?ids, name, "deleted a Service's load balancer");
    Ok(Some(first))
}
