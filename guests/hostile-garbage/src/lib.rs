//! Test guest: select-vxnet answers a vxnet that was not among the
//! candidates. The host must refuse the answer (naming this guest) and
//! apply the hook's failure mode; the agent keeps serving.

wit_bindgen::generate!({ path: "../../wit", world: "vxnet-selection" });

struct Garbage;

impl exports::hostnic::policy::config::Guest for Garbage {
    fn validate_config(_: String) -> Result<(), String> {
        Ok(())
    }
}

impl Guest for Garbage {
    fn select_vxnet(
        _: String,
        _: Pod,
        _: Node,
        _: Vec<Vxnet>,
        _: u64,
    ) -> Result<Vec<String>, Reason> {
        // Never a candidate: hostnic's vxnet ids are "vxnet-" and 7 chars.
        Ok(vec!["vxnet-nope".to_string()])
    }
}

export!(Garbage);
