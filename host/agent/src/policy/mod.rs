//! The agent's three policy hooks: which vxnet, which IP, which routes,
//! decided by WebAssembly guests (`hostnic-policy`), loaded from the
//! `[hooks]` config, watched for changes and swapped live (`reload`).
//!
//! Guest calls are synchronous and bounded by their deadline (200 ms by
//! default, tens of microseconds in practice); they run under
//! `block_in_place` so a slow guest never stalls other tasks on the worker.

mod reload;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context;
use hostnic_policy::{
    Configured, Decision, FailureMode, HookConfig, IpHook, IpRequest, Limits, Nic, Node, Pod,
    PolicyEngine, PolicyError, Route, RouteTemplate, RoutesHook, Vxnet, VxnetHook,
};
use hostnic_proto::rpc;
use ipnet::IpNet;
use tracing::{info, warn};

use crate::config::{Config, Failure, HookSpec, Policy, Source};
use crate::decisions::{DecisionLog, For};
use crate::error::{Cause, Error};
use crate::facts::{self, Facts, HookName};

#[derive(Debug)]
pub struct Policies {
    pub vxnet: VxnetHook,
    pub ip: IpHook,
    pub routes: RoutesHook,
    /// The latest calls, for `policy decisions` and `policy replay`.
    pub log: DecisionLog,
    /// The hooks a network's config may configure (`[hooks]
    /// network_config`; reloaded with the rest).
    network_config: std::sync::RwLock<Vec<HookName>>,
    /// `[hooks] enabled`: false runs the built-in guests whatever `[hooks]`
    /// names, and no network configures them.
    enabled: bool,
}

/// Why a configured vxnet module can never be called on this node, if so:
/// the hook chooses among vxnets, and a static inventory without vxnets
/// offers no choice.
pub fn vxnet_hook_idle(cfg: &Config) -> Option<String> {
    let path = cfg.hooks.vxnet.path.as_ref()?;
    let static_vxnets = cfg.inventory.nics.iter().any(|n| n.vxnet.is_some());
    (cfg.inventory.source == Source::Static && !static_vxnets).then(|| {
        format!(
            "hooks.vxnet names {} but it will NEVER be called: this node's static inventory \
             gives no NIC a vxnet, so there is no vxnet to choose (set `vxnet` on \
             inventory.nics, or use inventory.source = \"cloud\")",
            path.display()
        )
    })
}

/// What a hook gets configured with, from its `[hooks.*]` table.
/// `builtin_config` is the config the built-in default guest gets when the
/// table sets none (the vxnet hook's carries the original agent's `policy`
/// key); a module of the operator's own gets an empty one, never a config
/// written for another guest.
pub fn hook_config(spec: &HookSpec, builtin_config: String) -> anyhow::Result<HookConfig> {
    let mut limits = Limits::default();
    if let Some(ms) = spec.deadline_ms {
        limits.deadline = Duration::from_millis(ms);
    }
    if let Some(mb) = spec.memory_mb {
        limits.memory = usize::try_from(mb)?.saturating_mul(1 << 20);
    }
    Ok(HookConfig {
        path: spec.path.clone(),
        sha256: spec.sha256.clone(),
        config: match (&spec.config, &spec.path) {
            (Some(c), _) => c.clone(),
            (None, None) => builtin_config,
            (None, Some(_)) => String::new(),
        },
        limits,
        failure: match spec.failure {
            Failure::Fail => FailureMode::Fail,
            Failure::Fallback => FailureMode::Fallback,
        },
    })
}

/// `{"policy": "FailRotate"}` from the original top-level key.
pub fn vxnet_default_config(policy: Policy) -> String {
    let name = match policy {
        Policy::FailRotate => "FailRotate",
        Policy::RoundRotate => "RoundRotate",
        Policy::Random => "Random",
    };
    format!("{{\"policy\":\"{name}\"}}")
}

