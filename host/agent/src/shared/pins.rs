//! Sticky identities in shared mode (`docs/shared-nic.md`, "Sticky"): the
//! address a StatefulSet pod (or a `hostnic.io/sticky` key) got is pinned
//! for it as a one-address claim, a `/32` `HostnicBlock` with the identity,
//! and follows it from node to node. Nothing moves in the cloud, so a
//! sticky shared pod reschedules in the time of an ADD.
//!
//! The API server is the only lock, as for blocks:
//!
//! - the first ADD of an identity picks an address from the node's blocks
//!   and creates its pin (a create: one address, one pin);
//! - an ADD of the identity on another node takes the pin by a replace
//!   conditional on its resourceVersion, so of two nodes racing one wins;
//!   a StatefulSet's pin is taken whatever holds it (Kubernetes runs one
//!   pod per ordinal: what holds it is the old pod on its way out), a
//!   `hostnic.io/sticky` key's only once its pod let go (two live pods may
//!   carry one key);
//! - a DEL keeps the pin for the identity, marked released; the node that
//!   holds it deletes it after `sticky_release_seconds` (0: never), or at
//!   once when its StatefulSet no longer has the ordinal;
//! - every node keeps the vxnet's pins out of its picks, whoever holds the
//!   block around them; it learns them whenever it lists the claims (at
//!   start, at every block claim) and from its own changes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use crate::error::Error;
use tracing::{info, warn};

use super::{Held, Shared, SharedNet};
use crate::record::Phase;

/// How a StatefulSet identity begins (the default ip guest's form).
const STATEFULSET: &str = "statefulset/";

/// An address pinned for a sticky identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub vxnet: String,
    pub address: Ipv4Addr,
    pub identity: String,
    /// The node that holds it.
    pub node: String,
    /// The pod holding it (`namespace/name`); `None`: kept for the
    /// identity since `released`.
    pub pod: Option<String>,
    pub released: Option<SystemTime>,
    /// The API server's resourceVersion, for conditional changes.
    pub version: Option<String>,
}

impl Held {
    /// Takes a listing's pins of `vxnet` as the truth, but for this node's
    /// own (`me`), which only this node changes and which a listing begun
    /// before a change may not show yet.
    pub(super) fn learn_pins(&mut self, vxnet: &str, listed: Vec<Pin>, me: &str) {
        self.pins.retain(|_, p| p.vxnet != vxnet || p.node == me);
        for p in listed {
            let ours = self.pins.get(&p.address).is_some_and(|o| o.node == me);
            if !ours || p.node != me {
                self.pins.insert(p.address, p);
            }
        }
    }

    /// The pinned addresses no pod of `identity` may have.
    pub(super) fn pinned_for_others(&self, identity: Option<&str>) -> Vec<Ipv4Addr> {
        self.pins
            .values()
            .filter(|p| Some(p.identity.as_str()) != identity)
            .map(|p| p.address)
            .collect()
    }
}

impl Shared {
    /// The address pinned for `identity`, now held by this node for `pod`;
    /// `None` if the identity has none (its first ADD with Kubernetes, or
    /// its pin was released) or there are no claims.
    pub async fn follow_pin(
        &self,
        net: &SharedNet,
        identity: &str,
        pod: &str,
    ) -> Result<Option<Ipv4Addr>, Error> {
        let Some(claims) = &self.claims else {
            return Ok(None);
        };
        let busy = Error::try_again;
        let Some(pin) = claims
            .pin_of(identity)
            .await
            .map_err(|e| busy(format!("{e:#}")))?
        else {
            return Ok(None);
        };
        if pin.vxnet != net.vxnet {
            return Err(Error::invalid_config(format!(
                "the address of sticky {identity} ({}) is in vxnet {}, not {}; a sticky identity keeps its vxnet",
                pin.address, pin.vxnet, net.vxnet
            )));
        }
        let me = claims.node();
        if pin.node != me
            && !identity.starts_with(STATEFULSET)
            && let Some(holder) = &pin.pod
        {
            return Err(busy(format!(
                "address {} of sticky {identity} is held by pod {holder} on node {}; try again once it lets go",
                pin.address, pin.node
            )));
        }
        let wanted = Pin {
            node: me.to_string(),
            pod: Some(pod.to_string()),
            released: None,
            ..pin.clone()
        };
        if wanted == pin {
            self.held().pins.insert(pin.address, pin.clone());
            return Ok(Some(pin.address));
        }
        let Some(now) = claims
            .replace_pin(&wanted)
            .await
            .map_err(|e| busy(format!("{e:#}")))?
        else {
            return Err(busy(format!(
                "the pin of sticky {identity} ({}) changed while this node took it; try again",
                pin.address
            )));
        };
        if pin.node != me {
            info!(identity, address = %pin.address, from = %pin.node,
                  "a sticky identity's shared address followed it to this node");
        }
        self.held().pins.insert(now.address, now);
        Ok(Some(pin.address))
    }

