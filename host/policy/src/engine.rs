//! The policy engine: the wasmtime runtime (`runtime.rs`) and what it
//! keeps of guests across hooks and generations: compiled guests by
//! sha256, the built-in defaults, the guests' kv stores. Cheap to clone;
//! every hook holds one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::digest::sha256_hex;
use crate::error::{EngineError, LoadError};
use crate::guest::{Compiled, Guest};
use crate::kv::KvStore;
use crate::limits::Limits;
use crate::runtime::Runtime;
use crate::types::{GuestId, HookKind};

/// The policy runtime. Create one per process and share it (it is a
/// handle: clones share everything).
#[derive(Clone)]
pub struct PolicyEngine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The wasmtime engine, linker and ticker, and the compiled guests on
    /// disk (under `state_dir`).
    runtime: Runtime,
    state_dir: Option<PathBuf>,
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

/// `dir`, created if missing.
fn created(dir: PathBuf) -> Result<PathBuf, EngineError> {
    std::fs::create_dir_all(&dir).map_err(|source| EngineError::StateDir {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("state_dir", &self.inner.state_dir)
            .field("pooling", &self.inner.runtime.pooling)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// A runtime whose guests' kv stores persist under `state_dir` (created
    /// if missing), one JSON file per guest name.
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<PolicyEngine, EngineError> {
        Self::build(Some(created(state_dir.into())?), None)
    }

    /// [`Self::new`], also loading guests compiled when the agent's image
    /// was built from `shipped` (read-only; see [`Self::precompile_builtins`]),
    /// if that directory exists and only the agent's user may write it.
    pub fn with_shipped(
        state_dir: impl Into<PathBuf>,
        shipped: &Path,
    ) -> Result<PolicyEngine, EngineError> {
        Self::build(Some(created(state_dir.into())?), Some(shipped))
    }

    /// A runtime whose kv stores live in memory only (tests, benchmarks).
    pub fn in_memory() -> Result<PolicyEngine, EngineError> {
        Self::build(None, None)
    }

    fn build(
        state_dir: Option<PathBuf>,
        shipped: Option<&Path>,
    ) -> Result<PolicyEngine, EngineError> {
        let runtime = Runtime::new(state_dir.as_deref(), shipped)?;
        Ok(PolicyEngine {
            inner: Arc::new(Inner {
                runtime,
                state_dir,
                compiled: Mutex::new(HashMap::new()),
                kv: Mutex::new(HashMap::new()),
                builtins: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Compiles the built-in guests for this engine into `dir` (created),
    /// for an image to ship and [`Self::with_shipped`] to load: the files
    /// written.
    pub fn precompile_builtins(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        self.runtime().precompile_builtins(dir)
    }

    /// Whether the pooling allocator is in use (false: its address-space
    /// reservation failed at start and instances are allocated on demand).
    pub fn pooling(&self) -> bool {
        self.inner.runtime.pooling
    }

    pub fn state_dir(&self) -> Option<&Path> {
        self.inner.state_dir.as_deref()
    }

    /// What guests are compiled, linked and called with.
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.inner.runtime
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
        let compiled = Arc::new(Compiled::new(self.runtime(), name, sha256, bytes)?);
        let mut cache = lock(&self.inner.compiled);
        cache.retain(|_, w| w.strong_count() > 0);
        cache.insert(sha256.to_owned(), Arc::downgrade(&compiled));
        Ok(compiled)
    }

    /// The kv store of the guest called `name` (built-in defaults have
    /// their own namespace). A state file that cannot be read is moved
    /// aside (`.bad`) with a warning and the guest starts empty: losing a
    /// rotation index must not stop pods from getting networks.
    fn kv(&self, name: &str, builtin: bool) -> Arc<KvStore> {
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
        let guest = self.load_builtin(kind)?;
        guest.validate_config(self.runtime(), kind, "", &Limits::default())?;
        lock(&self.inner.builtins).insert(kind, guest.clone());
        Ok(guest)
    }

    fn load_builtin(&self, kind: HookKind) -> Result<Guest, LoadError> {
        let bytes = crate::builtin::module(kind);
        let sha = sha256_hex(bytes);
        let name = crate::builtin::name(kind);
        let compiled = self.compile(name, &sha, bytes)?;
        let id = GuestId {
            name: name.to_owned(),
            sha256: sha,
            builtin: true,
        };
        let implements = compiled.hooks();
        if !implements.contains(&kind) {
            // A build mix-up in guests/, caught at the first use.
            return Err(LoadError::WrongHook {
                guest: id,
                wanted: kind,
                implements,
            });
        }
        Ok(self.guest(id, compiled))
    }

    /// The guest `id`, compiled as `compiled`, with its kv store.
    pub(crate) fn guest(&self, id: GuestId, compiled: Arc<Compiled>) -> Guest {
        let kv = self.kv(&id.name, id.builtin);
        Guest::new(id, compiled, kv)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps are only ever updated by single inserts/retains; a panic
    // elsewhere while holding the lock leaves them consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
