//! The nftables rules of Service answers, in nft's script syntax: pure, so
//! they are tested without a kernel.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::Gateway;

/// The node's own table (`ip` family), beside kube-proxy's.
pub const NODE_TABLE: &str = "hostnic-services";

/// The nftables tables of one interface on a vxnet — a pod's own, or a
/// node's gateway NIC (whose shared pods and host answer through it) —
/// replacing any it had, in one transaction. A connection's first frame
/// from a node's NIC marks it with that node; its answers leaving the
/// interface (sent from here or forwarded, hence postrouting) go to that
/// node's MAC. The mark is the node's address as a number: never 0, the
/// same whichever agent writes it; it is set after routing and every
/// iptables hook, and read only by the interface's egress hook. An
/// interface name nft cannot quote (a `"` or `\\`, which the kernel
/// allows) is refused.
pub fn ruleset(ifname: &str, gateways: &BTreeSet<Gateway>) -> anyhow::Result<String> {
    if !ifname
        .chars()
        .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
    {
        anyhow::bail!("nftables cannot name interface {ifname:?} in a rule");
    }
    let table = table_name(ifname);
    let by_mac = elements(
        gateways
            .iter()
            .map(|g| format!("{} : {:#010x}", g.mac, u32::from(g.ip))),
    );
    let by_mark = elements(
        gateways
            .iter()
            .map(|g| format!("{:#010x} : {}", u32::from(g.ip), g.mac)),
    );
    Ok(format!(
        "{unset}\
         table inet {table} {{\n\
         \tmap nodes {{ type ether_addr : mark;{by_mac} }}\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority mangle;\n\
         \t\tiifname \"{ifname}\" ct state new ct mark set ether saddr map @nodes\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype filter hook postrouting priority 300;\n\
         \t\toifname \"{ifname}\" ct direction reply ct mark != 0 meta mark set ct mark\n\
         \t}}\n\
         }}\n\
         table netdev {table} {{\n\
         \tmap nodes {{ type mark : ether_addr;{by_mark} }}\n\
         \tchain egress {{\n\
         \t\ttype filter hook egress device \"{ifname}\" priority 0;\n\
         \t\tmeta mark != 0 ether daddr set meta mark map @nodes\n\
         \t}}\n\
         }}\n",
        unset = unset(ifname),
    ))
}

/// Takes away the tables [`ruleset`] writes for `ifname`: ruleset starts
/// with it, so it replaces them whole; alone, it is for an interface the
/// node no longer has.
pub fn unset(ifname: &str) -> String {
    let table = table_name(ifname);
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table netdev {table}\n\
         delete table netdev {table}\n"
    )
}

