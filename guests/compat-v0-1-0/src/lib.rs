//! Test guest: a vxnet guest compiled against `hostnic:policy@0.1.0`, the
//! contract as it was released (`wit/policy.wit` here is a frozen copy of
//! it; never edit it). The host's tests load it into today's host to prove
//! the contract's promise: a guest compiled against 0.1.0 keeps working
//! with a 0.1.x host. It answers the candidates in reverse order, so a
//! test can tell its answer from the built-in default's.

wit_bindgen::generate!({ path: "wit", world: "vxnet-selection" });

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
        hostnic::policy::host::log(hostnic::policy::host::Level::Debug, "compiled against 0.1.0");
        Ok(candidates.into_iter().rev().map(|v| v.id).collect())
    }
}

export!(Compat);
