//! nftables in a namespace: a ruleset applied in one atomic transaction
//! by `nft -f -`, run in the namespace (as knftables runs it for
//! kube-proxy). The process is forked from a thread that has entered the
//! namespace, so it starts there; no thread of ours changes back.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{Error, Netns, Result};

/// The `nft` the agent runs: Debian's (and the image's), else the one on
/// `PATH`.
fn nft_program() -> &'static str {
    const DEBIAN: &str = "/usr/sbin/nft";
    if std::path::Path::new(DEBIAN).exists() {
        DEBIAN
    } else {
        "nft"
    }
}

impl Netns {
    /// Applies `ruleset` (nft's script syntax) in this namespace, all of
    /// it or none: nft sends one netlink batch. nft's own message names
    /// what it refused.
    pub async fn nft(&self, ruleset: String) -> Result<()> {
        let op = format!("applying nftables rules in netns {}", self.label());
        let nft = nft_program();
        self.inside("netns-nft", move || {
            let mut child = Command::new(nft)
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(Error::io(format!("{op}: running {nft}")))?;
            let written = child
                .stdin
                .take()
                .map(|mut stdin| stdin.write_all(ruleset.as_bytes()))
                .unwrap_or(Ok(()));
            let out = child
                .wait_with_output()
                .map_err(Error::io(format!("{op}: waiting for {nft}")))?;
            if !out.status.success() {
                let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(Error::Refused {
                    op,
                    why: format!("{nft} exited with {}: {why}", out.status),
                });
            }
            written.map_err(Error::io(format!("{op}: writing to {nft}")))
        })
        .await
    }
}
