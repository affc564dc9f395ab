//! Route templates (`ipam.routes` of the network config) made into the
//! pod's routes, as the original plugin did:
//!
//! 1. a default route via the vxnet's gateway, unless a template's
//!    destination has prefix length 0 (that template replaces it);
//! 2. each template in order: a gateway of "0.0.0.0" means the node's own
//!    address in the pod's vxnet (`node-gateway`), or the vxnet's gateway
//!    when the node has none there; no gateway is an on-link route; any
//!    other gateway is kept as is;
//! 3. a destination already routed is skipped (the first one wins).
//!
//! An attachment that does not carry the pod's default route (a pod's
//! second network, `net1`, ...) gets neither the built-in default route
//! nor a prefix-0 template: its vxnet's connected route, which the kernel
//! adds with the address, and its other templates.
//!
//! Addresses come back in their canonical text form. A template the kernel
//! would refuse (not IPv4, host bits set in the destination) is refused
//! here with a reason naming it, rather than at the netlink call.

use std::net::Ipv4Addr;

use guest_support::Cidr;
use serde::Deserialize;

use crate::bindings::{Route, RouteTemplate, Vxnet};

/// The guest has no options; this exists to refuse any that are given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

/// Checks the config string: empty or `{}`.
pub fn parse_config(config: &str) -> Result<(), String> {
    guest_support::parse_config::<Config>("routes", config).map(drop)
}

