//! The three decisions, with domain types in and out: convert the facts,
//! call the guest with a fresh store, validate the answer.

use std::net::Ipv4Addr;

use crate::configured::Configured;
use crate::convert;
use crate::error::PolicyError;
use crate::guest::{CallSpec, not_implemented};
use crate::hook::{Hook, IpKind, RoutesKind, VxnetKind};
use crate::host::CallFacts;
use crate::types::{Decision, HookKind, IpRequest, Nic, Node, Pod, Route, RouteTemplate, Vxnet};
use crate::validate;

impl Configured<'_, VxnetKind> {
    /// Which vxnets the pod's NIC may come from, best first: ids of
    /// `candidates`, each at most once. `random` is a fresh random number
    /// (tests pass a fixed one).
    pub fn select_vxnet(
        &self,
        pod: &Pod,
        node: &Node,
        candidates: &[Vxnet],
        random: u64,
    ) -> Result<Decision<Vec<String>>, PolicyError> {
        let facts = CallFacts::of(pod, &candidates.iter().collect::<Vec<_>>());
        let pod = convert::pod(pod);
        let node = convert::node(node);
        let wit_candidates: Vec<_> = candidates.iter().map(convert::vxnet).collect();
        self.decide(|engine, guest, config, limits| {
            guest.call(
                engine,
                CallSpec {
                    kind: HookKind::VxnetSelection,
                    export: "select-vxnet",
                    facts: facts.clone(),
                },
                limits,
                |store| {
                    let pre = guest.compiled.vxnet.as_ref().ok_or_else(not_implemented)?;
                    let inst = pre.instantiate(&mut *store)?;
                    inst.call_select_vxnet(
                        &mut *store,
                        config,
                        &pod,
                        &node,
                        &wit_candidates,
                        random,
                    )
                },
                |ids| validate::vxnet_ids(ids, candidates),
            )
        })
    }
}

impl Configured<'_, IpKind> {
    /// What address the pod must have in `vxnet`.
    pub fn assign_ip(&self, pod: &Pod, vxnet: &Vxnet) -> Result<Decision<IpRequest>, PolicyError> {
        let facts = CallFacts::of(pod, &[vxnet]);
        let wit_pod = convert::pod(pod);
        let wit_vxnet = convert::vxnet(vxnet);
        self.decide(|engine, guest, config, limits| {
            guest.call(
                engine,
                CallSpec {
                    kind: HookKind::IpAssignment,
                    export: "assign-ip",
                    facts: facts.clone(),
                },
                limits,
                |store| {
                    let pre = guest.compiled.ip.as_ref().ok_or_else(not_implemented)?;
                    let inst = pre.instantiate(&mut *store)?;
                    inst.call_assign_ip(&mut *store, config, &wit_pod, &wit_vxnet)
                },
                |req| validate::ip_request(req, vxnet),
            )
        })
    }
}

impl Configured<'_, RoutesKind> {
    /// The routes to install in the pod, out of `nic`. `node_gateway` is the
    /// node's own address in the pod's vxnet (its gateway NIC), if it has
    /// one; `templates` are the network config's route templates. An
    /// attachment without the pod's default route gets none, whatever the
    /// guest says.
    pub fn routes(
        &self,
        pod: &Pod,
        nic: &Nic,
        vxnet: &Vxnet,
        node_gateway: Option<Ipv4Addr>,
        templates: &[RouteTemplate],
    ) -> Result<Decision<Vec<Route>>, PolicyError> {
        let facts = CallFacts::of(pod, &[vxnet]);
        let wit_pod = convert::pod(pod);
        let wit_nic = convert::nic(nic);
        let wit_vxnet = convert::vxnet(vxnet);
        let gateway = node_gateway.map(|g| g.to_string());
        let wit_templates: Vec<_> = templates.iter().map(convert::route_template).collect();
        let default_route = pod.attachment.default_route;
        self.decide(|engine, guest, config, limits| {
            guest.call(
                engine,
                CallSpec {
                    kind: HookKind::RouteTemplating,
                    export: "routes",
                    facts: facts.clone(),
                },
                limits,
                |store| {
                    let pre = guest.compiled.routes.as_ref().ok_or_else(not_implemented)?;
                    let inst = pre.instantiate(&mut *store)?;
                    inst.call_routes(
                        &mut *store,
                        config,
                        &wit_pod,
                        &wit_nic,
                        &wit_vxnet,
                        gateway.as_deref(),
                        &wit_templates,
                    )
                },
                |routes| {
                    let mut routes = validate::routes(routes, vxnet, nic)?;
                    // Exactly one attachment of a pod carries the default
                    // route; a guest that does not ask (compiled against
                    // 0.1.0 or 0.1.1) returns it for every attachment.
                    if !default_route {
                        routes.retain(|r| r.dst.prefix_len() != 0);
                    }
                    Ok(routes)
                },
            )
        })
    }
}

impl Hook<VxnetKind> {
    /// [`Configured::select_vxnet`] with the hook's own config.
    pub fn select_vxnet(
        &self,
        pod: &Pod,
        node: &Node,
        candidates: &[Vxnet],
        random: u64,
    ) -> Result<Decision<Vec<String>>, PolicyError> {
        self.configured()
            .select_vxnet(pod, node, candidates, random)
    }
}

impl Hook<IpKind> {
    /// [`Configured::assign_ip`] with the hook's own config.
    pub fn assign_ip(&self, pod: &Pod, vxnet: &Vxnet) -> Result<Decision<IpRequest>, PolicyError> {
        self.configured().assign_ip(pod, vxnet)
    }
}

impl Hook<RoutesKind> {
    /// [`Configured::routes`] with the hook's own config.
    pub fn routes(
        &self,
        pod: &Pod,
        nic: &Nic,
        vxnet: &Vxnet,
        node_gateway: Option<Ipv4Addr>,
        templates: &[RouteTemplate],
    ) -> Result<Decision<Vec<Route>>, PolicyError> {
        self.configured()
            .routes(pod, nic, vxnet, node_gateway, templates)
    }
}
