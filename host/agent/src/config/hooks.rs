//! `[hooks]`: the three policy hooks and how each is loaded.

use std::path::PathBuf;

use anyhow::bail;
use serde::Deserialize;

use crate::facts::HookName;

/// The policy hooks. Each runs the built-in default guest unless `path`
/// names another module; `enabled = false` runs the built-in guests for
/// all three whatever the tables below name, and no network may configure
/// them (an operator's switch back to the defaults).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How often module files are checked for changes (a changed file is
    /// compiled, validated and swapped in live).
    #[serde(default = "default_watch")]
    pub watch_seconds: u64,
    /// The hooks a network may configure for its own attachments (its
    /// config's `"hooks"`, e.g. in a NetworkAttachmentDefinition, which
    /// any namespace admin can write). Not `ip` by default: the ip config
    /// holds the tenant pools and pinned addresses a namespace must not
    /// rewrite for itself.
    #[serde(default = "default_network_config")]
    pub network_config: Vec<HookName>,
    #[serde(default)]
    pub vxnet: HookSpec,
    #[serde(default)]
    pub ip: HookSpec,
    #[serde(default)]
    pub routes: HookSpec,
}

impl Default for Hooks {
    fn default() -> Self {
        toml::from_str("").expect("the [hooks] defaults parse")
    }
}

fn yes() -> bool {
    true
}
fn default_watch() -> u64 {
    2
}
fn default_network_config() -> Vec<HookName> {
    vec![HookName::Vxnet, HookName::Routes]
}

/// One hook: which module, pinned by digest, with its configuration string,
/// limits and what to do when it fails.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSpec {
    /// The module; the built-in default guest when absent.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The module's sha256 (hex); a file with another digest is refused.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The guest's configuration string (validated by the guest's
    /// `validate-config` on every load).
    #[serde(default)]
    pub config: Option<String>,
    #[serde(default)]
    pub failure: Failure,
    /// Per-call deadline and memory cap; the runtime's defaults when absent.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
}

/// What an ADD does when a guest fails (trap, deadline, bad answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failure {
    /// The built-in default guest decides; a log line and a metric say so.
    #[default]
    Fallback,
    /// The ADD fails with the guest's reason.
    Fail,
}

impl Hooks {
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        for (name, h) in [
            ("vxnet", &self.vxnet),
            ("ip", &self.ip),
            ("routes", &self.routes),
        ] {
            match (&h.path, &h.sha256) {
                (Some(p), None) => bail!(
                    "hooks.{name}.sha256 is required with hooks.{name}.path {}: modules are pinned by digest (sha256sum the file)",
                    p.display()
                ),
                (None, Some(_)) => bail!("hooks.{name}.sha256 is set but hooks.{name}.path is not"),
                _ => {}
            }
            if let Some(d) = &h.sha256
                && (d.len() != 64 || !d.chars().all(|c| c.is_ascii_hexdigit()))
            {
                bail!("hooks.{name}.sha256 {d:?} is not a sha256 (64 hex digits)");
            }
            if h.deadline_ms == Some(0) || h.memory_mb == Some(0) {
                bail!("hooks.{name}: deadline_ms and memory_mb must be at least 1");
            }
        }
        if self.watch_seconds == 0 {
            bail!("hooks.watch_seconds must be at least 1");
        }
        Ok(())
    }
}
