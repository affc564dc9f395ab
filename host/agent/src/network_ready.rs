//! The node's network turns ready when this agent can wire a pod.
//!
//! A runtime reports its network ready only once a network config is in
//! its config directory, kubelet reports the node Ready only then, and
//! the scheduler places no pod on a node that is not. So with `[cni]
//! conf_dir` the agent writes hostnic's conflist there itself, once it
//! serves and its pool has its first NIC, rather than the DaemonSet's init
//! container writing it before the agent has even started: pods are not
//! sent to a node whose ADDs could only answer "try again later".
//!
//! Written once, it stays: an agent that restarts finds it there and the
//! node's pods keep running (a rewrite of the same bytes changes nothing).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::{Config, Source};
use crate::nics::Nics;
use crate::pool::State;

/// Whether the agent must have a NIC of its own before it can serve: with
/// cloud NICs kept warm (`warm_min` above 0) in a vxnet that is not shared.
/// Without warm NICs every first ADD waits for an attach anyway; a static
/// inventory or shared vxnets serve at once.
pub fn needs_a_nic(cfg: &Config) -> bool {
    cfg.inventory.source == Source::Cloud
        && cfg.cloud.warm_min > 0
        && cfg
            .vxnets
            .iter()
            .any(|v| !cfg.shared.iter().any(|s| &s.vxnet == v))
}

/// With `[cni] conf_dir`: installs the conflist once the agent serves
/// (called when it does) and, if it [`needs_a_nic`], a NIC is free.
pub fn start(cfg: &Config, nics: Arc<Nics>) {
    let Some(dir) = cfg.cni.conf_dir.clone() else {
        return;
    };
    let (conflist, needs_nic) = (cfg.cni.conflist.clone(), needs_a_nic(cfg));
    tokio::spawn(async move {
        if needs_nic {
            info!("the node's network config waits for the pool's first NIC");
            let forever = tokio::time::Instant::now() + Duration::from_secs(u32::MAX.into());
            nics.wait_for(
                forever,
                |pool| (pool.count_all(&[State::Free]) > 0).then_some(()),
                |_| false,
            )
            .await;
        }
        install(conflist, dir).await;
    });
}

/// Installs the conflist, retrying every few seconds while it fails (a
/// directory not mounted yet, a full disk).
async fn install(conflist: PathBuf, dir: PathBuf) {
    loop {
        let (from, to) = (conflist.clone(), dir.clone());
        let done =
            tokio::task::spawn_blocking(move || crate::install::install_conflist(&from, &to))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r);
        match done {
            Ok(path) => {
                info!(conflist = %path.display(), "the node's network config is installed: the runtime reports the network ready");
                return;
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), dir = %dir.display(), "installing the node's network config failed; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    #[test]
    fn only_warm_cloud_nics_in_a_vxnet_of_their_own_are_waited_for() {
        let cloud = "vxnets = [\"vxnet-a\"]\n[inventory]\nsource = \"cloud\"\n";
        assert!(needs_a_nic(&parse(cloud)));
        assert!(!needs_a_nic(&parse(&format!(
            "{cloud}[cloud]\nwarm_min = 0\nwarm_max = 0\n"
        ))));
        assert!(!needs_a_nic(&parse(&format!(
            "{cloud}[[shared]]\nvxnet = \"vxnet-a\"\nrange = \"10.0.0.128/25\"\n"
        ))));
        assert!(!needs_a_nic(&parse("")));
    }
}
