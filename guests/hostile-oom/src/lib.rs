//! Test guest: select-vxnet allocates without bound. The host's memory cap
//! must stop it (a failed `memory.grow` traps, or the allocator aborts,
//! which traps too); the agent keeps serving.

wit_bindgen::generate!({ path: "../../wit", world: "vxnet-selection" });

struct Oom;

impl exports::hostnic::policy::config::Guest for Oom {
    fn validate_config(_: String) -> Result<(), String> {
        Ok(())
    }
}

impl Guest for Oom {
    fn select_vxnet(
        _: String,
        _: Pod,
        _: Node,
        _: Vec<Vxnet>,
        _: u64,
    ) -> Result<Vec<String>, Reason> {
        const MIB: usize = 1 << 20;
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // A non-zero fill writes every byte (a zeroed allocation could
            // be left untouched); black_box keeps the chunk alive and
            // observable, so the allocation cannot be optimized away.
            hoard.push(std::hint::black_box(vec![0xA5; MIB]));
        }
    }
}

export!(Oom);
