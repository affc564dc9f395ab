//! Hooks: a configured guest for one decision, swappable at run time.
//!
//! A [`Hook`] holds the current generation (guest, config, limits, failure
//! mode) behind a read-write lock around an `Arc`: a call clones the `Arc`
//! under the read lock (nanoseconds) and runs without holding anything, so
//! a swap never waits for calls and calls in flight finish on the
//! generation they started with. [`Hook::reload`] builds and checks the
//! whole new generation (read, digest, compile, link, hook check,
//! `validate-config`) before the swap; if anything fails, the old
//! generation keeps serving and the error is returned and logged.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::engine::PolicyEngine;
use crate::error::LoadError;
use crate::limits::Limits;
use crate::load::{FailureMode, FileStamp, HookConfig, Loaded, prepare, stamp};
use crate::metrics::{GuestMetrics, Metrics, Outcome};
use crate::types::{GuestId, HookKind};

/// The three decisions, as types (see [`VxnetHook`], [`IpHook`],
/// [`RoutesHook`]).
pub trait Kind: sealed::Sealed + Send + Sync + Sized + 'static {
    const KIND: HookKind;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::VxnetKind {}
    impl Sealed for super::IpKind {}
    impl Sealed for super::RoutesKind {}
}

/// World `vxnet-selection`.
#[derive(Debug)]
pub struct VxnetKind;
/// World `ip-assignment`.
#[derive(Debug)]
pub struct IpKind;
/// World `route-templating`.
#[derive(Debug)]
pub struct RoutesKind;

impl Kind for VxnetKind {
    const KIND: HookKind = HookKind::VxnetSelection;
}
impl Kind for IpKind {
    const KIND: HookKind = HookKind::IpAssignment;
}
impl Kind for RoutesKind {
    const KIND: HookKind = HookKind::RouteTemplating;
}

pub type VxnetHook = Hook<VxnetKind>;
pub type IpHook = Hook<IpKind>;
pub type RoutesHook = Hook<RoutesKind>;

/// A configured guest for the decision `K`, swappable at run time. Share
/// it (`Arc<Hook<K>>`); every method takes `&self`.
///
/// Calls are synchronous and CPU-bound (tens of microseconds; at most the
/// deadline). They never block on I/O except the guest's kv store file
/// when a call changed it; calling from an async task is fine.
pub struct Hook<K: Kind> {
    pub(crate) engine: PolicyEngine,
    current: RwLock<Arc<Loaded>>,
    reload: Mutex<ReloadState>,
    totals: Metrics,
    _kind: PhantomData<fn() -> K>,
}

#[derive(Default)]
struct ReloadState {
    /// The module file as last seen by a load attempt, successful or not,
    /// so that a bad file is tried once per change, not once per poll.
    last_seen: Option<(PathBuf, Option<FileStamp>)>,
    reloads: u64,
    failed: u64,
    last_error: Option<String>,
}

/// A hook's state for introspection.
#[derive(Debug, Clone)]
pub struct HookStatus {
    pub kind: HookKind,
    pub guest: GuestId,
    pub path: Option<PathBuf>,
    pub failure: FailureMode,
    pub limits: Limits,
    pub loaded_at: SystemTime,
    /// Time it took to compile the module (when it was first compiled: a
    /// module reloaded from the runtime's cache reports that time too).
    pub compile_time: Duration,
    pub module_bytes: usize,
    /// Successful reloads since the hook was created.
    pub reloads: u64,
    /// Refused reloads since the hook was created.
    pub failed_reloads: u64,
    /// Why the last reload was refused, if it was.
    pub last_reload_error: Option<String>,
    /// The current guest's calls since it was loaded.
    pub metrics: GuestMetrics,
    /// Every call of the hook since it was created, across swaps (for
    /// monotonic counters).
    pub totals: GuestMetrics,
}

impl<K: Kind> std::fmt::Debug for Hook<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cur = self.current();
        f.debug_struct("Hook")
            .field("kind", &K::KIND)
            .field("guest", &cur.guest.id)
            .field("failure", &cur.config.failure)
            .finish_non_exhaustive()
    }
}

