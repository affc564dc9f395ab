//! This node's slots in the account's API rate (`[cloud]
//! account_api_rate`; the schedule is `hostnic_iaas::Share`'s). In
//! Kubernetes the nodes sharing the account are the Nodes the API server
//! lists, and a node's place is its name's among theirs, sorted: every
//! agent reads the same list, so they agree without talking to each other.
//! The share follows nodes joining and leaving. Outside Kubernetes it is
//! configured: `api_rate_nodes`, and this node's `api_rate_slot`.

use std::collections::BTreeSet;
use std::time::Duration;

use hostnic_iaas::{Client, Share};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config;
use crate::return_path::Nodes;

/// How long start-up waits for the Node list before its first call: the
/// list takes one request to the API server, and a node that called at
/// the whole account's rate while its peers start would be refused.
const LIST_WAIT: Duration = Duration::from_secs(5);

/// The Nodes, as they change: `None` until the watch has listed them.
pub type NodeList = watch::Receiver<Option<Nodes>>;

/// This node's share as configured (outside Kubernetes, or until the Node
/// list comes).
pub fn configured(cfg: &config::Cloud) -> Share {
    Share {
        account_rate: cfg.account_api_rate,
        nodes: cfg.api_rate_nodes as usize,
        node: cfg.api_rate_slot as usize,
    }
}

/// This node's share among the Nodes `names`: its place in their sorted
/// order. A node not listed yet (its Node is being created) takes the
/// place after the last.
pub fn among(cfg: &config::Cloud, names: &BTreeSet<String>, node: &str) -> Share {
    let (nodes, place) = match names.iter().position(|n| n == node) {
        Some(place) => (names.len(), place),
        None => (names.len() + 1, names.len()),
    };
    Share {
        account_rate: cfg.account_api_rate,
        nodes,
        node: place,
    }
}

/// This node's share at start: among the listed Nodes once the watch has
/// them (waiting up to [`LIST_WAIT`]), else as configured.
pub async fn at_start(cfg: &config::Cloud, nodes: Option<(&mut NodeList, &str)>) -> Share {
    let Some((rx, node)) = nodes else {
        return configured(cfg);
    };
    match tokio::time::timeout(LIST_WAIT, rx.wait_for(Option::is_some)).await {
        Ok(Ok(listed)) => match listed.as_ref() {
            Some(n) => among(cfg, &n.names, node),
            None => configured(cfg),
        },
        _ => {
            let share = configured(cfg);
            warn!(
                nodes = share.nodes,
                "the Node list did not come within {LIST_WAIT:?}; pacing cloud calls as configured (cloud.api_rate_nodes) until it does"
            );
            share
        }
    }
}

/// Keeps `client`'s share current as Nodes come and go, for as long as
/// the agent runs.
pub fn follow(client: Client, cfg: config::Cloud, mut nodes: NodeList, node: String) {
    tokio::spawn(async move {
        let mut current = None;
        loop {
            let share = nodes
                .borrow_and_update()
                .as_ref()
                .map(|n| among(&cfg, &n.names, &node));
            if let Some(share) = share.filter(|s| Some(*s) != current) {
                match client.set_share(share) {
                    Ok(()) => info!(
                        nodes = share.nodes,
                        place = share.node,
                        per_second = share.per_second(),
                        "cloud calls paced to this node's slots in the account's rate"
                    ),
                    Err(e) => warn!(error = %e, "the node's share of the account's rate"),
                }
                current = Some(share);
            }
            if nodes.changed().await.is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud(rate: f64, nodes: u32, slot: u32) -> config::Cloud {
        config::Cloud {
            account_api_rate: rate,
            api_rate_nodes: nodes,
            api_rate_slot: slot,
            ..config::Cloud::default()
        }
    }

    fn listed(names: &[&str]) -> Option<Nodes> {
        Some(Nodes {
            names: names.iter().map(|n| n.to_string()).collect(),
            ..Nodes::default()
        })
    }

    #[test]
    fn a_node_s_place_is_its_name_s_among_the_nodes() {
        let cfg = cloud(20.0, 1, 0);
        let names: BTreeSet<String> = ["node-b", "node-a", "node-c"].map(String::from).into();
        let share = among(&cfg, &names, "node-b");
        assert_eq!((share.nodes, share.node), (3, 1));
        // Not listed yet: after the last.
        let share = among(&cfg, &names, "node-d");
        assert_eq!((share.nodes, share.node), (4, 3));
        assert!((share.per_second() - 5.0).abs() < 1e-9);
    }

    #[tokio::test]
    async fn at_start_the_listed_nodes_or_the_configured_share() {
        let cfg = cloud(20.0, 4, 2);
        let share = at_start(&cfg, None).await;
        assert_eq!((share.nodes, share.node), (4, 2));
        let (_tx, mut rx) = watch::channel(listed(&["a", "b"]));
        let share = at_start(&cfg, Some((&mut rx, "b"))).await;
        assert_eq!((share.nodes, share.node), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_list_it_falls_back_to_the_configured_share() {
        let (_tx, mut rx) = watch::channel(None);
        let t = tokio::time::Instant::now();
        let share = at_start(&cloud(20.0, 3, 1), Some((&mut rx, "a"))).await;
        assert_eq!((share.nodes, share.node), (3, 1));
        assert_eq!(t.elapsed(), LIST_WAIT);
    }

    #[tokio::test]
    async fn the_share_follows_the_node_list() {
        let creds = hostnic_iaas::Credentials::new(
            "QYACCESSKEY",
            hostnic_iaas::SecretKey::new("secret"),
            "pek3a",
        );
        let client = Client::new(creds, hostnic_iaas::Options::default()).unwrap();
        let (tx, rx) = watch::channel(listed(&["a", "b"]));
        follow(client.clone(), cloud(20.0, 1, 0), rx, "b".into());
        let share_becomes = |want: f64| {
            let client = client.clone();
            async move {
                for _ in 0..200 {
                    if client.pace().1 == want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                panic!("the share stayed {} instead of {want}", client.pace().1);
            }
        };
        share_becomes(10.0).await;
        let fifty: Vec<String> = (0..50).map(|i| format!("n{i:02}")).collect();
        let mut names: Vec<&str> = fifty.iter().map(String::as_str).collect();
        names[7] = "b";
        tx.send_replace(listed(&names));
        share_becomes(0.4).await;
        // Nodes leaving give the others more.
        tx.send_replace(listed(&names[..40]));
        share_becomes(0.5).await;
    }
}