    /// Pins `address` for `identity`, held by `pod` on this node: its first
    /// ADD. Another identity's pin on the address (one this node did not
    /// know of) is learnt, and the ADD is to be tried again.
    pub async fn create_pin(
        &self,
        net: &SharedNet,
        identity: &str,
        address: Ipv4Addr,
        pod: &str,
    ) -> Result<(), Error> {
        let Some(claims) = &self.claims else {
            return Ok(());
        };
        let busy = Error::try_again;
        let pin = Pin {
            vxnet: net.vxnet.clone(),
            address,
            identity: identity.to_string(),
            node: claims.node().to_string(),
            pod: Some(pod.to_string()),
            released: None,
            version: None,
        };
        match claims.create_pin(&pin).await {
            Ok(Some(made)) => {
                self.held().pins.insert(address, made);
                Ok(())
            }
            Ok(None) => {
                if let Ok(listing) = claims.list(&net.vxnet).await {
                    self.held()
                        .learn_pins(&net.vxnet, listing.pins, claims.node());
                }
                Err(busy(format!(
                    "address {address} is pinned for another sticky identity; try again"
                )))
            }
            Err(e) => Err(busy(format!("{e:#}"))),
        }
    }

    /// The pod holding `identity`'s pinned `address` here is gone: the pin
    /// stays the identity's, released since now. A pin another node took
    /// meanwhile is left to it.
    pub async fn let_go(&self, identity: &str, address: Ipv4Addr) {
        let Some(claims) = &self.claims else { return };
        let Some(pin) = self
            .held()
            .pins
            .get(&address)
            .filter(|p| p.identity == identity && p.node == claims.node())
            .cloned()
        else {
            return;
        };
        let kept = Pin {
            pod: None,
            released: Some(SystemTime::now()),
            ..pin
        };
        match claims.replace_pin(&kept).await {
            Ok(Some(p)) => {
                self.held().pins.insert(address, p);
            }
            Ok(None) => self.reread_pin(identity, address).await,
            Err(e) => {
                warn!(identity, %address, error = %format!("{e:#}"), "marking a pinned address released")
            }
        }
    }

    /// Reads `identity`'s pin again after a conditional change failed.
    async fn reread_pin(&self, identity: &str, address: Ipv4Addr) {
        let Some(claims) = &self.claims else { return };
        match claims.pin_of(identity).await {
            Ok(found) => {
                let mut held = self.held();
                held.pins.remove(&address);
                if let Some(p) = found {
                    held.pins.insert(p.address, p);
                }
            }
            Err(e) => {
                warn!(identity, %address, error = %format!("{e:#}"), "reading a pinned address again")
            }
        }
    }

    /// At start, once the records are back: this node's pins that claim a
    /// pod although no attachment here has their address (an agent killed
    /// between taking a pin and answering, or before a DEL let go) are
    /// marked released.
    pub async fn settle_pins(&self) {
        let Some(claims) = &self.claims else { return };
        for (identity, address) in self.mine(claims.node(), |p, held| {
            p.pod.is_some() && !held.taken.contains(&p.address)
        }) {
            self.let_go(&identity, address).await;
        }
    }

