//! `hostnic-agent`, the node daemon: it owns the node's NICs, wires them
//! into pods over netlink, records who holds which, and answers the CNI
//! executable over a root-only unix socket.

pub mod apiserver;
pub mod attachments;
pub mod audit;
pub mod balancer;
pub mod client;
pub mod cloud;
pub mod config;
pub mod decisions;
pub mod error;
pub mod facts;
pub mod fds;
pub mod inspect;
pub mod install;
pub mod metrics;
pub mod netpol;
pub mod network_ready;
pub mod networks;
pub mod nics;
pub mod plan;
pub mod plumb;
pub mod policy;
pub mod policy_cli;
pub mod pool;
pub mod publish;
pub mod record;
pub mod return_path;
pub mod scrape;
pub mod server;
pub mod service;
pub mod shaping;
pub mod shared;
pub mod source;
pub mod sticky;
pub mod store;
pub mod wiring;

use std::sync::Arc;

use anyhow::Context;
use hostnic_netlink::Netns;
use tracing::info;

use crate::attachments::Attachments;
use crate::cloud::CloudPool;
use crate::cloud::source::CloudSource;
use crate::config::{Config, Source};
use crate::nics::Nics;
use crate::plumb::Plumber;
use crate::service::{Parts, Service};
use crate::source::NicSource;
use crate::source::inventory::StaticInventory;
use crate::store::Store;
use crate::wiring::Drivers;
use crate::wiring::exclusive::{Acquisition, Exclusive, Found};
use crate::wiring::shared::SharedVeth;

