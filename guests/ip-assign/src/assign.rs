//! What address a pod must have, from its annotations and its namespace.
//!
//! In order, the first that applies:
//!
//! 1. the IP annotation (`hostnic.io/ip` unless configured otherwise):
//!    exactly that address, which must be an IPv4 address of the vxnet and
//!    neither its gateway nor its network or broadcast address;
//! 2. `hostnic.io/sticky: "<key>"`: sticky under `key/<namespace>/<key>`
//!    (and `@<network>`): the address last given to it, else any. The
//!    namespace is part of the identity, so a pod can never name another
//!    namespace's key, nor a StatefulSet's;
//! 3. the attachment's network, or else the pod's namespace, is bound to a
//!    tenant pool (`pools`) inside the vxnet: an address from the pool;
//! 4. with `"statefulsets": true`, a StatefulSet's pod is sticky under its
//!    identity, `statefulset/<namespace>/<set>/<ordinal>` (and
//!    `@<network>`: one address per identity per network);
//! 5. the pod's namespace has a range in the config: an address from it;
//! 6. any address of the vxnet.
//!
//! When the vxnet is in shared-NIC mode (`vxnet-facts.vxnet-shared-range`,
//! contract 0.1.3) its pods are addressed from its shared range only: a
//! pinned address outside it is refused, naming the annotation, the
//! address, the vxnet and the range; a pool's or a namespace's range is
//! narrowed to the part inside it, and refused when no part is.
//!
//! A pod's own annotations win over its namespace's range: they are the
//! more specific request. A pool is a boundary, not a preference: a pinned
//! address outside the pool that binds the pod is refused, naming the pool
//! (Genie's LogicalNetwork). A sticky key for a pod a pool binds is
//! refused too: a sticky key's first address is any of the vxnet's, which
//! could be outside the pool. A pod with both an IP and a sticky annotation
//! is refused: which one the author meant is not ours to guess.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use guest_support::Cidr;
use serde::Deserialize;

use crate::bindings::hostnic::policy::pod_facts::Owner;
use crate::bindings::hostnic::policy::types::IpRange;
use crate::bindings::{IpRequest, Pod, Vxnet};

/// The default annotation that pins a pod's address.
pub const IP_ANNOTATION: &str = "hostnic.io/ip";
/// The annotation whose value is a sticky key.
pub const STICKY_ANNOTATION: &str = "hostnic.io/sticky";

#[derive(Debug, PartialEq, Eq)]
pub struct Config {
    annotation: String,
    namespaces: BTreeMap<String, Range>,
    pools: BTreeMap<String, Pool>,
    /// StatefulSet pods are sticky under their identity.
    statefulsets: bool,
}

/// A tenant pool: a range bound to networks and namespaces.
#[derive(Debug, PartialEq, Eq)]
struct Pool {
    range: Range,
    networks: Vec<String>,
    namespaces: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    first: Ipv4Addr,
    last: Ipv4Addr,
}

/// The config as written; [`parse_config`] checks it into a [`Config`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    annotation: Option<String>,
    #[serde(default)]
    namespaces: BTreeMap<String, RawRange>,
    #[serde(default)]
    pools: BTreeMap<String, RawPool>,
    #[serde(default)]
    statefulsets: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    first: String,
    last: String,
    #[serde(default)]
    networks: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    first: String,
    last: String,
}

/// Parses and checks the config string; empty is all defaults.
pub fn parse_config(config: &str) -> Result<Config, String> {
    let raw: RawConfig = guest_support::parse_config("ip-assign", config)?;
    let annotation = raw.annotation.unwrap_or_else(|| IP_ANNOTATION.to_string());
    if annotation.trim().is_empty() {
        return Err("ip-assign config: annotation must not be empty".to_string());
    }
    if annotation == STICKY_ANNOTATION {
        return Err(format!(
            "ip-assign config: annotation {STICKY_ANNOTATION} is the sticky-key annotation; \
             choose another for pinned addresses"
        ));
    }
    let mut namespaces = BTreeMap::new();
    for (ns, r) in raw.namespaces {
        let range = range(&format!("namespaces.{ns}"), &r.first, &r.last)?;
        namespaces.insert(ns, range);
    }
    let mut pools: BTreeMap<String, Pool> = BTreeMap::new();
    for (name, p) in raw.pools {
        let at = format!("pools.{name}");
        if p.networks.is_empty() && p.namespaces.is_empty() {
            return Err(format!(
                "ip-assign config: {at} binds no network and no namespace"
            ));
        }
        for (other, q) in &pools {
            let shared = p
                .networks
                .iter()
                .chain(&p.namespaces)
                .find(|b| q.networks.contains(b) || q.namespaces.contains(b));
            if let Some(b) = shared {
                return Err(format!(
                    "ip-assign config: {b} is bound to both pools.{other} and {at}"
                ));
            }
        }
        let pool = Pool {
            range: range(&at, &p.first, &p.last)?,
            networks: p.networks,
            namespaces: p.namespaces,
        };
        pools.insert(name, pool);
    }
    Ok(Config {
        annotation,
        namespaces,
        pools,
        statefulsets: raw.statefulsets,
    })
}

