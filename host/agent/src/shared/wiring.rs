//! The kernel side of a shared-mode attachment (`docs/shared-nic.md`,
//! "Wiring"): a veth created straight into the pod, the pod's /32 behind
//! the node as next hop, and on the node a host route, two rules and a
//! proxy neighbour entry on the node's NIC in the vxnet. Every route and
//! rule carries [`PROTO`], so a restart tells hostnic's from everyone
//! else's; the proxy entries live on hostnic's own NIC.

use std::net::Ipv4Addr;

use hostnic_netlink::{Mac, Netlink, Netns, Rule, TableRoute};
use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

use super::addresses::SharedNet;
use crate::record::{Key, SharedHold};

/// The routing protocol number on hostnic's routes and rules.
pub const PROTO: u8 = 213;
/// The pod's next hop whatever its vxnet: the node's end of the veth,
/// answered by a permanent neighbour entry in the pod (no ARP).
pub const NEXT_HOP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// `to <pod> lookup main`: traffic to a pod of the node stays on the node.
pub const TO_PRIORITY: u32 = 512;
/// `from <pod> lookup <vxnet's table>`: everything else leaves by the
/// pod's vxnet's NIC.
pub const FROM_PRIORITY: u32 = 1536;
const MAIN: u32 = 254;

fn digest(key: &Key) -> [u8; 32] {
    Sha256::digest(format!("{}\0{}\0{}", key.network, key.container_id, key.ifname).as_bytes())
        .into()
}

