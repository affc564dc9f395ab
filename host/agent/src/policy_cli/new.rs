//! `policy new NAME --hook H`: a guest crate that builds and passes its
//! tests as written, so an author starts from something that works:
//!
//! ```text
//! NAME/Cargo.toml       cdylib, wit-bindgen, a small release profile
//! NAME/wit/policy.wit   the contract this agent speaks
//! NAME/src/lib.rs       the decision (plain Rust, tested natively) and the glue
//! NAME/facts.json       facts for `policy run` and `policy bench --input`
//! ```

use std::path::Path;

use anyhow::{Context, bail};

use crate::facts::HookName;

/// The contract, as this agent was built with it.
const WIT: &str = include_str!("../../../../wit/policy.wit");

/// The wit-bindgen release the guests are built with (guests/Cargo.toml).
const WIT_BINDGEN: &str = "0.61";

pub fn create(name: &str, hook: HookName) -> anyhow::Result<()> {
    validate_name(name)?;
    let dir = Path::new(name);
    if dir.exists() {
        bail!("{} already exists; choose another name", dir.display());
    }
    let files = [
        ("Cargo.toml", cargo_toml(name)),
        ("wit/policy.wit", WIT.to_string()),
        ("src/lib.rs", lib_rs(hook)),
        ("facts.json", facts_json(hook).to_string()),
        (".gitignore", "/target\n".to_string()),
    ];
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let module = name.replace('-', "_");
    println!("created {name}/, a {hook} policy. Next:");
    println!("  cd {name}");
    println!("  cargo test                                   # the decision, natively");
    println!("  cargo build --release --target wasm32-wasip2");
    println!("  hostnic-agent policy check target/wasm32-wasip2/release/{module}.wasm");
    println!(
        "  hostnic-agent policy run --hook {hook} target/wasm32-wasip2/release/{module}.wasm facts.json"
    );
    Ok(())
}

/// A crate name cargo accepts and that names a module file plainly.
fn validate_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!(
            "{name:?} is not a crate name: use letters, digits, '-' and '_', starting with a letter"
        );
    }
    Ok(())
}

fn cargo_toml(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
# A guest is a dynamic library: the .wasm file the agent loads.
crate-type = ["cdylib"]

[dependencies]
# Generates the Rust side of the contract (wit/policy.wit).
wit-bindgen = "{WIT_BINDGEN}"

# A crate of its own, even when created inside another workspace.
[workspace]

[profile.release]
opt-level = "s"   # small modules load and compile faster
lto = true
strip = true
panic = "abort"   # a panic traps the call; the agent handles that
"#
    )
}

fn lib_rs(hook: HookName) -> String {
    let (header, body) = match hook {
        HookName::Vxnet => (VXNET_HEADER, VXNET_BODY),
        HookName::Ip => (IP_HEADER, IP_BODY),
        HookName::Routes => (ROUTES_HEADER, ROUTES_BODY),
    };
    format!("{header}{COMMON}{body}")
}

const COMMON: &str = r#"
use hostnic::policy::host::{Level, log};

struct Policy;

// Called on every load, before any pod: refuse a config you cannot use, and
// the agent keeps the guest it had.
impl exports::hostnic::policy::config::Guest for Policy {
    fn validate_config(config: String) -> Result<(), String> {
        check_config(&config)
    }
}

/// This policy takes no options: only an empty config (or `{}`) is valid.
pub fn check_config(config: &str) -> Result<(), String> {
    match config.trim() {
        "" | "{}" => Ok(()),
        other => Err(format!("this policy takes no config; got {other:?}")),
    }
}

export!(Policy);
"#;

const VXNET_HEADER: &str = r#"//! A vxnet-selection policy: which vxnet a pod's NIC comes from.
//!
//! The agent calls `select_vxnet` with the candidate vxnets (in the order of
//! its `vxnets` setting) and tries the vxnets of the answer in turn.

wit_bindgen::generate!({ path: "wit", world: "vxnet-selection" });
"#;