/// A range of the config, checked; `at` names it in a refusal.
fn range(at: &str, first: &str, last: &str) -> Result<Range, String> {
    let addr = |field: &str, text: &str| {
        text.parse::<Ipv4Addr>()
            .map_err(|_| format!("ip-assign config: {at}.{field} {text:?} is not an IPv4 address"))
    };
    let range = Range {
        first: addr("first", first)?,
        last: addr("last", last)?,
    };
    if range.first > range.last {
        return Err(format!(
            "ip-assign config: {at}: first {} is after last {}",
            range.first, range.last
        ));
    }
    Ok(range)
}

impl Config {
    /// The pool that binds this attachment in `cidr`, by its network first,
    /// else by the pod's namespace. A pool whose range is in another vxnet
    /// does not bind (the pod's other networks' vxnets).
    fn pool(&self, network: &str, namespace: &str, cidr: Cidr) -> Option<(&str, Range)> {
        let inside = |p: &&Pool| cidr.contains(p.range.first) && cidr.contains(p.range.last);
        let find = |bound: &dyn Fn(&Pool) -> bool| {
            self.pools
                .iter()
                .filter(|(_, p)| bound(p))
                .find(|(_, p)| inside(p))
                .map(|(n, p)| (n.as_str(), p.range))
        };
        find(&|p| p.networks.iter().any(|n| n == network))
            .or_else(|| find(&|p| p.namespaces.iter().any(|n| n == namespace)))
    }
}

/// The address request for `pod`'s attachment to `network` in `vxnet`, or
/// the reason it has none. `shared_range`: the range the vxnet's pods are
/// addressed from when it is in shared-NIC mode.
pub fn assign(
    config: &Config,
    pod: &Pod,
    owner: Option<&Owner>,
    network: &str,
    vxnet: &Vxnet,
    shared_range: Option<&str>,
) -> Result<IpRequest, String> {
    let annotation = |key: &str| {
        pod.annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let pinned = annotation(&config.annotation);
    let sticky = annotation(STICKY_ANNOTATION);
    if pinned.is_some() && sticky.is_some() {
        return Err(format!(
            "pod {}/{} has both {} and {STICKY_ANNOTATION}; keep one",
            pod.namespace, pod.name, config.annotation
        ));
    }
    let pool = match config.pools.is_empty() {
        true => None,
        false => config.pool(network, &pod.namespace, vxnet_cidr(vxnet)?),
    };
    let shared = shared_range
        .map(|r| Shared::parse(&vxnet.id, r))
        .transpose()?;
    if let Some(text) = pinned {
        let cidr = vxnet_cidr(vxnet)?;
        let ip = pinned_address(&config.annotation, text, vxnet, cidr)?;
        if let Some(s) = &shared
            && !s.range.contains(ip)
        {
            return Err(format!(
                "annotation {}: {ip} is outside {}; pin an address inside it, or remove the annotation",
                config.annotation,
                s.described()
            ));
        }
        if let Some((name, r)) = pool
            && !(r.first..=r.last).contains(&ip)
        {
            return Err(format!(
                "annotation {}: {ip} is outside pool {name} ({}-{}), which binds {}",
                config.annotation,
                r.first,
                r.last,
                if config.pools[name].networks.iter().any(|n| n == network) {
                    format!("network {network}")
                } else {
                    format!("namespace {}", pod.namespace)
                }
            ));
        }
        return Ok(IpRequest::Exact(ip.to_string()));
    }
    if let Some(key) = sticky {
        if key.trim().is_empty() {
            return Err(format!(
                "annotation {STICKY_ANNOTATION} of pod {}/{} is empty; give it a key",
                pod.namespace, pod.name
            ));
        }
        if let Some((name, _)) = pool {
            return Err(format!(
                "annotation {STICKY_ANNOTATION} of pod {}/{}: the pod is bound to pool {name},                  and a sticky key's first address could fall outside it; remove the annotation                  or the pod's binding",
                pod.namespace, pod.name
            ));
        }
        return Ok(IpRequest::Sticky(identity(
            &format!("key/{}/{key}", pod.namespace),
            network,
        )));
    }
    if let Some((name, r)) = pool {
        return within(r, shared.as_ref(), || {
            format!("pool {name} ({}-{})", r.first, r.last)
        });
    }
    if config.statefulsets
        && let Some(o) = owner
        && o.kind == "StatefulSet"
        && let Some(ordinal) = o.ordinal
    {
        return Ok(IpRequest::Sticky(identity(
            &format!("statefulset/{}/{}/{ordinal}", pod.namespace, o.name),
            network,
        )));
    }
    if let Some(range) = config.namespaces.get(&pod.namespace) {
        let cidr = vxnet_cidr(vxnet)?;
        if !cidr.contains(range.first) || !cidr.contains(range.last) {
            return Err(format!(
                "namespace {}'s range {}-{} is not inside {} ({cidr})",
                pod.namespace, range.first, range.last, vxnet.id
            ));
        }
        return within(*range, shared.as_ref(), || {
            format!(
                "namespace {}'s range {}-{}",
                pod.namespace, range.first, range.last
            )
        });
    }
    Ok(IpRequest::Any)
}

/// A vxnet in shared-NIC mode: its pods get addresses of `range` only.
#[derive(Debug)]
struct Shared<'a> {
    vxnet: &'a str,
    range: Cidr,
}

