//! Test guest: a vxnet guest that logs, per candidate and for one id not
//! among them (`vxnet-not-a-candidate`), what `vxnet-facts` answers — the
//! shared range (0.1.3) and whether it was measured — and the candidate's
//! `free-ips`, one line each ("vxnet-a free 61 shared 10.0.1.0/26
//! measured"). It answers the candidates in the host's order. The host's
//! tests read the lines to see exactly what a guest is told.

wit_bindgen::generate!({ path: "../../wit", world: "vxnet-selection" });

use hostnic::policy::host::{Level, log};
use hostnic::policy::vxnet_facts::{vxnet_measured, vxnet_shared_range};

struct Probe;

impl exports::hostnic::policy::config::Guest for Probe {
    fn validate_config(_: String) -> Result<(), String> {
        Ok(())
    }
}

fn line(id: &str, free: Option<u32>) -> String {
    format!(
        "{id} free {} shared {} {}",
        free.map_or("-".to_string(), |f| f.to_string()),
        vxnet_shared_range(id).unwrap_or_else(|| "none".to_string()),
        match vxnet_measured(id) {
            Some(_) => "measured",
            None => "unknown",
        }
    )
}

impl Guest for Probe {
    fn select_vxnet(
        _: String,
        _: Pod,
        _: Node,
        candidates: Vec<Vxnet>,
        _: u64,
    ) -> Result<Vec<String>, Reason> {
        for v in &candidates {
            log(Level::Info, &line(&v.id, Some(v.free_ips)));
        }
        log(Level::Info, &line("vxnet-not-a-candidate", None));
        Ok(candidates.into_iter().map(|v| v.id).collect())
    }
}

export!(Probe);
