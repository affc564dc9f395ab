//! An example vxnet-selection guest on live measurements (contract 0.1.2,
//! `vxnet-facts`): the vxnet whose NICs this node attached fastest lately
//! comes first — a zone's slow or congested part of the SDN is avoided
//! while it stays slow. Vxnets with no measurement yet follow, in the
//! host's order, then those where creating a NIC just failed, so the host
//! always has somewhere to go.
//!
//! Config: none; empty or `{}`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "vxnet-selection",
});

use hostnic::policy::vxnet_facts::vxnet_measured;

/// A candidate's place in the order: (failing now, no measurement,
/// latency). Lower is better.
fn rank(recent_failures: u32, latency_ms: Option<u32>) -> (bool, bool, u32) {
    (recent_failures > 0, latency_ms.is_none(), latency_ms.unwrap_or(0))
}

/// The candidates' ids, best first; ties keep the host's order.
pub fn order(candidates: &[(String, u32, Option<u32>)]) -> Vec<String> {
    let mut ranked: Vec<_> = candidates.iter().collect();
    ranked.sort_by_key(|(_, failures, latency)| rank(*failures, *latency));
    ranked.into_iter().map(|(id, ..)| id.clone()).collect()
}

struct FastestAttach;

impl exports::hostnic::policy::config::Guest for FastestAttach {
    fn validate_config(config: String) -> Result<(), String> {
        match config.trim() {
            "" | "{}" => Ok(()),
            other => Err(format!("fastest-attach takes no config, got {other:?}")),
        }
    }
}

impl Guest for FastestAttach {
    fn select_vxnet(
        _: String,
        _: Pod,
        _: Node,
        candidates: Vec<Vxnet>,
        _: u64,
    ) -> Result<Vec<String>, Reason> {
        let measured: Vec<(String, u32, Option<u32>)> = candidates
            .iter()
            .map(|v| {
                let latency = vxnet_measured(&v.id).and_then(|m| m.attach_latency_ms);
                (v.id.clone(), v.recent_failures, latency)
            })
            .collect();
        Ok(order(&measured))
    }
}

export!(FastestAttach);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_first_then_the_unmeasured_then_the_failing() {
        let c = |id: &str, failures, latency| (id.to_string(), failures, latency);
        assert_eq!(
            order(&[
                c("slow", 0, Some(1500)),
                c("new", 0, None),
                c("failing", 2, Some(10)),
                c("fast", 0, Some(200)),
                c("new2", 0, None),
            ]),
            ["fast", "slow", "new", "new2", "failing"]
        );
    }
}
