//! The decision log: the latest hook calls the agent made, with their facts
//! and answers, kept in a bounded ring in memory. `hostnic-agent policy
//! decisions` exports it over the agent's socket, and `policy replay` runs a
//! candidate module on the recorded facts to show where it would decide
//! otherwise, before anyone swaps it in.
//!
//! Recording is a clone into the ring under a short lock: no I/O and no
//! encoding on the ADD path. Encoding happens when someone asks.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hostnic_policy::{Decision, PolicyError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::facts::{Facts, HookName};

/// Calls kept: about three per ADD, so the last ~170 pods.
pub const CAPACITY: usize = 512;

/// One hook call, as recorded and exported (a JSON line each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// When the call was made, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub container_id: String,
    pub ifname: String,
    pub hook: HookName,
    /// The guest that answered: its name and sha256.
    pub guest: String,
    pub sha256: String,
    /// The configured guest failed and the built-in default answered.
    #[serde(default)]
    pub fallback: bool,
    pub facts: Facts,
    /// The network's own config string the guest ran with, if not the
    /// hook's (a network config's `hooks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
    /// The answer (see `facts::vxnets_json`, `ip_json`, `routes_json`)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Value>,
    /// …or why there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub elapsed_us: u64,
}

/// Which attachment a call was made for.
#[derive(Debug, Clone, Copy)]
pub struct For<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
}

#[derive(Debug)]
pub struct DecisionLog {
    ring: Mutex<VecDeque<Recorded>>,
    capacity: usize,
}

impl Default for DecisionLog {
    fn default() -> Self {
        DecisionLog::new(CAPACITY)
    }
}

impl DecisionLog {
    pub fn new(capacity: usize) -> DecisionLog {
        DecisionLog {
            ring: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// Records one call's facts and outcome; the oldest call makes room.
    pub fn record<T>(
        &self,
        who: For<'_>,
        hook: HookName,
        facts: Facts,
        network_config: Option<&str>,
        outcome: &Result<Decision<T>, PolicyError>,
        answer: impl FnOnce(&T) -> Value,
    ) {
        let (guest, fallback, answer, error, elapsed) = match outcome {
            Ok(d) => (
                &d.guest,
                d.fallback,
                Some(answer(&d.answer)),
                None,
                d.elapsed,
            ),
            Err(e) => (
                e.guest(),
                false,
                None,
                Some(hostnic_policy::error_chain(e)),
                Duration::ZERO,
            ),
        };
        let result = match outcome {
            Ok(d) if d.fallback => "fallback",
            Ok(_) => "ok",
            Err(PolicyError::Refused { .. }) => "refused",
            Err(_) => "error",
        };
        crate::metrics::metrics().guest_call(
            hook.name(),
            &guest.sha256,
            result,
            outcome.as_ref().ok().map(|d| d.elapsed),
        );
        let entry = Recorded {
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            container_id: who.container_id.to_string(),
            ifname: who.ifname.to_string(),
            hook,
            guest: guest.name.clone(),
            sha256: guest.sha256.clone(),
            fallback,
            facts,
            network_config: network_config.map(str::to_string),
            answer,
            error,
            elapsed_us: elapsed.as_micros() as u64,
        };
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// The newest calls, oldest first, at most `limit` of them and as many
    /// as fit in `budget` bytes of JSON (an RPC frame is bounded).
    pub fn export(&self, limit: usize, budget: usize) -> Vec<Value> {
        let newest: Vec<Recorded> = {
            let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.iter().rev().take(limit).cloned().collect()
        };
        let mut out = Vec::new();
        let mut used = 0;
        for r in newest {
            let Ok(v) = serde_json::to_value(&r) else {
                continue;
            };
            used += v.to_string().len() + 1;
            if used > budget {
                break;
            }
            out.push(v);
        }
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostnic_policy::GuestId;

    fn decision(answer: Vec<String>) -> Result<Decision<Vec<String>>, PolicyError> {
        Ok(Decision {
            answer,
            guest: GuestId {
                name: "g".into(),
                sha256: "ab".repeat(32),
                builtin: false,
            },
            fallback: false,
            fallback_cause: None,
            log: Vec::new(),
            elapsed: Duration::from_micros(30),
        })
    }

    #[test]
    fn the_ring_keeps_the_newest_and_exports_within_budget() {
        let log = DecisionLog::new(3);
        for i in 0..5 {
            let who = For {
                container_id: &format!("c{i}"),
                ifname: "eth0",
            };
            log.record(
                who,
                HookName::Vxnet,
                Facts::default(),
                None,
                &decision(vec![format!("vxnet-{i}")]),
                |a| crate::facts::vxnets_json(a),
            );
        }
        let all = log.export(10, usize::MAX);
        let ids: Vec<_> = all.iter().map(|v| v["container_id"].clone()).collect();
        assert_eq!(ids, ["c2", "c3", "c4"]);
        assert_eq!(all[2]["answer"], serde_json::json!(["vxnet-4"]));
        assert_eq!(all[2]["elapsed_us"], 30);
        let back: Recorded = serde_json::from_value(all[0].clone()).unwrap();
        assert_eq!(back.hook, HookName::Vxnet);
        // The limit and the byte budget both keep the newest.
        assert_eq!(log.export(1, usize::MAX)[0]["container_id"], "c4");
        let one = all[2].to_string().len() + 1;
        let fit = log.export(10, one * 2);
        assert_eq!(fit.len(), 2);
        assert_eq!(fit[1]["container_id"], "c4");
    }
}
