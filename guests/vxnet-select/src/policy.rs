//! The four selection policies, as pure functions of their inputs.
//!
//! Every policy answers with a permutation of the candidates' ids, best
//! first: the host tries them in order, so a vxnet the policy does not
//! prefer is still a fallback rather than a failure. The rotating policies
//! keep a position in the candidate list between calls (the host's kv
//! store); the position is taken modulo the number of candidates on every
//! read and write, so a list that shrinks or a counter that grows never
//! points past the end (the original agent's index never wrapped).

use serde::Deserialize;

use crate::bindings::Vxnet;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Policy {
    /// Stay on the current vxnet until NIC creations on it fail, then move
    /// on to the next one.
    #[default]
    FailRotate,
    /// Move on to the next vxnet on every call: spreads pods evenly.
    RoundRotate,
    /// Start at a random vxnet.
    Random,
    /// The vxnet with the most free addresses first.
    MostFree,
}

impl Policy {
    /// Whether the policy keeps a position between calls.
    pub fn rotates(self) -> bool {
        matches!(self, Policy::FailRotate | Policy::RoundRotate)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    policy: Policy,
}

/// Parses and checks the config string; empty is FailRotate.
pub fn parse_config(config: &str) -> Result<Policy, String> {
    guest_support::parse_config::<Config>("vxnet-select", config).map(|c| c.policy)
}

/// A selection and what to remember of it.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    /// Every candidate id, best first.
    pub order: Vec<String>,
    /// The position to store for the next call, when it changed.
    pub store_index: Option<u64>,
    /// Something worth a line in the agent's log.
    pub note: Option<String>,
}

/// Orders `candidates` by `policy`. `stored` is the position the last call
/// stored (`None` if there is none, or it was unreadable: then 0 is used
/// and stored); `random` the host's random number for this call.
pub fn select(
    policy: Policy,
    candidates: &[Vxnet],
    stored: Option<u64>,
    random: u64,
) -> Result<Decision, String> {
    let n = candidates.len();
    if n == 0 {
        return Err("no candidate vxnets".to_string());
    }
    let wrap = |i: u64| (i % n as u64) as usize;
    let decision = match policy {
        Policy::FailRotate => {
            let current = wrap(stored.unwrap_or(0));
            let failures = candidates[current].recent_failures;
            // With one candidate there is nowhere to move to.
            if failures > 0 && n > 1 {
                let next = (current + 1) % n;
                Decision {
                    order: rotation(candidates, next),
                    store_index: Some(next as u64),
                    note: Some(format!(
                        "{} has {failures} recent NIC creation failures; moving to {}",
                        candidates[current].id, candidates[next].id
                    )),
                }
            } else {
                Decision {
                    order: rotation(candidates, current),
                    // Store the position if none was, or the stored one
                    // needed wrapping.
                    store_index: (Some(current as u64) != stored).then_some(current as u64),
                    note: None,
                }
            }
        }
        Policy::RoundRotate => {
            let current = wrap(stored.unwrap_or(0));
            Decision {
                order: rotation(candidates, current),
                store_index: Some(((current + 1) % n) as u64),
                note: None,
            }
        }
        Policy::Random => Decision {
            order: rotation(candidates, wrap(random)),
            store_index: None,
            note: None,
        },
        Policy::MostFree => {
            let mut sorted: Vec<&Vxnet> = candidates.iter().collect();
            sorted.sort_by(|a, b| {
                b.free_ips
                    .cmp(&a.free_ips)
                    .then(b.warm_nics.cmp(&a.warm_nics))
                    .then(a.id.cmp(&b.id))
            });
            Decision {
                order: sorted.into_iter().map(|v| v.id.clone()).collect(),
                store_index: None,
                note: None,
            }
        }
    };
    Ok(decision)
}

