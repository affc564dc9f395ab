//! The address each sticky key was given last, kept in the state dir
//! (`sticky.json`), so an identity gets it back on its next ADD.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

/// The remembered address of each sticky key, kept in the state dir.
#[derive(Debug)]
pub struct Sticky {
    path: std::path::PathBuf,
}

impl Sticky {
    pub fn new(state_dir: &Path) -> Sticky {
        Sticky {
            path: state_dir.join("sticky.json"),
        }
    }

    fn load(&self) -> BTreeMap<String, Ipv4Addr> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn get(&self, key: &str) -> Option<Ipv4Addr> {
        self.load().get(key).copied()
    }

    /// Remembers `key → ip` (atomically replaced file).
    pub fn set(&self, key: &str, ip: Ipv4Addr) -> std::io::Result<()> {
        let mut all = self.load();
        if all.get(key) == Some(&ip) {
            return Ok(());
        }
        all.insert(key.to_string(), ip);
        let tmp = self.path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(&all).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, &self.path)
    }
}
