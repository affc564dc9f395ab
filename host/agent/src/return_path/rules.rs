//! The nftables rules of Service answers, as text for `nft -f`: pure, so
//! they are tested without a kernel.

use std::collections::BTreeSet;

use super::Gateway;

/// The nftables tables of one pod interface, replacing any it had, in
/// one transaction. The mark is the node's address as a number: never 0,
/// the same whichever agent writes it. An interface name nft cannot quote
/// (a `"` or `\\`, which the kernel allows) is refused.
pub fn ruleset(ifname: &str, gateways: &BTreeSet<Gateway>) -> anyhow::Result<String> {
    if !ifname
        .chars()
        .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
    {
        anyhow::bail!("nftables cannot name interface {ifname:?} in a rule");
    }
    let table = table_name(ifname);
    let elements = |pair: &dyn Fn(&Gateway) -> String| -> String {
        if gateways.is_empty() {
            return String::new();
        }
        let list: Vec<String> = gateways.iter().map(pair).collect();
        format!(" elements = {{ {} }};", list.join(", "))
    };
    let by_mac = elements(&|g| format!("{} : {:#010x}", g.mac, u32::from(g.ip)));
    let by_mark = elements(&|g| format!("{:#010x} : {}", u32::from(g.ip), g.mac));
    Ok(format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table netdev {table}\n\
         delete table netdev {table}\n\
         table inet {table} {{\n\
         \tmap nodes {{ type ether_addr : mark;{by_mac} }}\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority mangle;\n\
         \t\tiifname \"{ifname}\" ct state new ct mark set ether saddr map @nodes\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority mangle;\n\
         \t\tct direction reply ct mark != 0 meta mark set ct mark\n\
         \t}}\n\
         }}\n\
         table netdev {table} {{\n\
         \tmap nodes {{ type mark : ether_addr;{by_mark} }}\n\
         \tchain egress {{\n\
         \t\ttype filter hook egress device \"{ifname}\" priority 0;\n\
         \t\tmeta mark != 0 ether daddr set meta mark map @nodes\n\
         \t}}\n\
         }}\n"
    ))
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
}
