//! The host's check of every answer before anything acts on it: parsed
//! into domain types and checked against the facts the guest was given.
//! A problem is named precisely, with the value at fault, because the
//! message ends up in front of whoever wrote the guest.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::bindings::vxnet::hostnic::policy::types as wit;
use crate::guest::Rejected;
use crate::limits::{MAX_ANSWER_BYTES, MAX_ANSWER_ENTRIES, MAX_STICKY_KEY_BYTES};
use crate::types::{IpRequest, Nic, Route, Vxnet};

fn invalid<T>(problem: String) -> Result<T, Rejected> {
    Err(Rejected::Invalid(problem))
}

/// The size limits, before looking at any value.
fn check_size<'a>(
    what: &str,
    entries: usize,
    strings: impl Iterator<Item = &'a str>,
) -> Result<(), Rejected> {
    if entries > MAX_ANSWER_ENTRIES {
        return Err(Rejected::Oversized(format!(
            "{entries} {what}, over the limit of {MAX_ANSWER_ENTRIES}"
        )));
    }
    let bytes: usize = strings.map(str::len).sum();
    if bytes > MAX_ANSWER_BYTES {
        return Err(Rejected::Oversized(format!(
            "{bytes} bytes of {what}, over the limit of {MAX_ANSWER_BYTES}"
        )));
    }
    Ok(())
}

/// `select-vxnet`: ids of candidates, best first, each at most once.
pub(crate) fn vxnet_ids(ids: Vec<String>, candidates: &[Vxnet]) -> Result<Vec<String>, Rejected> {
    check_size("vxnet ids", ids.len(), ids.iter().map(String::as_str))?;
    if ids.is_empty() && !candidates.is_empty() {
        return invalid(
            "it chose no vxnet; a guest that finds none suitable must refuse with a reason".into(),
        );
    }
    let mut seen = HashSet::new();
    for id in &ids {
        if !candidates.iter().any(|c| &c.id == id) {
            let names: Vec<_> = candidates.iter().map(|c| c.id.as_str()).collect();
            return invalid(format!(
                "vxnet {id:?} was not a candidate (candidates: {})",
                names.join(", ")
            ));
        }
        if !seen.insert(id.as_str()) {
            return invalid(format!("vxnet {id:?} is listed twice"));
        }
    }
    Ok(ids)
}

/// `assign-ip`: addresses the vxnet can actually give a pod.
pub(crate) fn ip_request(req: wit::IpRequest, vxnet: &Vxnet) -> Result<IpRequest, Rejected> {
    match req {
        wit::IpRequest::Any => Ok(IpRequest::Any),
        wit::IpRequest::Exact(s) => {
            check_size("addresses", 1, [s.as_str()].into_iter())?;
            Ok(IpRequest::Exact(pod_address(&s, vxnet)?))
        }
        wit::IpRequest::OneOf(list) => {
            check_size("addresses", list.len(), list.iter().map(String::as_str))?;
            if list.is_empty() {
                return invalid("one-of lists no address".into());
            }
            let mut out = Vec::with_capacity(list.len());
            for s in &list {
                let ip = pod_address(s, vxnet)?;
                if out.contains(&ip) {
                    return invalid(format!("one-of lists {ip} twice"));
                }
                out.push(ip);
            }
            Ok(IpRequest::OneOf(out))
        }
        wit::IpRequest::Range(r) => {
            check_size(
                "addresses",
                2,
                [r.first.as_str(), r.last.as_str()].into_iter(),
            )?;
            let first = in_vxnet(&r.first, vxnet, "range start")?;
            let last = in_vxnet(&r.last, vxnet, "range end")?;
            if first > last {
                return invalid(format!("range {first} - {last} ends before it starts"));
            }
            for ip in [first, last] {
                reserved(ip, vxnet)
                    .filter(|what| *what != "gateway")
                    .map_or(Ok(()), |what| {
                        invalid(format!(
                            "range {first} - {last} includes the {what} address {ip} of {} ({})",
                            vxnet.id, vxnet.cidr
                        ))
                    })?;
            }
            if first == last && first == vxnet.gateway {
                return invalid(format!(
                    "range {first} - {last} holds only the gateway of {}",
                    vxnet.id
                ));
            }
            Ok(IpRequest::Range { first, last })
        }
        wit::IpRequest::Sticky(key) => {
            if key.is_empty() {
                return invalid("sticky key is empty".into());
            }
            if key.len() > MAX_STICKY_KEY_BYTES {
                return Err(Rejected::Oversized(format!(
                    "sticky key of {} bytes, over the limit of {MAX_STICKY_KEY_BYTES}",
                    key.len()
                )));
            }
            Ok(IpRequest::Sticky(key))
        }
    }
}

