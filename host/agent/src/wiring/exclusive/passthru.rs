//! `passthru`: the NIC stays on the node and the pod gets a macvlan of it
//! in passthru mode, made straight in the pod's namespace under its
//! interface name (one RTM_NEWLINK, no device move: a few ms where a move
//! waits for RCU twice under RTNL). The child carries the NIC's MAC and
//! receives every frame the NIC does, and a NIC takes one such child
//! only: the pod owns the NIC, and the SDN sees only the NIC's MAC. The
//! pod's address, routes and MTU are `move`'s.
//!
//! While a pod has it, the NIC is up in the node's namespace with no
//! address, and the node never uses it: no IPv6 of its own there (a
//! link-local address of the pod's MAC, router solicitations) and no ARP
//! answers for the node's own addresses from the pod's MAC. DEL deletes
//! the child (or finds it gone with the pod's namespace) and parks the
//! NIC, free at once. A child that is up holds its NIC in promiscuous
//! mode: that is how the node tells, from its own namespace, that a pod
//! still has the NIC (`Plumber::park` refuses such a NIC).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostnic_netlink::{Link, Mac, Netlink, Netns};
use tracing::warn;

use super::NicWiring;
use crate::nics::Nics;
use crate::plumb::{PlumbError, Whereabouts, Wiring, address_and_routes};

/// How long a release waits for a child to go with its namespace: the
/// kernel destroys a namespace in a work queue once its last reference
/// is gone, so a DEL without the namespace can come first.
const CHILD_GONE_WAIT: Duration = Duration::from_secs(5);

/// The kind the kernel reports for the pod's child.
const MACVLAN: &str = "macvlan";

#[derive(Debug)]
pub struct Passthru {
    nics: Arc<Nics>,
    /// The NICs (by MAC and link index: a NIC attached again is a new
    /// link) whose node side is quiet already.
    quiet: Mutex<HashSet<(Mac, u32)>>,
}

impl Passthru {
    pub fn new(nics: Arc<Nics>) -> Passthru {
        Passthru {
            nics,
            quiet: Mutex::default(),
        }
    }

    /// Keeps the node off the NIC it lends a pod: no IPv6 on it in the
    /// node's namespace, and no ARP answers there (the node would answer
    /// for its own addresses with the pod's MAC, and the SDN would send
    /// their traffic to the pod). Once per NIC link; a failure is logged
    /// (a kernel without IPv6 has no such key) and the ADD goes on.
    async fn quieten(&self, lower: &Link) {
        let Some(mac) = lower.mac else { return };
        let seen = |q: &Mutex<HashSet<(Mac, u32)>>| {
            q.lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&(mac, lower.index))
        };
        if seen(&self.quiet) {
            return;
        }
        let ns = self.nics.plumber.node_ns();
        for (key, value) in [
            (format!("net/ipv6/conf/{}/disable_ipv6", lower.name), "1"),
            (format!("net/ipv4/conf/{}/arp_ignore", lower.name), "8"),
        ] {
            if let Err(e) = ns.sysctl(&key, value).await {
                warn!(nic = %mac, error = %e, "keeping the node off a passthru NIC");
            }
        }
        self.quiet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((mac, lower.index));
    }

    /// Deletes the pod's child of NIC `mac`, if the pod has one (found by
    /// the NIC's MAC and its kind, whatever the pod renamed it to).
    async fn delete_child(&self, pod: &Netlink, mac: Mac) -> hostnic_netlink::Result<()> {
        let child = pod
            .links()
            .await?
            .into_iter()
            .find(|l| l.mac == Some(mac) && l.kind.as_deref() == Some(MACVLAN));
        match child {
            Some(c) => pod.del_link(c.index).await,
            None => Ok(()),
        }
    }

    /// The child deleted (when the pod can be reached), then the NIC, once
    /// no child holds it, parked on the node.
    async fn take_apart(
        &self,
        pod: Option<&Netlink>,
        mac: Mac,
    ) -> hostnic_netlink::Result<Whereabouts> {
        if let Some(pod) = pod {
            self.delete_child(pod, mac).await?;
        }
        let childless = |l: Option<&Link>| l.is_none_or(|l| l.promiscuity == 0);
        // (A timeout is for park to report: it refuses a NIC still held.)
        let _ = tokio::time::timeout(
            CHILD_GONE_WAIT,
            self.nics.wait_for_link_where(mac, childless),
        )
        .await;
        let node = self.nics.plumber.node();
        match node.link_by_mac(mac, Some(&mac.parked_name())).await? {
            Some(link) => {
                self.nics.plumber.park(&link).await?;
                Ok(Whereabouts::Parked)
            }
            None => Ok(Whereabouts::Gone),
        }
    }
}

