//! The vxnet guest decides on live numbers (issue 10): free addresses as
//! the cloud counts them (MostFree is real), and the node's recent attach
//! latency per vxnet (`vxnet-facts`, contract 0.1.2) — all measured off the
//! ADD path and visible in `hostnic-agent status`.

use std::collections::BTreeMap;
use std::time::Duration;

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sim::{Faults, SimConfig};
use hostnic_testbed::{CallEnv, Ns, bin, guest_wasm, require_root, sha256_file, wait_for};
use serde_json::{Value, json};

const TIMERS: &str =
    "warm_min = 1\nwarm_max = 3\nreconcile_seconds = 1\ncold_add_wait_seconds = 20\n";

fn status(bed: &CloudBed) -> Value {
    let out = std::process::Command::new(bin("hostnic-agent"))
        .args(["status", "--json", "--socket"])
        .arg(bed.socket(0))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The status row of `vxnet`.
fn row(status: &Value, vxnet: &str) -> Value {
    status["vxnets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["id"] == vxnet)
        .cloned()
        .unwrap_or(Value::Null)
}

/// One ADD of a pod; its address.
fn add_one(bed: &CloudBed, cid: &str, ns: &Ns) -> String {
    let path = ns.path().display().to_string();
    let env = CallEnv {
        container_id: cid,
        netns: &path,
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=kpi",
    };
    let r = bed
        .hostnic(0)
        .add_retrying(&bed.netconf(0, "1.0.0", json!([])), &env)
        .unwrap_or_else(|e| panic!("ADD {cid}: {e}"));
    let a = r["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

#[test]
fn most_free_goes_by_the_clouds_count_of_free_addresses() {
    if !require_root("most_free_goes_by_the_clouds_count_of_free_addresses") {
        return;
    }
    let bed = CloudBed::new(SimConfig {
        nodes: 1,
        vxnets: vec![
            // First in the config, and nearly full.
            ("vxnet-small".into(), "10.110.0.0/28".parse().unwrap()),
            ("vxnet-big".into(), "10.111.0.0/24".parse().unwrap()),
        ],
        ..SimConfig::default()
    })
    .unwrap();
    let agent = bed
        .start_agent(
            0,
            &format!(
                "{TIMERS}vxnet_count_seconds = 1\n[hooks.vxnet]\nconfig = '{{\"policy\": \"MostFree\"}}'\n"
            ),
        )
        .unwrap();
    // Counted at start: each vxnet's usable range minus its NICs (the
    // warm one each, here), as the simulated cloud counts them too.
    let mut s = Value::Null;
    wait_for(
        "both vxnets counted with their warm NIC",
        Duration::from_secs(20),
        || {
            s = status(&bed);
            row(&s, "vxnet-small")["free_ips"] == 12 && row(&s, "vxnet-big")["free_ips"] == 252
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{s:#}\n{}", agent.log_text()));
    assert!(row(&s, "vxnet-big")["free_ips_age_s"].is_u64(), "{s:#}");

    // MostFree now has real numbers: the big vxnet, though listed second.
    let ns = Ns::new("kpi").unwrap();
    let ip = add_one(&bed, "mf", &ns);
    assert!(ip.starts_with("10.111.0."), "{ip}");
    bed.hostnic(0)
        .call(
            "DEL",
            &bed.netconf(0, "1.0.0", json!([])),
            &CallEnv {
                container_id: "mf",
                netns: &ns.path().display().to_string(),
                ifname: "eth0",
                args: "",
            },
        )
        .unwrap()
        .unwrap();
}

#[test]
fn a_guest_prefers_the_vxnet_this_node_attaches_fastest() {
    if !require_root("a_guest_prefers_the_vxnet_this_node_attaches_fastest") {
        return;
    }
    let bed = CloudBed::new(SimConfig {
        nodes: 1,
        vxnets: vec![
            ("vxnet-a".into(), "10.120.0.0/24".parse().unwrap()),
            ("vxnet-b".into(), "10.121.0.0/24".parse().unwrap()),
        ],
        // A congested part of the SDN: attaching in vxnet-a is slow.
        faults: Faults {
            attach_latency_ms_by_vxnet: BTreeMap::from([("vxnet-a".to_string(), 1500)]),
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .unwrap();
    let module = guest_wasm("fastest_attach");
    let agent = bed
        .start_agent(
            0,
            &format!(
                "{TIMERS}[hooks.vxnet]\npath = {module:?}\nsha256 = \"{}\"\n",
                sha256_file(&module).unwrap()
            ),
        )
        .unwrap();
    // The warm NICs' attaches measured each vxnet.
    let mut s = Value::Null;
    wait_for("both vxnets' attach times", Duration::from_secs(20), || {
        s = status(&bed);
        row(&s, "vxnet-a")["attach_latency_ms"].is_u64()
            && row(&s, "vxnet-b")["attach_latency_ms"].is_u64()
    })
    .unwrap_or_else(|e| panic!("{e}\n{s:#}\n{}", agent.log_text()));
    let (a, b) = (
        row(&s, "vxnet-a")["attach_latency_ms"].as_u64().unwrap(),
        row(&s, "vxnet-b")["attach_latency_ms"].as_u64().unwrap(),
    );
    assert!(a >= 1500 && b < 1000, "a {a} ms, b {b} ms");

    // The guest puts vxnet-b first, though the config lists vxnet-a first.
    let ns = Ns::new("kpf").unwrap();
    let ip = add_one(&bed, "fa", &ns);
    assert!(ip.starts_with("10.121.0."), "{ip}\n{}", agent.log_text());
    let decision = &status(&bed)["decisions"][0];
    assert_eq!(
        decision["order"],
        json!(["vxnet-b", "vxnet-a"]),
        "{decision:#}"
    );
}
