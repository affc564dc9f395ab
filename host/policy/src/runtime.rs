//! The wasmtime side of the policy runtime: one `Engine` (pooling
//! allocator, epoch deadlines) with its ticker thread, the linker every
//! guest is instantiated against, and the compiled guests cached on disk.
//! It knows nothing of guests or hooks: `guest` compiles and calls on it,
//! `engine` keeps what is known of guests.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use wasmtime::component::Linker;
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::EngineError;
use crate::host::CallState;
use crate::limits::*;
use crate::precompiled::DiskCache;

/// What guests are compiled, linked and called with. One per
/// [`PolicyEngine`](crate::PolicyEngine), shared by all its hooks.
pub(crate) struct Runtime {
    pub engine: wasmtime::Engine,
    pub linker: Linker<CallState>,
    ticker: Ticker,
    /// Compiled guests on disk (under the state directory), for fast
    /// restarts.
    disk: Option<DiskCache>,
    /// Whether the pooling allocator is in use.
    pub pooling: bool,
}

impl Runtime {
    /// The engine, its linker and ticker; compiled guests are cached under
    /// `state_dir`, if there is one, and also read from `shipped` (see
    /// `precompiled`).
    pub fn new(state_dir: Option<&Path>, shipped: Option<&Path>) -> Result<Runtime, EngineError> {
        let (engine, pooling) = create_engine()?;
        let linker = crate::host::linker(&engine)
            .map_err(|e| EngineError::Linker(e.into_boxed_dyn_error()))?;
        let ticker = Ticker::start(engine.clone())?;
        let disk = state_dir.map(|d| {
            let cache = DiskCache::new(d, &engine);
            match shipped {
                Some(s) => cache.with_shipped(s),
                None => cache,
            }
        });
        Ok(Runtime {
            engine,
            linker,
            ticker,
            disk,
            pooling,
        })
    }

    /// Marks a call in flight for the duration of the guard: the epoch
    /// ticker runs while any call is.
    pub(crate) fn busy(&self) -> Busy<'_> {
        self.ticker.enter()
    }

    /// The component for `bytes`: from the on-disk cache of compiled
    /// guests when it holds a valid one, else compiled now (and cached).
    /// Returns whether it was compiled.
    pub(crate) fn component(
        &self,
        sha256: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(wasmtime::component::Component, bool)> {
        let engine = &self.engine;
        if let Some(c) = self.disk.as_ref().and_then(|d| d.load(engine, sha256)) {
            return Ok((c, false));
        }
        let component = wasmtime::component::Component::new(engine, bytes)?;
        if let Some(d) = &self.disk {
            d.store(sha256, &component);
        }
        Ok((component, true))
    }

    /// Compiles the built-in guests into `dir`, as [`DiskCache`] files a
    /// `shipped` directory holds: their paths.
    pub fn precompile_builtins(&self, dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
        let cache = DiskCache::at(dir.to_path_buf(), &self.engine);
        let mut written = Vec::new();
        for kind in crate::types::HookKind::ALL {
            let bytes = crate::builtin::module(kind);
            let component =
                wasmtime::component::Component::new(&self.engine, bytes).map_err(|e| {
                    std::io::Error::other(format!(
                        "compiling the built-in {}: {e}",
                        crate::builtin::name(kind)
                    ))
                })?;
            written.push(cache.write(&crate::builtin::sha256(kind), &component)?);
        }
        Ok(written)
    }
}

/// The engine configuration, with the pooling allocator if its address
/// space can be reserved, else on-demand allocation (same limits, slower
/// instantiation) with a warning.
fn create_engine() -> Result<(wasmtime::Engine, bool), EngineError> {
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config()));
    match wasmtime::Engine::new(&config) {
        Ok(engine) => Ok((engine, true)),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "policy runtime: the pooling allocator could not reserve its slots; \
                 allocating guest instances on demand instead",
            );
            let config = base_config();
            let engine = wasmtime::Engine::new(&config)
                .map_err(|e| EngineError::Engine(e.into_boxed_dyn_error()))?;
            Ok((engine, false))
        }
    }
}

