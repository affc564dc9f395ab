//! Test guest: select-vxnet never returns. The host's per-call deadline
//! must interrupt it; the agent keeps serving the other pods.

wit_bindgen::generate!({ path: "../../wit", world: "vxnet-selection" });

struct Loop;

impl exports::hostnic::policy::config::Guest for Loop {
    fn validate_config(_: String) -> Result<(), String> {
        Ok(())
    }
}

impl Guest for Loop {
    fn select_vxnet(
        _: String,
        _: Pod,
        _: Node,
        _: Vec<Vxnet>,
        _: u64,
    ) -> Result<Vec<String>, Reason> {
        // black_box makes every turn an observable effect, so the loop is
        // real work the optimizer cannot fold or drop; no host call in it,
        // so only the deadline (epoch or fuel) can end it.
        let mut turns: u64 = 0;
        loop {
            turns = std::hint::black_box(turns.wrapping_add(1));
        }
    }
}

export!(Loop);