#[async_trait::async_trait]
impl NicWiring for Passthru {
    fn name(&self) -> &'static str {
        "passthru"
    }

    fn stays_on_node(&self) -> bool {
        true
    }

    async fn attach(&self, w: &Wiring, pod_ns: &Netns) -> Result<(), PlumbError> {
        let node = self.nics.plumber.node();
        let lower = node
            .link_by_mac(w.mac, Some(&w.mac.parked_name()))
            .await?
            .ok_or(PlumbError::NicMissing(w.mac))?;
        self.quieten(&lower).await;
        // The NIC up, with the pod's MTU (a child's may not exceed its
        // lower's: the child is born with a carrier), while the socket into
        // the pod is made: neither waits for the other. A name taken in the
        // pod is the child's creation's to report (EEXIST), not a lookup's.
        let (up, pod) = tokio::join!(node.set_mtu_up(lower.index, w.mtu), pod_ns.connect());
        let pod = match pod {
            Ok(pod) => pod,
            Err(e) => {
                return match self.take_apart(None, w.mac).await {
                    Ok(_) => Err(e.into()),
                    Err(undo) => Err(PlumbError::UndoFailed {
                        what: Box::new(e.into()),
                        undo,
                    }),
                };
            }
        };
        let made = async {
            up?;
            match node
                .add_passthru_macvlan(lower.index, (&w.ifname, pod_ns), w.mtu)
                .await
            {
                Err(e) if e.is_exists() => return Err(PlumbError::NameTaken(w.ifname.clone())),
                other => other?,
            }
            let child = pod
                .link_by_name(&w.ifname)
                .await?
                .filter(|l| l.mac == Some(w.mac))
                .ok_or_else(|| hostnic_netlink::Error::Io {
                    op: format!("finding {} in the pod after making it", w.ifname),
                    source: std::io::Error::from_raw_os_error(nix::libc::ENODEV),
                })?;
            address_and_routes(&pod, child.index, w).await?;
            Ok(())
        }
        .await;
        let Err(e) = made else { return Ok(()) };
        match self.take_apart(Some(&pod), w.mac).await {
            Ok(_) => Err(e),
            Err(undo) => Err(PlumbError::UndoFailed {
                what: Box::new(e),
                undo,
            }),
        }
    }

    async fn detach(
        &self,
        mac: Mac,
        pod: Option<&Netns>,
    ) -> Result<Whereabouts, hostnic_netlink::Error> {
        let pod = match pod {
            Some(ns) => Some(ns.connect().await?),
            None => None,
        };
        self.take_apart(pod.as_ref(), mac).await
    }

    /// What `move` checks in the pod, and the NIC up on the node (a child
    /// of a NIC that is down has no carrier).
    async fn verify(
        &self,
        w: &Wiring,
        pod: &Netns,
    ) -> Result<Result<(), String>, hostnic_netlink::Error> {
        let in_pod = self.nics.plumber.verify(w, pod).await?;
        if in_pod.is_err() {
            return Ok(in_pod);
        }
        let node = self.nics.plumber.node();
        Ok(
            match node.link_by_mac(w.mac, Some(&w.mac.parked_name())).await? {
                None => Err(format!("NIC {} is no longer on the node", w.mac)),
                Some(l) if !l.up => Err(format!("NIC {} is down on the node", w.mac)),
                Some(_) => Ok(()),
            },
        )
    }
}
