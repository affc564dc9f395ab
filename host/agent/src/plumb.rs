//! The kernel side of an attachment: move a NIC into a pod and configure it,
//! bring it back, check it. Every step is a typed call on
//! [`hostnic_netlink::Netlink`]; nothing here builds netlink messages.

use std::net::Ipv4Addr;

use std::net::IpAddr;

use hostnic_netlink::{Link, Mac, Netlink, Netns, NsId, RouteEntry};
use hostnic_proto::cni::{AddResult, Interface, IpConfig, Route};
use ipnet::{IpNet, Ipv4Net};

/// What an attachment configures inside the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wiring {
    pub mac: Mac,
    pub ifname: String,
    pub address: Ipv4Net,
    pub mtu: u32,
    /// Routes out of the pod's NIC (their `oif` is filled in here).
    pub routes: Vec<(Ipv4Net, Option<Ipv4Addr>)>,
}

impl Wiring {
    /// What a recorded ADD result says the pod was given.
    pub fn from_result(r: &AddResult, mac: Mac) -> Result<Wiring, String> {
        let address = match r.ips.first().map(|i| i.address) {
            Some(IpNet::V4(a)) => a,
            _ => return Err("the recorded result has no IPv4 address".into()),
        };
        let v4 = |gw: Option<IpAddr>| match gw {
            Some(IpAddr::V4(g)) => Some(g),
            _ => None,
        };
        Ok(Wiring {
            mac,
            ifname: r.interface.name.clone(),
            address,
            mtu: r.interface.mtu,
            routes: r
                .routes
                .iter()
                .filter_map(|rt| match rt.dst {
                    IpNet::V4(d) => Some((d, v4(rt.gw))),
                    IpNet::V6(_) => None,
                })
                .collect(),
        })
    }

