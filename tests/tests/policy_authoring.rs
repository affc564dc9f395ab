//! What a policy author meets: a custom vxnet guest placing pods on a
//! static inventory with vxnets, the decisions the agent records, and
//! `policy replay` of another module against them.

use std::process::Command;

use hostnic_testbed::{
    Agent, Ns, Testbed, bin, guest_wasm, ok, pod_env, require_root, sha256_file,
};
use serde_json::{Value, json};

/// The testbed's config with each NIC in the vxnet `vxnets[i]`, and the
/// vxnet hook running `module` (without a `config` key).
fn config(bed: &Testbed, vxnets: &[&str], module: &std::path::Path) -> String {
    let mut text = bed.agent_config();
    for (nic, vxnet) in bed.nics.iter().zip(vxnets) {
        let line = format!("mac = \"{}\"\n", nic.mac);
        text = text.replace(&line, &format!("{line}vxnet = \"{vxnet}\"\n"));
    }
    text + &format!(
        "[hooks.vxnet]\npath = {:?}\nsha256 = \"{}\"\n",
        module,
        sha256_file(module).unwrap()
    )
}

fn agent_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("hostnic-agent"))
        .arg("policy")
        .args(args)
        .output()
        .expect("running hostnic-agent policy");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_custom_vxnet_guest_places_pods_on_a_static_inventory_and_is_replayable() {
    if !require_root("a_custom_vxnet_guest_places_pods_on_a_static_inventory_and_is_replayable") {
        return;
    }
    let bed = Testbed::new(4).unwrap();
    let example = guest_wasm("example_policy");
    // No `config` key: the custom guest gets an empty config, not the
    // built-in guest's `policy` (which it would refuse, and the agent with
    // it).
    let text = config(
        &bed,
        &["vxnet-a", "vxnet-a", "vxnet-b", "vxnet-b"],
        &example,
    );
    let agent = Agent::spawn(&bed.node, bed.dir.path(), &text, bed.socket()).unwrap();
    let ip_of = |i: usize| bed.nics[i].ip.clone();

    let mut pods = Vec::new();
    let mut placed = Vec::new();
    for (i, want) in ["vxnet-b", "vxnet-a", "vxnet-b", "vxnet-b"]
        .iter()
        .enumerate()
    {
        let ns = Ns::new(&format!("pa{i}")).unwrap();
        let path = ns.path().display().to_string();
        let mut conf = bed.netconf("1.0.0", json!([]));
        conf["runtimeConfig"] =
            json!({"io.kubernetes.cri.pod-annotations": {"hostnic.io/vxnet": want}});
        let r = ok(bed
            .hostnic()
            .call("ADD", &conf, &pod_env(&format!("pa{i}"), &path)));
        let ip = r["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        placed.push(ip);
        pods.push(ns);
    }
    // The annotated vxnet first; once vxnet-b is full, the guest's second
    // choice (it returns every candidate, best first).
    let in_b = [ip_of(2), ip_of(3)];
    let in_a = [ip_of(0), ip_of(1)];
    assert!(in_b.contains(&placed[0]), "{placed:?}");
    assert!(in_a.contains(&placed[1]), "{placed:?}");
    assert!(in_b.contains(&placed[2]), "{placed:?}");
    assert!(in_a.contains(&placed[3]), "{placed:?}");

    // The agent recorded each call with its facts.
    let socket = bed.socket().display().to_string();
    let (success, out) = agent_cli(&["decisions", "--socket", &socket]);
    assert!(success, "{out}\n{}", agent.log_text());
    let calls: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let vxnet_calls: Vec<&Value> = calls.iter().filter(|c| c["hook"] == "vxnet").collect();
    assert_eq!(vxnet_calls.len(), 4, "{out}");
    assert_eq!(
        calls.iter().filter(|c| c["hook"] == "routes").count(),
        4,
        "{out}"
    );
    let first = vxnet_calls[0];
    assert_eq!(first["container_id"], "pa0");
    assert_eq!(first["guest"], "example_policy");
    let candidates: Vec<&str> = first["facts"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        candidates,
        ["vxnet-a", "vxnet-b"],
        "in the inventory's order"
    );
    assert_eq!(first["facts"]["candidates"][0]["warm_nics"], 2);
    assert_eq!(
        first["facts"]["pod"]["annotations"]["hostnic.io/vxnet"],
        "vxnet-b"
    );
    assert_eq!(first["answer"], json!(["vxnet-b", "vxnet-a"]));

    // Replayed against itself: nothing changes. Against the built-in
    // FailRotate (vxnet-a first for everyone): the three pods that asked
    // for vxnet-b would be placed otherwise.
    let saved = bed.dir.path().join("decisions.jsonl");
    std::fs::write(&saved, &out).unwrap();
    let saved = saved.display().to_string();
    let (success, same) = agent_cli(&["replay", example.to_str().unwrap(), "--decisions", &saved]);
    assert!(success, "{same}");
    assert!(same.contains(": 4 the same, 0 different"), "{same}");
    let builtin = guest_wasm("vxnet_select");
    let (success, diff) = agent_cli(&[
        "replay",
        builtin.to_str().unwrap(),
        "--socket",
        &socket,
        "--fail-on-change",
    ]);
    assert!(!success, "--fail-on-change must fail:\n{diff}");
    assert!(diff.contains(": 1 the same, 3 different"), "{diff}");
    assert!(
        diff.contains("recorded  vxnet-b, vxnet-a\n    candidate vxnet-a, vxnet-b"),
        "{diff}"
    );
    assert!(diff.contains("default/web eth0 vxnet (pa0)"), "{diff}");
}

#[test]
fn a_vxnet_module_that_can_never_run_is_reported_at_start() {
    if !require_root("a_vxnet_module_that_can_never_run_is_reported_at_start") {
        return;
    }
    let bed = Testbed::new(1).unwrap();
    let text = config(&bed, &[], &guest_wasm("example_policy"));
    let agent = Agent::spawn(&bed.node, bed.dir.path(), &text, bed.socket()).unwrap();
    assert!(
        agent.log_text().contains("it will NEVER be called"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn an_agent_loads_the_built_in_guests_an_image_ships_compiled() {
    if !require_root("an_agent_loads_the_built_in_guests_an_image_ships_compiled") {
        return;
    }
    let bed = Testbed::new(1).unwrap();
    // What scripts/image runs into the image.
    let shipped = bed.dir.path().join("shipped");
    let (success, out) = agent_cli(&["precompile", "--out", shipped.to_str().unwrap()]);
    assert!(success, "{out}");
    assert_eq!(out.lines().count(), 3, "one file per built-in guest: {out}");
    let cache = bed.state_dir().join("policy").join("compiled");
    let start = |shipped: &std::path::Path| {
        let text = format!("compiled_guests_dir = {shipped:?}\n") + &bed.agent_config();
        Agent::spawn(&bed.node, bed.dir.path(), &text, bed.socket()).unwrap()
    };
    // A node's first start: the three hooks load, nothing is compiled (the
    // agent's own cache of what it compiled stays empty), and an ADD runs
    // them.
    let agent = start(&shipped);
    let ns = Ns::new("shipped").unwrap();
    let path = ns.path().display().to_string();
    let r = ok(bed.hostnic().call(
        "ADD",
        &bed.netconf("1.0.0", json!([])),
        &pod_env("shipped", &path),
    ));
    assert_eq!(
        r["ips"][0]["address"].as_str().map(|a| a.is_empty()),
        Some(false)
    );
    let socket = bed.socket().display().to_string();
    let (success, out) = agent_cli(&["decisions", "--socket", &socket]);
    assert!(success, "{out}");
    // (One vxnet: the vxnet hook has no choice to make.)
    for hook in ["ip", "routes"] {
        assert!(
            out.contains(&format!("\"hook\":\"{hook}\"")),
            "{hook}: {out}"
        );
    }
    assert!(!cache.exists(), "{}", agent.log_text());
    ok(bed.hostnic().call(
        "DEL",
        &bed.netconf("1.0.0", json!([])),
        &pod_env("shipped", &path),
    ));
    drop(agent);
    // Without them (no such directory), the agent compiles and caches.
    let agent = start(&bed.dir.path().join("none"));
    assert!(cache.exists(), "{}", agent.log_text());
}
