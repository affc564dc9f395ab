//! What a guest's store holds during one call, and the interfaces the
//! guest imports: `host` (`log`, `kv-get`, `kv-set`), since 0.1.1
//! `pod-facts` (`pod-owner`), since 0.1.2 `attachment-facts` and
//! `vxnet-facts` (which 0.1.3 extends with `vxnet-shared-range`).
//!
//! The host functions only translate between WIT values and the domain
//! (`guest_log`, `kv`); the decisions about limits are made there.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::vxnet::hostnic::policy::host as wit;
use crate::bindings::vxnet::hostnic::policy::{attachment_facts, pod_facts, vxnet_facts};
use crate::guest_log::{CallLogHandle, LogLevel};
use crate::kv::{KvStore, KvTxn};
use crate::limits::{
    HOSTCALL_FUEL, Limits, MAX_CORE_INSTANCES, MAX_MEMORIES, MAX_TABLE_ELEMENTS, MAX_TABLES,
};
use crate::types::{Attachment, Owner, Pod, Vxnet, VxnetLive};

/// What a guest may ask the host about the call in progress
/// (`pod-facts`, `attachment-facts`, `vxnet-facts`).
#[derive(Debug, Clone, Default)]
pub(crate) struct CallFacts {
    pub owner: Option<Owner>,
    pub attachment: Attachment,
    /// What the host knows of the call's vxnets, by id (`vxnet-facts`).
    pub vxnets: Vec<(String, VxnetLive)>,
}

impl CallFacts {
    /// The facts of a call about `pod` with `vxnets` (the candidates, or
    /// the vxnet decided for).
    pub fn of(pod: &Pod, vxnets: &[&Vxnet]) -> CallFacts {
        CallFacts {
            owner: pod.owner.clone(),
            attachment: pod.attachment.clone(),
            vxnets: vxnets
                .iter()
                .map(|v| (v.id.clone(), v.live.clone()))
                .collect(),
        }
    }
}

/// The data of one call's `Store`.
pub(crate) struct CallState {
    limiter: GuestLimiter,
    table: ResourceTable,
    wasi: WasiCtx,
    log: CallLogHandle,
    kv: Arc<KvStore>,
    txn: KvTxn,
    /// What the guest may ask about the call (`pod-facts`,
    /// `attachment-facts`, `vxnet-facts`).
    facts: CallFacts,
}

