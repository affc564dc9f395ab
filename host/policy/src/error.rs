//! The runtime's errors: loading a guest ([`LoadError`]), one call
//! ([`PolicyError`]), starting the runtime ([`EngineError`]). Every message
//! names the guest (name and sha256 prefix) and what was wrong.

use std::path::PathBuf;
use std::time::Duration;

use crate::limits::LimitsError;
use crate::types::{GuestId, HookKind};

/// The cause chain of a wasmtime error (wasm backtrace included), as a
/// standard error so that it can be a `#[source]`.
pub type WasmError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A hook call that failed. Always for that call only: the next call gets
/// a fresh instance.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The guest declined to decide, with a reason for a person. Never
    /// replaced by the fallback guest: a refusal is the policy working.
    #[error("{guest} refused: {reason}")]
    Refused { guest: GuestId, reason: String },

    #[error("{guest} ran past its deadline of {limit:?} and was stopped")]
    Deadline { guest: GuestId, limit: Duration },

    #[error("{guest} ran out of memory: it asked for {asked} bytes, over its cap of {limit} bytes")]
    OutOfMemory {
        guest: GuestId,
        limit: usize,
        asked: usize,
    },

    /// The guest tried to pass the host more data than the runtime copies
    /// in one transfer (an oversized answer, or an oversized host-call
    /// argument), or its answer is over the entry/byte limits.
    #[error("{guest} answered too much: {what}")]
    Oversized { guest: GuestId, what: String },

    /// The guest trapped (a panic, an `unreachable`, a failed WASI call),
    /// or could not be instantiated.
    #[error("{guest} failed in {during}: {message}")]
    Trap {
        guest: GuestId,
        during: &'static str,
        message: String,
        #[source]
        source: WasmError,
    },

    /// The guest answered something the host refuses to act on.
    #[error("{guest} gave an invalid answer: {problem}")]
    InvalidAnswer { guest: GuestId, problem: String },

    /// The configured guest failed and so did the built-in default.
    #[error("{primary}; the built-in fallback failed too: {fallback}")]
    FallbackFailed {
        #[source]
        primary: Box<PolicyError>,
        fallback: Box<PolicyError>,
    },
}

impl PolicyError {
    /// The guest that failed (the configured one, for `FallbackFailed`).
    pub fn guest(&self) -> &GuestId {
        match self {
            PolicyError::Refused { guest, .. }
            | PolicyError::Deadline { guest, .. }
            | PolicyError::OutOfMemory { guest, .. }
            | PolicyError::Oversized { guest, .. }
            | PolicyError::Trap { guest, .. }
            | PolicyError::InvalidAnswer { guest, .. } => guest,
            PolicyError::FallbackFailed { primary, .. } => primary.guest(),
        }
    }

    /// Whether the guest declined (as opposed to failing).
    pub fn is_refusal(&self) -> bool {
        matches!(self, PolicyError::Refused { .. })
    }
}

/// A guest that could not be loaded (or reloaded: the old one keeps
/// serving).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading policy module {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("policy module {} is larger than the {max} byte limit", path.display())]
    TooLarge { path: PathBuf, max: usize },

    #[error(
        "policy module {} has sha256 {actual}, but the config pins {pinned}: refusing it \
         (update the pin if this module is the one you meant)",
        path.display()
    )]
    DigestMismatch {
        path: PathBuf,
        pinned: String,
        actual: String,
    },

    #[error("pinned sha256 {pinned:?} is not 64 hex digits")]
    BadPin { pinned: String },

    #[error("{name} (sha256 {sha256}) is not a valid WebAssembly component")]
    Compile {
        name: String,
        sha256: String,
        #[source]
        source: WasmError,
    },

    #[error(
        "{guest} imports {}, which the host does not offer (policy guests get only \
         hostnic:policy/host and a WASI without network, files, clocks or randomness)",
        missing.join(", ")
    )]
    MissingImports {
        guest: GuestId,
        missing: Vec<String>,
        #[source]
        source: WasmError,
    },

    #[error(
        "{guest} implements none of the hooks (vxnet-selection, ip-assignment, \
         route-templating); it exports: {}",
        exports.join(", ")
    )]
    NotAHook {
        guest: GuestId,
        exports: Vec<String>,
    },

    #[error(
        "{guest} does not implement {wanted}; it implements: {}",
        list(implements)
    )]
    WrongHook {
        guest: GuestId,
        wanted: HookKind,
        implements: Vec<HookKind>,
    },

    #[error("{guest} refused its config: {reason}")]
    ConfigRefused { guest: GuestId, reason: String },

    #[error("{guest} failed while validating its config")]
    ConfigCheckFailed {
        guest: GuestId,
        #[source]
        source: Box<PolicyError>,
    },

    #[error("hook limits: {0}")]
    Limits(String),

    #[error("opening the kv state of {name}")]
    KvState {
        name: String,
        #[source]
        source: crate::kv::KvError,
    },
}

impl From<LimitsError> for LoadError {
    fn from(e: LimitsError) -> Self {
        LoadError::Limits(e.0)
    }
}

fn list(kinds: &[HookKind]) -> String {
    let names: Vec<_> = kinds.iter().map(|k| k.world()).collect();
    names.join(", ")
}

/// The runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("creating the wasmtime engine")]
    Engine(#[source] WasmError),
    #[error("linking the host interfaces")]
    Linker(#[source] WasmError),
    #[error("creating the policy state directory {}", path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the epoch ticker thread")]
    Ticker(#[source] std::io::Error),
}
