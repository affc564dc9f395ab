//! The metrics endpoint: `GET /metrics` on `[metrics] address`, the pool
//! and the NIC source read at each scrape ([`crate::metrics`] holds the
//! counters the rest of the agent records).

use std::sync::Arc;

use crate::cloud::source::CloudSource;
use crate::metrics::metrics;
use crate::nics::Nics;
use crate::shared::Shared;

/// One scrape's text.
fn scrape(nics: &Nics, cloud: Option<&CloudSource>, shared: &Shared) -> String {
    let (counts, vm) = {
        let pool = nics.pool();
        (pool.counts(), cloud.map(|c| c.vm_nics(pool.len())))
    };
    let waiting = cloud.map_or(0, |c| c.cold_adds_waiting());
    metrics().encode(counts, vm, waiting, shared.counts())
}

/// Serves `GET /metrics` on `address` until the process ends.
pub async fn serve(
    address: &str,
    nics: Arc<Nics>,
    cloud: Option<Arc<CloudSource>>,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use axum::http::header::CONTENT_TYPE;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics address {address}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            (
                [(
                    CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                scrape(&nics, cloud.as_deref(), &shared),
            )
        }),
    );
    tracing::info!(address, "serving metrics at /metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}
