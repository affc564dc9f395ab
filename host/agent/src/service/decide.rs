//! The plan: what the policy guests decide for an ADD — the vxnet order
//! and the address before a NIC is taken, the routes once it is known.
//! The guests always decide: with `hooks.enabled = false` the built-in
//! ones do (`policy::Policies::load`).

use std::net::Ipv4Addr;

use hostnic_policy::IpRequest;
use hostnic_proto::cni::{NetworkHooks, RouteTemplate};

use super::{Service, who};
use crate::config::NicSpec;
use crate::error::{Error, Result};
use crate::plan::{Asked, Plan, Routes};
use crate::policy;
use crate::record::Key;
use crate::source::shown;

/// Addresses of an ip-policy range considered (a range serves a few pods).
const MAX_RANGE: usize = 1024;

impl Service {
    pub(super) fn plan(
        &self,
        key: &Key,
        pod: &hostnic_policy::Pod,
        asked: &Asked<'_>,
    ) -> Result<Plan> {
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
                return Err(Error::invalid_config(format!(
                    "runtimeConfig.ips {} is outside what the ip policy allows this pod in network {} ({ip_request})",
                    shown(asked.ips),
                    key.network
                )));
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
    fn network_vxnets(&self, key: &Key, wanted: Option<&[String]>) -> Result<Option<Vec<String>>> {
        let Some(wanted) = wanted else {
            return Ok(None);
        };
        let known: Vec<String> = self.source.vxnets().into_iter().map(|v| v.id).collect();
        if let Some(stranger) = wanted.iter().find(|v| !known.contains(v)) {
            return Err(Error::invalid_config(format!(
                "network {}: vxnet {stranger} is not one of the agent's vxnets ({}); the agent's config lists the vxnets networks may use",
                key.network,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        Ok(Some(wanted.to_vec()))
    }

    /// The network's own guest configs: only for hooks the agent lets a
    /// network configure.
    fn network_hooks(&self, key: &Key, hooks: &NetworkHooks) -> Result<()> {
        self.policies.check_network_config(&key.network, hooks)
    }

    /// `order` starting with the vxnet that holds `ip`.
    fn holding(&self, key: &Key, order: &[String], ip: Ipv4Addr) -> Result<Vec<String>> {
        let vxnets = self.source.vxnets();
        let Some(id) = vxnets
            .iter()
            .find(|v| order.contains(&v.id) && v.cidr.contains(&ip))
            .map(|v| &v.id)
        else {
            return Err(Error::invalid_config(format!(
                "runtimeConfig.ips: {ip} is in none of network {}'s vxnets ({})",
                key.network,
                vxnets
                    .iter()
                    .filter(|v| order.contains(&v.id))
                    .map(|v| format!("{} {}", v.id, v.cidr))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let mut out = vec![id.clone()];
        out.extend(order.iter().filter(|v| *v != id).cloned());
        Ok(out)
    }

    /// `vxnet` as the guests see it, under the wiring that serves it.
    pub(super) fn for_guests(&self, vxnet: hostnic_policy::Vxnet) -> hostnic_policy::Vxnet {
        self.drivers.for_guests(vxnet)
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
    ) -> Result<Option<Vec<String>>> {
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
    ) -> Result<(Option<Vec<Ipv4Addr>>, Option<String>, String)> {
        let facts = match order.and_then(|o| o.first()) {
            Some(first) => match self.source.vxnets().into_iter().find(|v| &v.id == first) {
                Some(v) => self.for_guests(policy::vxnet(&v.id, v.cidr, v.gateway)),
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

    /// The pod's routes through `nic`, as the routes hook decides.
    pub(super) async fn routes(
        &self,
        key: &Key,
        pod: &hostnic_policy::Pod,
        nic: &NicSpec,
        templates: &[RouteTemplate],
        hooks: &NetworkHooks,
    ) -> Result<Routes> {
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
    ) -> Result<Option<Ipv4Addr>> {
        let wanted = templates
            .iter()
            .any(|t| t.gw.is_some_and(|g| g.is_unspecified()));
        match &nic.vxnet {
            Some(vxnet) if wanted => match &self.cloud {
                Some(cloud) => cloud.node_gateway(vxnet).await.map(Some),
                // The static inventory: the node has no NIC of its own in
                // the subnet.
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }
}
