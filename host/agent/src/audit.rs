//! The decision audit: for every ADD, what was decided and why — the vxnet
//! order the guest returned, the vxnet used and how the NIC was found, the
//! IP request and the address, the routes, the guests' digests, the time
//! each step took. Kept in a bounded ring (shown by `hostnic-agent
//! status`), logged as one structured line (`decision`), and written to the
//! pod as annotations by the publisher (`publish.rs`), off the ADD path.
//!
//! Where the decision log (`decisions.rs`) keeps each guest call's facts
//! for replay, this keeps one line of reasons per attachment, for
//! operators.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// ADDs kept.
pub const CAPACITY: usize = 256;

/// One ADD's decision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Audited {
    /// When the ADD was served, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub namespace: String,
    pub pod: String,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// The vxnet order, best first, as the vxnet guest returned it; empty
    /// when there was no choice.
    pub order: Vec<String>,
    /// The vxnet the NIC came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxnet: Option<String>,
    /// Vxnets ahead of it in the order that gave no NIC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passed_over: Vec<String>,
    /// How the NIC was found: a warm one, or one created for this ADD.
    pub how: String,
    /// What the ip guest asked for: "any", "exact …", "sticky …", ….
    pub ip_request: String,
    pub mac: String,
    /// The pod's address, with its prefix length.
    pub address: String,
    pub gateway: String,
    /// The routes installed, "dst via gw" or "dst dev" (on-link).
    pub routes: Vec<String>,
    /// Whether this attachment carries the pod's default route.
    pub default_route: bool,
    /// The guest that decided each hook: hook -> sha256 (12 hex digits);
    /// empty with the hooks off.
    pub guests: BTreeMap<String, String>,
    /// Where the attachment's time went: before the plan (the checks,
    /// the pod's routes and its API-server facts), the plan (the vxnet and
    /// ip guests), the acquire, and the wire — of which `attach_us` is the
    /// kernel's part (the move into the pod and its configuration), the
    /// rest the routes guest and the two record writes. `total_us`: the
    /// attachment from the request to its answer.
    #[serde(default)]
    pub prepare_us: u64,
    pub plan_us: u64,
    pub acquire_us: u64,
    pub wire_us: u64,
    #[serde(default)]
    pub attach_us: u64,
    #[serde(default)]
    pub total_us: u64,
    /// Why the ADD failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Audited {
    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// The compact human-readable reason (`hostnic.io/decision`).
    pub fn reason(&self) -> String {
        if let Some(e) = &self.error {
            return format!("ADD failed: {e}");
        }
        let vxnet = self.vxnet.as_deref().unwrap_or("the inventory");
        let mut s = format!("{vxnet}: {}", self.how);
        if !self.passed_over.is_empty() {
            s += &format!(" (none from {})", self.passed_over.join(", "));
        }
        if !self.order.is_empty() {
            s += &format!("; order {}", self.order.join(" > "));
        }
        s += &format!("; ip {} -> {}", self.ip_request, self.address);
        if !self.guests.is_empty() {
            let g: Vec<String> = self
                .guests
                .iter()
                .map(|(hook, sha)| format!("{hook} {sha}"))
                .collect();
            s += &format!("; guests {}", g.join(", "));
        }
        s + &format!(
            "; {:.1} ms",
            (self.plan_us + self.acquire_us + self.wire_us) as f64 / 1000.0
        )
    }
}

#[derive(Debug, Default)]
pub struct Audit {
    ring: Mutex<VecDeque<Audited>>,
}

impl Audit {
    /// Keeps `a` (the oldest makes room) and logs it as one line with
    /// `reason`, its [`Audited::reason`] (made once per ADD by the caller,
    /// which also writes it on the pod).
    pub fn record(&self, a: Audited, reason: &str) {
        match &a.error {
            None => tracing::info!(
                pod = %format!("{}/{}", a.namespace, a.pod),
                container = %a.container_id,
                ifname = %a.ifname,
                reason,
                decision = %serde_json::to_string(&a).unwrap_or_default(),
                "decision"
            ),
            Some(_) => tracing::warn!(
                pod = %format!("{}/{}", a.namespace, a.pod),
                container = %a.container_id,
                ifname = %a.ifname,
                decision = %serde_json::to_string(&a).unwrap_or_default(),
                "decision"
            ),
        }
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(a);
    }

    /// The newest `limit` ADDs, oldest first.
    pub fn latest(&self, limit: usize) -> Vec<Audited> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let skip = ring.len().saturating_sub(limit);
        ring.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_and_the_reason_says_why() {
        let audit = Audit::default();
        for i in 0..CAPACITY + 3 {
            audit.record(
                Audited {
                    pod: format!("p{i}"),
                    ..Audited::default()
                },
                "",
            );
        }
        let latest = audit.latest(2);
        assert_eq!(latest.len(), 2);
        assert_eq!(latest[1].pod, format!("p{}", CAPACITY + 2));
        assert_eq!(audit.latest(usize::MAX).len(), CAPACITY);

        let a = Audited {
            order: vec!["vxnet-a".into(), "vxnet-b".into()],
            vxnet: Some("vxnet-b".into()),
            passed_over: vec!["vxnet-a".into()],
            how: "a NIC created for this ADD".into(),
            ip_request: "any".into(),
            address: "10.0.2.5/24".into(),
            guests: [("vxnet".to_string(), "0123456789ab".to_string())].into(),
            plan_us: 100,
            acquire_us: 1_000,
            wire_us: 400,
            ..Audited::default()
        };
        assert_eq!(
            a.reason(),
            "vxnet-b: a NIC created for this ADD (none from vxnet-a); order vxnet-a > vxnet-b; \
             ip any -> 10.0.2.5/24; guests vxnet 0123456789ab; 1.5 ms"
        );
        let failed = Audited {
            error: Some("no free NIC on this node (code 101)".into()),
            ..a
        };
        assert!(failed.reason().starts_with("ADD failed: no free NIC"));
    }
}