impl Policies {
    /// Compiles and validates the three hooks; a bad module, digest or
    /// config refuses the start, naming the hook. With `[hooks] enabled =
    /// false` the built-in guests decide: the agent has one way to decide,
    /// whoever wrote the guest.
    pub fn load(cfg: &Config) -> anyhow::Result<Policies> {
        let engine =
            PolicyEngine::with_shipped(cfg.state_dir.join("policy"), &cfg.compiled_guests_dir)
                .context("starting the policy runtime")?;
        let h = &cfg.hooks;
        let builtin = HookSpec::default();
        let spec = |s| if h.enabled { s } else { &builtin };
        if !h.enabled {
            info!(
                "policy hooks disabled: the built-in guests decide, [hooks] modules are not loaded"
            );
        }
        let vxnet = VxnetHook::load(
            &engine,
            hook_config(spec(&h.vxnet), vxnet_default_config(cfg.policy))?,
        )
        .context("loading hooks.vxnet")?;
        let ip = IpHook::load(&engine, hook_config(spec(&h.ip), String::new())?)
            .context("loading hooks.ip")?;
        let routes = RoutesHook::load(&engine, hook_config(spec(&h.routes), String::new())?)
            .context("loading hooks.routes")?;
        for (name, g) in [
            ("vxnet", vxnet.guest()),
            ("ip", ip.guest()),
            ("routes", routes.guest()),
        ] {
            info!(hook = name, guest = %g, "policy hook loaded");
        }
        if let Some(why) = vxnet_hook_idle(cfg) {
            warn!("{why}");
        }
        Ok(Policies {
            vxnet,
            ip,
            routes,
            log: DecisionLog::default(),
            network_config: std::sync::RwLock::new(h.network_config.clone()),
            enabled: h.enabled,
        })
    }

    /// Routes out of `nic`, in `vxnet`, from the routes hook (with the
    /// network's own `config`, if it has one), as the plumbing installs
    /// them.
    pub fn routes_for(
        &self,
        who: For<'_>,
        pod: &Pod,
        (nic, vxnet): (&crate::config::NicSpec, &Vxnet),
        node_gw: Option<Ipv4Addr>,
        templates: &[hostnic_proto::cni::RouteTemplate],
        config: Option<&str>,
    ) -> Result<Vec<(ipnet::Ipv4Net, Option<Ipv4Addr>)>, Error> {
        let hook = configured(&self.routes, "routes", config)?;
        let templates: Vec<RouteTemplate> = templates
            .iter()
            .filter_map(|t| match (t.dst, t.gw) {
                (IpNet::V4(dst), Some(std::net::IpAddr::V4(g))) => {
                    Some(RouteTemplate { dst, gw: Some(g) })
                }
                (IpNet::V4(dst), None) => Some(RouteTemplate { dst, gw: None }),
                _ => None,
            })
            .collect();
        let nic = Nic {
            mac: nic.mac.to_string(),
            ip: nic.address.addr(),
            prefix_len: nic.address.prefix_len(),
        };
        let r = call(|| hook.routes(pod, &nic, vxnet, node_gw, &templates));
        let facts = Facts::for_routes(pod, &nic, vxnet, node_gw, &templates);
        self.log
            .record(who, HookName::Routes, facts, config, &r, |a| {
                facts::routes_json(a)
            });
        let routes: Vec<Route> = decided("routes", r)?;
        Ok(routes.into_iter().map(|r| (r.dst, r.gw)).collect())
    }

    /// Refuses a network config that configures a hook the agent keeps for
    /// itself, naming the hook and the setting.
    pub fn check_network_config(
        &self,
        network: &str,
        hooks: &hostnic_proto::cni::NetworkHooks,
    ) -> Result<(), Error> {
        if hooks.is_empty() {
            return Ok(());
        }
        if !self.enabled {
            return Err(Error::invalid_config(format!(
                "network {network} configures policy hooks, but this agent runs with hooks.enabled = false"
            )));
        }
        let allowed = self
            .network_config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match hooks
            .set()
            .find(|(name, _)| !allowed.iter().any(|a| a.name() == *name))
        {
            None => Ok(()),
            Some((name, _)) => Err(Error::invalid_config(format!(
                "network {network} configures hooks.{name}, which this agent does not let a network configure (its [hooks] network_config is [{}]); {}",
                allowed
                    .iter()
                    .map(|a| format!("{:?}", a.name()))
                    .collect::<Vec<_>>()
                    .join(", "),
                if name == "ip" {
                    "the ip config holds the tenant pools and pinned addresses, so it is the operator's (bind a pool to the network with its `networks` instead)"
                } else {
                    "the operator can allow it"
                }
            ))),
        }
    }

