//! The routing operations against a real kernel, in two throwaway network
//! namespaces (`ip netns add hnrt-<pid>-a`, `-b`) removed at the end even
//! when a check fails. Needs root: without it the test is reported as
//! skipped, and in CI it fails.
//! Nothing is changed in the namespace the test runs in.

use std::net::Ipv4Addr;

use hostnic_netlink::{Mac, Netlink, Netns, Rule, TableRoute};
use ipnet::Ipv4Net;

mod common;
use common::ip;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[tokio::test]
async fn routing_operations_in_throwaway_namespaces() {
    if !common::require_root("routing_operations_in_throwaway_namespaces") {
        return;
    }
    let pair = common::Pair::create("hnrt").await;
    let (a, b) = (&pair.a, &pair.b);

    let idx = veth(a, b, &pair.ns_b).await;
    neighbours(a, idx).await;
    routes(a, idx).await;
    rules(a).await;
    sysctl(&pair.ns_a, &pair.name_a).await;
    nft(&pair.ns_a).await;

    // Deleting one end takes the other with it; twice is fine.
    a.del_link(idx).await.unwrap();
    assert_eq!(a.link_by_name("hnrt0").await.unwrap(), None);
    assert_eq!(b.link_by_name("hnrt0p").await.unwrap(), None);
    a.del_link(idx).await.unwrap();
}

/// A ruleset applied in the namespace (and only there), listed with its
/// counters, refused whole when one line is wrong.
async fn nft(ns: &Netns) {
    ns.nft_apart("table inet hnrt {\n chain c {\n  type filter hook input priority 0\n  counter comment \"c0\"\n }\n}\n".into())
        .await
        .unwrap();
    let listed = ns.nft_list_json("table inet hnrt").await.unwrap();
    assert!(
        listed.contains(r#""comment": "c0""#) || listed.contains(r#""comment":"c0""#),
        "{listed}"
    );
    assert!(listed.contains("\"counter\""), "{listed}");
    let here = Netns::current()
        .unwrap()
        .nft_list_json("table inet hnrt")
        .await;
    assert!(here.is_err(), "the table is only in the test's namespace");
    // Again, replacing what the chain had.
    ns.nft_apart("flush chain inet hnrt c\nadd rule inet hnrt c counter comment \"c1\"\n".into())
        .await
        .unwrap();
    let listed = ns.nft_list_json("table inet hnrt").await.unwrap();
    assert!(listed.contains("c1") && !listed.contains("c0"), "{listed}");
    let why = ns
        .nft_apart("add table inet hnrt2\nadd chain inet hnrt2 c { type filter hook input priority 0; }\nadd rule inet hnrt2 c nonsense\n".into())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        why.contains("nonsense") || why.contains("syntax error"),
        "{why}"
    );
    assert!(
        ns.nft_list_json("table inet hnrt2").await.is_err(),
        "all or nothing"
    );
}

/// A veth pair whose peer is created directly in the other namespace.
async fn veth(a: &Netlink, b: &Netlink, ns_b: &Netns) -> u32 {
    let mac = Mac([0x0a, 1, 2, 3, 4, 5]);
    let idx = a
        .add_veth("hnrt0", ("hnrt0p", mac), ns_b, 1400)
        .await
        .unwrap();
    let local = a.link_by_name("hnrt0").await.unwrap().expect("local end");
    assert_eq!((local.index, local.mtu, local.up), (idx, 1400, false));
    let peer = b.link_by_name("hnrt0p").await.unwrap().expect("peer end");
    assert_eq!((peer.mtu, peer.up, peer.mac), (1400, false, Some(mac)));
    assert_eq!(a.link_by_name("hnrt0p").await.unwrap(), None);
    // The name is taken now.
    assert!(
        a.add_veth("hnrt0", ("hnrt1p", mac), ns_b, 1400)
            .await
            .unwrap_err()
            .is_exists()
    );
    // Scope-link routes want the link up.
    a.set_mtu_up(idx, 1400).await.unwrap();
    b.set_mtu_up(peer.index, 1400).await.unwrap();
    idx
}

async fn neighbours(a: &Netlink, idx: u32) {
    let ip = Ipv4Addr::new(10, 9, 0, 5);
    let mac1: Mac = "02:00:00:00:00:01".parse().unwrap();
    let mac2: Mac = "02:00:00:00:00:02".parse().unwrap();
    a.add_permanent_neighbour(idx, ip, mac1).await.unwrap();
    a.add_permanent_neighbour(idx, ip, mac1).await.unwrap();
    assert_eq!(a.permanent_neighbours(idx).await.unwrap(), vec![(ip, mac1)]);
    a.add_permanent_neighbour(idx, ip, mac2).await.unwrap();
    assert_eq!(a.permanent_neighbours(idx).await.unwrap(), vec![(ip, mac2)]);
    assert_eq!(a.permanent_neighbours(idx + 1000).await.unwrap(), vec![]);

    let proxied = Ipv4Addr::new(10, 9, 0, 6);
    a.add_proxy_neighbour(idx, proxied).await.unwrap();
    a.add_proxy_neighbour(idx, proxied).await.unwrap();
    assert_eq!(a.proxy_neighbours().await.unwrap(), vec![(idx, proxied)]);
    // A proxy entry is not a cache entry, and the other way round.
    assert_eq!(a.permanent_neighbours(idx).await.unwrap(), vec![(ip, mac2)]);
    let shown = ip_a(&["neigh", "show", "proxy"]);
    assert!(shown.contains("10.9.0.6"), "ip neigh show proxy: {shown}");
    a.del_proxy_neighbour(idx, proxied).await.unwrap();
    assert_eq!(a.proxy_neighbours().await.unwrap(), vec![]);
    a.del_proxy_neighbour(idx, proxied).await.unwrap();
}

