//! A guest: a component compiled once, pre-instantiated against the
//! host's linker for each hook it implements, and called with a fresh
//! store per call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime::component::Component;

use crate::bindings::{ip, routes, vxnet};
use crate::error::{LoadError, PolicyError};
use crate::guest_log::{CallLogHandle, LogLine, Speaker, cut};
use crate::host::{CallFacts, CallState};
use crate::kv::KvStore;
use crate::limits::{HOSTCALL_FUEL, Limits, MAX_REASON_BYTES};
use crate::runtime::Runtime;
use crate::types::{GuestId, HookKind};

/// What one call is: the hook, the export called, and the facts the guest
/// may ask the host for while it runs.
pub(crate) struct CallSpec {
    pub kind: HookKind,
    pub export: &'static str,
    pub facts: CallFacts,
}

/// A compiled, pre-instantiated component. Shared (by sha256) between
/// every hook and generation that loads the same bytes.
pub(crate) struct Compiled {
    pub vxnet: Option<vxnet::VxnetSelectionPre<CallState>>,
    pub ip: Option<ip::IpAssignmentPre<CallState>>,
    pub routes: Option<routes::RouteTemplatingPre<CallState>>,
    pub compile_time: Duration,
    pub size: usize,
}

impl Compiled {
    /// Compiles `bytes`, links it (refusing imports the host does not
    /// offer) and finds which hooks it implements (refusing a component
    /// that implements none).
    pub fn new(
        rt: &Runtime,
        name: &str,
        sha256: &str,
        bytes: &[u8],
    ) -> Result<Compiled, LoadError> {
        let id = || GuestId {
            name: name.to_owned(),
            sha256: sha256.to_owned(),
            builtin: false,
        };
        let wasm = &rt.engine;
        let start = Instant::now();
        let (component, _compiled) =
            rt.component(sha256, bytes)
                .map_err(|e| LoadError::Compile {
                    name: name.to_owned(),
                    sha256: sha256.to_owned(),
                    source: e.into_boxed_dyn_error(),
                })?;
        let compile_time = start.elapsed();
        let pre = rt
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::MissingImports {
                guest: id(),
                missing: missing_imports(wasm, &component),
                source: e.into_boxed_dyn_error(),
            })?;
        let compiled = Compiled {
            vxnet: vxnet::VxnetSelectionPre::new(pre.clone()).ok(),
            ip: ip::IpAssignmentPre::new(pre.clone()).ok(),
            routes: routes::RouteTemplatingPre::new(pre).ok(),
            compile_time,
            size: bytes.len(),
        };
        if compiled.hooks().is_empty() {
            let ty = component.component_type();
            let exports = ty.exports(wasm).map(|(n, _)| n.to_owned()).collect();
            return Err(LoadError::NotAHook {
                guest: id(),
                exports,
            });
        }
        Ok(compiled)
    }

    /// The hooks this component implements (the world's decision export
    /// and `config`, with the contract's types).
    pub fn hooks(&self) -> Vec<HookKind> {
        let mut v = Vec::new();
        if self.vxnet.is_some() {
            v.push(HookKind::VxnetSelection);
        }
        if self.ip.is_some() {
            v.push(HookKind::IpAssignment);
        }
        if self.routes.is_some() {
            v.push(HookKind::RouteTemplating);
        }
        v
    }
}

/// The component's imports that the host's linker does not offer, by full
/// name, for the refusal message. (Compared without versions: wasmtime
/// matches semver-compatible versions, so a guest built against a newer
/// 0.2.x WASI links fine.)
fn missing_imports(engine: &wasmtime::Engine, component: &Component) -> Vec<String> {
    let offered: Vec<&str> = crate::host::offered_imports().collect();
    let ty = component.component_type();
    let missing: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| {
            let bare = name.split('@').next().unwrap_or(name);
            !offered.contains(&bare)
        })
        .map(str::to_owned)
        .collect();
    if missing.is_empty() {
        // Every interface is offered, so a function in one is not (or has
        // another type); wasmtime's message (the source) names it.
        vec!["an interface whose functions do not match the host's".to_owned()]
    } else {
        missing
    }
}

/// A loaded guest: compiled code, its identity and its kv store.
#[derive(Clone)]
pub(crate) struct Guest {
    pub id: GuestId,
    pub compiled: Arc<Compiled>,
    pub kv: Arc<KvStore>,
    /// The `tracing` fields of its log lines.
    pub name: Arc<str>,
    pub version: Arc<str>,
}

impl Guest {
    pub fn new(id: GuestId, compiled: Arc<Compiled>, kv: Arc<KvStore>) -> Guest {
        Guest {
            kv,
            name: id.name.as_str().into(),
            version: id.short().into(),
            id,
            compiled,
        }
    }