fn base_config() -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    // Deadlines (see `limits::EPOCH_TICK`).
    c.epoch_interruption(true);
    // Component-model async is not used: leaving the concurrency machinery
    // off makes each small call about three times cheaper.
    c.concurrency_support(false);
    c.max_wasm_stack(MAX_WASM_STACK);
    // Memory slots sized to the largest cap a hook may set; see
    // `limits::POOL_MEMORY_RESERVATION` for why not wasmtime's 4 GiB.
    c.memory_reservation(POOL_MEMORY_RESERVATION);
    c.memory_guard_size(POOL_MEMORY_GUARD);
    c.memory_reservation_for_growth(0);
    c
}

fn pool_config() -> PoolingAllocationConfig {
    let mut p = PoolingAllocationConfig::new();
    p.total_component_instances(POOL_COMPONENT_INSTANCES)
        .total_core_instances(POOL_CORE_INSTANCES)
        .total_memories(POOL_MEMORIES)
        .total_tables(POOL_TABLES)
        // No fibers: calls are synchronous.
        .total_stacks(0)
        .max_memory_size(MAX_MEMORY)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_core_instances_per_component(MAX_CORE_INSTANCES as u32)
        .max_memories_per_component(MAX_MEMORIES as u32)
        .max_tables_per_component(MAX_TABLES as u32)
        .linear_memory_keep_resident(POOL_KEEP_RESIDENT)
        .table_keep_resident(POOL_KEEP_RESIDENT);
    p
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on its own thread (not
/// on an async executor, whose stalls would stretch every deadline) —
/// while calls are in flight. When the runtime has been idle for
/// [`IDLE_TICKS`] ticks the thread parks, so an idle agent does not wake a
/// thousand times a second; the next call unparks it.
struct Ticker {
    shared: Arc<TickerShared>,
    thread: Option<JoinHandle<()>>,
}

struct TickerShared {
    in_flight: AtomicUsize,
    parked: AtomicBool,
    stop: AtomicBool,
}

/// Ticks of idleness before the ticker parks: long enough that a burst of
/// calls (a node starting many pods) does not pay for an unpark each.
const IDLE_TICKS: u32 = 100;

impl Ticker {
    fn start(engine: wasmtime::Engine) -> Result<Ticker, EngineError> {
        let shared = Arc::new(TickerShared {
            in_flight: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                let mut idle = 0;
                while !s.stop.load(Ordering::SeqCst) {
                    if s.in_flight.load(Ordering::SeqCst) > 0 {
                        idle = 0;
                    } else {
                        idle += 1;
                    }
                    if idle > IDLE_TICKS {
                        // Announce the park, then look again: a call that
                        // started in between either sees `parked` and
                        // unparks us, or we see it here. (An unpark that
                        // comes before `park` makes `park` return at once.)
                        s.parked.store(true, Ordering::SeqCst);
                        if s.in_flight.load(Ordering::SeqCst) == 0 && !s.stop.load(Ordering::SeqCst)
                        {
                            std::thread::park();
                        }
                        s.parked.store(false, Ordering::SeqCst);
                        idle = 0;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(EngineError::Ticker)?;
        Ok(Ticker {
            shared,
            thread: Some(thread),
        })
    }

    fn enter(&self) -> Busy<'_> {
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.shared.parked.load(Ordering::SeqCst)
            && let Some(t) = &self.thread
        {
            t.thread().unpark();
        }
        Busy(self)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            // The thread only sleeps a tick at a time; a panic in it (there
            // is nothing there that panics) must not turn into a second one
            // here during drop.
            let _ = t.join();
        }
    }
}

/// A call in flight.
pub(crate) struct Busy<'a>(&'a Ticker);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
