//! The default ip-assignment guest (world `ip-assignment`).
//!
//! Config (every key optional; empty is all defaults):
//!
//! ```json
//! {
//!   "annotation": "hostnic.io/ip",
//!   "namespaces": { "team-a": { "first": "10.0.1.100", "last": "10.0.1.150" } },
//!   "pools": { "tenant-b": { "first": "10.0.2.100", "last": "10.0.2.150",
//!                            "networks": ["team-b/storage"], "namespaces": ["team-b"] } }
//! }
//! ```
//!
//! The decision is in [`assign`], plain Rust tested natively; this file only
//! moves values between the host and it.

mod assign;
mod bindings;

use bindings::exports::hostnic::policy::config;
use bindings::hostnic::policy::{attachment_facts, pod_facts, vxnet_facts};
use bindings::{IpRequest, Pod, Reason, Vxnet};

struct IpAssign;

impl config::Guest for IpAssign {
    fn validate_config(config: String) -> Result<(), String> {
        assign::parse_config(&config).map(drop)
    }
}

impl bindings::Guest for IpAssign {
    fn assign_ip(config: String, pod: Pod, vxnet: Vxnet) -> Result<IpRequest, Reason> {
        let config = assign::parse_config(&config)?;
        // Since contract 0.1.2: which network this attachment is on.
        let network = attachment_facts::network();
        // Since contract 0.1.1: the controller that owns the pod.
        let owner = pod_facts::pod_owner();
        // Since contract 0.1.3: whether the vxnet is in shared-NIC mode.
        let shared = vxnet_facts::vxnet_shared_range(&vxnet.id);
        assign::assign(
            &config,
            &pod,
            owner.as_ref(),
            &network,
            &vxnet,
            shared.as_deref(),
        )
    }
}

bindings::export!(IpAssign with_types_in bindings);
