//! What the `hostnic` CNI executable and `hostnic-agent` share.
//!
//! - [`cni`]: the CNI side — errors with their spec codes, the network
//!   configuration we accept, `CNI_ARGS`, and results encoded for every spec
//!   version we support.
//! - [`rpc`]: the versioned request/response format spoken over the agent's
//!   unix socket, and its framing.
//!
//! This crate is deliberately small (serde, serde_json, ipnet): the CNI
//! executable links it and is exec'd once per pod operation.

pub mod cni;
pub mod rpc;
