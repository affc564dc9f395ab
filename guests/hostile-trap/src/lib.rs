//! Test guest: select-vxnet panics. With panic = "abort" (the workspace's
//! release profile) a panic prints its message to stderr, then executes
//! `unreachable`: the call traps, and the host must drop the instance and
//! apply the hook's failure mode; the agent keeps serving.

wit_bindgen::generate!({ path: "../../wit", world: "vxnet-selection" });

struct Trap;

impl exports::hostnic::policy::config::Guest for Trap {
    fn validate_config(_: String) -> Result<(), String> {
        Ok(())
    }
}

impl Guest for Trap {
    fn select_vxnet(
        _: String,
        _: Pod,
        _: Node,
        _: Vec<Vxnet>,
        _: u64,
    ) -> Result<Vec<String>, Reason> {
        panic!("hostile-trap: select-vxnet panics on purpose");
    }
}

export!(Trap);