const VXNET_BODY: &str = r#"
/// The decision: every candidate you accept, best first. Here, the most
/// free addresses first; the configured order among equals.
pub fn order(candidates: &[Vxnet]) -> Vec<String> {
    let mut sorted: Vec<&Vxnet> = candidates.iter().collect();
    // A stable sort: equals keep the configured order.
    sorted.sort_by(|a, b| b.free_ips.cmp(&a.free_ips));
    sorted.into_iter().map(|v| v.id.clone()).collect()
}

impl Guest for Policy {
    fn select_vxnet(
        _config: String,
        pod: Pod,
        _node: Node,
        candidates: Vec<Vxnet>,
        _random: u64,
    ) -> Result<Vec<String>, Reason> {
        if candidates.is_empty() {
            return Err("no candidate vxnets".to_string());
        }
        let answer = order(&candidates);
        log(Level::Debug, &format!("{}/{}: {}", pod.namespace, pod.name, answer.join(", ")));
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxnet(id: &str, free_ips: u32) -> Vxnet {
        Vxnet {
            id: id.into(),
            cidr: "10.0.1.0/24".into(),
            gateway: "10.0.1.1".into(),
            free_ips,
            warm_nics: 0,
            used_nics: 0,
            recent_failures: 0,
        }
    }

    #[test]
    fn the_most_free_goes_first_and_ties_keep_their_order() {
        let c = [vxnet("vxnet-a", 5), vxnet("vxnet-b", 50), vxnet("vxnet-c", 5)];
        assert_eq!(order(&c), ["vxnet-b", "vxnet-a", "vxnet-c"]);
    }

    #[test]
    fn only_an_empty_config_is_valid() {
        assert!(check_config("").is_ok());
        assert!(check_config("{\"policy\": \"FailRotate\"}").is_err());
    }
}
"#;

const IP_HEADER: &str = r#"//! An ip-assignment policy: which address a pod gets in its vxnet.
//!
//! The agent calls `assign_ip` with the pod and its vxnet; the answer is
//! any address, an exact one, one of a list, a range, or a sticky key.

wit_bindgen::generate!({ path: "wit", world: "ip-assignment" });
"#;

const IP_BODY: &str = r#"
/// The annotation a pod sets to ask for an address.
pub const ANNOTATION: &str = "example.com/ip";

/// The decision: the annotated address if the pod has one, else any.
pub fn assign(pod: &Pod) -> IpRequest {
    match pod.annotations.iter().find(|(k, _)| k == ANNOTATION) {
        Some((_, ip)) => IpRequest::Exact(ip.trim().to_string()),
        None => IpRequest::Any,
    }
}

impl Guest for Policy {
    fn assign_ip(_config: String, pod: Pod, vxnet: Vxnet) -> Result<IpRequest, Reason> {
        let answer = assign(&pod);
        log(Level::Debug, &format!("{}/{} in {}: {answer:?}", pod.namespace, pod.name, vxnet.id));
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        Pod {
            namespace: "default".into(),
            name: "web-0".into(),
            uid: String::new(),
            labels: Vec::new(),
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn an_annotated_pod_gets_its_address() {
        assert!(matches!(assign(&pod(&[(ANNOTATION, "10.0.1.7")])), IpRequest::Exact(ip) if ip == "10.0.1.7"));
        assert!(matches!(assign(&pod(&[])), IpRequest::Any));
    }

    #[test]
    fn only_an_empty_config_is_valid() {
        assert!(check_config("").is_ok());
        assert!(check_config("{\"x\": 1}").is_err());
    }
}
"#;

const ROUTES_HEADER: &str = r#"//! A route-templating policy: which routes a pod gets out of its NIC.
//!
//! The agent calls `routes` with the pod's NIC, its vxnet, the node's own
//! address in that vxnet (if the node has a NIC there) and the templates of
//! the network config; the answer is the routes to install.

wit_bindgen::generate!({ path: "wit", world: "route-templating" });
"#;

const ROUTES_BODY: &str = r#"
/// The decision: a default route via the vxnet gateway, then every
/// template; a template gateway of 0.0.0.0 means the node's own NIC.
pub fn routes(
    vxnet: &Vxnet,
    node_gateway: Option<&str>,
    templates: &[RouteTemplate],
) -> Result<Vec<Route>, Reason> {
    let mut out = vec![Route { dst: "0.0.0.0/0".into(), gw: Some(vxnet.gateway.clone()) }];
    for t in templates {
        let gw = match t.gw.as_deref() {
            Some("0.0.0.0") => Some(
                node_gateway
                    .ok_or_else(|| format!("template {} wants the node's NIC, but the node has none in {}", t.dst, vxnet.id))?
                    .to_string(),
            ),
            other => other.map(str::to_string),
        };
        if t.dst != "0.0.0.0/0" {
            out.push(Route { dst: t.dst.clone(), gw });
        }
    }
    Ok(out)
}

impl Guest for Policy {
    fn routes(
        _config: String,
        pod: Pod,
        _nic: Nic,
        vxnet: Vxnet,
        node_gateway: Option<String>,
        templates: Vec<RouteTemplate>,
    ) -> Result<Vec<Route>, Reason> {
        let answer = routes(&vxnet, node_gateway.as_deref(), &templates)?;
        log(Level::Debug, &format!("{}/{}: {} routes", pod.namespace, pod.name, answer.len()));
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxnet() -> Vxnet {
        Vxnet {
            id: "vxnet-a".into(),
            cidr: "10.0.1.0/24".into(),
            gateway: "10.0.1.1".into(),
            free_ips: 0,
            warm_nics: 0,
            used_nics: 0,
            recent_failures: 0,
        }
    }

    #[test]
    fn the_node_template_goes_via_the_node() {
        let t = [RouteTemplate { dst: "10.96.0.0/12".into(), gw: Some("0.0.0.0".into()) }];
        let r = routes(&vxnet(), Some("10.0.1.9"), &t).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].gw.as_deref(), Some("10.0.1.9"));
        assert!(routes(&vxnet(), None, &t).is_err());
    }

    #[test]
    fn only_an_empty_config_is_valid() {
        assert!(check_config("").is_ok());
        assert!(check_config("{\"x\": 1}").is_err());
    }
}
"#;

/// Facts for `policy run` and `policy bench --input`, shaped for the hook.
fn facts_json(hook: HookName) -> serde_json::Value {
    let pod = serde_json::json!({
        "namespace": "default", "name": "web-0", "uid": "1111-2222",
        "annotations": {"example.com/ip": "10.0.1.7"}
    });
    let vxnet = |id: &str, n: u8, free: u32| {
        serde_json::json!({
            "id": id, "cidr": format!("10.0.{n}.0/24"), "gateway": format!("10.0.{n}.1"),
            "free_ips": free, "warm_nics": 1, "used_nics": 2, "recent_failures": 0
        })
    };
    match hook {
        HookName::Vxnet => serde_json::json!({
            "pod": pod,
            "node": {"instance": "i-node1", "zone": "pek3", "nics_in_use": 3, "nic_limit": 64},
            "candidates": [vxnet("vxnet-a", 1, 20), vxnet("vxnet-b", 2, 200)],
            "random": 7
        }),
        HookName::Ip => serde_json::json!({"pod": pod, "vxnet": vxnet("vxnet-a", 1, 20)}),
        HookName::Routes => serde_json::json!({
            "pod": pod,
            "vxnet": vxnet("vxnet-a", 1, 20),
            "nic": {"mac": "52:54:00:12:34:56", "ip": "10.0.1.7", "prefix_len": 24},
            "node_gateway": "10.0.1.9",
            "templates": [{"dst": "10.96.0.0/12", "gw": "0.0.0.0"}]
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::Facts;

    #[test]
    fn names_are_crate_names() {
        assert!(validate_name("my-vxnet-policy").is_ok());
        for bad in ["", "1abc", "a b", "../x", "a/b", "ä"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_facts_files_are_facts() {
        for hook in [HookName::Vxnet, HookName::Ip, HookName::Routes] {
            let f: Facts = serde_json::from_value(facts_json(hook)).unwrap();
            assert_eq!(f.pod.name, "web-0");
        }
    }
}