impl<K: Kind> Hook<K> {
    /// Loads the hook's guest: reads the module (or takes the built-in),
    /// checks the pinned digest, compiles and links it, checks that it
    /// implements this hook, and has it validate `config.config`.
    pub fn load(engine: &PolicyEngine, config: HookConfig) -> Result<Hook<K>, LoadError> {
        let seen = config.path.as_ref().map(|p| (p.clone(), stamp(p)));
        let loaded = prepare(engine, K::KIND, config, seen.clone().and_then(|(_, s)| s))?;
        tracing::debug!(
            hook = %K::KIND,
            guest = %loaded.guest.id,
            failure = ?loaded.config.failure,
            "policy hook loaded",
        );
        Ok(Hook {
            engine: engine.clone(),
            current: RwLock::new(Arc::new(loaded)),
            reload: Mutex::new(ReloadState {
                last_seen: seen,
                ..ReloadState::default()
            }),
            totals: Metrics::default(),
            _kind: PhantomData,
        })
    }

    pub(crate) fn current(&self) -> Arc<Loaded> {
        // A poisoned lock: a panic while swapping an Arc, after which the
        // Arc in place is still a complete generation.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ReloadState> {
        self.reload.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the guest with the one `config` describes, once it is fully
    /// loaded and validated. On any failure the current guest keeps
    /// serving, and the error is logged and returned. Calls in flight
    /// finish on the guest they started with. Reloads are serialised.
    pub fn reload(&self, config: HookConfig) -> Result<GuestId, LoadError> {
        let mut st = self.state();
        let seen = config.path.as_ref().map(|p| (p.clone(), stamp(p)));
        st.last_seen = seen.clone();
        match prepare(&self.engine, K::KIND, config, seen.and_then(|(_, s)| s)) {
            Ok(new) => {
                let id = new.guest.id.clone();
                let old = std::mem::replace(
                    &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
                    Arc::new(new),
                );
                st.reloads += 1;
                st.last_error = None;
                tracing::debug!(
                    hook = %K::KIND,
                    old = %old.guest.id,
                    new = %id,
                    "policy hook swapped",
                );
                Ok(id)
            }
            Err(e) => {
                let chain = crate::error_chain(&e);
                st.failed += 1;
                st.last_error = Some(chain.clone());
                tracing::error!(
                    hook = %K::KIND,
                    serving = %self.current().guest.id,
                    error = %chain,
                    "policy hook reload REFUSED; the previous guest keeps serving",
                );
                Err(e)
            }
        }
    }

    /// Whether the current guest's module file changed on disk (size,
    /// mtime, inode) since it was last read, by this hook's load or a
    /// reload attempt. Cheap (one `stat`): meant to be polled. Always false
    /// for the built-in default.
    pub fn changed_on_disk(&self) -> bool {
        let cur = self.current();
        let Some(path) = &cur.config.path else {
            return false;
        };
        let seen = match &self.state().last_seen {
            Some((p, s)) if p == path => s.clone(),
            _ => cur.stamp.clone(),
        };
        stamp(path) != seen
    }

    /// Reloads the current configuration if its module changed on disk;
    /// `None` when it did not.
    pub fn reload_if_changed(&self) -> Option<Result<GuestId, LoadError>> {
        if !self.changed_on_disk() {
            return None;
        }
        let config = self.current().config.clone();
        Some(self.reload(config))
    }

    /// The configuration of the current guest.
    pub fn config(&self) -> HookConfig {
        self.current().config.clone()
    }

    /// The current guest.
    pub fn guest(&self) -> GuestId {
        self.current().guest.id.clone()
    }

    pub fn status(&self) -> HookStatus {
        let cur = self.current();
        let st = self.state();
        HookStatus {
            kind: K::KIND,
            guest: cur.guest.id.clone(),
            path: cur.config.path.clone(),
            failure: cur.config.failure,
            limits: cur.config.limits,
            loaded_at: cur.loaded_at,
            compile_time: cur.guest.compiled.compile_time,
            module_bytes: cur.guest.compiled.size,
            reloads: st.reloads,
            failed_reloads: st.failed,
            last_reload_error: st.last_error.clone(),
            metrics: cur.metrics.snapshot(),
            totals: self.totals.snapshot(),
        }
    }

    /// The current guest's metrics.
    pub fn metrics(&self) -> GuestMetrics {
        self.current().metrics.snapshot()
    }

    /// The current guest's kv store, as it is now (introspection).
    pub fn kv_snapshot(&self) -> std::collections::BTreeMap<String, String> {
        self.current().guest.kv.snapshot()
    }

    pub(crate) fn record(&self, cur: &Loaded, outcome: Outcome, elapsed: Duration) {
        cur.metrics.record(outcome, elapsed);
        self.totals.record(outcome, elapsed);
    }
}
