//! Swapping the hooks live: a module changed on disk, or a new `[hooks]`
//! config (SIGHUP, or the file changed). Each new guest is compiled and
//! validated before the swap; a refused one leaves the old one serving,
//! loudly (a log line, a metric, a node event).

use tracing::{info, warn};

use super::{Policies, hook_config, vxnet_default_config, vxnet_hook_idle};
use crate::config::Config;
use crate::metrics::metrics;
use crate::publish::{self, NodeEvent};

impl Policies {
    /// Reloads every hook whose module file changed; a module that fails to
    /// compile or validate is refused, loudly, and the old one keeps serving.
    pub fn reload_changed(&self) {
        let results = [
            ("vxnet", self.vxnet.reload_if_changed()),
            ("ip", self.ip.reload_if_changed()),
            ("routes", self.routes.reload_if_changed()),
        ];
        for (name, r) in results {
            match r {
                Some(Ok(g)) => {
                    metrics().guest_swap(name, true);
                    publish::node_event(
                        NodeEvent::PolicyModuleSwapped,
                        format!("hooks.{name}: {g} swapped in"),
                    );
                    info!(hook = name, guest = %g, "policy module changed on disk: swapped in")
                }
                Some(Err(e)) => {
                    metrics().guest_swap(name, false);
                    publish::node_event(
                        NodeEvent::PolicyModuleRefused,
                        format!(
                            "hooks.{name}: the new module was refused, the previous one keeps serving: {}",
                            hostnic_policy::error_chain(&e)
                        ),
                    );
                    warn!(hook = name, error = %hostnic_policy::error_chain(&e), "policy module changed on disk but was REFUSED; the previous one keeps serving")
                }
                None => {}
            }
        }
    }

    /// Applies a new `[hooks]` configuration (SIGHUP): each hook is
    /// compiled and validated before it is swapped in.
    pub fn reload_config(&self, cfg: &Config) {
        let h = &cfg.hooks;
        *self
            .network_config
            .write()
            .unwrap_or_else(|p| p.into_inner()) = h.network_config.clone();
        let before = self.guests();
        let results = [
            (
                "vxnet",
                hook_config(&h.vxnet, vxnet_default_config(cfg.policy))
                    .map(|c| self.vxnet.reload(c)),
            ),
            (
                "ip",
                hook_config(&h.ip, String::new()).map(|c| self.ip.reload(c)),
            ),
            (
                "routes",
                hook_config(&h.routes, String::new()).map(|c| self.routes.reload(c)),
            ),
        ];
        for ((name, r), (_, was)) in results.into_iter().zip(before) {
            // A reload that keeps the same module is no swap.
            let same = matches!(&r, Ok(Ok(g)) if g.sha256 == was.sha256);
            if !same {
                metrics().guest_swap(name, matches!(r, Ok(Ok(_))));
            }
            match &r {
                Ok(Ok(_)) if same => {}
                Ok(Ok(g)) => publish::node_event(
                    NodeEvent::PolicyModuleSwapped,
                    format!("hooks.{name}: {g} loaded from the new config"),
                ),
                Ok(Err(e)) => publish::node_event(
                    NodeEvent::PolicyModuleRefused,
                    format!(
                        "hooks.{name}: refused on reload, the previous one keeps serving: {}",
                        hostnic_policy::error_chain(e)
                    ),
                ),
                Err(e) => publish::node_event(
                    NodeEvent::PolicyModuleRefused,
                    format!("hooks.{name}: config refused on reload: {e}"),
                ),
            }
            match r {
                Ok(Ok(g)) => info!(hook = name, guest = %g, "policy hook reloaded"),
                Ok(Err(e)) => {
                    warn!(hook = name, error = %hostnic_policy::error_chain(&e), "policy hook REFUSED on reload; the previous one keeps serving")
                }
                Err(e) => warn!(hook = name, error = %e, "policy hook config REFUSED on reload"),
            }
        }
        if let Some(why) = vxnet_hook_idle(cfg) {
            warn!("{why}");
        }
    }
}
