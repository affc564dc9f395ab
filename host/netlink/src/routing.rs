//! The operations that wire a pod in: veth pairs, neighbour entries, routes
//! in any table and policy rules.
//!
//! Routes and rules carry a protocol number (`rtm_protocol`, `FRA_PROTOCOL`)
//! and are listed by it: hostnic marks what it installs with a private
//! number, so it can find and remove exactly its own entries after a
//! restart without keeping a record of them, and never touches anyone
//! else's.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{InfoData, InfoVeth, MacVlanMode};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{LinkMacVlan, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::{Error, Mac, Netlink, Netns, Result};

/// A route in any table, with what hostnic needs to own it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRoute {
    pub dst: Ipv4Net,
    /// None: scope link (on-link, no gateway).
    pub gw: Option<Ipv4Addr>,
    /// The output link. A listed route without one (a multipath route) has
    /// 0 here; deleting it with 0 does not narrow the match by link.
    pub oif: u32,
    /// 254 = main.
    pub table: u32,
    /// RTNH_F_ONLINK: the gateway is not in any subnet of `oif` and is
    /// taken to be on its link all the same.
    pub onlink: bool,
    /// `rtm_protocol`; hostnic uses a private number.
    pub proto: u8,
}

/// An IPv4 policy rule: `from`/`to` selectors, `lookup table`, at
/// `priority`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub priority: u32,
    pub from: Option<Ipv4Net>,
    pub to: Option<Ipv4Net>,
    pub table: u32,
    pub proto: u8,
}