/// `routes`: prefixes without host bits, gateways on-link in the pod's
/// vxnet, no destination twice.
pub(crate) fn routes(
    routes: Vec<wit::Route>,
    vxnet: &Vxnet,
    nic: &Nic,
) -> Result<Vec<Route>, Rejected> {
    check_size(
        "routes",
        routes.len(),
        routes
            .iter()
            .flat_map(|r| std::iter::once(r.dst.as_str()).chain(r.gw.as_deref())),
    )?;
    let mut out: Vec<Route> = Vec::with_capacity(routes.len());
    for r in routes {
        let dst: Ipv4Net = match r.dst.parse() {
            Ok(d) => d,
            Err(_) => {
                return invalid(format!(
                    "route destination {:?} is not an IPv4 prefix (a.b.c.d/n)",
                    r.dst
                ));
            }
        };
        if dst.trunc() != dst {
            return invalid(format!(
                "route destination {dst} has host bits set (did you mean {}?)",
                dst.trunc()
            ));
        }
        if out.iter().any(|o| o.dst == dst) {
            return invalid(format!("route destination {dst} is listed twice"));
        }
        let gw = match r.gw {
            None => None,
            Some(g) => {
                let gw = in_vxnet(&g, vxnet, &format!("gateway of route {dst}"))?;
                if let Some(what) = reserved(gw, vxnet).filter(|w| *w != "gateway") {
                    return invalid(format!(
                        "gateway {gw} of route {dst} is the {what} address of {} ({})",
                        vxnet.id, vxnet.cidr
                    ));
                }
                if gw == nic.ip {
                    return invalid(format!(
                        "gateway {gw} of route {dst} is the pod's own address"
                    ));
                }
                Some(gw)
            }
        };
        out.push(Route { dst, gw });
    }
    Ok(out)
}

/// An address inside the vxnet's prefix.
fn in_vxnet(s: &str, vxnet: &Vxnet, what: &str) -> Result<Ipv4Addr, Rejected> {
    let Ok(ip) = s.parse::<Ipv4Addr>() else {
        return invalid(format!("{what} {s:?} is not an IPv4 address"));
    };
    if !vxnet.cidr.contains(&ip) {
        return invalid(format!(
            "{what} {ip} is not in vxnet {} ({})",
            vxnet.id, vxnet.cidr
        ));
    }
    Ok(ip)
}

/// An address a pod can hold: in the vxnet, and none of its network,
/// broadcast or gateway addresses.
fn pod_address(s: &str, vxnet: &Vxnet) -> Result<Ipv4Addr, Rejected> {
    let ip = in_vxnet(s, vxnet, "address")?;
    if let Some(what) = reserved(ip, vxnet) {
        return invalid(format!(
            "address {ip} is the {what} address of vxnet {} ({})",
            vxnet.id, vxnet.cidr
        ));
    }
    Ok(ip)
}

