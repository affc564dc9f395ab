//! The default route-templating guest (world `route-templating`): the
//! original plugin's route-template semantics.
//!
//! Config: none; empty or `{}`. The decision is in [`templates`], plain
//! Rust tested natively; this file only moves values between the host and
//! it.

mod bindings;
mod templates;

use bindings::exports::hostnic::policy::config;
use bindings::hostnic::policy::attachment_facts;
use bindings::{Nic, Pod, Reason, Route, RouteTemplate, Vxnet};

struct Routes;

impl config::Guest for Routes {
    fn validate_config(config: String) -> Result<(), String> {
        templates::parse_config(&config)
    }
}

impl bindings::Guest for Routes {
    fn routes(
        config: String,
        _pod: Pod,
        _nic: Nic,
        vxnet: Vxnet,
        node_gateway: Option<String>,
        templates: Vec<RouteTemplate>,
    ) -> Result<Vec<Route>, Reason> {
        templates::parse_config(&config)?;
        // Since contract 0.1.2 the host says which attachment carries the
        // pod's default route.
        let default_route = attachment_facts::default_route();
        templates::routes(&vxnet, node_gateway.as_deref(), &templates, default_route)
    }
}

bindings::export!(Routes with_types_in bindings);
