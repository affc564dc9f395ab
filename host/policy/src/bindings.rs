//! The WIT bindings (`wit/policy.wit`, package `hostnic:policy@0.1.3`),
//! generated here and nowhere else.
//!
//! The three worlds share the `types` and `host` interfaces: the first
//! world generates them, the other two point at its modules (`with`), so
//! there is one `Pod`, one `Vxnet`, one `host::Host` trait.
//!
//! The generated code is not ours to lint: a WIT function with many
//! parameters becomes a Rust function with as many.

#[allow(clippy::too_many_arguments, missing_debug_implementations)]
pub mod vxnet {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "vxnet-selection",
    });
}

#[allow(clippy::too_many_arguments, missing_debug_implementations)]
pub mod ip {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "ip-assignment",
        with: {
            "hostnic:policy/types": super::vxnet::hostnic::policy::types,
            "hostnic:policy/host": super::vxnet::hostnic::policy::host,
        },
    });
}

#[allow(clippy::too_many_arguments, missing_debug_implementations)]
pub mod routes {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "route-templating",
        with: {
            "hostnic:policy/types": super::vxnet::hostnic::policy::types,
            "hostnic:policy/host": super::vxnet::hostnic::policy::host,
        },
    });
}
