//! The plan: what the policy guests decide for an ADD — the vxnet order
//! and the address before a NIC is taken, the routes once it is known.
//! The guests always decide: with `hooks.enabled = false` the built-in
//! ones do (`policy::Policies::load`).

use std::net::Ipv4Addr;

use hostnic_netlink::Mac;
use hostnic_policy::IpRequest;
use hostnic_proto::cni::{CniError, NetworkHooks, RouteTemplate, code};
use hostnic_proto::rpc::AddRequest;
use ipnet::Ipv4Net;

use super::{Service, who};
use crate::config::NicSpec;
use crate::policy;
use crate::source::shown;
use crate::store::Key;

/// Addresses of an ip-policy range considered (a range serves a few pods).
const MAX_RANGE: usize = 1024;

/// What the network's config and the runtime ask of one attachment,
/// beyond the guests' say.
#[derive(Debug)]
pub(super) struct Asked<'a> {
    /// The network's vxnets (a subset of the source's); `None`: all.
    pub vxnets: Option<&'a [String]>,
    /// The `ips` capability: one of these addresses, whatever the ip hook
    /// would say.
    pub ips: &'a [Ipv4Addr],
    /// The `mac` capability: this NIC.
    pub mac: Option<Mac>,
    /// The network's own guest configs.
    pub hooks: &'a NetworkHooks,
}