/// The node's end of an attachment's veth: `hs` and 12 hex digits of the
/// attachment's key, so a retried ADD names the same one.
pub fn veth_name(key: &Key) -> String {
    let hex: String = digest(key)[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("hs{hex}")
}

/// The MAC of the pod's end of the veth, from the attachment's key: known
/// before the veth exists (the routes guest sees it), the same on a retry.
/// Locally administered and unicast; it is only ever seen on the veth.
pub fn veth_mac(key: &Key) -> Mac {
    let d = digest(key);
    Mac([0x0a, d[6], d[7], d[8], d[9], d[10]])
}

fn host(a: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(a, 32).expect("a /32 is valid")
}

/// The rules of the attachment with address `a` in `table`.
pub fn rules(a: Ipv4Addr, table: u32) -> [Rule; 2] {
    [
        Rule {
            priority: TO_PRIORITY,
            from: None,
            to: Some(host(a)),
            table: MAIN,
            proto: PROTO,
        },
        Rule {
            priority: FROM_PRIORITY,
            from: Some(host(a)),
            to: None,
            table,
            proto: PROTO,
        },
    ]
}

/// The node's route to the pod, out of its veth.
pub fn host_route(a: Ipv4Addr, veth_index: u32) -> TableRoute {
    TableRoute {
        dst: host(a),
        gw: None,
        oif: veth_index,
        table: MAIN,
        onlink: false,
        proto: PROTO,
    }
}

/// A shared vxnet's table: its subnet on the node's NIC there, and the
/// default through the vxnet's gateway.
pub fn table_routes(net: &SharedNet, nic_index: u32) -> [TableRoute; 2] {
    [
        TableRoute {
            dst: net.cidr,
            gw: None,
            oif: nic_index,
            table: net.table,
            onlink: false,
            proto: PROTO,
        },
        TableRoute {
            dst: Ipv4Net::default(),
            gw: Some(net.gateway),
            oif: nic_index,
            table: net.table,
            onlink: false,
            proto: PROTO,
        },
    ]
}

/// The node-wide pieces of a shared vxnet: its table, forwarding, a loose
/// reverse-path check on its NIC (pods' addresses are not the NIC's) and
/// proxy answers without delay.
/// Idempotent: run at the vxnet's first ADD and at every start.
pub async fn prepare_vxnet(
    node_ns: &Netns,
    node: &Netlink,
    net: &SharedNet,
    nic: (u32, &str),
) -> hostnic_netlink::Result<()> {
    for r in table_routes(net, nic.0) {
        node.add_table_route(&r).await?;
    }
    node_ns.sysctl("net.ipv4.ip_forward", "1").await?;
    node_ns
        .sysctl(&format!("net.ipv4.conf.{}.rp_filter", nic.1), "2")
        .await?;
    // The kernel delays proxy answers to broadcast requests by up to
    // `proxy_delay` (0.8 s by default), which a pod's first packet to a
    // neighbour would wait out.
    node_ns
        .sysctl(&format!("net.ipv4.neigh.{}.proxy_delay", nic.1), "0")
        .await?;
    Ok(())
}

/// Creates the veth: the pod's end named as the attachment's interface,
/// made directly in the pod's namespace. Returns the pod end's MAC.
pub async fn create_veth(
    node: &Netlink,
    pod_ns: &Netns,
    (ifname, mac): (&str, Mac),
    r: &SharedHold,
) -> hostnic_netlink::Result<()> {
    node.add_veth(&r.veth, (ifname, mac), pod_ns, r.mtu).await?;
    Ok(())
}

/// Configures both ends once the veth exists: the pod's address, next hop
/// and routes, then the node's route, rules and proxy entry.
pub async fn configure(
    node: &Netlink,
    pod_ns: &Netns,
    ifname: &str,
    r: &SharedHold,
    nic_index: u32,
) -> hostnic_netlink::Result<()> {
    let hs = node
        .link_by_name(&r.veth)
        .await?
        .ok_or_else(|| gone(format!("finding {} on the node", r.veth)))?;
    let host_mac = hs
        .mac
        .ok_or_else(|| gone(format!("{} has no MAC", r.veth)))?;
    let pod = pod_ns.connect().await?;
    let eth = pod
        .link_by_name(ifname)
        .await?
        .ok_or_else(|| gone(format!("finding {ifname} in the pod")))?;
    pod.set_mtu_up(eth.index, r.mtu).await?;
    pod.add_address(eth.index, host(r.address)).await?;
    pod.add_permanent_neighbour(eth.index, NEXT_HOP, host_mac)
        .await?;
    for (dst, _) in &r.routes {
        pod.add_table_route(&TableRoute {
            dst: *dst,
            gw: Some(NEXT_HOP),
            oif: eth.index,
            table: MAIN,
            onlink: true,
            proto: PROTO,
        })
        .await?;
    }
    configure_node(node, r, hs.index, nic_index).await
}

/// The node's pieces of an attachment: its veth up, the route to the pod,
/// the rules and the proxy entry. Idempotent (a restart puts back what is
/// missing with it).
pub async fn configure_node(
    node: &Netlink,
    r: &SharedHold,
    veth_index: u32,
    nic_index: u32,
) -> hostnic_netlink::Result<()> {
    node.set_mtu_up(veth_index, r.mtu).await?;
    node.add_table_route(&host_route(r.address, veth_index))
        .await?;
    for rule in rules(r.address, r.table) {
        node.add_rule(&rule).await?;
    }
    node.add_proxy_neighbour(nic_index, r.address).await?;
    Ok(())
}

/// Takes everything of the attachment off the node: the proxy entry, the
/// rules, the veth (its pod end and the host route go with it). Each step
/// is idempotent, so an unwire after a partial wire, or twice, is fine.
pub async fn unwire(
    node: &Netlink,
    r: &SharedHold,
    nic_index: Option<u32>,
) -> hostnic_netlink::Result<()> {
    if let Some(i) = nic_index {
        node.del_proxy_neighbour(i, r.address).await?;
    }
    for rule in rules(r.address, r.table) {
        node.del_rule(&rule).await?;
    }
    if let Some(hs) = node.link_by_name(&r.veth).await? {
        node.del_link(hs.index).await?;
    }
    Ok(())
}

/// Whether the pod and the node still have what ADD gave them; the answer
/// names the first difference.
pub async fn verify(
    node: &Netlink,
    pod_ns: &Netns,
    ifname: &str,
    r: &SharedHold,
    nic_index: u32,
) -> hostnic_netlink::Result<Result<(), String>> {
    let pod = pod_ns.connect().await?;
    let Some(eth) = pod.link_by_name(ifname).await? else {
        return Ok(Err(format!("the pod has no interface {ifname}")));
    };
    if !eth.up {
        return Ok(Err(format!("interface {} is down", ifname)));
    }
    if eth.mtu != r.mtu {
        return Ok(Err(format!(
            "interface {} has MTU {}, expected {}",
            ifname, eth.mtu, r.mtu
        )));
    }
    let v4: Vec<_> = pod
        .addresses(eth.index)
        .await?
        .into_iter()
        .filter(|a| matches!(a, ipnet::IpNet::V4(_)))
        .collect();
    if v4 != [ipnet::IpNet::V4(host(r.address))] {
        return Ok(Err(format!(
            "interface {} has IPv4 addresses {v4:?}, expected exactly {}/32",
            ifname, r.address
        )));
    }
    let Some(hs) = node.link_by_name(&r.veth).await? else {
        return Ok(Err(format!("the node has no {}", r.veth)));
    };
    if !pod
        .permanent_neighbours(eth.index)
        .await?
        .iter()
        .any(|(ip, mac)| *ip == NEXT_HOP && Some(*mac) == hs.mac)
    {
        return Ok(Err(format!(
            "the pod's next hop {NEXT_HOP} does not resolve to {}",
            r.veth
        )));
    }
    let routes = pod.table_routes(PROTO).await?;
    for (dst, _) in &r.routes {
        if !routes
            .iter()
            .any(|x| x.dst == *dst && x.gw == Some(NEXT_HOP) && x.oif == eth.index)
        {
            return Ok(Err(format!(
                "the pod's route to {dst} via {NEXT_HOP} is missing"
            )));
        }
    }
    if !node
        .table_routes(PROTO)
        .await?
        .contains(&host_route(r.address, hs.index))
    {
        return Ok(Err(format!(
            "the node's route to {} dev {} is missing",
            r.address, r.veth
        )));
    }
    let node_rules = node.rules(PROTO).await?;
    if let Some(missing) = rules(r.address, r.table)
        .into_iter()
        .find(|x| !node_rules.contains(x))
    {
        return Ok(Err(format!(
            "the node's rule {:?} to {:?} lookup {} (priority {}) is missing",
            missing.from, missing.to, missing.table, missing.priority
        )));
    }
    if !node
        .proxy_neighbours()
        .await?
        .contains(&(nic_index, r.address))
    {
        return Ok(Err(format!(
            "the node no longer answers for {} on its NIC in {}",
            r.address, r.vxnet
        )));
    }
    Ok(Ok(()))
}

fn gone(op: String) -> hostnic_netlink::Error {
    hostnic_netlink::Error::Io {
        op,
        source: std::io::Error::from_raw_os_error(nix::libc::ENODEV),
    }
}