    /// This node's released pins go once kept for `ttl` (`None`: for
    /// ever), or at once when their StatefulSet no longer has the
    /// ordinal. A released pin whose address a pod here holds again (a
    /// DEL's release crossing an ADD of the identity) is held again.
    pub async fn release_pins(&self, now: SystemTime, ttl: Option<Duration>) {
        let Some(claims) = &self.claims else { return };
        let me = claims.node();
        let released = self.mine(me, |p, _| p.pod.is_none());
        for (identity, address) in released {
            let held_by = self.pod_holding(address);
            let Some(pin) = self.held().pins.get(&address).cloned() else {
                continue;
            };
            if let Some(pod) = held_by {
                let again = Pin {
                    pod: Some(pod),
                    released: None,
                    ..pin
                };
                match claims.replace_pin(&again).await {
                    Ok(Some(p)) => {
                        self.held().pins.insert(address, p);
                    }
                    _ => self.reread_pin(&identity, address).await,
                }
                continue;
            }
            let expired = ttl.is_some_and(|ttl| {
                pin.released
                    .is_some_and(|t| now.duration_since(t).unwrap_or_default() >= ttl)
            });
            let why = if expired {
                "kept for sticky_release_seconds"
            } else if claims.wants(&identity).await == Some(false) {
                "its StatefulSet no longer has its ordinal"
            } else {
                continue;
            };
            match claims.delete_pin(&pin).await {
                Ok(true) => {
                    info!(identity, %address, why, "released a sticky identity's pinned address");
                    self.held().pins.remove(&address);
                }
                Ok(false) => self.reread_pin(&identity, address).await,
                Err(e) => {
                    warn!(identity, %address, error = %format!("{e:#}"), "releasing a pinned address; the next round retries")
                }
            }
        }
    }

    /// (identity, address) of this node's pins for which `which` holds.
    fn mine(&self, me: &str, which: impl Fn(&Pin, &Held) -> bool) -> Vec<(String, Ipv4Addr)> {
        let held = self.held();
        held.pins
            .values()
            .filter(|p| p.node == me && which(p, &held))
            .map(|p| (p.identity.clone(), p.address))
            .collect()
    }

    /// The pod (`namespace/name`) of the attachment holding `address`; one
    /// being released (whose DEL lets go of the pin) holds nothing.
    fn pod_holding(&self, address: Ipv4Addr) -> Option<String> {
        self.records()
            .into_iter()
            .find(|(r, h)| h.address == address && r.phase != Phase::Releasing)
            .map(|(r, _)| pod_name(&r.pod))
    }

    /// The pins this node knows of (for `status` and the tests).
    pub fn pins(&self) -> BTreeMap<Ipv4Addr, Pin> {
        self.held().pins.clone()
    }
}

/// A pod as a pin names it.
pub fn pod_name(pod: &hostnic_proto::rpc::Pod) -> String {
    format!(
        "{}/{}",
        pod.namespace.as_deref().unwrap_or("-"),
        pod.name.as_deref().unwrap_or("-")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(address: &str, identity: &str, node: &str) -> Pin {
        Pin {
            vxnet: "vxnet-a".into(),
            address: address.parse().unwrap(),
            identity: identity.into(),
            node: node.into(),
            pod: None,
            released: None,
            version: None,
        }
    }

    #[test]
    fn a_listing_replaces_other_nodes_pins_but_not_a_newer_one_of_ours() {
        let mut held = Held::default();
        held.learn_pins(
            "vxnet-a",
            vec![pin("10.0.0.5", "a", "n1"), pin("10.0.0.6", "b", "n0")],
            "n0",
        );
        assert_eq!(held.pins.len(), 2);
        // Ours taken meanwhile by n1 (the listing says so), ours made since
        // the listing began (absent from it), one of n1's gone.
        held.pins
            .insert("10.0.0.7".parse().unwrap(), pin("10.0.0.7", "c", "n0"));
        held.learn_pins("vxnet-a", vec![pin("10.0.0.6", "b", "n1")], "n0");
        let nodes: Vec<(String, String)> = held
            .pins
            .values()
            .map(|p| (p.address.to_string(), p.node.clone()))
            .collect();
        assert_eq!(
            nodes,
            vec![
                ("10.0.0.6".into(), "n1".into()),
                ("10.0.0.7".into(), "n0".into())
            ]
        );
        // Every pin is kept from other identities' pods, not from its own.
        assert_eq!(
            held.pinned_for_others(Some("b")),
            vec!["10.0.0.7".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(held.pinned_for_others(None).len(), 2);
    }
}
