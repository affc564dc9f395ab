//! Test guest: a vxnet guest compiled against `hostnic:policy@0.1.2`
//! (`wit/policy.wit` here is a frozen copy of it; never edit it). 0.1.3
//! added a function to an interface 0.1.2 already had, `vxnet-facts`, so
//! this guest imports `vxnet-facts@0.1.2` with `vxnet-measured` alone; the
//! host's tests load it into today's host to prove such a guest still
//! links and asks. It answers the measured candidates first, fastest
//! first, then the others in the host's order.

wit_bindgen::generate!({ path: "wit", world: "vxnet-selection" });

use hostnic::policy::vxnet_facts::vxnet_measured;

struct Compat;

impl exports::hostnic::policy::config::Guest for Compat {
    fn validate_config(_: String) -> Result<(), String> {
        Ok(())
    }
}

impl Guest for Compat {
    fn select_vxnet(
        _: String,
        _: Pod,
        _: Node,
        candidates: Vec<Vxnet>,
        _: u64,
    ) -> Result<Vec<String>, Reason> {
        let mut ranked: Vec<(Option<u32>, String)> = candidates
            .into_iter()
            .map(|v| {
                (
                    vxnet_measured(&v.id).and_then(|m| m.attach_latency_ms),
                    v.id,
                )
            })
            .collect();
        ranked.sort_by_key(|(ms, _)| (ms.is_none(), ms.unwrap_or(0)));
        Ok(ranked.into_iter().map(|(_, id)| id).collect())
    }
}

export!(Compat);