/// All candidates' ids, starting at `start` and wrapping around.
fn rotation(candidates: &[Vxnet], start: usize) -> Vec<String> {
    let n = candidates.len();
    (0..n)
        .map(|i| candidates[(start + i) % n].id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxnet(id: &str, free_ips: u32, warm_nics: u32, recent_failures: u32) -> Vxnet {
        Vxnet {
            id: id.to_string(),
            cidr: "10.0.1.0/24".to_string(),
            gateway: "10.0.1.1".to_string(),
            free_ips,
            warm_nics,
            used_nics: 0,
            recent_failures,
        }
    }

    fn three() -> Vec<Vxnet> {
        vec![
            vxnet("a", 10, 0, 0),
            vxnet("b", 10, 0, 0),
            vxnet("c", 10, 0, 0),
        ]
    }

    fn ids(d: &Decision) -> Vec<&str> {
        d.order.iter().map(String::as_str).collect()
    }

    fn is_permutation(d: &Decision, candidates: &[Vxnet]) -> bool {
        let mut got = d.order.clone();
        let mut want: Vec<String> = candidates.iter().map(|v| v.id.clone()).collect();
        got.sort();
        want.sort();
        got == want
    }

    #[test]
    fn config_names_the_policy_and_defaults_to_failrotate() {
        assert_eq!(parse_config(""), Ok(Policy::FailRotate));
        assert_eq!(parse_config("{}"), Ok(Policy::FailRotate));
        for (text, policy) in [
            ("FailRotate", Policy::FailRotate),
            ("RoundRotate", Policy::RoundRotate),
            ("Random", Policy::Random),
            ("MostFree", Policy::MostFree),
        ] {
            let config = format!(r#"{{"policy": "{text}"}}"#);
            assert_eq!(parse_config(&config), Ok(policy));
        }
    }

    #[test]
    fn config_refusals_name_the_problem() {
        let e = parse_config(r#"{"policy": "Fastest"}"#).unwrap_err();
        assert!(e.contains("unknown variant `Fastest`"), "{e}");
        assert!(e.contains("MostFree"), "the reason lists the choices: {e}");
        let e = parse_config(r#"{"policy": "MostFree""#).unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = parse_config(r#"{"polcy": "MostFree"}"#).unwrap_err();
        assert!(e.contains("unknown field `polcy`"), "{e}");
        let e = parse_config(r#""MostFree""#).unwrap_err();
        assert!(e.contains("must be a JSON object"), "{e}");
        let e = parse_config(r#"{"policy": "mostfree"}"#).unwrap_err();
        assert!(
            e.contains("unknown variant"),
            "names are case-sensitive: {e}"
        );
    }

    #[test]
    fn no_candidates_is_refused_by_every_policy() {
        for p in [
            Policy::FailRotate,
            Policy::RoundRotate,
            Policy::Random,
            Policy::MostFree,
        ] {
            assert_eq!(
                select(p, &[], None, 0),
                Err("no candidate vxnets".to_string())
            );
        }
    }

    #[test]
    fn failrotate_stays_while_the_current_vxnet_works() {
        let d = select(Policy::FailRotate, &three(), Some(1), 0).unwrap();
        assert_eq!(ids(&d), ["b", "c", "a"]);
        assert_eq!(d.store_index, None);
        assert_eq!(d.note, None);
    }

    #[test]
    fn the_rotating_policies_start_at_the_first_and_store_it() {
        // No stored position: the first call, or an unreadable kv value.
        let d = select(Policy::FailRotate, &three(), None, 0).unwrap();
        assert_eq!(ids(&d), ["a", "b", "c"]);
        assert_eq!(d.store_index, Some(0));
        let d = select(Policy::RoundRotate, &three(), None, 0).unwrap();
        assert_eq!(ids(&d), ["a", "b", "c"]);
        assert_eq!(d.store_index, Some(1));
    }

    #[test]
    fn failrotate_moves_on_after_failures_and_remembers() {
        let mut c = three();
        c[1].recent_failures = 2;
        let d = select(Policy::FailRotate, &c, Some(1), 0).unwrap();
        assert_eq!(ids(&d), ["c", "a", "b"]);
        assert_eq!(d.store_index, Some(2));
        assert_eq!(
            d.note.as_deref(),
            Some("b has 2 recent NIC creation failures; moving to c")
        );
    }

    #[test]
    fn failrotate_wraps_from_the_last_to_the_first() {
        let mut c = three();
        c[2].recent_failures = 1;
        let d = select(Policy::FailRotate, &c, Some(2), 0).unwrap();
        assert_eq!(ids(&d), ["a", "b", "c"]);
        assert_eq!(d.store_index, Some(0));
    }

    #[test]
    fn failrotate_wraps_an_index_past_the_end() {
        // The list shrank from 5 to 3 since the index was stored: 4 % 3 = 1.
        let d = select(Policy::FailRotate, &three(), Some(4), 0).unwrap();
        assert_eq!(ids(&d), ["b", "c", "a"]);
        assert_eq!(d.store_index, Some(1), "the wrapped index is stored");
        let d = select(Policy::FailRotate, &three(), Some(u64::MAX), 0).unwrap();
        assert!(is_permutation(&d, &three()));
    }

    #[test]
    fn failrotate_with_one_candidate_stays_on_it() {
        let c = vec![vxnet("a", 1, 0, 7)];
        let d = select(Policy::FailRotate, &c, Some(0), 0).unwrap();
        assert_eq!(ids(&d), ["a"]);
        assert_eq!(d.store_index, None);
        assert_eq!(d.note, None);
    }

    #[test]
    fn roundrotate_advances_on_every_call_and_wraps() {
        let c = three();
        let mut stored = 0;
        let mut firsts = Vec::new();
        for _ in 0..7 {
            let d = select(Policy::RoundRotate, &c, Some(stored), 0).unwrap();
            assert!(is_permutation(&d, &c));
            firsts.push(d.order[0].clone());
            stored = d.store_index.expect("RoundRotate always stores");
            assert!(stored < 3, "the stored index wraps: {stored}");
        }
        assert_eq!(firsts, ["a", "b", "c", "a", "b", "c", "a"]);
    }

    #[test]
    fn roundrotate_wraps_an_index_past_the_end() {
        let d = select(Policy::RoundRotate, &three(), Some(5), 0).unwrap();
        assert_eq!(ids(&d), ["c", "a", "b"]);
        assert_eq!(d.store_index, Some(0));
    }

    #[test]
    fn random_starts_at_random_mod_n_and_stores_nothing() {
        let d = select(Policy::Random, &three(), None, 7).unwrap();
        assert_eq!(ids(&d), ["b", "c", "a"]);
        assert_eq!(d.store_index, None);
        let d = select(Policy::Random, &three(), None, u64::MAX).unwrap();
        // u64::MAX % 3 == 0
        assert_eq!(ids(&d), ["a", "b", "c"]);
    }

    #[test]
    fn mostfree_orders_by_free_then_warm_then_id() {
        let c = vec![
            vxnet("d", 5, 0, 0),
            vxnet("c", 9, 1, 0),
            vxnet("b", 9, 2, 0),
            vxnet("a", 9, 1, 0),
            vxnet("e", 0, 9, 0),
        ];
        let d = select(Policy::MostFree, &c, None, 0).unwrap();
        assert_eq!(ids(&d), ["b", "a", "c", "d", "e"]);
        assert_eq!(d.store_index, None);
    }

    #[test]
    fn every_policy_answers_a_permutation() {
        let c: Vec<Vxnet> = (0..7)
            .map(|i| vxnet(&format!("vxnet-{i}"), i * 3 % 5, i % 2, i % 3))
            .collect();
        for p in [
            Policy::FailRotate,
            Policy::RoundRotate,
            Policy::Random,
            Policy::MostFree,
        ] {
            for stored in [
                None,
                Some(0),
                Some(3),
                Some(6),
                Some(7),
                Some(100),
                Some(u64::MAX),
            ] {
                for random in [0, 1, 13, u64::MAX] {
                    let d = select(p, &c, stored, random).unwrap();
                    assert!(is_permutation(&d, &c), "{p:?} {stored:?} {random}: {d:?}");
                    if let Some(i) = d.store_index {
                        assert!(i < 7, "{p:?} stores an index past the end: {i}");
                    }
                }
            }
        }
    }
}