/// The pod's routes for `vxnet` from `templates`; `default_route`: this
/// attachment carries the pod's default route.
pub fn routes(
    vxnet: &Vxnet,
    node_gateway: Option<&str>,
    templates: &[RouteTemplate],
    default_route: bool,
) -> Result<Vec<Route>, String> {
    let vxnet_gw: Ipv4Addr = vxnet.gateway.parse().map_err(|_| {
        format!(
            "{}: the host gave the gateway {:?}, not an IPv4 address",
            vxnet.id, vxnet.gateway
        )
    })?;
    let node_gw: Option<Ipv4Addr> = node_gateway
        .map(|g| {
            g.parse()
                .map_err(|_| format!("the host gave the node gateway {g:?}, not an IPv4 address"))
        })
        .transpose()?;

    // Check every template before building anything.
    let mut parsed = Vec::with_capacity(templates.len());
    for t in templates {
        let dst = Cidr::parse(&t.dst).map_err(|e| format!("route template dst {e}"))?;
        if !dst.is_network() {
            return Err(format!(
                "route template dst {dst} has host bits set; did you mean {}/{}?",
                dst.network(),
                dst.prefix_len()
            ));
        }
        let gw = match &t.gw {
            None => None,
            Some(text) => {
                let gw: Ipv4Addr = text.parse().map_err(|_| {
                    format!("route template {dst}: gw {text:?} is not an IPv4 address")
                })?;
                Some(if gw.is_unspecified() {
                    node_gw.unwrap_or(vxnet_gw)
                } else {
                    gw
                })
            }
        };
        if default_route || dst.prefix_len() != 0 {
            parsed.push((dst, gw));
        }
    }

    let mut out: Vec<(Cidr, Option<Ipv4Addr>)> = Vec::with_capacity(parsed.len() + 1);
    if default_route && !parsed.iter().any(|(dst, _)| dst.prefix_len() == 0) {
        out.push((
            Cidr::parse("0.0.0.0/0").expect("a valid literal"),
            Some(vxnet_gw),
        ));
    }
    for (dst, gw) in parsed {
        if !out.iter().any(|(d, _)| *d == dst) {
            out.push((dst, gw));
        }
    }
    Ok(out
        .into_iter()
        .map(|(dst, gw)| Route {
            dst: dst.to_string(),
            gw: gw.map(|g| g.to_string()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxnet() -> Vxnet {
        Vxnet {
            id: "vxnet-abc".to_string(),
            cidr: "10.0.1.0/24".to_string(),
            gateway: "10.0.1.1".to_string(),
            free_ips: 100,
            warm_nics: 0,
            used_nics: 0,
            recent_failures: 0,
        }
    }

    fn tpl(dst: &str, gw: Option<&str>) -> RouteTemplate {
        RouteTemplate {
            dst: dst.to_string(),
            gw: gw.map(str::to_string),
        }
    }

    /// The routes of the attachment with the pod's default route.
    fn on_eth0(
        vxnet: &Vxnet,
        node_gateway: Option<&str>,
        templates: &[RouteTemplate],
    ) -> Result<Vec<Route>, String> {
        routes(vxnet, node_gateway, templates, true)
    }

    #[test]
    fn a_second_attachment_gets_no_default_route() {
        let templates = [
            tpl("0.0.0.0/0", Some("10.0.1.254")),
            tpl("10.96.0.0/12", Some("0.0.0.0")),
        ];
        assert_eq!(
            routes(&vxnet(), Some("10.0.1.9"), &templates, false),
            Ok(vec![route("10.96.0.0/12", Some("10.0.1.9"))])
        );
        assert_eq!(routes(&vxnet(), None, &[], false), Ok(vec![]));
    }

    fn route(dst: &str, gw: Option<&str>) -> Route {
        Route {
            dst: dst.to_string(),
            gw: gw.map(str::to_string),
        }
    }

    #[test]
    fn config_is_empty_or_an_empty_object() {
        assert_eq!(parse_config(""), Ok(()));
        assert_eq!(parse_config(" {} "), Ok(()));
        let e = parse_config(r#"{"mtu": 1400}"#).unwrap_err();
        assert!(e.contains("unknown field `mtu`"), "{e}");
        let e = parse_config("[]").unwrap_err();
        assert!(e.contains("must be a JSON object"), "{e}");
        let e = parse_config("{,}").unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn no_templates_is_the_default_route_via_the_vxnet_gateway() {
        assert_eq!(
            on_eth0(&vxnet(), Some("10.0.1.7"), &[]),
            Ok(vec![route("0.0.0.0/0", Some("10.0.1.1"))])
        );
    }

    /// The agent's `templates_follow_the_original_semantics` test of its
    /// native route templates (`native_routes`, used with the hooks
    /// disabled), answered the same way.
    #[test]
    fn templates_follow_the_original_semantics() {
        let got = on_eth0(
            &vxnet(),
            Some("10.0.1.9"),
            &[
                tpl("10.96.0.0/12", Some("0.0.0.0")),
                tpl("192.168.0.0/16", Some("10.0.1.254")),
                tpl("172.16.0.0/16", None),
            ],
        );
        // 0.0.0.0 is the node's own NIC in the vxnet; the default route
        // stays on the vxnet gateway.
        assert_eq!(
            got,
            Ok(vec![
                route("0.0.0.0/0", Some("10.0.1.1")),
                route("10.96.0.0/12", Some("10.0.1.9")),
                route("192.168.0.0/16", Some("10.0.1.254")),
                route("172.16.0.0/16", None),
            ])
        );
        // A default-route template replaces the built-in default.
        assert_eq!(
            on_eth0(
                &vxnet(),
                Some("10.0.1.1"),
                &[tpl("0.0.0.0/0", Some("10.0.1.254"))]
            ),
            Ok(vec![route("0.0.0.0/0", Some("10.0.1.254"))])
        );
    }

    #[test]
    fn the_node_gateway_falls_back_to_the_vxnet_gateway() {
        assert_eq!(
            on_eth0(&vxnet(), None, &[tpl("10.96.0.0/12", Some("0.0.0.0"))]),
            Ok(vec![
                route("0.0.0.0/0", Some("10.0.1.1")),
                route("10.96.0.0/12", Some("10.0.1.1")),
            ])
        );
    }

    #[test]
    fn a_prefix_zero_template_replaces_the_default_route() {
        assert_eq!(
            on_eth0(
                &vxnet(),
                Some("10.0.1.7"),
                &[tpl("10.0.0.0/8", None), tpl("0.0.0.0/0", Some("0.0.0.0"))]
            ),
            Ok(vec![
                route("10.0.0.0/8", None),
                route("0.0.0.0/0", Some("10.0.1.7")),
            ])
        );
        // An on-link default route.
        assert_eq!(
            on_eth0(&vxnet(), None, &[tpl("0.0.0.0/0", None)]),
            Ok(vec![route("0.0.0.0/0", None)])
        );
    }

    #[test]
    fn duplicate_destinations_keep_the_first() {
        assert_eq!(
            on_eth0(
                &vxnet(),
                None,
                &[
                    tpl("0.0.0.0/0", Some("10.0.1.2")),
                    tpl("0.0.0.0/0", Some("10.0.1.3")),
                    tpl("10.0.0.0/8", Some("10.0.1.4")),
                    tpl("10.0.0.0/16", Some("10.0.1.5")),
                    tpl("10.0.0.0/8", None),
                ]
            ),
            Ok(vec![
                route("0.0.0.0/0", Some("10.0.1.2")),
                route("10.0.0.0/8", Some("10.0.1.4")),
                route("10.0.0.0/16", Some("10.0.1.5")),
            ])
        );
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        let cases = [
            (
                tpl("10.0.0.1/8", None),
                "route template dst 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?",
            ),
            (
                tpl("fd00::/64", None),
                r#"route template dst "fd00::/64" is not an IPv4 prefix"#,
            ),
            (
                tpl("10.0.0.0", None),
                r#"route template dst "10.0.0.0" is not an IPv4 prefix (a.b.c.d/n)"#,
            ),
            (
                tpl("10.0.0.0/8", Some("gw")),
                r#"route template 10.0.0.0/8: gw "gw" is not an IPv4 address"#,
            ),
        ];
        for (t, want) in cases {
            let e = on_eth0(&vxnet(), None, &[t]).unwrap_err();
            assert!(e.starts_with(want), "{e:?} does not start with {want:?}");
        }
    }

    #[test]
    fn bad_addresses_from_the_host_are_refused() {
        let mut v = vxnet();
        v.gateway = "10.0.1".to_string();
        let e = on_eth0(&v, None, &[]).unwrap_err();
        assert_eq!(
            e,
            r#"vxnet-abc: the host gave the gateway "10.0.1", not an IPv4 address"#
        );
        let e = on_eth0(&vxnet(), Some("x"), &[]).unwrap_err();
        assert_eq!(
            e,
            r#"the host gave the node gateway "x", not an IPv4 address"#
        );
    }
}
