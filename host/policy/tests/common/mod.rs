//! What the integration tests share: the guests built by build.rs, a
//! runtime per test binary, sample facts.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use hostnic_policy::*;

/// A guest module built from guests/ (crate name with `-` as `_`).
pub fn guest(name: &str) -> PathBuf {
    PathBuf::from(env!("HOSTNIC_GUESTS_DIR")).join(format!("{}.wasm", name.replace('-', "_")))
}

/// One runtime per test binary, in memory: compiled guests are cached in
/// it, which keeps the (debug-build) Cranelift compiles to one per guest.
pub fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        init_tracing();
        PolicyEngine::in_memory().expect("the policy runtime starts")
    })
}

pub fn init_tracing() {
    // Guest log lines show up in a failing test's output.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("hostnic_policy=debug")
        .try_init();
}

pub fn config(name: &str) -> HookConfig {
    HookConfig {
        path: Some(guest(name)),
        ..HookConfig::default()
    }
}

pub fn with(name: &str, f: impl FnOnce(&mut HookConfig)) -> HookConfig {
    let mut c = config(name);
    f(&mut c);
    c
}

pub fn pod(annotations: &[(&str, &str)]) -> Pod {
    Pod {
        namespace: "default".into(),
        name: "web-0".into(),
        uid: "1111-2222".into(),
        labels: BTreeMap::new(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        owner: None,
        attachment: Default::default(),
    }
}

pub fn node() -> Node {
    Node {
        instance: "i-node1".into(),
        zone: "pek3".into(),
        nics_in_use: 2,
        nic_limit: 64,
    }
}

pub fn vxnet(i: u8) -> Vxnet {
    Vxnet {
        id: format!("vxnet-{i:07}"),
        cidr: format!("10.0.{i}.0/24").parse().unwrap(),
        gateway: Ipv4Addr::new(10, 0, i, 1),
        free_ips: 100,
        warm_nics: 0,
        used_nics: 0,
        recent_failures: 0,
        live: Default::default(),
    }
}

pub fn vxnets(n: u8) -> Vec<Vxnet> {
    (1..=n).map(vxnet).collect()
}

pub fn nic() -> Nic {
    Nic {
        mac: "52:54:00:12:34:56".into(),
        ip: Ipv4Addr::new(10, 0, 1, 5),
        prefix_len: 24,
    }
}

pub fn template(dst: &str, gw: Option<&str>) -> RouteTemplate {
    RouteTemplate {
        dst: dst.parse().unwrap(),
        gw: gw.map(|g| g.parse().unwrap()),
    }
}

pub fn route(dst: &str, gw: Option<&str>) -> Route {
    Route {
        dst: dst.parse().unwrap(),
        gw: gw.map(|g| g.parse().unwrap()),
    }
}

pub fn limits(deadline_ms: u64, memory_mib: usize) -> Limits {
    Limits {
        deadline: Duration::from_millis(deadline_ms),
        memory: memory_mib << 20,
    }
}
