//! An example vxnet-selection policy, the one GUIDE.md walks through.
//!
//! The decision: a pod may name the vxnet it wants in its annotation (or
//! label) `hostnic.io/vxnet`. If that vxnet is a candidate it goes first; every
//! other candidate follows, the one with the most free addresses first, so
//! the host still has somewhere to go when the preferred vxnet is full.
//!
//! The file has three parts, and a policy of your own can keep the same
//! shape:
//!
//! 1. the bindings, generated from the contract (`wit/policy.wit`);
//! 2. the decision, a plain Rust function with unit tests that run on your
//!    machine with `cargo test`, no WebAssembly involved;
//! 3. the glue: the exported functions the host calls, which only move
//!    values between the host and the decision.

// --- 1. Bindings -----------------------------------------------------------
//
// `generate!` reads the WIT package in `path` and writes Rust types for its
// records (`Pod`, `Node`, `Vxnet`, ...), a `Guest` trait per export to
// implement, functions for the imports (`hostnic::policy::host::log`, ...)
// and the `export!` macro. `world` picks which of the contract's three
// hooks this guest implements.
wit_bindgen::generate!({
    path: "../../wit",
    world: "vxnet-selection",
});

use hostnic::policy::host::{Level, log};

/// The annotation (or label) a pod sets to ask for a vxnet
/// ("vxnet-abc1234"). Annotations reach the agent from the runtime
/// (containerd's `io.kubernetes.cri.pod-annotations`).
pub const VXNET_KEY: &str = "hostnic.io/vxnet";

/// The vxnet the pod asks for: its annotation, else its label.
pub fn wanted(pod: &Pod) -> Option<&str> {
    fn find(pairs: &[(String, String)]) -> Option<&str> {
        pairs
            .iter()
            .find(|(key, _)| key == VXNET_KEY)
            .map(|(_, value)| value.trim())
    }
    find(&pod.annotations).or_else(|| find(&pod.labels))
}

// --- 2. The decision ---------------------------------------------------------

/// Orders the candidates: the one `wanted` names first (if it is a
/// candidate), then the rest by free addresses, most first; ties by warm
/// NICs, most first, then by id so the answer is deterministic.
///
/// The answer holds every candidate exactly once. The host refuses ids
/// that were not candidates, so never make one up.
pub fn order(wanted: Option<&str>, candidates: &[Vxnet]) -> Vec<String> {
    let mut sorted: Vec<&Vxnet> = candidates.iter().collect();
    sorted.sort_by(|a, b| {
        // `false < true`, so the wanted vxnet sorts first.
        let not_wanted = |v: &Vxnet| Some(v.id.as_str()) != wanted;
        not_wanted(a)
            .cmp(&not_wanted(b))
            .then(b.free_ips.cmp(&a.free_ips))
            .then(b.warm_nics.cmp(&a.warm_nics))
            .then(a.id.cmp(&b.id))
    });
    sorted.into_iter().map(|v| v.id.clone()).collect()
}

/// This policy has no options, so the only valid config is none at all
/// (an empty string or `{}`). Refusing anything else catches a config
/// meant for another policy.
pub fn check_config(config: &str) -> Result<(), String> {
    let compact: String = config.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() || compact == "{}" {
        Ok(())
    } else {
        Err(format!(
            "example-policy takes no options; got {config:?} (use an empty config)"
        ))
    }
}

// --- 3. The glue ---------------------------------------------------------------

struct ExamplePolicy;

/// The host calls this every time it loads the guest, before any pod:
/// a config that fails here never serves.
impl exports::hostnic::policy::config::Guest for ExamplePolicy {
    fn validate_config(config: String) -> Result<(), String> {
        check_config(&config)
    }
}

impl Guest for ExamplePolicy {
    fn select_vxnet(
        config: String,
        pod: Pod,
        _node: Node,
        candidates: Vec<Vxnet>,
        _random: u64,
    ) -> Result<Vec<String>, Reason> {
        check_config(&config)?;
        // An error is a refusal: the pod's network setup fails with this
        // reason, which the runtime reports. The built-in policy never
        // overrides a refusal; it stands in only when a guest fails (a trap,
        // the deadline), and only with `failure = "fallback"`.
        if candidates.is_empty() {
            return Err("no candidate vxnets".to_string());
        }
        let wanted = wanted(&pod);
        if let Some(w) = wanted
            && !candidates.iter().any(|v| v.id == w)
        {
            // Logging goes through the host, tagged with this guest's name.
            log(
                Level::Warn,
                &format!(
                    "pod {}/{} asks for {w}, which is not a candidate; using the others",
                    pod.namespace, pod.name
                ),
            );
        }
        Ok(order(wanted, &candidates))
    }
}

// Makes `ExamplePolicy` the implementation of every export of the world.
export!(ExamplePolicy);

// --- Tests: `cargo test`, natively -----------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn vxnet(id: &str, free_ips: u32, warm_nics: u32) -> Vxnet {
        Vxnet {
            id: id.to_string(),
            cidr: "10.0.1.0/24".to_string(),
            gateway: "10.0.1.1".to_string(),
            free_ips,
            warm_nics,
            used_nics: 0,
            recent_failures: 0,
        }
    }

    fn candidates() -> Vec<Vxnet> {
        vec![
            vxnet("vxnet-a", 5, 0),
            vxnet("vxnet-b", 50, 0),
            vxnet("vxnet-c", 50, 2),
        ]
    }

    #[test]
    fn the_labelled_vxnet_goes_first() {
        assert_eq!(
            order(Some("vxnet-a"), &candidates()),
            ["vxnet-a", "vxnet-c", "vxnet-b"]
        );
    }

    #[test]
    fn without_a_label_the_most_free_goes_first() {
        assert_eq!(
            order(None, &candidates()),
            ["vxnet-c", "vxnet-b", "vxnet-a"]
        );
    }

    #[test]
    fn a_label_naming_no_candidate_changes_nothing() {
        assert_eq!(
            order(Some("vxnet-zzz"), &candidates()),
            ["vxnet-c", "vxnet-b", "vxnet-a"]
        );
    }

    #[test]
    fn the_annotation_wins_over_the_label() {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let mut pod = Pod {
            namespace: "default".into(),
            name: "web-0".into(),
            uid: String::new(),
            labels: vec![pair(VXNET_KEY, "vxnet-a")],
            annotations: Vec::new(),
        };
        assert_eq!(wanted(&pod), Some("vxnet-a"));
        pod.annotations.push(pair(VXNET_KEY, " vxnet-b "));
        assert_eq!(wanted(&pod), Some("vxnet-b"));
        pod.labels.clear();
        pod.annotations.clear();
        assert_eq!(wanted(&pod), None);
    }

    #[test]
    fn only_an_empty_config_is_valid() {
        assert_eq!(check_config(""), Ok(()));
        assert_eq!(check_config(" { } "), Ok(()));
        assert!(check_config(r#"{"policy": "MostFree"}"#).is_err());
    }
}