/// Runs the agent until SIGTERM or SIGINT. The namespace the agent starts
/// in is "the node": NICs wait there and return there.
pub async fn run(mut cfg: Config) -> anyhow::Result<()> {
    // The network config this agent installs once it serves: a broken one
    // stops it here, not after it has taken NICs.
    if cfg.cni.conf_dir.is_some() {
        install::read_conflist(&cfg.cni.conflist).context("[cni] conflist")?;
    }
    // The API server first: it may say which VM this is.
    let mut claims: Option<Arc<dyn shared::Claims>> = None;
    let mut kube_client = None;
    let kube = match cfg.kubernetes.enabled {
        false => None,
        true => {
            let client = apiserver::client(&cfg.kubernetes).await?;
            if cfg.inventory.source == Source::Cloud && cfg.cloud.instance_id.is_empty() {
                cfg.cloud.instance_id =
                    apiserver::instance_id(&client, &cfg.kubernetes.node_name).await?;
                info!(instance = %cfg.cloud.instance_id, node = %cfg.kubernetes.node_name, "this node's VM, from its Node's spec.providerID");
            }
            let k = &cfg.kubernetes;
            publish::install(client.clone(), &k.node_name, k.annotate, k.events);
            if !cfg.shared.is_empty() {
                claims = Some(Arc::new(
                    apiserver::blocks::ApiBlocks::new(client.clone(), &k.node_name).await,
                ));
            }
            kube_client = Some(client.clone());
            Some(apiserver::KubeView::start(client, k))
        }
    };
    let node_ns = Netns::current().context("opening the node's network namespace")?;
    let node = node_ns
        .connect()
        .await
        .context("connecting to rtnetlink in the node namespace")?;
    let store = Store::open(&cfg.state_dir)
        .with_context(|| format!("opening the state directory {}", cfg.state_dir.display()))?;
    let nics = Arc::new(Nics::new(
        Plumber::new(node_ns, node),
        pool::Pool::default(),
    ));
    nics.watch_links().await;
    // The inventory: the static list, or what the cloud says is attached to
    // this VM (one DescribeNics; a restart makes no other cloud call before
    // it serves).
    let mut found = Found {
        iface: cfg.iface.clone(),
        ..Found::default()
    };
    let (cloud, in_flight, stranded) = match cfg.inventory.source {
        Source::Static => {
            found.nics = cfg.inventory.nics.clone();
            (None, Vec::new(), Vec::new())
        }
        Source::Cloud => {
            let duties = kube.as_ref().map(|k| k.duties.clone());
            let nodes = kube.as_ref().map(|k| k.nodes.clone());
            let mut cloud = cloud::patiently("connecting to the cloud", || {
                CloudPool::connect(&cfg, duties.clone(), nodes.clone())
            })
            .await?;
            if let Some(k) = &kube {
                cloud.size_batches_by(k.pods.clone());
            }
            let inventory =
                cloud::patiently("describing this node's NICs", || cloud.inventory()).await?;
            found.nics = inventory.nics;
            found.sticky = inventory.sticky;
            (
                Some(Arc::new(cloud)),
                inventory.attaching,
                inventory.stranded,
            )
        }
    };
    // Services of type LoadBalancer, on the node holding the Lease.
    if cfg.load_balancer.enabled
        && let (Some(client), Some(view), Some(cloud)) = (&kube_client, &kube, &cloud)
    {
        balancer::start(
            client.clone(),
            cloud.client().clone(),
            cfg.load_balancer.clone(),
            &cfg.cloud.cluster,
            view.duties.elector.clone(),
        );
    }
    let policies = policy::Policies::load(&cfg)?;
    let cloud_source = cloud
        .as_ref()
        .map(|c| Arc::new(CloudSource::new(c.clone(), nics.clone())));
    let source: Arc<dyn NicSource> = match &cloud_source {
        Some(c) => c.clone(),
        None => Arc::new(StaticInventory::new(nics.clone(), &cfg.inventory.nics)),
    };
    let attachments = Arc::new(Attachments::default());
    let shared = Arc::new(shared::Shared::new(
        &cfg.shared,
        &source.vxnets(),
        cloud_source
            .clone()
            .map(|c| c as Arc<dyn shared::CloudAddresses>),
        attachments.clone(),
        claims,
    )?);
    cloud::patiently("reading this node's shared address blocks", || {
        shared.load_blocks()
    })
    .await?;
    let exclusive = Exclusive::new(
        Acquisition::new(nics.clone(), source.clone(), cloud_source.clone()),
        wiring::exclusive::wirings(&nics),
        found,
    );
    // The configured wiring serves every vxnet but those named otherwise;
    // every NIC wiring is there, to release what another config made.
    let nic_driver = |w: config::NicWiring| {
        exclusive
            .driver(w.name())
            .with_context(|| format!("the {} wiring is built in", w.name()))
    };
    let mut others: Vec<(Arc<dyn wiring::Driver>, Vec<String>)> = Vec::new();
    for w in config::NicWiring::ALL
        .into_iter()
        .filter(|w| *w != cfg.wiring)
    {
        let vxnets = cfg
            .vxnet_wiring
            .iter()
            .filter(|(_, v)| **v == w)
            .map(|(id, _)| id.clone())
            .collect();
        others.push((nic_driver(w)?, vxnets));
    }
    let drivers = Drivers::new(
        nic_driver(cfg.wiring)?,
        others
            .into_iter()
            .chain([(
                Arc::new(SharedVeth::new(
                    shared.clone(),
                    nics.clone(),
                    cloud_source.clone(),
                )) as Arc<dyn wiring::Driver>,
                shared.nets().iter().map(|n| n.vxnet.clone()).collect(),
            )])
            .collect(),
    );
    // Service answers back through the node that translated them, with
    // every node's gateway NICs from the API server: in the pods'
    // namespaces, and in the node's own for its gateway NICs and the
    // backends that need a masquerade.
    let mut netpol = None;
    let return_path = match (kube_client, &kube) {
        (Some(client), Some(view)) => {
            let own = return_path::own_gateways(nics.clone());
            // NetworkPolicy in the pods' namespaces; the node's own
            // addresses (read again as its NICs change) always pass.
            if let Some(policies) = &view.policies {
                let node = netpol::node_addresses(
                    hostnic_netlink::Netns::current()
                        .context("opening the node's network namespace")?,
                    own.clone(),
                );
                netpol = Some(netpol::Enforcer::start(
                    Arc::new(policies.clone()),
                    node,
                    std::time::Duration::from_millis(cfg.kubernetes.pod_wait_ms.max(5000)),
                ));
            }
            apiserver::gateways::publish(client, &cfg.kubernetes.node_name, own.clone());
            let nodes = view.nodes.clone();
            let here = hostnic_netlink::Netns::current()
                .context("opening the node's network namespace")?;
            return_path::start_node_rules(here, own, nodes.clone());
            Some(return_path::ReturnPath::start(nodes))
        }
        _ => None,
    };
    let loaded = store
        .load()
        .with_context(|| format!("reading the records under {}", cfg.state_dir.display()))?;
    let service = Arc::new(Service::new(
        &cfg,
        Parts {
            attachments,
            drivers,
            store: Arc::new(store),
            nics: nics.clone(),
            namespaces: nics.plumber.clone(),
            source,
            cloud: cloud_source.clone(),
            policies,
            kube,
            return_path,
            netpol,
        },
    ));
    service
        .restore(loaded)
        .await
        .context("reconciling the records with the kernel")?;
    if cfg.hooks.enabled {
        tokio::spawn(watch_policies(service.clone(), cfg.clone()));
    }
    if let Some(cloud) = cloud {
        cloud.adopt_in_flight(&nics, in_flight);
        cloud.remember_default_route(&nics, &cfg.iface).await?;
        // Warm the pool and keep reconciling in the background; ADDs are
        // served meanwhile (a cold one creates its own NIC).
        let nics = nics.clone();
        let keeper = cloud.clone();
        tokio::spawn(async move { keeper.keep_bank().await });
        let (counter, counted) = (cloud.clone(), nics.clone());
        tokio::spawn(async move { counter.keep_counts(&counted).await });
        tokio::spawn(async move {
            cloud.delete_stranded(&nics, stranded).await;
            cloud.tick(&nics).await;
            cloud.run(&nics).await;
        });
    }
    shared.claim_restored().await;
    shared.settle_pins().await;
    let pin_ttl = (cfg.cloud.sticky_release_seconds > 0)
        .then(|| std::time::Duration::from_secs(cfg.cloud.sticky_release_seconds));
    tokio::spawn(release_idle_claims(shared.clone(), pin_ttl));
    if !cfg.metrics.address.is_empty() {
        // Pods come first: a metrics port taken by something else is
        // reported, and the agent serves CNI without metrics.
        if let Err(e) =
            scrape::serve(&cfg.metrics.address, nics.clone(), cloud_source, shared).await
        {
            tracing::error!(error = %format!("{e:#}"), "metrics are OFF");
        }
    }
    let listener = server::bind(&cfg.socket)?;
    info!(socket = %cfg.socket.display(), free_nics = nics.pool().free_count(), "serving");
    network_ready::start(&cfg, nics.clone());
    server::serve(listener, service, shutdown_signal()).await;
    info!("stopped");
    Ok(())
}

