//! The node's own side of Service answers, in the agent's namespace (the
//! node's): every gateway NIC gets the rules a pod's interface gets, so a
//! shared pod (behind the NIC) and a hostNetwork process answer a
//! connection through the node that translated it; and connections to
//! backends that cannot do that are masqueraded ([`rules::masquerade`]).
//!
//! All of it is one `nft` transaction, written again whenever this node's
//! gateway NICs or the cluster's Nodes change; a failure is tried again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hostnic_netlink::Netns;
use ipnet::Ipv4Net;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{Nodes, OwnGateway, RETRY, known, rules};

/// Starts keeping the rules of this node's gateway NICs (`own`, by vxnet)
/// true to what the Nodes say, in `netns` (the node's), until the agent
/// stops. Nothing is written before the Nodes are known: a restarted agent
/// leaves what its predecessor wrote until it knows better.
pub fn start_node_rules(
    netns: Netns,
    own: watch::Receiver<BTreeMap<String, OwnGateway>>,
    nodes: watch::Receiver<Option<Nodes>>,
) {
    tokio::spawn(run(Arc::new(netns), own, nodes));
}

async fn run(
    netns: Arc<Netns>,
    mut own: watch::Receiver<BTreeMap<String, OwnGateway>>,
    mut nodes: watch::Receiver<Option<Nodes>>,
) {
    if known(&mut nodes).await.is_none() {
        return;
    }
    // The NICs whose tables this agent wrote, to take away when they go.
    let mut written: BTreeSet<String> = BTreeSet::new();
    loop {
        let gateways = own.borrow_and_update().clone();
        let cluster = nodes.borrow_and_update().clone().unwrap_or_default();
        match ruleset(&gateways, &cluster, &written) {
            Ok(text) => match netns.nft_apart(text).await {
                Ok(()) => {
                    written = gateways.values().map(|g| g.ifname.clone()).collect();
                    debug!(
                        gateway_nics = written.len(),
                        nodes = cluster.addresses.len(),
                        "the node's Service rules written"
                    );
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "writing the node's Service rules failed; trying again");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
            Err(e) => {
                warn!(error = %format!("{e:#}"), "the node's Service rules cannot be written")
            }
        }
        tokio::select! {
            changed = own.changed() => if changed.is_err() { return },
            changed = nodes.changed() => if changed.is_err() { return },
        }
    }
}

/// The whole of it: each gateway NIC's tables, the tables of NICs gone
/// since `written`, and the masquerade.
fn ruleset(
    gateways: &BTreeMap<String, OwnGateway>,
    nodes: &Nodes,
    written: &BTreeSet<String>,
) -> anyhow::Result<String> {
    let mut text = String::new();
    let none = BTreeSet::new();
    for (vxnet, own) in gateways {
        let peers = nodes.gateways.get(vxnet).unwrap_or(&none);
        text.push_str(&rules::ruleset(&own.ifname, peers)?);
    }
    for gone in written
        .iter()
        .filter(|w| !gateways.values().any(|g| &g.ifname == *w))
    {
        text.push_str(&rules::unset(gone));
    }
    let vxnets: BTreeSet<Ipv4Net> = gateways.values().map(|g| g.cidr).collect();
    text.push_str(&rules::masquerade(&vxnets, &nodes.addresses));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::return_path::Gateway;

    fn own(ip: &str, mac: &str) -> OwnGateway {
        let mac: hostnic_netlink::Mac = mac.parse().unwrap();
        OwnGateway {
            gateway: Gateway {
                ip: ip.parse().unwrap(),
                mac,
            },
            cidr: format!("{ip}/24").parse::<Ipv4Net>().unwrap().trunc(),
            ifname: mac.gateway_name(),
        }
    }

    #[test]
    fn every_gateway_nic_its_peers_and_gone_nics_unset() {
        let a = own("10.1.0.5", "52:54:00:00:01:05");
        let b = own("10.2.0.5", "52:54:00:00:02:05");
        let gateways: BTreeMap<String, OwnGateway> =
            [("vxnet-a".into(), a.clone()), ("vxnet-b".into(), b.clone())].into();
        let peer = Gateway {
            ip: "10.1.0.9".parse().unwrap(),
            mac: "52:54:00:00:01:09".parse().unwrap(),
        };
        let nodes = Nodes {
            gateways: [("vxnet-a".into(), [a.gateway, peer].into())].into(),
            addresses: ["192.168.0.3".parse().unwrap()].into(),
            names: BTreeSet::new(),
        };
        let written: BTreeSet<String> = [a.ifname.clone(), "gw525400000999".into()].into();
        let text = ruleset(&gateways, &nodes, &written).unwrap();
        // vxnet-a's NIC knows its peer; vxnet-b's, no node yet.
        assert!(text.contains("52:54:00:00:01:09 : 0x0a010009"), "{text}");
        assert!(text.contains(&format!("device \"{}\"", b.ifname)), "{text}");
        // The NIC that went loses its tables; the one still here is not
        // taken away.
        assert!(text.contains("delete table netdev hostnic-gw525400000999\n"));
        assert_eq!(
            text.matches(&format!("delete table inet hostnic-{}", a.ifname))
                .count(),
            1,
            "{text}"
        );
        // Both vxnets are spared the masquerade; the node's address is not.
        assert!(text.contains("10.1.0.0/24, 10.2.0.0/24"), "{text}");
        assert!(text.contains("elements = { 192.168.0.3 }"), "{text}");
    }
}