async fn routes(a: &Netlink, idx: u32) {
    a.add_address(idx, net("10.9.0.1/24")).await.unwrap();
    let route = |dst: &str, gw: Option<[u8; 4]>, table, onlink, proto| TableRoute {
        dst: net(dst),
        gw: gw.map(Ipv4Addr::from),
        oif: idx,
        table,
        onlink,
        proto,
    };
    let on_link = route("10.9.0.5/32", None, 1001, false, 77);
    let default = route("0.0.0.0/0", Some([169, 254, 1, 1]), 1001, true, 77);
    let via = route("10.20.0.0/16", Some([10, 9, 0, 254]), 1001, false, 77);
    let main = route("10.40.0.0/16", Some([10, 9, 0, 254]), 254, false, 77);
    let other = route("10.30.0.0/16", None, 1001, false, 78);
    for r in [&on_link, &default, &via, &main, &other] {
        a.add_table_route(r).await.unwrap();
        a.add_table_route(r).await.unwrap();
    }
    assert_eq!(
        sorted(a.table_routes(77).await.unwrap()),
        sorted(vec![
            on_link.clone(),
            default.clone(),
            via.clone(),
            main.clone()
        ])
    );
    assert_eq!(a.table_routes(78).await.unwrap(), vec![other.clone()]);
    let shown = ip_a(&["route", "show", "table", "1001"]);
    assert!(
        shown.contains("default via 169.254.1.1 dev hnrt0 proto 77 onlink"),
        "ip route show table 1001: {shown}"
    );
    // The main table's own routes (the subnet's, proto kernel) are not ours.
    assert!(ip_a(&["route", "show"]).contains("proto kernel"));

    // Without onlink, a gateway outside every subnet of the link is refused.
    let bad = route("10.50.0.0/16", Some([169, 254, 1, 1]), 1001, false, 77);
    a.add_table_route(&bad).await.unwrap_err();

    for r in [&default, &on_link] {
        a.del_table_route(r).await.unwrap();
        a.del_table_route(r).await.unwrap();
    }
    // A route of another protocol is not deleted as ours.
    let mut not_ours = other.clone();
    not_ours.proto = 77;
    a.del_table_route(&not_ours).await.unwrap();
    assert_eq!(a.table_routes(78).await.unwrap(), vec![other.clone()]);
    assert_eq!(
        sorted(a.table_routes(77).await.unwrap()),
        sorted(vec![via, main])
    );
}

async fn rules(a: &Netlink) {
    let from = Rule {
        priority: 1536,
        from: Some(net("10.9.0.5/32")),
        to: None,
        table: 1001,
        proto: 77,
    };
    let to = Rule {
        priority: 512,
        from: None,
        to: Some(net("10.9.0.5/32")),
        table: 254,
        proto: 77,
    };
    let other = Rule {
        priority: 1600,
        from: Some(net("10.9.0.6/32")),
        to: None,
        table: 1001,
        proto: 78,
    };
    for r in [&from, &to, &other] {
        a.add_rule(r).await.unwrap();
        a.add_rule(r).await.unwrap();
    }
    assert_eq!(
        sorted(a.rules(77).await.unwrap()),
        sorted(vec![from.clone(), to.clone()])
    );
    assert_eq!(a.rules(78).await.unwrap(), vec![other.clone()]);
    let shown = ip_a(&["rule", "show"]);
    assert!(
        shown.contains("1536:\tfrom 10.9.0.5 lookup 1001 proto 77"),
        "ip rule show: {shown}"
    );
    assert!(
        shown.contains("512:\tfrom all to 10.9.0.5 lookup main proto 77"),
        "ip rule show: {shown}"
    );

    a.del_rule(&from).await.unwrap();
    a.del_rule(&from).await.unwrap();
    // Same selectors, another protocol: not ours, not deleted.
    let mut not_ours = other.clone();
    not_ours.proto = 77;
    a.del_rule(&not_ours).await.unwrap();
    assert_eq!(a.rules(77).await.unwrap(), vec![to.clone()]);
    assert_eq!(a.rules(78).await.unwrap(), vec![other]);
    a.del_rule(&to).await.unwrap();
    assert_eq!(a.rules(77).await.unwrap(), vec![]);
}

async fn sysctl(ns_a: &Netns, name_a: &str) {
    let own_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let read = |path: &str| {
        ip(&["netns", "exec", name_a, "cat", path])
            .trim()
            .to_string()
    };
    ns_a.sysctl("net.ipv4.ip_forward", "0").await.unwrap();
    assert_eq!(read("/proc/sys/net/ipv4/ip_forward"), "0");
    ns_a.sysctl("net.ipv4.ip_forward", "1").await.unwrap();
    assert_eq!(read("/proc/sys/net/ipv4/ip_forward"), "1");
    // A key with slashes is a path, for parts with dots in them.
    ns_a.sysctl("net/ipv4/conf/hnrt0/proxy_arp", "1")
        .await
        .unwrap();
    assert_eq!(read("/proc/sys/net/ipv4/conf/hnrt0/proxy_arp"), "1");
    ns_a.sysctl("net.ipv4.no_such_key", "1").await.unwrap_err();
    ns_a.sysctl("net/../kernel/hostname", "x")
        .await
        .unwrap_err();
    // The test's own namespace saw none of it.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        own_before
    );
}

/// `ip -n hnrt-<pid>-a ARGS`: what iproute2 makes of namespace a.
fn ip_a(args: &[&str]) -> String {
    let pid = std::process::id();
    let mut all = vec!["-n".to_string(), format!("hnrt-{pid}-a")];
    all.extend(args.iter().map(|s| s.to_string()));
    ip(&all.iter().map(String::as_str).collect::<Vec<_>>())
}
