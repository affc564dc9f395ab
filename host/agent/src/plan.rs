//! The plan of one ADD: what the network's config and the runtime ask
//! ([`Asked`]), and what the policy guests decided before any NIC or
//! address is taken ([`Plan`]). `service/decide.rs` makes it; the wiring
//! drivers act on it.

use std::net::Ipv4Addr;

use hostnic_netlink::Mac;
use hostnic_proto::cni::NetworkHooks;
use hostnic_proto::rpc::AddRequest;
use ipnet::Ipv4Net;

use crate::error::Error;

/// What the network's config and the runtime ask of one attachment,
/// beyond the guests' say.
#[derive(Debug)]
pub struct Asked<'a> {
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
    pub fn of(req: &'a AddRequest) -> Result<Asked<'a>, Error> {
        let mac = req
            .mac
            .as_deref()
            .map(|m| {
                m.parse::<Mac>().map_err(|_| {
                    Error::invalid_config(format!("runtimeConfig.mac: {m:?} is not a MAC address"))
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
pub struct Plan {
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
pub type Routes = Vec<(Ipv4Net, Option<Ipv4Addr>)>;