impl Netlink {
    /// Creates a veth pair: `name` in this namespace, its peer `peer_name`
    /// created directly in `peer_ns`. The peer carries `IFLA_NET_NS_FD`, so
    /// it is one RTM_NEWLINK and the peer never exists in this namespace:
    /// no device move (the move is the slow part of wiring, see
    /// [`Netlink::move_link`]) and no name to clash with here. Both ends
    /// get `mtu` and are left down. Returns the index of `name`, the local
    /// end.
    pub async fn add_veth(
        &self,
        name: &str,
        (peer_name, peer_mac): (&str, Mac),
        peer_ns: &Netns,
        mtu: u32,
    ) -> Result<u32> {
        use std::os::fd::AsRawFd;
        let peer = LinkUnspec::new_with_name(peer_name)
            .setns_by_fd(peer_ns.as_raw_fd())
            .address(peer_mac.0.to_vec())
            .mtu(mtu)
            .build();
        let msg = LinkVeth::new(name, peer_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .mtu(mtu)
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "creating veth {name} in netns {} with peer {peer_name} in netns {}",
                self.ns,
                peer_ns.label()
            )))?;
        // The kernel does not answer the new index; the name is ours now
        // (the add was exclusive), so ask for it.
        match self.link_by_name(name).await? {
            Some(link) => Ok(link.index),
            None => Err(Error::io(format!(
                "looking up veth {name} just created in netns {}",
                self.ns
            ))(std::io::Error::other("it is gone already"))),
        }
    }

    /// Creates `name` in `pod_ns`: a macvlan in passthru mode over `lower`
    /// (a link of this namespace), up, with `mtu`. One RTM_NEWLINK carrying
    /// `IFLA_NET_NS_FD`: the child is born in the pod, so nothing crosses
    /// namespaces (no device move, see [`Netlink::move_link`]), and the
    /// kernel resolves `IFLA_LINK` here, in the caller's namespace. In
    /// passthru mode the child takes the lower's MAC, gets every frame the
    /// lower receives, and is the only child the lower can have (a second
    /// create fails with EINVAL); it goes when its namespace does. `mtu`
    /// may not exceed the lower's.
    pub async fn add_passthru_macvlan(
        &self,
        lower: u32,
        (name, pod_ns): (&str, &Netns),
        mtu: u32,
    ) -> Result<()> {
        use std::os::fd::AsRawFd;
        let msg = LinkMacVlan::new(name, lower, MacVlanMode::Passthrough)
            .setns_by_fd(pod_ns.as_raw_fd())
            .mtu(mtu)
            .up()
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "creating passthru macvlan {name} of link {lower} (netns {}) in netns {}",
                self.ns,
                pod_ns.label()
            )))
    }

    /// Deletes a link by index (a veth takes its peer with it). Already gone
    /// (ENODEV) is Ok: teardown may run twice.
    pub async fn del_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = Error::netlink(format!("deleting link {index} in netns {}", self.ns))(e);
                if e.is_gone() { Ok(()) } else { Err(e) }
            }
        }
    }

    /// A permanent neighbour entry `ip` -> `mac` on link `index`
    /// (NUD_PERMANENT), replacing any existing one: the peer's address is
    /// known, so nothing has to ARP for it.
    pub async fn add_permanent_neighbour(&self, index: u32, ip: Ipv4Addr, mac: Mac) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .state(NeighbourState::Permanent)
            .link_layer_address(&mac.0)
            .replace()
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "adding permanent neighbour {ip} lladdr {mac} on link {index} in netns {}",
                self.ns
            )))
    }

    /// The permanent neighbour entries of link `index`: (ip, mac).
    pub async fn permanent_neighbours(&self, index: u32) -> Result<Vec<(Ipv4Addr, Mac)>> {
        let msgs = self
            .neighbour_dump(NeighbourFlags::empty())
            .await
            .map_err(Error::netlink(format!(
                "listing neighbours of link {index} in netns {}",
                self.ns
            )))?;
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.ifindex == index
                    && m.header.state == NeighbourState::Permanent
                    && !m.header.flags.contains(NeighbourFlags::Proxy)
            })
            .filter_map(|m| {
                let ip = neighbour_ip(m)?;
                let mac = m.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(b) => Mac::from_bytes(b),
                    _ => None,
                })?;
                Some((ip, mac))
            })
            .collect())
    }

    /// A proxy neighbour entry (`ip neigh add proxy IP dev X`, NTF_PROXY):
    /// the namespace answers ARP for `ip` on link `index`. Replaces any
    /// existing one.
    pub async fn add_proxy_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .flags(NeighbourFlags::Proxy)
            .replace()
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "adding proxy neighbour {ip} on link {index} in netns {}",
                self.ns
            )))
    }

    /// Removes a proxy entry; already gone is Ok.
    pub async fn del_proxy_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Proxy;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = Error::netlink(format!(
                    "removing proxy neighbour {ip} on link {index} in netns {}",
                    self.ns
                ))(e);
                if e.is_gone() { Ok(()) } else { Err(e) }
            }
        }
    }

    /// Every IPv4 proxy neighbour entry in the namespace: (link index, ip).
    /// An entry for no particular link has index 0.
    pub async fn proxy_neighbours(&self) -> Result<Vec<(u32, Ipv4Addr)>> {
        let msgs = self
            .neighbour_dump(NeighbourFlags::Proxy)
            .await
            .map_err(Error::netlink(format!(
                "listing proxy neighbours in netns {}",
                self.ns
            )))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.flags.contains(NeighbourFlags::Proxy))
            .filter_map(|m| Some((m.header.ifindex, neighbour_ip(m)?)))
            .collect())
    }

    /// An IPv4 neighbour dump. With exactly NTF_PROXY in the request the
    /// kernel dumps the proxy entries instead of the neighbour cache.
    async fn neighbour_dump(
        &self,
        flags: NeighbourFlags,
    ) -> std::result::Result<Vec<NeighbourMessage>, rtnetlink::Error> {
        let _dump = self.dump_lock.lock().await;
        self.handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .set_flags(flags)
            .execute()
            .try_collect()
            .await
    }

    /// Adds a route as given, or replaces the route the kernel takes for
    /// the same one (same table, destination, TOS and metric) whatever its
    /// gateway, link or protocol: NLM_F_REPLACE, so that installing the
    /// desired state twice is not an error.
    pub async fn add_table_route(&self, r: &TableRoute) -> Result<()> {
        self.handle
            .route()
            .add(route_message(r))
            .replace()
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "adding {} in netns {}",
                describe_route(r),
                self.ns
            )))
    }

    /// Deletes a route; already gone (ESRCH/ENOENT) is Ok. The kernel
    /// matches the table, destination, protocol and, when given, the
    /// gateway and link; any scope (RT_SCOPE_NOWHERE), so a route listed by
    /// [`Netlink::table_routes`] is found however it was added.
    pub async fn del_table_route(&self, r: &TableRoute) -> Result<()> {
        let mut msg = route_message(r);
        msg.header.scope = RouteScope::NoWhere;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = Error::netlink(format!(
                    "deleting {} in netns {}",
                    describe_route(r),
                    self.ns
                ))(e);
                if e.is_gone() { Ok(()) } else { Err(e) }
            }
        }
    }

    /// Every IPv4 unicast route of every table whose protocol is `proto`:
    /// what hostnic installed, found again after a restart.
    pub async fn table_routes(&self, proto: u8) -> Result<Vec<TableRoute>> {
        let _dump = self.dump_lock.lock().await;
        let mut req = RouteMessageBuilder::<Ipv4Addr>::new().build();
        // Every table: the kernel dumps them all for RT_TABLE_UNSPEC (and,
        // without strict checking, whatever the header says).
        req.header.table = 0;
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .map_err(Error::netlink(format!(
                "listing routes of protocol {proto} in netns {}",
                self.ns
            )))?;
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.address_family == AddressFamily::Inet
                    && m.header.kind == RouteType::Unicast
                    && u8::from(m.header.protocol) == proto
            })
            .filter_map(table_route)
            .collect())
    }

    /// Adds a rule; an identical existing rule (EEXIST) is Ok, so installing
    /// the desired state twice is not an error.
    pub async fn add_rule(&self, r: &Rule) -> Result<()> {
        let mut req = self.handle.rule().add().v4();
        *req.message_mut() = rule_message(r);
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e =
                    Error::netlink(format!("adding {} in netns {}", describe_rule(r), self.ns))(e);
                if e.is_exists() { Ok(()) } else { Err(e) }
            }
        }
    }

    /// Deletes a rule; already gone is Ok.
    pub async fn del_rule(&self, r: &Rule) -> Result<()> {
        match self.handle.rule().del(rule_message(r)).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = Error::netlink(format!(
                    "deleting {} in netns {}",
                    describe_rule(r),
                    self.ns
                ))(e);
                if e.is_gone() { Ok(()) } else { Err(e) }
            }
        }
    }

    /// Every IPv4 rule whose protocol is `proto`. Only `lookup` rules
    /// (FR_ACT_TO_TBL) are [`Rule`]s; others are left out.
    pub async fn rules(&self, proto: u8) -> Result<Vec<Rule>> {
        let _dump = self.dump_lock.lock().await;
        let msgs: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(rtnetlink::IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(Error::netlink(format!(
                "listing rules of protocol {proto} in netns {}",
                self.ns
            )))?;
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.family == AddressFamily::Inet && m.header.action == RuleAction::ToTable
            })
            .filter_map(rule)
            .filter(|r| r.proto == proto)
            .collect())
    }
}

