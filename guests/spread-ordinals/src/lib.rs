//! Test guest: a StatefulSet's pods spread over the vxnets by ordinal —
//! pod `web-<k>` gets candidate `k mod n` first, the rest in their order —
//! so replicas that must not share a failure domain do not. It reads the
//! owner through `pod-facts.pod-owner` (contract 0.1.1); any other pod
//! keeps the candidates' order.

wit_bindgen::generate!({ path: "../../wit", world: "vxnet-selection" });

use hostnic::policy::pod_facts::pod_owner;

struct Spread;

impl exports::hostnic::policy::config::Guest for Spread {
    fn validate_config(_: String) -> Result<(), String> {
        Ok(())
    }
}

impl Guest for Spread {
    fn select_vxnet(
        _: String,
        _: Pod,
        _: Node,
        candidates: Vec<Vxnet>,
        _: u64,
    ) -> Result<Vec<String>, Reason> {
        let mut ids: Vec<String> = candidates.into_iter().map(|v| v.id).collect();
        if let Some(owner) = pod_owner()
            && owner.kind == "StatefulSet"
            && let Some(k) = owner.ordinal
            && !ids.is_empty()
        {
            let first = ids.remove(k as usize % ids.len());
            ids.insert(0, first);
        }
        Ok(ids)
    }
}

export!(Spread);