/// The node's own table: masquerades a pod's Service connection whose
/// backend could not answer back through this node — one outside every
/// vxnet this node has a gateway NIC in (the API server, a VM, another
/// network), or a node's own address (a hostNetwork backend answers from
/// its primary NIC, which has no return path). The backend then answers
/// this node, as with kube-proxy's `masqueradeAll`; every other backend
/// (a pod on a vxnet, exclusive or shared) sees the client's address.
/// Only connections kube-proxy translated (`ct status dnat`) from this
/// node's vxnets are touched; kube-proxy's own masquerades (hairpin,
/// NodePort) run beside it in iptables, and a connection is translated
/// once.
pub fn masquerade(vxnets: &BTreeSet<Ipv4Net>, nodes: &BTreeSet<Ipv4Addr>) -> String {
    let vxnets = elements(vxnets.iter().map(|n| n.trunc().to_string()));
    let nodes = elements(nodes.iter().map(|a| a.to_string()));
    format!(
        "table ip {NODE_TABLE}\n\
         delete table ip {NODE_TABLE}\n\
         table ip {NODE_TABLE} {{\n\
         \tset vxnets {{ type ipv4_addr; flags interval; auto-merge;{vxnets} }}\n\
         \tset nodes {{ type ipv4_addr;{nodes} }}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat;\n\
         \t\tct status dnat ip saddr @vxnets ip daddr @nodes masquerade\n\
         \t\tct status dnat ip saddr @vxnets ip daddr != @vxnets masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// A set's or map's ` elements = { … };`, or nothing for none (nft
/// refuses an empty element list).
fn elements(items: impl Iterator<Item = String>) -> String {
    let list: Vec<String> = items.collect();
    if list.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", list.join(", "))
    }
}

/// `hostnic-<ifname>`; an interface name with characters nft would not
/// take in a name is spelt in hex.
fn table_name(ifname: &str) -> String {
    if ifname
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        format!("hostnic-{ifname}")
    } else {
        let hex: String = ifname.bytes().map(|b| format!("{b:02x}")).collect();
        format!("hostnic-x{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(ip: &str, mac: &str) -> Gateway {
        Gateway {
            ip: ip.parse().unwrap(),
            mac: mac.parse().unwrap(),
        }
    }

    #[test]
    fn each_node_is_a_mark_both_ways() {
        let nodes: BTreeSet<Gateway> = [
            gw("10.100.0.5", "52:54:00:00:00:05"),
            gw("10.100.0.9", "52:54:00:00:00:09"),
        ]
        .into();
        let rules = ruleset("eth0", &nodes).unwrap();
        assert!(rules.contains("52:54:00:00:00:05 : 0x0a640005"), "{rules}");
        assert!(rules.contains("0x0a640009 : 52:54:00:00:00:09"), "{rules}");
        assert!(rules.contains("iifname \"eth0\""), "{rules}");
        assert!(rules.contains("device \"eth0\""), "{rules}");
        // Answers are marked whether sent from here or forwarded.
        assert!(rules.contains("hook postrouting"), "{rules}");
        assert!(
            rules.contains("oifname \"eth0\" ct direction reply"),
            "{rules}"
        );
        // Replaced whole: each table deleted (made first, so the delete
        // cannot fail) before it is written again.
        assert!(rules.starts_with(
            "table inet hostnic-eth0\ndelete table inet hostnic-eth0\n\
             table netdev hostnic-eth0\ndelete table netdev hostnic-eth0\n"
        ));
    }

    #[test]
    fn no_nodes_yet_is_empty_maps() {
        let rules = ruleset("net1", &BTreeSet::new()).unwrap();
        assert!(!rules.contains("elements"), "{rules}");
        assert!(rules.contains("map nodes { type ether_addr : mark; }"));
    }

    #[test]
    fn odd_interface_names_are_spelt_in_hex() {
        assert_eq!(table_name("eth0"), "hostnic-eth0");
        assert_eq!(table_name("net.1"), "hostnic-x6e65742e31");
        assert!(ruleset("a\"b", &BTreeSet::new()).is_err());
        assert!(ruleset("a\\b", &BTreeSet::new()).is_err());
    }

    #[test]
    fn unset_takes_both_tables_away() {
        assert_eq!(
            unset("gw525400000005"),
            "table inet hostnic-gw525400000005\ndelete table inet hostnic-gw525400000005\n\
             table netdev hostnic-gw525400000005\ndelete table netdev hostnic-gw525400000005\n"
        );
    }

    #[test]
    fn masquerade_spares_pods_on_the_vxnets_only() {
        let vxnets: BTreeSet<Ipv4Net> = ["10.100.0.7/24".parse().unwrap()].into();
        let nodes: BTreeSet<Ipv4Addr> = ["10.100.0.3".parse().unwrap()].into();
        let rules = masquerade(&vxnets, &nodes);
        assert!(rules.contains("elements = { 10.100.0.0/24 }"), "{rules}");
        assert!(rules.contains("elements = { 10.100.0.3 }"), "{rules}");
        assert!(rules.contains("ip daddr @nodes masquerade"), "{rules}");
        assert!(rules.contains("ip daddr != @vxnets masquerade"), "{rules}");
        assert!(rules.starts_with("table ip hostnic-services\ndelete table ip hostnic-services\n"));
        let empty = masquerade(&BTreeSet::new(), &BTreeSet::new());
        assert!(!empty.contains("elements"), "{empty}");
    }
}
