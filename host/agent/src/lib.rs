//! `hostnic-agent`, the node daemon: it owns the node's NICs, wires them
//! into pods over netlink, records who holds which, and answers the CNI
//! executable over a root-only unix socket.

pub mod cloud;
pub mod config;
pub mod plumb;
pub mod pool;
pub mod reconcile;
pub mod server;
pub mod service;
pub mod store;

use std::sync::Arc;

use anyhow::Context;
use hostnic_netlink::Netns;
use tracing::info;

use crate::cloud::CloudPool;
use crate::config::{Config, Source};
use crate::plumb::Plumber;
use crate::service::Service;
use crate::store::Store;

/// Runs the agent until SIGTERM or SIGINT. The namespace the agent starts
/// in is "the node": NICs wait there and return there.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let node_ns = Netns::current().context("opening the node's network namespace")?;
    let node = node_ns
        .connect()
        .await
        .context("connecting to rtnetlink in the node namespace")?;
    let store = Store::open(&cfg.state_dir)
        .with_context(|| format!("opening the state directory {}", cfg.state_dir.display()))?;
    let plumber = Plumber::new(node_ns, node);
    // The inventory: the static list, or what the cloud says is attached to
    // this VM (one DescribeNics; a restart makes no other cloud call before
    // it serves).
    let (cloud, inventory, in_flight) = match cfg.inventory.source {
        Source::Static => (None, cfg.inventory.nics.clone(), Vec::new()),
        Source::Cloud => {
            let cloud = CloudPool::connect(&cfg).await?;
            let (inventory, in_flight) = cloud.inventory().await?;
            (Some(cloud), inventory, in_flight)
        }
    };
    let pool = reconcile::reconcile(&cfg, &inventory, &plumber, &store).await?;
    let service = Arc::new(Service::new(&cfg, plumber, store, pool, cloud));
    if let Some(cloud) = &service.cloud {
        cloud.adopt_in_flight(&service, in_flight);
        cloud.remember_default_route(&service, &cfg.iface).await?;
        // Warm the pool and keep reconciling in the background; ADDs are
        // served meanwhile (a cold one creates its own NIC).
        let svc = service.clone();
        tokio::spawn(async move {
            if let Some(cloud) = &svc.cloud {
                cloud.tick(&svc).await;
                cloud.run(&svc).await;
            }
        });
    }
    let listener = server::bind(&cfg.socket)?;
    info!(socket = %cfg.socket.display(), free_nics = service.pool().free_count(), "serving");
    server::serve(listener, service, shutdown_signal()).await;
    info!("stopped");
    Ok(())
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
