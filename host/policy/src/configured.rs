//! One call's configuration: the hook's own string, or a network's.
//!
//! A pod's attachments can belong to different networks, and a network may
//! configure the hook's guest its own way (its own vxnet policy, its own
//! route templates). [`Hook::with_config`] checks such a string with the
//! guest that will run it — its `validate-config`, as at load — and pins
//! that generation, so a swap between the check and the call cannot hand a
//! string to a guest that never accepted it. Accepted strings are
//! remembered per generation: a network's config costs one check per
//! module, not one per pod.

use std::sync::Arc;
use std::time::Instant;

use crate::error::{LoadError, PolicyError};
use crate::guest::Guest;
use crate::guest_log::LogLine;
use crate::hook::{Hook, Kind};
use crate::limits::{Limits, MAX_CONFIG_BYTES};
use crate::load::{FailureMode, Loaded};
use crate::metrics::Outcome;
use crate::runtime::Runtime;
use crate::types::Decision;

/// Accepted network configs remembered per generation; past this the
/// memory starts over (a cluster has a handful of networks).
const REMEMBERED: usize = 64;

/// A hook bound to one generation and one configuration string, for the
/// calls of one attachment.
pub struct Configured<'h, K: Kind> {
    hook: &'h Hook<K>,
    cur: Arc<Loaded>,
    /// A network's string in place of the hook's own.
    config: Option<String>,
}

impl<K: Kind> std::fmt::Debug for Configured<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configured")
            .field("kind", &K::KIND)
            .field("guest", &self.cur.guest.id)
            .field("network_config", &self.config.is_some())
            .finish_non_exhaustive()
    }
}

impl<K: Kind> Hook<K> {
    /// The hook as configured.
    pub fn configured(&self) -> Configured<'_, K> {
        Configured {
            hook: self,
            cur: self.current(),
            config: None,
        }
    }

    /// The hook with `config` in place of its own string, once the current
    /// guest's `validate-config` accepted it. A refusal names the guest and
    /// its reason.
    pub fn with_config(&self, config: &str) -> Result<Configured<'_, K>, LoadError> {
        let cur = self.current();
        if config.len() > MAX_CONFIG_BYTES {
            return Err(LoadError::Limits(format!(
                "the config string is {} bytes; configs are at most {MAX_CONFIG_BYTES}",
                config.len()
            )));
        }
        let known = cur.accepted().contains(config);
        if !known {
            cur.guest.validate_config(
                self.engine.runtime(),
                K::KIND,
                config,
                &cur.config.limits,
            )?;
            let mut accepted = cur.accepted();
            if accepted.len() >= REMEMBERED {
                accepted.clear();
            }
            accepted.insert(config.to_string());
        }
        Ok(Configured {
            hook: self,
            cur,
            config: Some(config.to_string()),
        })
    }
}

impl<K: Kind> Configured<'_, K> {
    /// Runs one decision: `call` on the guest with this configuration,
    /// then, if that failed and the mode is `Fallback`, on the built-in
    /// default with an empty config and default limits.
    pub(crate) fn decide<R>(
        &self,
        call: impl Fn(&Runtime, &Guest, &str, &Limits) -> (Result<R, PolicyError>, Vec<LogLine>),
    ) -> Result<Decision<R>, PolicyError> {
        let (hook, cur) = (self.hook, &self.cur);
        let config = self.config.as_deref().unwrap_or(&cur.config.config);
        let start = Instant::now();
        let rt = hook.engine.runtime();
        let (result, mut log) = call(rt, &cur.guest, config, &cur.config.limits);
        let err = match result {
            Ok(answer) => {
                let elapsed = start.elapsed();
                hook.record(cur, Outcome::Ok, elapsed);
                return Ok(Decision {
                    answer,
                    guest: cur.guest.id.clone(),
                    fallback: false,
                    fallback_cause: None,
                    log,
                    elapsed,
                });
            }
            Err(e) if e.is_refusal() => {
                hook.record(cur, Outcome::Refused, start.elapsed());
                return Err(e);
            }
            Err(e) => e,
        };
        let fallback = match (&cur.fallback, cur.config.failure) {
            (Some(f), FailureMode::Fallback) => f,
            _ => {
                hook.record(cur, Outcome::Failed, start.elapsed());
                return Err(err);
            }
        };
        let cause = crate::error_chain(&err);
        tracing::warn!(
            hook = %K::KIND,
            guest = %cur.guest.id,
            error = %cause,
            "policy guest failed; the built-in default answers instead",
        );
        let (fb, fb_log) = call(rt, fallback, "", &Limits::default());
        log.extend(fb_log);
        let elapsed = start.elapsed();
        hook.record(cur, Outcome::FellBack, elapsed);
        match fb {
            Ok(answer) => Ok(Decision {
                answer,
                guest: fallback.id.clone(),
                fallback: true,
                fallback_cause: Some(cause),
                log,
                elapsed,
            }),
            Err(fb_err) => Err(PolicyError::FallbackFailed {
                primary: Box::new(err),
                fallback: Box::new(fb_err),
            }),
        }
    }
}
