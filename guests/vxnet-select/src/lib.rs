//! The default vxnet-selection guest (world `vxnet-selection`).
//!
//! Config: `{"policy": "FailRotate" | "RoundRotate" | "Random" | "MostFree"}`;
//! empty (or `{}`) is FailRotate. The decisions are in [`policy`], plain Rust
//! tested natively; this file only moves values between the host and it.

mod bindings;
mod policy;

use bindings::exports::hostnic::policy::config;
use bindings::hostnic::policy::attachment_facts;
use bindings::hostnic::policy::host::{self, Level};
use bindings::{Node, Pod, Reason, Vxnet};

/// The rotation index of FailRotate and RoundRotate, in the host's kv
/// store: one per network (`index/<network>`), since each network rotates
/// over its own vxnets. `index` alone is where releases before contract
/// 0.1.2 kept the one index (and where a call for no named network keeps
/// it); a network without its own starts from it.
const INDEX_KEY: &str = "index";

fn index_key() -> String {
    match attachment_facts::network() {
        network if network.is_empty() => INDEX_KEY.to_string(),
        network => format!("{INDEX_KEY}/{network}"),
    }
}

struct VxnetSelect;

impl config::Guest for VxnetSelect {
    fn validate_config(config: String) -> Result<(), String> {
        policy::parse_config(&config).map(drop)
    }
}

impl bindings::Guest for VxnetSelect {
    fn select_vxnet(
        config: String,
        _pod: Pod,
        _node: Node,
        candidates: Vec<Vxnet>,
        random: u64,
    ) -> Result<Vec<String>, Reason> {
        let policy = policy::parse_config(&config)?;
        let key = index_key();
        let stored = if policy.rotates() {
            stored_index(&key)
        } else {
            None
        };
        let decision = policy::select(policy, &candidates, stored, random)?;
        if let Some(note) = &decision.note {
            host::log(Level::Info, note);
        }
        if let Some(next) = decision.store_index
            && let Err(e) = host::kv_set(&key, &next.to_string())
        {
            // The answer is still right for this call; the next call starts
            // from the old index, which only delays a rotation.
            host::log(
                Level::Warn,
                &format!("could not store the rotation index {next}: {e}"),
            );
        }
        Ok(decision.order)
    }
}

/// The index the last call stored; `None` when there is none (first call,
/// new store) or it is not a number (then said in the log, and the policy
/// stores a good one).
fn stored_index(key: &str) -> Option<u64> {
    let (key, text) = match host::kv_get(key) {
        Some(text) => (key, text),
        None => (INDEX_KEY, host::kv_get(INDEX_KEY)?),
    };
    let index = text.parse().ok();
    if index.is_none() {
        host::log(
            Level::Warn,
            &format!("kv {key:?} holds {text:?}, not a number; starting from the first vxnet"),
        );
    }
    index
}

bindings::export!(VxnetSelect with_types_in bindings);