    /// The CNI result of this wiring, in the pod's `sandbox`, with
    /// `gateway` as its address's gateway.
    pub fn result(&self, sandbox: &str, gateway: Ipv4Addr) -> AddResult {
        AddResult {
            interface: Interface {
                name: self.ifname.clone(),
                mac: self.mac.to_string(),
                sandbox: sandbox.to_string(),
                mtu: self.mtu,
            },
            ips: vec![IpConfig {
                address: IpNet::V4(self.address),
                gateway: Some(IpAddr::V4(gateway)),
            }],
            routes: self
                .routes
                .iter()
                .map(|(dst, gw)| Route {
                    dst: IpNet::V4(*dst),
                    gw: gw.map(IpAddr::V4),
                })
                .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlumbError {
    #[error("NIC {0} is not in the node's network namespace")]
    NicMissing(Mac),
    #[error("the pod already has an interface named {0}")]
    NameTaken(String),
    #[error(transparent)]
    NotAPod(NotAPod),
    #[error("{0}")]
    Kernel(#[from] hostnic_netlink::Error),
    #[error("{what}; undoing it also failed: {undo}")]
    UndoFailed {
        what: Box<PlumbError>,
        undo: hostnic_netlink::Error,
    },
}

/// Where a NIC ended up after [`Plumber::detach`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whereabouts {
    /// Parked in the node namespace: down, no addresses, its parked name.
    Parked,
    /// Found nowhere we can look (its netns was destroyed with it, or it was
    /// detached under us).
    Gone,
}

#[derive(Debug)]
pub struct Plumber {
    node_ns: Netns,
    node: Netlink,
    /// Namespaces that are never a pod's: the node's (where NICs wait), the
    /// one the agent runs in, and init's (the machine's own, on a real node
    /// `/proc/1/ns/net`). Wiring a NIC into one of them would hand the node's
    /// routes to a pod's NIC.
    not_pods: Vec<(NsId, &'static str)>,
}

/// What the verbs ask of the kernel about a pod's namespace before any
/// driver acts: behind a trait so the verbs can be tested without root.
#[async_trait::async_trait]
pub trait Namespaces: Send + Sync + std::fmt::Debug {
    /// The identity of a pod's namespace, refusing the node's own (and
    /// the agent's, and init's).
    fn pod_ns_id(&self, ns: &Netns) -> Result<NsId, PlumbError>;
    /// A recorded netns path, re-opened only if it still names the
    /// namespace it named when recorded.
    fn reopen(&self, path: &str, recorded: Option<NsId>) -> Option<Netns>;
    /// Whether the pod already has a default route.
    async fn has_default_route(&self, pod_ns: &Netns) -> Result<bool, PlumbError>;
}

#[async_trait::async_trait]
impl Namespaces for Plumber {
    fn pod_ns_id(&self, ns: &Netns) -> Result<NsId, PlumbError> {
        Plumber::pod_ns_id(self, ns)
    }

    fn reopen(&self, path: &str, recorded: Option<NsId>) -> Option<Netns> {
        Plumber::reopen(self, path, recorded)
    }

    async fn has_default_route(&self, pod_ns: &Netns) -> Result<bool, PlumbError> {
        Plumber::has_default_route(self, pod_ns).await
    }
}

/// Why a namespace cannot be a pod's.
#[derive(Debug, thiserror::Error)]
#[error("{label} is {which}, not a pod's network namespace")]
pub struct NotAPod {
    pub label: String,
    pub which: &'static str,
}

impl Plumber {
    pub fn new(node_ns: Netns, node: Netlink) -> Plumber {
        let mut not_pods = Vec::new();
        if let Ok(id) = node_ns.id() {
            not_pods.push((id, "the node's network namespace"));
        }
        for (path, which) in [
            ("/proc/self/ns/net", "the namespace hostnic-agent runs in"),
            (
                "/proc/1/ns/net",
                "the init process's (the machine's own) namespace",
            ),
        ] {
            // /proc/1 may be out of sight in a container: then there is
            // nothing of it to refuse.
            if let Ok(id) = Netns::open(std::path::Path::new(path)).and_then(|n| n.id()) {
                not_pods.push((id, which));
            }
        }
        Plumber {
            node_ns,
            node,
            not_pods,
        }
    }

    /// The identity of a pod's namespace, refusing the node's own (and the
    /// agent's, and init's).
    pub fn pod_ns_id(&self, ns: &Netns) -> Result<NsId, PlumbError> {
        let id = ns.id()?;
        match self.not_pods.iter().find(|(n, _)| *n == id) {
            Some((_, which)) => Err(PlumbError::NotAPod(NotAPod {
                label: ns.label().to_string(),
                which,
            })),
            None => Ok(id),
        }
    }

    /// Re-opens a recorded netns path, but only if it still names the
    /// namespace it named when recorded (and never the node's): a path can
    /// be re-bound, or reused by another pod, between ADD and DEL. Records
    /// older than the identity check carry no identity; then only the node
    /// namespaces are refused.
    pub fn reopen(&self, path: &str, recorded: Option<NsId>) -> Option<Netns> {
        let ns = Netns::open(std::path::Path::new(path)).ok()?;
        let id = self.pod_ns_id(&ns).ok()?;
        match recorded {
            Some(r) if r != id => {
                tracing::warn!(netns = path, recorded = %r, now = %id,
                    "the recorded netns path names another namespace now; not reaching into it");
                None
            }
            _ => Some(ns),
        }
    }

    pub fn node(&self) -> &Netlink {
        &self.node
    }

    /// The node's namespace (to watch it).
    pub fn node_ns(&self) -> &Netns {
        &self.node_ns
    }

    /// Moves the NIC into the pod under `w.ifname` and configures it. On
    /// failure the NIC is brought back and parked before the error returns.
    /// A NIC that fails to come back is reported in the error; the caller
    /// marks it missing rather than hand it out again.
    pub async fn attach(&self, w: &Wiring, pod_ns: &Netns) -> Result<(), PlumbError> {
        let link = self
            .node
            .link_by_mac(w.mac, Some(&w.mac.parked_name()))
            .await?
            .ok_or(PlumbError::NicMissing(w.mac))?;
        let pod = pod_ns.connect().await?;
        if pod.link_by_name(&w.ifname).await?.is_some() {
            return Err(PlumbError::NameTaken(w.ifname.clone()));
        }
        let moved = self.node.move_link(link.index, pod_ns, &w.ifname).await;
        // The kernel applies a move-and-rename request in two steps: a
        // rename that fails (a name taken meanwhile) fails *after* the move,
        // so on any error the NIC may be in the pod already.
        let result = match moved {
            Err(e) if e.is_exists() => Err(PlumbError::NameTaken(w.ifname.clone())),
            Err(e) => Err(e.into()),
            Ok(()) => configure(&pod, w).await.map_err(PlumbError::from),
        };
        let Err(e) = result else { return Ok(()) };
        match self.pull_back(&pod, w.mac).await {
            Ok(_) => Err(e),
            Err(undo) => Err(PlumbError::UndoFailed {
                what: Box::new(e),
                undo,
            }),
        }
    }

    /// Whether the pod already has a default route: another of its
    /// attachments (hostnic's or another plugin's) carries it.
    pub async fn has_default_route(&self, pod_ns: &Netns) -> Result<bool, PlumbError> {
        let pod = pod_ns.connect().await?;
        Ok(pod.routes().await?.iter().any(|r| r.dst.prefix_len() == 0))
    }

    /// Brings the NIC back from the pod (if we can reach it there) and parks
    /// it. Best effort and idempotent: a NIC already parked stays parked.
    pub async fn detach(
        &self,
        mac: Mac,
        pod_ns: Option<&Netns>,
    ) -> Result<Whereabouts, hostnic_netlink::Error> {
        if let Some(ns) = pod_ns {
            let pod = ns.connect().await?;
            if self.pull_back(&pod, mac).await? == Whereabouts::Parked {
                return Ok(Whereabouts::Parked);
            }
        }
        match self.node.link_by_mac(mac, Some(&mac.parked_name())).await? {
            Some(link) => {
                self.park(&link).await?;
                Ok(Whereabouts::Parked)
            }
            None => Ok(Whereabouts::Gone),
        }
    }

    /// Moves the NIC with `mac` from `pod` back to the node and parks it.
    async fn pull_back(
        &self,
        pod: &Netlink,
        mac: Mac,
    ) -> Result<Whereabouts, hostnic_netlink::Error> {
        let Some(link) = pod.link_by_mac(mac, None).await? else {
            return Ok(Whereabouts::Gone);
        };
        pod.move_link(link.index, &self.node_ns, &mac.parked_name())
            .await?;
        // Moving a link closes it and the kernel drops its addresses and
        // routes; park() checks that rather than trusting it.
        match self.node.link_by_mac(mac, Some(&mac.parked_name())).await? {
            Some(l) => {
                self.park(&l).await?;
                Ok(Whereabouts::Parked)
            }
            None => Ok(Whereabouts::Gone),
        }
    }

    /// Puts a NIC in the node namespace into its resting state: down, no
    /// addresses, named `hn<mac>`. Down and unaddressed, it can never take
    /// the node's default route.
    pub async fn park(&self, link: &Link) -> Result<(), hostnic_netlink::Error> {
        let Some(mac) = link.mac else { return Ok(()) };
        if link.up {
            self.node.set_down(link.index).await?;
        }
        if !self.node.addresses(link.index).await?.is_empty() {
            self.node.flush_addresses(link.index).await?;
        }
        let parked = mac.parked_name();
        if link.name != parked {
            self.node.rename(link.index, &parked).await?;
        }
        Ok(())
    }

    /// Whether the pod still has exactly what ADD gave it. The answer names
    /// the first difference.
    pub async fn verify(
        &self,
        w: &Wiring,
        pod_ns: &Netns,
    ) -> Result<Result<(), String>, hostnic_netlink::Error> {
        let pod = pod_ns.connect().await?;
        let Some(link) = pod.link_by_name(&w.ifname).await? else {
            return Ok(Err(format!("the pod has no interface {}", w.ifname)));
        };
        if link.mac != Some(w.mac) {
            return Ok(Err(format!(
                "interface {} has MAC {:?}, expected {}",
                w.ifname, link.mac, w.mac
            )));
        }
        if !link.up {
            return Ok(Err(format!("interface {} is down", w.ifname)));
        }
        if link.mtu != w.mtu {
            return Ok(Err(format!(
                "interface {} has MTU {}, expected {}",
                w.ifname, link.mtu, w.mtu
            )));
        }
        // Exactly our IPv4 address (IPv6 link-local addresses come and go
        // with the kernel and are not ours to check).
        let v4: Vec<IpNet> = pod
            .addresses(link.index)
            .await?
            .into_iter()
            .filter(|a| matches!(a, IpNet::V4(_)))
            .collect();
        if v4 != [IpNet::V4(w.address)] {
            return Ok(Err(format!(
                "interface {} has IPv4 addresses {v4:?}, expected exactly {}",
                w.ifname, w.address
            )));
        }
        let routes = pod.routes().await?;
        for (dst, gw) in &w.routes {
            let want = RouteEntry {
                dst: *dst,
                gw: *gw,
                oif: Some(link.index),
            };
            if !routes.contains(&want) {
                return Ok(Err(format!(
                    "the route to {dst} via {gw:?} on {} is missing",
                    w.ifname
                )));
            }
        }
        Ok(Ok(()))
    }
}

/// Configures the NIC that just arrived in the pod: MTU and up first (a
/// gateway route needs an up device), then the address, then the routes.
async fn configure(pod: &Netlink, w: &Wiring) -> Result<(), hostnic_netlink::Error> {
    let link = pod.link_by_name(&w.ifname).await?;
    // The kernel just created it under this name; if it is not there the
    // pod netns was torn down under us.
    let Some(link) = link.filter(|l| l.mac == Some(w.mac)) else {
        return Err(hostnic_netlink::Error::Io {
            op: format!("finding {} in the pod after moving it", w.ifname),
            source: std::io::Error::from_raw_os_error(nix::libc::ENODEV),
        });
    };
    pod.set_mtu_up(link.index, w.mtu).await?;
    pod.add_address(link.index, w.address).await?;
    for (dst, gw) in &w.routes {
        pod.add_route(&RouteEntry {
            dst: *dst,
            gw: *gw,
            oif: Some(link.index),
        })
        .await?;
    }
    Ok(())
}
