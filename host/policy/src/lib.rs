//! hostnic's policy runtime: the three site decisions (which vxnet, which
//! IP, which routes) run as sandboxed WebAssembly components that platform
//! teams write and swap at run time. The contract is `wit/policy.wit`
//! (package `hostnic:policy@0.1.3`).
//!
//! ```no_run
//! use hostnic_policy::{HookConfig, Node, PolicyEngine, Pod, Vxnet, VxnetHook};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = PolicyEngine::new("/var/lib/hostnic/policy")?;
//! // The built-in default guest (FailRotate).
//! let hook = VxnetHook::load(&engine, HookConfig::default())?;
//! # let (pod, node, candidates): (Pod, Node, Vec<Vxnet>) = Default::default();
//! let decision = hook.select_vxnet(&pod, &node, &candidates, 42)?;
//! println!("{} chose {:?}", decision.guest, decision.answer);
//! # Ok(()) }
//! ```
//!
//! How it is built:
//!
//! - `runtime`: one wasmtime `Engine` (pooling allocator, epoch deadlines)
//!   with its ticker thread, the linker, the compiled guests on disk;
//!   `engine`: the `PolicyEngine` around it, with the compiled-guest cache,
//!   the built-in defaults and the guests' kv stores;
//! - `guest`: a component compiled once and pre-instantiated per hook it
//!   implements; a fresh `Store` per call (`host::CallState`);
//! - `hook`: a configured guest, swapped atomically on reload; `load`: its
//!   configuration (module, pin, limits, failure mode) and building a
//!   generation from it (digest, compile, checks);
//!   `configured`: one call's configuration (the hook's, or a network's)
//!   and the fallback; `calls`: the three decisions with domain types;
//! - `validate`: the host's check of every answer;
//! - `limits`: every sandbox number, with its reason;
//! - `bindings`: the WIT bindings, generated there only; `host`, `wasi`,
//!   `guest_log`, `kv`: what a guest can reach.

mod bench;
mod bindings;
pub mod builtin;
mod calls;
mod configured;
mod convert;
mod digest;
mod engine;
mod error;
mod guest;
mod guest_log;
mod hook;
mod host;
pub mod kv;
pub mod limits;
mod load;
mod metrics;
mod precompiled;
mod runtime;
mod types;
mod validate;
mod wasi;

pub use bench::{BenchResult, Sample, bench_calls, bench_hook};
pub use configured::Configured;
pub use engine::PolicyEngine;
pub use error::{EngineError, LoadError, PolicyError, WasmError};
pub use guest_log::{LogLevel, LogLine, LogSource};
pub use hook::{
    Hook, HookStatus, IpHook, IpKind, Kind, RoutesHook, RoutesKind, VxnetHook, VxnetKind,
};
pub use limits::Limits;
pub use load::{FailureMode, HookConfig};
pub use metrics::{GuestMetrics, LATENCY_BUCKETS_US, Latency};
pub use types::{
    Attachment, Decision, GuestId, HookKind, IpRequest, Nic, Node, Owner, Pod, Route,
    RouteTemplate, Vxnet, VxnetLive,
};

/// An error and its causes on one line ("a: b: c"), for log fields.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        // wasmtime's backtrace context repeats across levels; keep it once.
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}
