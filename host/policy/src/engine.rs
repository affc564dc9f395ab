//! The runtime: one wasmtime `Engine`, its epoch ticker, the linker, the
//! compiled-guest cache and the guests' kv stores. Cheap to clone; every
//! hook holds one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use wasmtime::component::Linker;
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::{EngineError, LoadError};
use crate::guest::{Compiled, Guest};
use crate::host::CallState;
use crate::kv::KvStore;
use crate::limits::*;
use crate::precompiled::DiskCache;
use crate::types::HookKind;

/// The policy runtime. Create one per process and share it (it is a
/// handle: clones share everything).
#[derive(Clone)]
pub struct PolicyEngine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub engine: wasmtime::Engine,
    pub linker: Linker<CallState>,
    ticker: Ticker,
    state_dir: Option<PathBuf>,
    /// Compiled guests on disk (under `state_dir`), for fast restarts.
    disk: Option<DiskCache>,
    pooling: bool,
    /// Compiled components by sha256, so that a reload of the same module
    /// (a config change) or two hooks on one module compile it once. Weak:
    /// a module no hook uses any more is freed.
    compiled: Mutex<HashMap<String, Weak<Compiled>>>,
    /// One kv store per guest name (see `kv.rs`), shared by every hook and
    /// every generation that runs a guest of that name.
    kv: Mutex<HashMap<String, Weak<KvStore>>>,
    /// The built-in default guests, compiled on first use.
    builtins: Mutex<HashMap<HookKind, Guest>>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("state_dir", &self.inner.state_dir)
            .field("pooling", &self.inner.pooling)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// A runtime whose guests' kv stores persist under `state_dir` (created
    /// if missing), one JSON file per guest name.
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<PolicyEngine, EngineError> {
        let dir = state_dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| EngineError::StateDir {
            path: dir.clone(),
            source,
        })?;
        Self::build(Some(dir))
    }

    /// A runtime whose kv stores live in memory only (tests, benchmarks).
    pub fn in_memory() -> Result<PolicyEngine, EngineError> {
        Self::build(None)
    }

    fn build(state_dir: Option<PathBuf>) -> Result<PolicyEngine, EngineError> {
        let (engine, pooling) = create_engine()?;
        let linker = crate::host::linker(&engine)
            .map_err(|e| EngineError::Linker(e.into_boxed_dyn_error()))?;
        let ticker = Ticker::start(engine.clone())?;
        let disk = state_dir.as_deref().map(|d| DiskCache::new(d, &engine));
        Ok(PolicyEngine {
            inner: Arc::new(Inner {
                engine,
                linker,
                ticker,
                disk,
                state_dir,
                pooling,
                compiled: Mutex::new(HashMap::new()),
                kv: Mutex::new(HashMap::new()),
                builtins: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Whether the pooling allocator is in use (false: its address-space
    /// reservation failed at start and instances are allocated on demand).
    pub fn pooling(&self) -> bool {
        self.inner.pooling
    }

    pub fn state_dir(&self) -> Option<&Path> {
        self.inner.state_dir.as_deref()
    }

    /// Marks a call in flight for the duration of the guard: the epoch
    /// ticker runs while any call is.
    pub(crate) fn busy(&self) -> Busy<'_> {
        self.inner.ticker.enter()
    }

    /// The compiled component for `bytes` (whose sha256 is `sha256`),
    /// from the cache or compiled now.
    pub(crate) fn compile(
        &self,
        name: &str,
        sha256: &str,
        bytes: &[u8],
    ) -> Result<Arc<Compiled>, LoadError> {
        if let Some(c) = lock(&self.inner.compiled)
            .get(sha256)
            .and_then(Weak::upgrade)
        {
            return Ok(c);
        }
        // Compiled outside the lock: it takes tens of milliseconds, and two
        // hooks racing on the same new module only waste one compile.
        let compiled = Arc::new(Compiled::new(self, name, sha256, bytes)?);
        let mut cache = lock(&self.inner.compiled);
        cache.retain(|_, w| w.strong_count() > 0);
        cache.insert(sha256.to_owned(), Arc::downgrade(&compiled));
        Ok(compiled)
    }

    /// The component for `bytes`: from the on-disk cache of compiled
    /// guests when it holds a valid one, else compiled now (and cached).
    /// Returns whether it was compiled.
    pub(crate) fn component(
        &self,
        sha256: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(wasmtime::component::Component, bool)> {
        let engine = &self.inner.engine;
        if let Some(c) = self
            .inner
            .disk
            .as_ref()
            .and_then(|d| d.load(engine, sha256))
        {
            return Ok((c, false));
        }
        let component = wasmtime::component::Component::new(engine, bytes)?;
        if let Some(d) = &self.inner.disk {
            d.store(sha256, &component);
        }
        Ok((component, true))
    }

    /// The kv store of the guest called `name` (built-in defaults have
    /// their own namespace). A state file that cannot be read is moved
    /// aside (`.bad`) with a warning and the guest starts empty: losing a
    /// rotation index must not stop pods from getting networks.
    pub(crate) fn kv(&self, name: &str, builtin: bool) -> Arc<KvStore> {
        let key = if builtin {
            format!("builtin.{name}")
        } else {
            name.to_owned()
        };
        let mut stores = lock(&self.inner.kv);
        if let Some(s) = stores.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        let store = match &self.inner.state_dir {
            None => KvStore::in_memory(),
            Some(dir) => {
                let path = dir.join(format!("{key}.json"));
                KvStore::open(&path).unwrap_or_else(|e| {
                    let aside = path.with_extension("json.bad");
                    let moved = std::fs::rename(&path, &aside);
                    tracing::warn!(
                        guest = name,
                        error = %crate::error_chain(&e),
                        moved_to = %aside.display(),
                        moved_ok = moved.is_ok(),
                        "guest kv state unreadable; starting the guest with an empty store",
                    );
                    KvStore::empty_at(&path)
                })
            }
        };
        let store = Arc::new(store);
        stores.retain(|_, w| w.strong_count() > 0);
        stores.insert(key, Arc::downgrade(&store));
        store
    }

    /// The built-in default guest for `kind`, compiled on first use and
    /// checked with an empty config.
    pub(crate) fn builtin(&self, kind: HookKind) -> Result<Guest, LoadError> {
        if let Some(g) = lock(&self.inner.builtins).get(&kind) {
            return Ok(g.clone());
        }
        let guest = Guest::load_builtin(self, kind)?;
        guest.validate_config(self, kind, "", &Limits::default())?;
        lock(&self.inner.builtins).insert(kind, guest.clone());
        Ok(guest)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps are only ever updated by single inserts/retains; a panic
    // elsewhere while holding the lock leaves them consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
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
