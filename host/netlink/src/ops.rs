use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::{Error, Mac, Netns, Result};

/// What we need to know about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
    /// How many holders asked for promiscuous mode (`IFLA_PROMISCUITY`):
    /// a passthru macvlan child that is up holds one on its lower device,
    /// from whatever namespace the child is in.
    pub promiscuity: u32,
    /// The link's kind (`veth`, `macvlan`, ...); `None` for a device with
    /// none (a physical NIC).
    pub kind: Option<String>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            promiscuity: 0,
            kind: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name.clone_from(n),
                LinkAttribute::Address(b) => link.mac = Mac::from_bytes(b),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Promiscuity(p) => link.promiscuity = *p,
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.iter().find_map(|i| match i {
                        LinkInfo::Kind(k) => Some(k.to_string()),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        link
    }
}

/// An IPv4 route in the main table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteEntry {
    pub dst: Ipv4Net,
    pub gw: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// An rtnetlink connection bound to one namespace (see [`Netns::connect`]).
///
/// Clones share one socket. The kernel runs one dump at a time per netlink
/// socket and answers a second with EBUSY, so dumps (listing links,
/// addresses, routes) take `dump_lock`; single requests do not.
#[derive(Clone, Debug)]
pub struct Netlink {
    pub(crate) handle: Handle,
    pub(crate) ns: String,
    pub(crate) dump_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Netlink {
    pub(crate) fn new(handle: Handle, ns: String) -> Netlink {
        Netlink {
            handle,
            ns,
            dump_lock: Arc::default(),
        }
    }

    /// Every link in the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let _dump = self.dump_lock.lock().await;
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(Error::netlink(format!(
                "listing links in netns {}",
                self.ns
            )))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// Finds a link by MAC. `likely_name` is tried first with a single
    /// request (a parked NIC has a name derived from its MAC); only if that
    /// misses are all links listed.
    pub async fn link_by_mac(&self, mac: Mac, likely_name: Option<&str>) -> Result<Option<Link>> {
        if let Some(name) = likely_name
            && let Some(link) = self.link_by_name(name).await?
            && link.mac == Some(mac)
        {
            return Ok(Some(link));
        }
        Ok(self.links().await?.into_iter().find(|l| l.mac == Some(mac)))
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        Ok(self
            .link_message(name)
            .await?
            .as_ref()
            .map(Link::from_message))
    }

    /// The kernel's whole message for link `name`, for callers that need
    /// more than a [`Link`] (its kind, say).
    pub(crate) async fn link_message(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match stream.try_next().await {
            Ok(m) => Ok(m),
            Err(e) => {
                let e = Error::netlink(format!("looking up link {name} in netns {}", self.ns))(e);
                if e.is_gone() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// Moves a link into `target` under `new_name`, in one request. The
    /// kernel applies it in two steps, move then rename, so when the rename
    /// fails (the name is taken in the target) the link has moved all the
    /// same under its old name: callers must look for it there. The link
    /// arrives down, without addresses or routes.
    pub async fn move_link(&self, index: u32, target: &Netns, new_name: &str) -> Result<()> {
        use std::os::fd::AsRawFd;
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(target.as_raw_fd())
            .name(new_name)
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "moving link {index} from netns {} to netns {} as {new_name}",
                self.ns,
                target.label()
            )))
    }

    /// Sets the MTU and brings the link up, in one request.
    pub async fn set_mtu_up(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "setting link {index} up with mtu {mtu} in netns {}",
                self.ns
            )))
    }

    pub async fn set_down(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).down().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "setting link {index} down in netns {}",
                self.ns
            )))
    }

    /// Renames a link; the kernel wants it down for that.
    pub async fn rename(&self, index: u32, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).down().name(name).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "renaming link {index} to {name} in netns {}",
                self.ns
            )))
    }

    pub async fn add_address(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "adding address {addr} to link {index} in netns {}",
                self.ns
            )))
    }

    /// The addresses on a link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let _dump = self.dump_lock.lock().await;
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(Error::netlink(format!(
                "listing addresses of link {index} in netns {}",
                self.ns
            )))?;
        Ok(msgs
            .iter()
            // The dump filter is applied in user space by rtnetlink; keep
            // the check here so a change there cannot widen the answer.
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNet::new(*ip, m.header.prefix_len).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    /// Removes every address from a link. Already-gone addresses are fine.
    pub async fn flush_addresses(&self, index: u32) -> Result<()> {
        let dump = self.dump_lock.lock().await;
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(Error::netlink(format!(
                "listing addresses of link {index} in netns {}",
                self.ns
            )))?;
        drop(dump);
        for m in msgs.into_iter().filter(|m| m.header.index == index) {
            if let Err(e) = self.handle.address().del(m).execute().await {
                let e = Error::netlink(format!(
                    "removing an address of link {index} in netns {}",
                    self.ns
                ))(e);
                if !e.is_gone() {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Adds a route out of `oif`. A route without a gateway is on-link.
    pub async fn add_route(&self, route: &RouteEntry) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst.addr(), route.dst.prefix_len());
        if let Some(oif) = route.oif {
            b = b.output_interface(oif);
        }
        b = match route.gw {
            Some(gw) => b.gateway(gw),
            None => b.scope(RouteScope::Link),
        };
        self.handle
            .route()
            .add(b.build())
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "adding route {} via {:?} dev {:?} in netns {}",
                route.dst, route.gw, route.oif, self.ns
            )))
    }

    /// Replaces the default route with one via `gw` out of `oif`.
    pub async fn replace_default_route(&self, gw: Ipv4Addr, oif: u32) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(gw)
            .output_interface(oif)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "replacing the default route via {gw} dev {oif} in netns {}",
                self.ns
            )))
    }

    /// The IPv4 routes of the main table.
    pub async fn routes(&self) -> Result<Vec<RouteEntry>> {
        let _dump = self.dump_lock.lock().await;
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(Error::netlink(format!(
                "listing routes in netns {}",
                self.ns
            )))?;
        Ok(msgs.iter().filter_map(route_entry).collect())
    }
}

fn route_entry(m: &RouteMessage) -> Option<RouteEntry> {
    let mut table = u32::from(m.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gw = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    Some(RouteEntry {
        dst: Ipv4Net::new(dst, m.header.destination_prefix_length).ok()?,
        gw,
        oif,
    })
}
