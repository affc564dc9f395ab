//! The default ip-assignment guest (world `ip-assignment`).
//!
//! Config (every key optional; empty is all defaults):
//!
//! ```json
//! {
//!   "annotation": "hostnic.io/ip",
//!   "namespaces": { "team-a": { "first": "10.0.1.100", "last": "10.0.1.150" } }
//! }
//! ```
//!
//! The decision is in [`assign`], plain Rust tested natively; this file only
//! moves values between the host and it.

mod assign;
mod bindings;

use bindings::exports::hostnic::policy::config;
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
        assign::assign(&config, &pod, &vxnet)
    }
}

bindings::export!(IpAssign with_types_in bindings);