impl<'a> Asked<'a> {
    pub fn of(req: &'a AddRequest) -> Result<Asked<'a>, CniError> {
        let mac = req
            .mac
            .as_deref()
            .map(|m| {
                m.parse::<Mac>().map_err(|_| {
                    CniError::new(
                        code::INVALID_CONFIG,
                        format!("runtimeConfig.mac: {m:?} is not a MAC address"),
                    )
                })
            })
            .transpose()?;
        Ok(Asked {
            vxnets: req.vxnets.as_deref(),
            ips: &req.ips,
            mac,
            hooks: &req.hooks,
        })
    }
}

/// The guests' decisions for one ADD, before any NIC is taken.
#[derive(Debug)]
pub(super) struct Plan {
    /// The vxnets to take a NIC from, best first; `None`: there is no
    /// vxnet to choose (any free NIC will do).
    pub order: Option<Vec<String>>,
    /// The addresses that would do (the ip hook's answer); `None`: any.
    pub addresses: Option<Vec<Ipv4Addr>>,
    /// The sticky key to remember the pod's address under, if the ip hook
    /// gave one.
    pub sticky: Option<String>,
    /// The ip hook's answer, for the decision audit.
    pub ip_request: String,
    /// The one NIC that will do (the `mac` capability).
    pub mac: Option<Mac>,
}

impl Plan {
    /// The vxnet a NIC must be made in when none fits: the first choice.
    pub fn first_vxnet(&self) -> Option<&str> {
        self.order.as_ref()?.first().map(String::as_str)
    }
}

/// Routes as the plumbing installs them: (destination, next hop).
pub(super) type Routes = Vec<(Ipv4Net, Option<Ipv4Addr>)>;

impl Service {
    pub(super) fn plan(
        &self,
        key: &Key,
        pod: &hostnic_policy::Pod,
        asked: &Asked<'_>,
    ) -> Result<Plan, CniError> {
        let network = self.network_vxnets(key, asked.vxnets)?;
        self.network_hooks(key, asked.hooks)?;
        let order = self.vxnet_order(key, pod, network.as_deref(), asked.hooks)?;
        let (mut addresses, mut sticky, mut ip_request) =
            self.wanted_addresses(key, pod, order.as_deref(), asked.hooks)?;
        // The runtime's addresses, within what the ip policy allows (a
        // tenant's pool holds for Multus's `ips` as for annotations).
        if !asked.ips.is_empty() {
            let allowed: Vec<Ipv4Addr> = match &addresses {
                None => asked.ips.to_vec(),
                Some(policy) => asked
                    .ips
                    .iter()
                    .copied()
                    .filter(|a| policy.contains(a))
                    .collect(),
            };
            if allowed.is_empty() {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!(
                        "runtimeConfig.ips {} is outside what the ip policy allows this pod in network {} ({ip_request})",
                        shown(asked.ips),
                        key.network
                    ),
                ));
            }
            ip_request = format!(
                "{} (runtimeConfig.ips, policy: {ip_request})",
                shown(&allowed)
            );
            addresses = Some(allowed);
            sticky = None;
        }
        // The vxnet to make a NIC in for a runtime's address: the one
        // that holds it.
        let order = match (&order, asked.ips.first()) {
            (Some(o), Some(ip)) => Some(self.holding(key, o, *ip)?),
            _ => order,
        };
        Ok(Plan {
            order,
            addresses,
            sticky,
            ip_request,
            mac: asked.mac,
        })
    }

    /// The network's vxnets, checked against the source's: a network
    /// config (a NetworkAttachmentDefinition, which a namespace's users
    /// may write) can only narrow the vxnets the operator gave the agent.
    fn network_vxnets(
        &self,
        key: &Key,
        wanted: Option<&[String]>,
    ) -> Result<Option<Vec<String>>, CniError> {
        let Some(wanted) = wanted else {
            return Ok(None);
        };
        let known: Vec<String> = self
            .source
            .vxnets()
            .into_iter()
            .map(|(id, ..)| id)
            .collect();
        if let Some(stranger) = wanted.iter().find(|v| !known.contains(v)) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "network {}: vxnet {stranger} is not one of the agent's vxnets ({}); the agent's config lists the vxnets networks may use",
                    key.network,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        Ok(Some(wanted.to_vec()))
    }

    /// The network's own guest configs: only for hooks the agent lets a
    /// network configure.
    fn network_hooks(&self, key: &Key, hooks: &NetworkHooks) -> Result<(), CniError> {
        self.policies.check_network_config(&key.network, hooks)
    }

    /// `order` starting with the vxnet that holds `ip`.
    fn holding(&self, key: &Key, order: &[String], ip: Ipv4Addr) -> Result<Vec<String>, CniError> {
        let vxnets = self.source.vxnets();
        let Some((id, ..)) = vxnets
            .iter()
            .find(|(id, cidr, _)| order.contains(id) && cidr.contains(&ip))
        else {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "runtimeConfig.ips: {ip} is in none of network {}'s vxnets ({})",
                    key.network,
                    vxnets
                        .iter()
                        .filter(|(id, ..)| order.contains(id))
                        .map(|(id, cidr, _)| format!("{id} {cidr}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        let mut out = vec![id.clone()];
        out.extend(order.iter().filter(|v| *v != id).cloned());
        Ok(out)
    }

    /// `vxnet` as the guests see it: for a vxnet in shared-NIC mode, its
    /// shared range (`vxnet-facts.vxnet-shared-range`, contract 0.1.3) and,
    /// as its free addresses, the node's share of the range
    /// (`Shared::free_addresses`) rather than the cloud's count. The one
    /// place the three hooks' vxnet facts learn the mode.
    pub(super) fn for_guests(&self, mut vxnet: hostnic_policy::Vxnet) -> hostnic_policy::Vxnet {
        let Some(net) = self.shared.net(&vxnet.id) else {
            return vxnet;
        };
        vxnet.free_ips = self.shared.free_addresses(&net.vxnet).unwrap_or(0);
        vxnet.live.shared_range = Some(net.range);
        // `free-ips-age-s`: none means `free-ips` is the node's own count.
        vxnet.live.free_ips_counted_s_ago = None;
        vxnet
    }

    /// The vxnets to take a NIC from, best first: the vxnet hook's answer
    /// over the network's vxnets; `None` when the node has no vxnets to
    /// choose from (a static inventory without them).
    fn vxnet_order(
        &self,
        key: &Key,
        pod: &hostnic_policy::Pod,
        network: Option<&[String]>,
        hooks: &NetworkHooks,
    ) -> Result<Option<Vec<String>>, CniError> {
        let ours = |id: &String| network.is_none_or(|n| n.contains(id));
        if self.source.vxnets().is_empty() {
            return Ok(None);
        }
        let (candidates, node) = self.source.facts(&self.nics.pool());
        let candidates: Vec<_> = candidates
            .into_iter()
            .filter(|c| ours(&c.id))
            .map(|c| self.for_guests(c))
            .collect();
        self.policies
            .select_vxnet(who(key), pod, &node, &candidates, hooks.vxnet.as_deref())
            .map(Some)
    }

    /// What the ip hook asks for, as the addresses that would do (`None`:
    /// any), the sticky key to remember, and the answer in words. A sticky
    /// key with a remembered address asks for that address.
    #[allow(clippy::type_complexity)]
    fn wanted_addresses(
        &self,
        key: &Key,
        pod: &hostnic_policy::Pod,
        order: Option<&[String]>,
        hooks: &NetworkHooks,
    ) -> Result<(Option<Vec<Ipv4Addr>>, Option<String>, String), CniError> {
        let facts = match order.and_then(|o| o.first()) {
            Some(first) => match self
                .source
                .vxnets()
                .into_iter()
                .find(|(id, ..)| id == first)
            {
                Some((id, cidr, gateway)) => self.for_guests(policy::vxnet(&id, cidr, gateway)),
                None => return Ok((None, None, "any (not asked)".into())),
            },
            // Static inventory without vxnets: the subnet of the first
            // free NIC.
            None => match self.nics.pool().first_free() {
                Some(nic) => policy::nic_vxnet(&nic),
                None => return Ok((None, None, "any (not asked)".into())),
            },
        };
        Ok(
            match self
                .policies
                .ip_for(who(key), pod, &facts, hooks.ip.as_deref())?
            {
                IpRequest::Any => (None, None, "any".into()),
                IpRequest::Exact(ip) => (Some(vec![ip]), None, format!("exact {ip}")),
                IpRequest::OneOf(ips) => {
                    let said = format!("one of {} addresses", ips.len());
                    (Some(ips), None, said)
                }
                IpRequest::Range { first, last } => {
                    let (a, b) = (u32::from(first), u32::from(last));
                    (
                        Some((a..=b).take(MAX_RANGE).map(Ipv4Addr::from).collect()),
                        None,
                        format!("range {first}-{last}"),
                    )
                }
                IpRequest::Sticky(k) => match self.sticky.get(&k) {
                    Some(ip) => (
                        Some(vec![ip]),
                        Some(k.clone()),
                        format!("sticky {k} (remembered {ip})"),
                    ),
                    None => (None, Some(k.clone()), format!("sticky {k}")),
                },
            },
        )
    }

    /// Remembers the address a sticky pod got, for its next ADD on this
    /// node; a NIC that follows the identity itself needs no memory.
    pub(super) fn remember_sticky(&self, plan: &Plan, nic: &NicSpec) {
        if let Some(k) = &plan.sticky
            && self.nics.pool().sticky_of(nic.mac).is_none()
            && let Err(e) = self.sticky.set(k, nic.address.addr())
        {
            tracing::warn!(key = %k, error = %e, "remembering a sticky address");
        }
    }

    /// The pod's routes through `nic`, as the routes hook decides.
    pub(super) async fn routes(
        &self,
        key: &Key,
        pod: &hostnic_policy::Pod,
        nic: &NicSpec,
        templates: &[RouteTemplate],
        hooks: &NetworkHooks,
    ) -> Result<Routes, CniError> {
        let node_gw = self.node_gateway(nic, templates).await?;
        self.policies.routes_for(
            who(key),
            pod,
            (nic, &self.for_guests(policy::nic_vxnet(nic))),
            node_gw,
            templates,
            hooks.routes.as_deref(),
        )
    }

    /// The next hop for `gw 0.0.0.0` templates: the node's gateway NIC in
    /// the pod's vxnet (cloud), or the subnet gateway (static inventory,
    /// where the node has no NIC of its own in the subnet).
    async fn node_gateway(
        &self,
        nic: &NicSpec,
        templates: &[RouteTemplate],
    ) -> Result<Option<Ipv4Addr>, CniError> {
        let wanted = templates
            .iter()
            .any(|t| t.gw.is_some_and(|g| g.is_unspecified()));
        match &nic.vxnet {
            Some(vxnet) if wanted => self.source.node_gateway(vxnet).await,
            _ => Ok(None),
        }
    }
}