/// Gives back shared address blocks no pod uses, and the pins of sticky
/// identities kept for `pin_ttl` (`None`: for ever) or no longer wanted,
/// every few seconds.
async fn release_idle_claims(shared: Arc<shared::Shared>, pin_ttl: Option<std::time::Duration>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        shared.release_idle(std::time::Instant::now()).await;
        shared
            .release_pins(std::time::SystemTime::now(), pin_ttl)
            .await;
    }
}

/// Swaps in policy modules that changed on disk, and re-reads the config
/// file's `[hooks]` when the file changes or on SIGHUP. Each new module is
/// compiled and checked before it replaces the old one; a bad one is
/// refused, loudly, and the old one keeps serving.
async fn watch_policies(service: Arc<Service>, cfg: Config) {
    use tokio::signal::unix::{SignalKind, signal};
    let every = std::time::Duration::from_secs(cfg.hooks.watch_seconds);
    let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = cfg.config_path.as_deref().and_then(stamp);
    let mut hup = signal(SignalKind::hangup()).ok();
    let policies = &service.policies;
    loop {
        let hup_fired = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        let reread = tokio::select! {
            _ = tokio::time::sleep(every) => {
                // A ConfigMap update swaps the config and the modules it
                // pins in one step: a changed config reloads every hook
                // from it, so a new module is never checked against the
                // old digest first.
                let now = cfg.config_path.as_deref().and_then(stamp);
                let changed = now != seen;
                seen = now;
                if !changed {
                    policy::call(|| policies.reload_changed());
                }
                changed
            }
            _ = hup_fired => true,
        };
        if !reread {
            continue;
        }
        match cfg
            .config_path
            .as_deref()
            .map(|path| Config::load(Some(path), &cfg.overrides))
        {
            Some(Ok(new)) => {
                info!("reloading the policy hooks from the config file");
                policy::call(|| policies.reload_config(&new));
            }
            Some(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "the config file is invalid; keeping the current hooks")
            }
            None => {
                tracing::warn!("the agent was started without a config file; nothing to reload")
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the default action (exit) still applies.
        _ => std::future::pending().await,
    }
}