fn neighbour_ip(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

/// The message that adds `r` (and, with another scope, deletes it).
fn route_message(r: &TableRoute) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.dst.addr(), r.dst.prefix_len())
        .table_id(r.table)
        .protocol(RouteProtocol::from(r.proto));
    if r.oif != 0 {
        b = b.output_interface(r.oif);
    }
    b = match r.gw {
        Some(gw) => b.gateway(gw),
        None => b.scope(RouteScope::Link),
    };
    if r.onlink {
        b = b.onlink();
    }
    b.build()
}

fn describe_route(r: &TableRoute) -> String {
    let mut s = format!("route {}", r.dst);
    if let Some(gw) = r.gw {
        s += &format!(" via {gw}");
    }
    s += &format!(" dev {} table {} proto {}", r.oif, r.table, r.proto);
    if r.onlink {
        s += " onlink";
    }
    s
}

fn table_route(m: &RouteMessage) -> Option<TableRoute> {
    let mut route = TableRoute {
        dst: Ipv4Net::default(),
        gw: None,
        oif: 0,
        table: u32::from(m.header.table),
        onlink: m.header.flags.contains(RouteFlags::Onlink),
        proto: u8::from(m.header.protocol),
    };
    let mut dst = Ipv4Addr::UNSPECIFIED;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.gw = Some(*g),
            RouteAttribute::Oif(i) => route.oif = *i,
            _ => {}
        }
    }
    route.dst = Ipv4Net::new(dst, m.header.destination_prefix_length).ok()?;
    Some(route)
}

/// The message that adds `r`, and the one that deletes it: the kernel
/// deletes the rule that matches every field given. Selectors go as given
/// (the kernel keeps host bits in a rule's prefix), so a listed rule is
/// equal to the one that was added.
fn rule_message(r: &Rule) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.action = RuleAction::ToTable;
    // Tables above 255 only fit FRA_TABLE; the kernel prefers it anyway.
    m.header.table = u8::try_from(r.table).unwrap_or(0);
    m.attributes.push(RuleAttribute::Table(r.table));
    m.attributes.push(RuleAttribute::Priority(r.priority));
    m.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::from(r.proto)));
    if let Some(from) = r.from {
        m.header.src_len = from.prefix_len();
        m.attributes
            .push(RuleAttribute::Source(IpAddr::V4(from.addr())));
    }
    if let Some(to) = r.to {
        m.header.dst_len = to.prefix_len();
        m.attributes
            .push(RuleAttribute::Destination(IpAddr::V4(to.addr())));
    }
    m
}

fn describe_rule(r: &Rule) -> String {
    let mut s = format!("rule priority {}", r.priority);
    if let Some(from) = r.from {
        s += &format!(" from {from}");
    }
    if let Some(to) = r.to {
        s += &format!(" to {to}");
    }
    s + &format!(" lookup {} proto {}", r.table, r.proto)
}

fn rule(m: &RuleMessage) -> Option<Rule> {
    let mut rule = Rule {
        priority: 0,
        from: None,
        to: None,
        table: u32::from(m.header.table),
        proto: 0,
    };
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => rule.priority = *p,
            RuleAttribute::Table(t) => rule.table = *t,
            RuleAttribute::Protocol(p) => rule.proto = u8::from(*p),
            RuleAttribute::Source(IpAddr::V4(ip)) => {
                rule.from = Some(Ipv4Net::new(*ip, m.header.src_len).ok()?);
            }
            RuleAttribute::Destination(IpAddr::V4(ip)) => {
                rule.to = Some(Ipv4Net::new(*ip, m.header.dst_len).ok()?);
            }
            _ => {}
        }
    }
    Some(rule)
}
