//! `hostnic-demo --vxnet-guest FILE`: the policy author's vxnet guest on
//! both agents of the simulated zone, two vxnets to choose from, and pods
//! that ask for one (or not) with the annotation `hostnic.io/vxnet`. Shows
//! the order the guest gave for each pod and where the pod's NIC came from.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::{CallEnv, Ns, bin, sha256_file};
use serde_json::{Value, json};

use crate::{check, ip_of, say};

/// (pod, VM, the vxnet it asks for).
const PODS: [(&str, usize, Option<&str>); 6] = [
    ("web-0", 0, None),
    ("web-1", 1, None),
    ("db-0", 0, Some("vxnet-pods-b")),
    ("db-1", 1, Some("vxnet-pods-b")),
    ("cache-0", 0, Some("vxnet-pods")),
    ("batch-0", 1, Some("vxnet-elsewhere")),
];

pub fn run(module: &Path, decisions_out: Option<&Path>) -> anyhow::Result<()> {
    let module = std::fs::canonicalize(module)
        .with_context(|| format!("the vxnet guest {}", module.display()))?;
    let digest = sha256_file(&module)?;
    let vxnets = [
        ("vxnet-pods", "10.100.0.0/24"),
        ("vxnet-pods-b", "10.101.0.0/24"),
    ];
    let bed = CloudBed::new(SimConfig::with_vxnets(&vxnets)?)?;
    say(&format!(
        "simulated zone {}: vxnet-pods 10.100.0.0/24 and vxnet-pods-b 10.101.0.0/24, candidates in that order",
        bed.sim.config().zone
    ));
    // The agent config's [hooks.vxnet] table, as an operator writes it.
    let hooks = format!(
        "warm_min = 1\nwarm_max = 4\nreconcile_seconds = 2\ncold_add_wait_seconds = 20\n\
         [hooks.vxnet]\npath = {module:?}\nsha256 = \"{digest}\"\n"
    );
    let mut agents = Vec::new();
    for i in 0..bed.sim.nodes.len() {
        let agent = bed
            .start_agent(i, &hooks)
            .with_context(|| format!("starting VM {i}'s agent with {}", module.display()))?;
        agents.push(agent);
    }
    say(&format!(
        "both agents run the vxnet guest {} (sha256 {})",
        module.display(),
        &digest[..12]
    ));

    let mut pods = Vec::new();
    let mut rows = Vec::new();
    for (i, (name, node, wants)) in PODS.iter().enumerate() {
        let ns = Ns::new(name)?;
        let path = ns.path().display().to_string();
        let cid = format!("guest{i}");
        let annotations = match wants {
            Some(v) => json!({"hostnic.io/vxnet": v}),
            None => json!({}),
        };
        let mut conf = bed.netconf(*node, "1.1.0", json!([]));
        conf["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": annotations});
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={name}");
        let env = CallEnv {
            container_id: &cid,
            netns: &path,
            ifname: "eth0",
            args: &args,
        };
        let t = Instant::now();
        let got = loop {
            match bed.hostnic(*node).call("ADD", &conf, &env)? {
                Ok(r) => {
                    let ip = ip_of(&r);
                    let vxnet = vxnet_of(&ip);
                    break format!("{ip} ({vxnet})");
                }
                Err(e) if e.code == Some(11) && t.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                // A refusal is the policy's answer: show it.
                Err(e) => break format!("failed: {e}"),
            }
        };
        let order = match decisions(&bed, *node)?
            .iter()
            .rev()
            .find(|c| c["hook"] == "vxnet" && c["container_id"] == cid.as_str())
        {
            Some(c) => shown_order(c),
            None => "(not called)".to_string(),
        };
        rows.push((name, node, wants.unwrap_or("-"), order, got));
        pods.push((*node, ns, path, cid, conf));
    }
    say("where the guest placed each pod:");
    println!(
        "      {:8} {:2} {:24} {:30} got",
        "pod", "VM", "hostnic.io/vxnet", "the guest's order"
    );
    for (name, node, wants, order, got) in &rows {
        println!("      {name:8} {node:<2} {wants:24} {order:30} {got}");
    }
    let placed = rows.iter().filter(|r| !r.4.starts_with("failed")).count();
    check(
        placed > 0,
        &format!("{placed} of {} pods got a NIC", rows.len()),
    )?;
    if let Some(out) = decisions_out {
        let mut lines = String::new();
        for node in 0..bed.sim.nodes.len() {
            for call in decisions(&bed, node)? {
                lines += &format!("{call}\n");
            }
        }
        std::fs::write(out, lines).with_context(|| format!("writing {}", out.display()))?;
        say(&format!(
            "the agents' decisions saved to {} (hostnic-agent policy replay FILE --decisions {0})",
            out.display()
        ));
    }

    for (node, _ns, path, cid, conf) in &pods {
        crate::del(&bed, *node, conf, cid, path)?;
    }
    for i in 0..bed.sim.nodes.len() {
        bed.settle(i);
    }
    check(bed.leaked_nics().is_empty(), "DEL every pod; no NIC leaked")?;
    drop(agents);
    say("done; namespaces removed");
    Ok(())
}

fn vxnet_of(ip: &str) -> &'static str {
    if ip.starts_with("10.101.") {
        "vxnet-pods-b"
    } else if ip.starts_with("10.100.") {
        "vxnet-pods"
    } else {
        "?"
    }
}

/// The decisions `node`'s agent recorded (`hostnic-agent policy
/// decisions`), oldest first.
fn decisions(bed: &CloudBed, node: usize) -> anyhow::Result<Vec<Value>> {
    let out = Command::new(bin("hostnic-agent"))
        .args(["policy", "decisions", "--socket"])
        .arg(bed.socket(node))
        .output()
        .context("running hostnic-agent policy decisions")?;
    if !out.status.success() {
        bail!(
            "hostnic-agent policy decisions: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).context("a recorded decision"))
        .collect()
}

/// The vxnet order a recorded call answered, or its refusal.
fn shown_order(call: &Value) -> String {
    match (&call["answer"], &call["error"]) {
        (Value::Array(ids), _) => ids
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        (_, Value::String(e)) => format!("refused: {e}"),
        _ => "?".to_string(),
    }
}
