//! Test guest: imports `hostnic:hostile/evil@0.1.0#steal-secrets`, which no
//! hostnic host offers. Loading it must fail at link time (before any call)
//! with an error naming the missing import; the agent keeps serving.
//!
//! Its world (wit/world.wit) is the contract's vxnet-selection plus that
//! import; the contract comes from the repository's wit/ directory, so the
//! exports are exactly what the host expects and only the import is wrong.

wit_bindgen::generate!({
    path: ["../../wit", "wit"],
    world: "hostnic:hostile/hostile-import",
    // The contract's interfaces come from a second package; generate
    // bindings for them here too.
    generate_all,
});

struct Import;

impl exports::hostnic::policy::config::Guest for Import {
    fn validate_config(_: String) -> Result<(), String> {
        Ok(())
    }
}

impl Guest for Import {
    fn select_vxnet(
        _: String,
        _: Pod,
        _: Node,
        _: Vec<Vxnet>,
        _: u64,
    ) -> Result<Vec<String>, Reason> {
        // The call is what makes the component import the function: an
        // import no code uses is dropped from the component.
        Ok(vec![hostnic::hostile::evil::steal_secrets()])
    }
}

export!(Import);
