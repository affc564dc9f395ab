//! What a hook is configured with ([`HookConfig`], [`FailureMode`]), and
//! building a hook generation from it: read the module (or take the
//! built-in), check its pinned digest, compile and link it, check that it
//! implements the hook, have it validate its config. Nothing is shared
//! until all of that succeeded.

use std::collections::HashSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use crate::digest::sha256_hex;
use crate::engine::PolicyEngine;
use crate::error::LoadError;
use crate::guest::Guest;
use crate::limits::{Limits, MAX_CONFIG_BYTES, MAX_MODULE_BYTES};
use crate::metrics::Metrics;
use crate::types::{GuestId, HookKind};

/// What a hook runs, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookConfig {
    /// The guest module (a component, `.wasm`); `None` runs the built-in
    /// default.
    pub path: Option<PathBuf>,
    /// The module's pinned sha256 (64 hex digits, optionally prefixed
    /// `sha256:`). A module with another digest is refused.
    pub sha256: Option<String>,
    /// The guest's configuration string, checked by its `validate-config`
    /// on every load and passed to every call.
    pub config: String,
    pub limits: Limits,
    pub failure: FailureMode,
}

/// What a hook does when its guest fails (traps, runs out of time or
/// memory, answers something invalid). A guest's *refusal* is never
/// replaced: it is the policy deciding "no", and is returned as
/// [`PolicyError::Refused`](crate::PolicyError::Refused) in both modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum FailureMode {
    /// The call fails (the pod's ADD fails and the runtime retries it).
    #[default]
    Fail,
    /// The built-in default guest answers, with an empty config; a warning
    /// is logged and the fallback counted.
    Fallback,
}

/// One generation of a hook.
pub(crate) struct Loaded {
    pub guest: Guest,
    pub config: HookConfig,
    /// The module file as it was when read (`None` for the built-in).
    pub stamp: Option<FileStamp>,
    /// The built-in default, when the failure mode is `Fallback`.
    pub fallback: Option<Guest>,
    pub metrics: Metrics,
    pub loaded_at: SystemTime,
    /// Network configs this generation's guest accepted
    /// (`Hook::with_config`).
    accepted: Mutex<HashSet<String>>,
}

impl Loaded {
    pub fn accepted(&self) -> MutexGuard<'_, HashSet<String>> {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Builds a generation, checking everything; nothing is shared until it is
/// complete.
pub(crate) fn prepare(
    engine: &PolicyEngine,
    kind: HookKind,
    config: HookConfig,
    stamp: Option<FileStamp>,
) -> Result<Loaded, LoadError> {
    config.limits.check()?;
    if config.config.len() > MAX_CONFIG_BYTES {
        return Err(LoadError::Limits(format!(
            "the config string is {} bytes; configs are at most {MAX_CONFIG_BYTES}",
            config.config.len()
        )));
    }
    let guest = match &config.path {
        None => {
            let g = engine.builtin(kind)?;
            let label = PathBuf::from(format!("<built-in {}>", g.id.name));
            check_pin(config.sha256.as_deref(), &g.id.sha256, &label)?;
            g
        }
        Some(path) => {
            let bytes = read_module(path)?;
            let sha = sha256_hex(&bytes);
            check_pin(config.sha256.as_deref(), &sha, path)?;
            let name = guest_name(path);
            let compiled = engine.compile(&name, &sha, &bytes)?;
            let id = GuestId {
                name,
                sha256: sha,
                builtin: false,
            };
            engine.guest(id, compiled)
        }
    };
    let implements = guest.compiled.hooks();
    if !implements.contains(&kind) {
        return Err(LoadError::WrongHook {
            guest: guest.id.clone(),
            wanted: kind,
            implements,
        });
    }
    guest.validate_config(engine.runtime(), kind, &config.config, &config.limits)?;
    let fallback = match config.failure {
        FailureMode::Fallback => Some(engine.builtin(kind)?),
        FailureMode::Fail => None,
    };
    Ok(Loaded {
        guest,
        config,
        stamp,
        fallback,
        metrics: Metrics::default(),
        loaded_at: SystemTime::now(),
        accepted: Mutex::default(),
    })
}

/// Reads a module, refusing one over [`MAX_MODULE_BYTES`] without reading
/// all of it.
fn read_module(path: &Path) -> Result<Vec<u8>, LoadError> {
    let err = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    file.take(MAX_MODULE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
            max: MAX_MODULE_BYTES,
        });
    }
    Ok(bytes)
}

/// Compares a pinned digest with the module's.
fn check_pin(pinned: Option<&str>, actual: &str, path: &Path) -> Result<(), LoadError> {
    let Some(raw) = pinned else {
        return Ok(());
    };
    let pin = raw.trim();
    let pin = pin
        .strip_prefix("sha256:")
        .unwrap_or(pin)
        .to_ascii_lowercase();
    if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(LoadError::BadPin {
            pinned: raw.to_owned(),
        });
    }
    if pin != actual {
        return Err(LoadError::DigestMismatch {
            path: path.to_owned(),
            pinned: pin,
            actual: actual.to_owned(),
        });
    }
    Ok(())
}

/// A guest's name: its module file's stem, in characters safe for a file
/// name and a log field (`my policy.v2.wasm` is `my_policy_v2`).
fn guest_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "guest".to_owned()
    } else {
        name
    }
}

/// What `changed_on_disk` compares: size, modification time and identity
/// (a module replaced by rename has a new inode even within one mtime
/// tick).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

pub(crate) fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        len: m.len(),
        modified: m.modified().ok(),
        dev: m.dev(),
        ino: m.ino(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_normalised_and_checked() {
        let sha = "ab".repeat(32);
        let p = Path::new("m.wasm");
        check_pin(None, &sha, p).unwrap();
        check_pin(Some(&sha), &sha, p).unwrap();
        check_pin(Some(&format!(" sha256:{} ", sha.to_uppercase())), &sha, p).unwrap();
        let other = "cd".repeat(32);
        let e = check_pin(Some(&other), &sha, p).unwrap_err().to_string();
        assert!(e.contains(&other) && e.contains(&sha), "{e}");
        assert!(matches!(
            check_pin(Some("abc"), &sha, p),
            Err(LoadError::BadPin { .. })
        ));
    }

    #[test]
    fn guest_names_are_file_safe() {
        assert_eq!(
            guest_name(Path::new("/x/vxnet-select.wasm")),
            "vxnet-select"
        );
        assert_eq!(
            guest_name(Path::new("/x/my policy.v2.wasm")),
            "my_policy_v2"
        );
        assert_eq!(guest_name(Path::new("/")), "guest");
    }

    #[test]
    fn oversized_modules_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.wasm");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(MAX_MODULE_BYTES as u64 + 10).unwrap();
        assert!(matches!(read_module(&p), Err(LoadError::TooLarge { .. })));
        assert!(matches!(
            read_module(&dir.path().join("missing.wasm")),
            Err(LoadError::Read { .. })
        ));
    }
}