impl<'a> Shared<'a> {
    fn parse(vxnet: &'a str, range: &str) -> Result<Shared<'a>, String> {
        // The host should never send this; say so rather than guess.
        let range = Cidr::parse(range)
            .map_err(|e| format!("{vxnet}: the host gave the shared range {e}"))?;
        Ok(Shared { vxnet, range })
    }

    /// "the shared range 10.100.0.0/26 of vxnet-a (...)", for a reason.
    fn described(&self) -> String {
        format!(
            "the shared range {} of {} (the vxnet is in shared-NIC mode: its pods get addresses of that range only)",
            self.range, self.vxnet
        )
    }
}

/// A range the pod is bound to (`what` names it in a refusal), as a
/// request: in shared-NIC mode only its part inside the shared range, and
/// a refusal when no part is.
fn within(
    r: Range,
    shared: Option<&Shared<'_>>,
    what: impl FnOnce() -> String,
) -> Result<IpRequest, String> {
    let (first, last) = match shared {
        None => (r.first, r.last),
        Some(s) => {
            let first = r.first.max(s.range.network());
            let last = r.last.min(s.range.broadcast());
            if first > last {
                return Err(format!("{} has no address in {}", what(), s.described()));
            }
            (first, last)
        }
    };
    Ok(IpRequest::Range(IpRange {
        first: first.to_string(),
        last: last.to_string(),
    }))
}

fn vxnet_cidr(vxnet: &Vxnet) -> Result<Cidr, String> {
    // The host should never send this; say so rather than guess.
    Cidr::parse(&vxnet.cidr).map_err(|e| format!("{}: the host gave the cidr {e}", vxnet.id))
}

/// Checks a pinned address against the vxnet. The reasons follow the
/// contract's example: "annotation hostnic.io/ip: 10.0.9.9 is not in
/// vxnet-abc".
fn pinned_address(key: &str, text: &str, vxnet: &Vxnet, cidr: Cidr) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = text
        .parse()
        .map_err(|_| format!("annotation {key}: {text:?} is not an IPv4 address"))?;
    let id = &vxnet.id;
    if !cidr.contains(ip) {
        return Err(format!("annotation {key}: {ip} is not in {id} ({cidr})"));
    }
    if vxnet.gateway.parse() == Ok(ip) {
        return Err(format!("annotation {key}: {ip} is the gateway of {id}"));
    }
    // /31 and /32 have no network or broadcast address to avoid (RFC 3021).
    if cidr.prefix_len() <= 30 {
        if ip == cidr.network() {
            return Err(format!(
                "annotation {key}: {ip} is the network address of {id} ({cidr})"
            ));
        }
        if ip == cidr.broadcast() {
            return Err(format!(
                "annotation {key}: {ip} is the broadcast address of {id} ({cidr})"
            ));
        }
    }
    Ok(ip)
}

/// A sticky identity within a network: one address per identity per
/// network.
fn identity(within: &str, network: &str) -> String {
    match network.is_empty() {
        true => within.to_string(),
        false => format!("{within}@{network}"),
    }
}

#[cfg(test)]
mod tests;