/// Which reserved address of the vxnet `ip` is, if any. /31 and /32 have
/// no network or broadcast address (RFC 3021).
fn reserved(ip: Ipv4Addr, vxnet: &Vxnet) -> Option<&'static str> {
    let net = vxnet.cidr;
    if net.prefix_len() <= 30 {
        if ip == net.network() {
            return Some("network");
        }
        if ip == net.broadcast() {
            return Some("broadcast");
        }
    }
    (ip == vxnet.gateway).then_some("gateway")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vx() -> Vxnet {
        Vxnet {
            id: "vxnet-a".into(),
            cidr: "10.0.1.0/24".parse().unwrap(),
            gateway: "10.0.1.1".parse().unwrap(),
            free_ips: 10,
            warm_nics: 0,
            used_nics: 0,
            recent_failures: 0,
            live: Default::default(),
        }
    }

    fn problem<T: std::fmt::Debug>(r: Result<T, Rejected>) -> String {
        match r.unwrap_err() {
            Rejected::Invalid(p) | Rejected::Oversized(p) => p,
        }
    }

    fn nic() -> Nic {
        Nic {
            mac: "52:54:00:00:00:01".into(),
            ip: "10.0.1.5".parse().unwrap(),
            prefix_len: 24,
        }
    }

    #[test]
    fn vxnet_ids_must_be_candidates_once() {
        let mut b = vx();
        b.id = "vxnet-b".into();
        let c = [vx(), b];
        assert_eq!(
            vxnet_ids(vec!["vxnet-b".into(), "vxnet-a".into()], &c).unwrap(),
            ["vxnet-b", "vxnet-a"]
        );
        assert!(problem(vxnet_ids(vec!["vxnet-z".into()], &c)).contains("not a candidate"));
        assert!(problem(vxnet_ids(vec!["vxnet-a".into(), "vxnet-a".into()], &c)).contains("twice"));
        assert!(problem(vxnet_ids(vec![], &c)).contains("must refuse"));
        assert!(vxnet_ids(vec![], &[]).unwrap().is_empty());
    }

    #[test]
    fn answer_size_inside_and_over() {
        let c = [vx()];
        let at_limit = vec!["vxnet-a".to_owned(); MAX_ANSWER_ENTRIES];
        // Within the size limits, refused only for the duplicates.
        assert!(matches!(vxnet_ids(at_limit, &c), Err(Rejected::Invalid(_))));
        let over = vec!["vxnet-a".to_owned(); MAX_ANSWER_ENTRIES + 1];
        assert!(matches!(vxnet_ids(over, &c), Err(Rejected::Oversized(_))));
        let long = vec!["x".repeat(MAX_ANSWER_BYTES + 1)];
        assert!(matches!(vxnet_ids(long, &c), Err(Rejected::Oversized(_))));
    }

    #[test]
    fn exact_and_one_of_addresses() {
        let v = vx();
        let ok = ip_request(wit::IpRequest::Exact("10.0.1.9".into()), &v).unwrap();
        assert_eq!(ok, IpRequest::Exact("10.0.1.9".parse().unwrap()));
        for (bad, why) in [
            ("10.0.2.9", "not in vxnet vxnet-a"),
            ("10.0.1.0", "network address"),
            ("10.0.1.255", "broadcast address"),
            ("10.0.1.1", "gateway address"),
            ("10.0.1.x", "not an IPv4 address"),
            ("10.0.1.09", "not an IPv4 address"),
        ] {
            let p = problem(ip_request(wit::IpRequest::Exact(bad.into()), &v));
            assert!(p.contains(why), "{bad}: {p}");
        }
        let p = problem(ip_request(wit::IpRequest::OneOf(vec![]), &v));
        assert!(p.contains("no address"), "{p}");
        let p = problem(ip_request(
            wit::IpRequest::OneOf(vec!["10.0.1.7".into(), "10.0.1.7".into()]),
            &v,
        ));
        assert!(p.contains("twice"), "{p}");
        let ok = ip_request(
            wit::IpRequest::OneOf(vec!["10.0.1.7".into(), "10.0.1.3".into()]),
            &v,
        )
        .unwrap();
        assert!(matches!(ok, IpRequest::OneOf(l) if l.len() == 2));
    }

    #[test]
    fn ranges() {
        let v = vx();
        let r = |a: &str, b: &str| {
            ip_request(
                wit::IpRequest::Range(wit::IpRange {
                    first: a.into(),
                    last: b.into(),
                }),
                &v,
            )
        };
        // The gateway may sit inside a range (the pool skips it).
        assert!(r("10.0.1.1", "10.0.1.50").is_ok());
        assert!(problem(r("10.0.1.50", "10.0.1.10")).contains("ends before it starts"));
        assert!(problem(r("10.0.1.0", "10.0.1.10")).contains("network"));
        assert!(problem(r("10.0.1.10", "10.0.1.255")).contains("broadcast"));
        assert!(problem(r("10.0.1.10", "10.0.2.1")).contains("not in vxnet"));
        assert!(problem(r("10.0.1.1", "10.0.1.1")).contains("only the gateway"));
    }

    #[test]
    fn sticky_keys() {
        let v = vx();
        assert!(ip_request(wit::IpRequest::Sticky("ns/web-0".into()), &v).is_ok());
        assert!(problem(ip_request(wit::IpRequest::Sticky(String::new()), &v)).contains("empty"));
        let long = "k".repeat(MAX_STICKY_KEY_BYTES + 1);
        assert!(matches!(
            ip_request(wit::IpRequest::Sticky(long), &v),
            Err(Rejected::Oversized(_))
        ));
    }

    #[test]
    fn routes_are_checked() {
        let v = vx();
        let route = |dst: &str, gw: Option<&str>| wit::Route {
            dst: dst.into(),
            gw: gw.map(Into::into),
        };
        let ok = routes(
            vec![
                route("10.96.0.0/12", Some("10.0.1.2")),
                route("0.0.0.0/0", Some("10.0.1.1")),
                route("169.254.0.0/16", None),
            ],
            &v,
            &nic(),
        )
        .unwrap();
        assert_eq!(ok.len(), 3);
        assert_eq!(ok[2].gw, None);
        for (r, why) in [
            (
                route("10.96.0.1/12", None),
                "host bits set (did you mean 10.96.0.0/12?)",
            ),
            (route("10.96.0.0", None), "not an IPv4 prefix"),
            (route("10.96.0.0/12", Some("10.0.9.1")), "is not in vxnet"),
            (route("10.96.0.0/12", Some("0.0.0.0")), "is not in vxnet"),
            (route("10.96.0.0/12", Some("10.0.1.255")), "broadcast"),
            (route("10.96.0.0/12", Some("10.0.1.5")), "pod's own address"),
        ] {
            let p = problem(routes(vec![r], &v, &nic()));
            assert!(p.contains(why), "{p}");
        }
        let p = problem(routes(
            vec![route("10.0.0.0/8", None), route("10.0.0.0/8", None)],
            &v,
            &nic(),
        ));
        assert!(p.contains("twice"), "{p}");
    }
}