    /// Calls `validate-config` through the `kind` world's instance.
    pub fn validate_config(
        &self,
        rt: &Runtime,
        kind: HookKind,
        config: &str,
        limits: &Limits,
    ) -> Result<(), LoadError> {
        let c = &self.compiled;
        let (result, _log) = self.call(
            rt,
            CallSpec {
                kind,
                export: "validate-config",
                facts: CallFacts::default(),
            },
            limits,
            |store| match kind {
                HookKind::VxnetSelection => {
                    let pre = c.vxnet.as_ref().ok_or_else(not_implemented)?;
                    let inst = pre.instantiate(&mut *store)?;
                    inst.hostnic_policy_config()
                        .call_validate_config(&mut *store, config)
                }
                HookKind::IpAssignment => {
                    let pre = c.ip.as_ref().ok_or_else(not_implemented)?;
                    let inst = pre.instantiate(&mut *store)?;
                    inst.hostnic_policy_config()
                        .call_validate_config(&mut *store, config)
                }
                HookKind::RouteTemplating => {
                    let pre = c.routes.as_ref().ok_or_else(not_implemented)?;
                    let inst = pre.instantiate(&mut *store)?;
                    inst.hostnic_policy_config()
                        .call_validate_config(&mut *store, config)
                }
            },
            Ok,
        );
        match result {
            Ok(()) => Ok(()),
            Err(PolicyError::Refused { guest, reason }) => {
                Err(LoadError::ConfigRefused { guest, reason })
            }
            Err(e) => Err(LoadError::ConfigCheckFailed {
                guest: self.id.clone(),
                source: Box::new(e),
            }),
        }
    }

    /// One call: a fresh store with `limits` set before any guest code
    /// runs, `call` (instantiate and call the export), the guest's answer
    /// checked by `accept`, the store dropped. The kv writes of the call
    /// are committed if the guest answered (an accepted answer or a
    /// refusal) and dropped otherwise. Returns the guest's log lines either
    /// way.
    pub fn call<W, R>(
        &self,
        rt: &Runtime,
        spec: CallSpec,
        limits: &Limits,
        call: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<Result<W, String>>,
        accept: impl FnOnce(W) -> Result<R, Rejected>,
    ) -> (Result<R, PolicyError>, Vec<LogLine>) {
        let log = CallLogHandle::new(Speaker {
            guest: self.name.clone(),
            version: self.version.clone(),
            hook: spec.kind.world(),
        });
        let mut store = CallState::store(&rt.engine, limits, log, self.kv.clone(), spec.facts);
        let raw = {
            let _busy = rt.busy();
            call(&mut store)
        };
        let result = match raw {
            Ok(Ok(answer)) => accept(answer).map_err(|r| r.into_error(&self.id)),
            Ok(Err(reason)) => Err(PolicyError::Refused {
                guest: self.id.clone(),
                reason: cut(&reason, MAX_REASON_BYTES),
            }),
            Err(e) => Err(self.classify(e, store.data(), limits, spec.export)),
        };
        let lines = store.data().log().finish();
        let answered = matches!(&result, Ok(_) | Err(PolicyError::Refused { .. }));
        let (txn, kv) = store.into_data().into_txn();
        if answered && let Err(e) = txn.commit(&kv) {
            tracing::warn!(
                guest = %self.name,
                version = %self.version,
                error = %crate::error_chain(&e),
                "guest kv writes of a successful call could not all be kept",
            );
        }
        (result, lines)
    }

    /// Names what went wrong in a call that did not return normally.
    fn classify(
        &self,
        e: wasmtime::Error,
        state: &CallState,
        limits: &Limits,
        export: &'static str,
    ) -> PolicyError {
        let guest = self.id.clone();
        if let Some(asked) = state.memory_denied() {
            return PolicyError::OutOfMemory {
                guest,
                limit: limits.memory,
                asked,
            };
        }
        if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
            return PolicyError::Deadline {
                guest,
                limit: limits.deadline,
            };
        }
        // wasmtime's "hostcall fuel" error type is private; its message is
        // the stable part (checked by a test against hostile-huge).
        if e.chain()
            .any(|c| c.to_string().contains("fuel allocated for hostcalls"))
        {
            return PolicyError::Oversized {
                guest,
                what: format!(
                    "it passed the host more than {} KiB in one transfer",
                    HOSTCALL_FUEL >> 10
                ),
            };
        }
        let message = match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => format!("the guest called exit({})", exit.0),
            None => e.root_cause().to_string(),
        };
        PolicyError::Trap {
            guest,
            during: export,
            message,
            source: e.into_boxed_dyn_error(),
        }
    }
}

/// The error for a guest without the hook's export (cannot happen for a
/// loaded hook, which was checked; kept as an error rather than a panic).
pub(crate) fn not_implemented() -> wasmtime::Error {
    wasmtime::format_err!("the guest does not implement this hook")
}

/// Why the host refused an answer.
#[derive(Debug)]
pub(crate) enum Rejected {
    /// Over the answer-size limits.
    Oversized(String),
    /// Not something the host can act on.
    Invalid(String),
}

impl Rejected {
    fn into_error(self, guest: &GuestId) -> PolicyError {
        match self {
            Rejected::Oversized(what) => PolicyError::Oversized {
                guest: guest.clone(),
                what,
            },
            Rejected::Invalid(problem) => PolicyError::InvalidAnswer {
                guest: guest.clone(),
                problem,
            },
        }
    }
}