    /// The guest serving each hook now: (hook, guest).
    pub fn guests(&self) -> [(&'static str, hostnic_policy::GuestId); 3] {
        [
            ("vxnet", self.vxnet.guest()),
            ("ip", self.ip.guest()),
            ("routes", self.routes.guest()),
        ]
    }

    /// The vxnets to try, best first, as the vxnet hook decides (with the
    /// network's own `config`, if it has one).
    pub fn select_vxnet(
        &self,
        who: For<'_>,
        pod: &Pod,
        node: &Node,
        candidates: &[Vxnet],
        config: Option<&str>,
    ) -> Result<Vec<String>, Error> {
        let hook = configured(&self.vxnet, "vxnet", config)?;
        let random = fastrand::u64(..);
        let r = call(|| hook.select_vxnet(pod, node, candidates, random));
        let facts = Facts::for_vxnet(pod, node, candidates, random);
        self.log
            .record(who, HookName::Vxnet, facts, config, &r, |a| {
                facts::vxnets_json(a)
            });
        decided("vxnet", r)
    }

    /// The IP the pod must have, as the ip hook decides; `Sticky` keys are
    /// resolved by the caller against the agent's sticky record.
    pub fn ip_for(
        &self,
        who: For<'_>,
        pod: &Pod,
        vxnet: &Vxnet,
        config: Option<&str>,
    ) -> Result<IpRequest, Error> {
        let hook = configured(&self.ip, "ip", config)?;
        let r = call(|| hook.assign_ip(pod, vxnet));
        let facts = Facts::for_ip(pod, vxnet);
        self.log
            .record(who, HookName::Ip, facts, config, &r, facts::ip_json);
        decided("ip", r)
    }
}

/// `hook` with the network's own `config` (checked by the guest, once per
/// module), or its own.
fn configured<'h, K: hostnic_policy::Kind>(
    hook: &'h hostnic_policy::Hook<K>,
    name: &str,
    config: Option<&str>,
) -> Result<Configured<'h, K>, Error> {
    let Some(config) = config else {
        return Ok(hook.configured());
    };
    call(|| hook.with_config(config)).map_err(|e| {
        Error::invalid_config(format!(
            "the network's hooks.{name} config: {}",
            hostnic_policy::error_chain(&e)
        ))
    })
}

/// The runtime's view of the pod, for guests: its annotations. Labels and
/// the owner come from the API server (`apiserver::pod_for_guests`).
pub fn pod(p: &rpc::Pod) -> Pod {
    Pod {
        namespace: p.namespace.clone().unwrap_or_default(),
        name: p.name.clone().unwrap_or_default(),
        uid: p.uid.clone().unwrap_or_default(),
        labels: BTreeMap::new(),
        annotations: p.annotations.clone(),
        owner: None,
        attachment: Default::default(),
    }
}

/// The vxnet facts of a NIC, for the hooks.
pub fn nic_vxnet(nic: &crate::config::NicSpec) -> Vxnet {
    vxnet(
        nic.vxnet.as_deref().unwrap_or("static"),
        nic.address.trunc(),
        nic.gateway,
    )
}

pub fn vxnet(id: &str, cidr: ipnet::Ipv4Net, gateway: Ipv4Addr) -> Vxnet {
    Vxnet {
        id: id.to_string(),
        cidr: cidr.trunc(),
        gateway,
        free_ips: 0,
        warm_nics: 0,
        used_nics: 0,
        recent_failures: 0,
        live: Default::default(),
    }
}

pub fn node(instance: &str, nics_in_use: u32, nic_limit: u32) -> Node {
    Node {
        instance: instance.to_string(),
        zone: String::new(),
        nics_in_use,
        nic_limit,
    }
}

/// A guest's answer for the pod's log line, and the error a refusal or a
/// failure (in `fail` mode) becomes.
pub fn decided<T: std::fmt::Debug>(
    hook: &str,
    r: Result<Decision<T>, PolicyError>,
) -> Result<T, Error> {
    match r {
        // (The runtime itself logs a fallback, with its cause.)
        Ok(d) => {
            tracing::debug!(hook, guest = %d.guest, answer = ?d.answer, elapsed_us = d.elapsed.as_micros() as u64, "policy decision");
            Ok(d.answer)
        }
        Err(e @ PolicyError::Refused { .. }) => {
            Err(Error::invalid_config(format!("{hook} policy: {e}")).because(Cause::PolicyRefused))
        }
        Err(e) => Err(Error::internal(format!(
            "{hook} policy: {}",
            hostnic_policy::error_chain(&e)
        ))
        .because(Cause::PolicyFailed)),
    }
}

/// Runs a guest call without stalling the other tasks on this worker.
pub fn call<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
