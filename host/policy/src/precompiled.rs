//! Compiled guests cached on disk, so an agent restart serves in
//! milliseconds instead of compiling every guest with Cranelift again
//! (~80 ms per default guest optimised, far more in a debug build).
//!
//! One file per (module, engine): `<state>/compiled/<sha256>-<engine>.cwasm`,
//! where `<sha256>` is the module's digest (what hooks pin) and `<engine>`
//! hashes wasmtime's precompile-compatibility hash (its version and every
//! setting that changes generated code). A new wasmtime or other settings
//! miss the cache and recompile; nothing stale is ever loaded.
//!
//! Deserialising native code is only sound for bytes wasmtime itself
//! produced. The files sit in the agent's root-only state directory
//! (umask 077), are written atomically (temporary file, fsync, rename), and
//! carry the sha256 of their payload, checked before wasmtime sees it: a
//! truncated or altered file is a miss (logged, removed, recompiled), never
//! code we run.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::component::Component;

use crate::digest::sha256_hex;

/// First line of every cache file; the payload's sha256 follows it.
const MAGIC: &[u8] = b"hostnic-cwasm-v1 ";

#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
    engine: String,
}

impl DiskCache {
    pub fn new(state_dir: &Path, engine: &wasmtime::Engine) -> DiskCache {
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        DiskCache {
            dir: state_dir.join("compiled"),
            engine: format!("{:016x}", h.finish()),
        }
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine))
    }

    /// The cached component for the module with this digest, if a valid one
    /// is on disk.
    pub fn load(&self, engine: &wasmtime::Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        let bytes = fs::read(&path).ok()?;
        let payload = bytes
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.split_at_checked(64))
            .filter(|(digest, payload)| *digest == sha256_hex(payload).as_bytes())
            .map(|(_, payload)| payload);
        let Some(payload) = payload else {
            self.discard(&path, "its checksum does not match");
            return None;
        };
        // SAFETY: the payload is what `Component::serialize` wrote for an
        // engine with this compatibility hash, unaltered (its sha256 was
        // just checked), in a directory only root can write; wasmtime
        // itself checks the version and settings in its header again.
        match unsafe { Component::deserialize(engine, payload) } {
            Ok(c) => Some(c),
            Err(e) => {
                self.discard(&path, &format!("wasmtime refused it: {e}"));
                None
            }
        }
    }

    /// Saves a freshly compiled component. Failing to is only a slower
    /// next start: logged, never an error.
    pub fn store(&self, sha256: &str, component: &Component) {
        let path = self.path(sha256);
        let result = (|| -> std::io::Result<()> {
            let payload = component.serialize().map_err(std::io::Error::other)?;
            fs::create_dir_all(&self.dir)?;
            let tmp = path.with_extension("tmp");
            let mut f = fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(sha256_hex(&payload).as_bytes())?;
            f.write_all(&payload)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "caching a compiled guest");
        }
    }

    fn discard(&self, path: &Path, why: &str) {
        tracing::warn!(path = %path.display(), "ignoring a cached compiled guest: {why}; recompiling");
        if let Err(e) = fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "removing a bad cached guest");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::builtin;
    use crate::engine::PolicyEngine;
    use crate::types::HookKind;

    #[test]
    fn a_restart_loads_compiled_guests_and_a_bad_file_is_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = builtin::module(HookKind::RouteTemplating);
        let sha = builtin::sha256(HookKind::RouteTemplating);
        let compiled = |engine: &PolicyEngine| engine.runtime().component(&sha, bytes).unwrap().1;

        let first = PolicyEngine::new(dir.path()).unwrap();
        assert!(compiled(&first), "nothing cached yet: compiled");
        // A second process (a restart) finds it on disk.
        let second = PolicyEngine::new(dir.path()).unwrap();
        assert!(!compiled(&second), "loaded from the cache");

        let cache = dir.path().join("compiled");
        let files: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].to_string_lossy().contains(&sha));

        // Truncated (a crash mid-write cannot do it, a full disk or an
        // operator can): refused before wasmtime sees it, recompiled.
        let whole = std::fs::read(&files[0]).unwrap();
        std::fs::write(&files[0], &whole[..whole.len() / 2]).unwrap();
        assert!(compiled(&PolicyEngine::new(dir.path()).unwrap()));
        // One flipped byte in the code.
        let mut flipped = whole.clone();
        let at = flipped.len() - 100;
        flipped[at] ^= 0xff;
        std::fs::write(&files[0], &flipped).unwrap();
        assert!(compiled(&PolicyEngine::new(dir.path()).unwrap()));
        // Recompiling rewrote a good file.
        assert_eq!(std::fs::read(&files[0]).unwrap(), whole);
        assert!(!compiled(&PolicyEngine::new(dir.path()).unwrap()));

        // An in-memory engine neither reads nor writes the disk.
        assert!(compiled(&PolicyEngine::in_memory().unwrap()));
    }
}
