//! `[cni]`: the network config the agent installs once it can serve.

use std::path::PathBuf;

use serde::Deserialize;

/// Where the agent puts the node's network config, and which. A runtime
/// reports its network ready (and kubelet its node Ready, so the scheduler
/// places pods there) only once a network config is in its directory;
/// written by the agent when it serves and its pool has its first NICs,
/// no pod is sent to a node that cannot wire it yet.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cni {
    /// The node's CNI config directory, as the agent sees it. Unset: the
    /// network config is installed by someone else (`hostnic-agent
    /// install-cni` without `--without-conflist`).
    #[serde(default)]
    pub conf_dir: Option<PathBuf>,
    /// The network config to install there: a conflist whose first plugin
    /// is hostnic. Checked at start.
    #[serde(default = "default_conflist")]
    pub conflist: PathBuf,
}

fn default_conflist() -> PathBuf {
    PathBuf::from("/etc/hostnic/10-hostnic.conflist")
}
