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
//!
//! A second, read-only directory may hold guests compiled when the agent's
//! image was built (`hostnic-agent policy precompile`; `scripts/image`
//! ships the built-in guests so): a node's first start then compiles
//! nothing either — what a scale-out's new nodes need. Its files are named
//! and checked the same way, and it is trusted only if it and each file
//! belong to the agent's user and no one else may write them. A shipped
//! file that does not fit this engine (another wasmtime, a CPU without the
//! features it was compiled for) is passed over, not removed.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use wasmtime::component::Component;

use crate::digest::sha256_hex;

/// First line of every cache file; the payload's sha256 follows it.
const MAGIC: &[u8] = b"hostnic-cwasm-v1 ";

#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
    engine: String,
    /// Guests compiled when the image was built: read, never written.
    shipped: Option<PathBuf>,
}

impl DiskCache {
    pub fn new(state_dir: &Path, engine: &wasmtime::Engine) -> DiskCache {
        Self::at(state_dir.join("compiled"), engine)
    }

    /// A cache whose files are in `dir` itself.
    pub fn at(dir: PathBuf, engine: &wasmtime::Engine) -> DiskCache {
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        DiskCache {
            dir,
            engine: format!("{:016x}", h.finish()),
            shipped: None,
        }
    }

    /// Also loads from `dir`, the guests shipped compiled, if it exists and
    /// is trusted (see the module); a missing one is no shipped guests.
    pub fn with_shipped(mut self, dir: &Path) -> DiskCache {
        if !dir.exists() {
            return self;
        }
        match trusted(dir) {
            Ok(()) => self.shipped = Some(dir.to_path_buf()),
            Err(why) => {
                tracing::warn!(dir = %dir.display(), "not loading the shipped compiled guests: {why}")
            }
        }
        self
    }

    fn path_in(&self, dir: &Path, sha256: &str) -> PathBuf {
        dir.join(format!("{sha256}-{}.cwasm", self.engine))
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.path_in(&self.dir, sha256)
    }

    /// The cached component for the module with this digest, if a valid one
    /// is on disk: in the cache, else among the shipped ones.
    pub fn load(&self, engine: &wasmtime::Engine, sha256: &str) -> Option<Component> {
        if let Some(c) = self.read(engine, &self.path(sha256), true) {
            return Some(c);
        }
        let path = self.path_in(self.shipped.as_deref()?, sha256);
        if !path.exists() {
            return None;
        }
        if let Err(why) = trusted(&path) {
            tracing::warn!(path = %path.display(), "not loading a shipped compiled guest: {why}");
            return None;
        }
        self.read(engine, &path, false)
    }

    /// The component in `path`, if valid; an invalid file of the cache
    /// (`ours`) is removed, a shipped one only passed over.
    fn read(&self, engine: &wasmtime::Engine, path: &Path, ours: bool) -> Option<Component> {
        let bytes = fs::read(path).ok()?;
        let payload = bytes
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.split_at_checked(64))
            .filter(|(digest, payload)| *digest == sha256_hex(payload).as_bytes())
            .map(|(_, payload)| payload);
        let Some(payload) = payload else {
            self.discard(path, ours, "its checksum does not match");
            return None;
        };
        // SAFETY: the payload is what `Component::serialize` wrote for an
        // engine with this compatibility hash, unaltered (its sha256 was
        // just checked), in a directory only the agent's user (root) can
        // write; wasmtime itself checks the version, settings and CPU
        // features in its header again.
        match unsafe { Component::deserialize(engine, payload) } {
            Ok(c) => Some(c),
            Err(e) => {
                self.discard(path, ours, &format!("wasmtime refused it: {e}"));
                None
            }
        }
    }

    /// Saves a freshly compiled component. Failing to is only a slower
    /// next start: logged, never an error.
    pub fn store(&self, sha256: &str, component: &Component) {
        if let Err(e) = self.write(sha256, component) {
            tracing::warn!(path = %self.path(sha256).display(), error = %e, "caching a compiled guest");
        }
    }

    /// Writes `component` (the module with digest `sha256`) to the cache:
    /// its path.
    pub fn write(&self, sha256: &str, component: &Component) -> std::io::Result<PathBuf> {
        let path = self.path(sha256);
        let payload = component.serialize().map_err(std::io::Error::other)?;
        fs::create_dir_all(&self.dir)?;
        let tmp = path.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(sha256_hex(&payload).as_bytes())?;
        f.write_all(&payload)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        Ok(path)
    }

    fn discard(&self, path: &Path, ours: bool, why: &str) {
        tracing::warn!(path = %path.display(), "ignoring a compiled guest: {why}; compiling it");
        if ours && let Err(e) = fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "removing a bad cached guest");
        }
    }
}

/// Whether `path` belongs to this process's user and no one else may write
/// it: native code is loaded from it.
fn trusted(path: &Path) -> Result<(), String> {
    let meta = fs::metadata(path).map_err(|e| e.to_string())?;
    // The owner of /proc/self is the process's effective user.
    let me = fs::metadata("/proc/self")
        .map_err(|e| format!("reading /proc/self: {e}"))?
        .uid();
    if meta.uid() != me {
        return Err(format!(
            "owned by uid {}, not this agent's {me}",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "group or others may write it (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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

    #[test]
    fn guests_shipped_compiled_load_without_compiling_from_a_trusted_dir_only() {
        use std::os::unix::fs::PermissionsExt;
        let shipped = tempfile::tempdir().unwrap();
        let files = PolicyEngine::in_memory()
            .unwrap()
            .precompile_builtins(shipped.path())
            .unwrap();
        assert_eq!(files.len(), 3, "{files:?}");
        let kind = HookKind::RouteTemplating;
        let (bytes, sha) = (builtin::module(kind), builtin::sha256(kind));
        let compiled = |e: &PolicyEngine| e.runtime().component(&sha, bytes).unwrap().1;
        let first_start = |shipped: &Path| {
            let state = tempfile::tempdir().unwrap();
            let was_compiled =
                compiled(&PolicyEngine::with_shipped(state.path(), shipped).unwrap());
            (was_compiled, state.path().join("compiled").exists())
        };

        // A node's first start loads it: nothing compiled, nothing cached.
        assert_eq!(first_start(shipped.path()), (false, false));
        // No such directory (outside the image): compiled, and cached.
        assert_eq!(first_start(&shipped.path().join("none")), (true, true));
        // A directory others may write: not trusted.
        let mode = |m| std::fs::set_permissions(shipped.path(), std::fs::Permissions::from_mode(m));
        mode(0o777).unwrap();
        assert_eq!(first_start(shipped.path()), (true, true));
        mode(0o755).unwrap();
        assert_eq!(first_start(shipped.path()), (false, false));
        // A file others may write: not trusted either.
        let file = files
            .iter()
            .find(|f| f.to_string_lossy().contains(&sha))
            .unwrap();
        let set = |m| std::fs::set_permissions(file, std::fs::Permissions::from_mode(m));
        set(0o666).unwrap();
        assert_eq!(first_start(shipped.path()), (true, true));
        set(0o644).unwrap();
        // An altered file is passed over, and left where it is (read-only
        // in an image).
        let whole = std::fs::read(file).unwrap();
        let mut flipped = whole.clone();
        let at = flipped.len() - 100;
        flipped[at] ^= 0xff;
        std::fs::write(file, &flipped).unwrap();
        assert_eq!(first_start(shipped.path()), (true, true));
        assert_eq!(std::fs::read(file).unwrap(), flipped);
    }
}
