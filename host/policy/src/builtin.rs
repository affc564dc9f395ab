//! The built-in default guests, embedded in the agent: what a hook with no
//! configured module runs, and what a `Fallback` hook answers with when its
//! guest fails. Built from `guests/` by `build.rs`, never checked in.

use crate::types::HookKind;

const VXNET_SELECT: &[u8] =
    include_bytes!(concat!(env!("HOSTNIC_GUESTS_DIR"), "/vxnet_select.wasm"));
const IP_ASSIGN: &[u8] = include_bytes!(concat!(env!("HOSTNIC_GUESTS_DIR"), "/ip_assign.wasm"));
const ROUTES: &[u8] = include_bytes!(concat!(env!("HOSTNIC_GUESTS_DIR"), "/routes.wasm"));

/// The built-in default module for `kind` (a WebAssembly component).
pub fn module(kind: HookKind) -> &'static [u8] {
    match kind {
        HookKind::VxnetSelection => VXNET_SELECT,
        HookKind::IpAssignment => IP_ASSIGN,
        HookKind::RouteTemplating => ROUTES,
    }
}

/// The built-in default's guest name (its crate in `guests/`).
pub fn name(kind: HookKind) -> &'static str {
    match kind {
        HookKind::VxnetSelection => "vxnet-select",
        HookKind::IpAssignment => "ip-assign",
        HookKind::RouteTemplating => "routes",
    }
}

/// The sha256 (hex) of the built-in default for `kind`, for pinning it.
pub fn sha256(kind: HookKind) -> String {
    crate::digest::sha256_hex(module(kind))
}