impl CallState {
    /// A store for one call, with every limit set before the guest runs:
    /// memory and instance caps, the deadline (in epoch ticks from now),
    /// the hostcall fuel.
    pub fn store(
        engine: &wasmtime::Engine,
        limits: &Limits,
        log: CallLogHandle,
        kv: Arc<KvStore>,
        facts: CallFacts,
    ) -> Store<CallState> {
        let state = CallState {
            limiter: GuestLimiter {
                memory_cap: limits.memory,
                memory_denied: None,
            },
            table: ResourceTable::new(),
            wasi: crate::wasi::context(&log),
            log,
            kv,
            txn: KvTxn::default(),
            facts,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(limits.deadline_ticks());
        store.epoch_deadline_trap();
        store.set_hostcall_fuel(HOSTCALL_FUEL);
        store
    }

    /// The memory growth the cap refused during this call, if any: the
    /// size (bytes) the guest asked for.
    pub fn memory_denied(&self) -> Option<usize> {
        self.limiter.memory_denied
    }

    pub fn log(&self) -> &CallLogHandle {
        &self.log
    }

    /// Ends the call: the buffered kv writes, to commit if the call
    /// succeeded.
    pub fn into_txn(self) -> (KvTxn, Arc<KvStore>) {
        (self.txn, self.kv)
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The memory cap and instance shape of one call, as a wasmtime resource
/// limiter. A refused memory growth traps (rather than making
/// `memory.grow` return -1, which a Rust guest turns into an abort with a
/// less clear message) and is recorded, so that the error can say "out of
/// memory" rather than "trapped".
struct GuestLimiter {
    memory_cap: usize,
    memory_denied: Option<usize>,
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_denied = Some(desired);
            wasmtime::bail!(
                "guest memory would grow to {desired} bytes, over its cap of {} bytes",
                self.memory_cap
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            wasmtime::bail!(
                "guest table would grow to {desired} elements, over the cap of {MAX_TABLE_ELEMENTS}"
            );
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }
    fn tables(&self) -> usize {
        MAX_TABLES
    }
    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// The one linker every guest is instantiated against: the `host`
/// interface and the sandbox's WASI. The three worlds import the same
/// things, so one linker serves all three (a future world importing more
/// would get its own).
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<CallState>> {
    let mut linker = Linker::new(engine);
    wit::add_to_linker::<CallState, HostData>(&mut linker, |s| s)?;
    crate::bindings::vxnet::hostnic::policy::types::add_to_linker::<CallState, HostData>(
        &mut linker,
        |s| s,
    )?;
    pod_facts::add_to_linker::<CallState, HostData>(&mut linker, |s| s)?;
    attachment_facts::add_to_linker::<CallState, HostData>(&mut linker, |s| s)?;
    vxnet_facts::add_to_linker::<CallState, HostData>(&mut linker, |s| s)?;
    crate::wasi::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// The interface names the linker offers, without versions.
pub(crate) fn offered_imports() -> impl Iterator<Item = &'static str> {
    [
        "hostnic:policy/host",
        "hostnic:policy/types",
        "hostnic:policy/pod-facts",
        "hostnic:policy/attachment-facts",
        "hostnic:policy/vxnet-facts",
    ]
    .into_iter()
    .chain(crate::wasi::OFFERED.iter().copied())
}

struct HostData;
impl HasData for HostData {
    type Data<'a> = &'a mut CallState;
}

impl wit::Host for CallState {
    fn log(&mut self, level: wit::Level, message: String) {
        let level = match level {
            wit::Level::Error => LogLevel::Error,
            wit::Level::Warn => LogLevel::Warn,
            wit::Level::Info => LogLevel::Info,
            wit::Level::Debug => LogLevel::Debug,
        };
        self.log.log(level, &message);
    }

    fn kv_get(&mut self, key: String) -> Option<String> {
        self.txn.get(&self.kv, &key)
    }

    fn kv_set(&mut self, key: String, value: String) -> Result<(), String> {
        self.txn
            .set(&self.kv, &key, &value)
            .map_err(|e| e.to_string())
    }
}

impl crate::bindings::vxnet::hostnic::policy::types::Host for CallState {}

impl pod_facts::Host for CallState {
    fn pod_owner(&mut self) -> Option<pod_facts::Owner> {
        self.facts.owner.as_ref().map(crate::convert::owner)
    }
}

impl attachment_facts::Host for CallState {
    fn network(&mut self) -> String {
        self.facts.attachment.network.clone()
    }

    fn interface_name(&mut self) -> String {
        self.facts.attachment.interface.clone()
    }

    fn default_route(&mut self) -> bool {
        self.facts.attachment.default_route
    }
}

impl CallState {
    /// What the host knows of `id`, if it is one of the call's vxnets.
    fn vxnet(&self, id: &str) -> Option<&VxnetLive> {
        let (_, live) = self.facts.vxnets.iter().find(|(v, _)| v == id)?;
        Some(live)
    }
}

impl vxnet_facts::Host for CallState {
    fn vxnet_measured(&mut self, id: String) -> Option<vxnet_facts::Measured> {
        let live = self.vxnet(&id)?;
        Some(vxnet_facts::Measured {
            attach_latency_ms: live.attach_latency_ms,
            recent_failure_codes: live.recent_failure_codes.clone(),
            free_ips_age_s: live.free_ips_counted_s_ago,
        })
    }

    fn vxnet_shared_range(&mut self, id: String) -> Option<String> {
        self.vxnet(&id)?.shared_range.map(|r| r.to_string())
    }
}
