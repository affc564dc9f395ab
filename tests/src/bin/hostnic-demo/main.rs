//! `hostnic-demo`: the README's first command. A simulated QingCloud zone
//! (the IaaS simulator: signed API, async jobs, an SDN of bridges) with two
//! VMs, a real `hostnic-agent` on each taking its NICs from the cloud, and
//! pods that get a NIC each through the real `hostnic` executable, talk
//! across nodes, reach a service through their node, and give their NICs
//! back. Everything lives in namespaces created here and removed at exit.
//!
//! `--vxnet-guest FILE` tells another story: the policy author's own vxnet
//! guest placing pods on two vxnets (`guest.rs`). `--kubernetes` tells this
//! one on a real cluster built from source (`kubernetes.rs`).

mod guest;
mod kubernetes;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::{CallEnv, Ns};
use serde_json::{Value, json};

const PODS: [(&str, usize); 4] = [("web-0", 0), ("web-1", 1), ("db-0", 0), ("cache-0", 1)];
const SERVICE_IP: &str = "10.96.0.10";

/// hostnic's demo: a simulated QingCloud zone with two VMs, a real agent on
/// each, pods getting cloud NICs through the real CNI executable, and a live
/// policy swap. Needs root; everything it creates is removed at exit.
#[derive(Debug, Parser)]
#[command(name = "hostnic-demo")]
struct Cli {
    /// Run your vxnet-selection guest (a .wasm component) on both agents
    /// instead, and show which vxnet it placed each pod in. Pods ask for a
    /// vxnet with the annotation hostnic.io/vxnet.
    #[arg(long, value_name = "FILE")]
    vxnet_guest: Option<PathBuf>,
    /// With --vxnet-guest: save the decisions both agents recorded (JSON
    /// lines) for `hostnic-agent policy replay --decisions FILE`.
    #[arg(long, value_name = "FILE", requires = "vxnet_guest")]
    decisions_out: Option<PathBuf>,
    /// The story on a real Kubernetes cluster built from source (the first
    /// build takes about 10 minutes): hostnic installed with kubectl from
    /// deploy/, a Deployment's pods with cloud NICs, a policy module
    /// swapped by one kubectl apply.
    #[arg(long, conflicts_with = "vxnet_guest")]
    kubernetes: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-demo needs root: it creates network namespaces (try: sudo scripts/demo)");
    }
    if let Some(file) = cli.vxnet_guest {
        return guest::run(&file, cli.decisions_out.as_deref());
    }
    if cli.kubernetes {
        return kubernetes::run();
    }
    let bed = CloudBed::new(SimConfig {
        vxnets: vec![
            ("vxnet-pods".into(), "10.100.0.0/24".parse()?),
            ("vxnet-pods-b".into(), "10.101.0.0/24".parse()?),
        ],
        ..SimConfig::default()
    })?;
    say(&format!(
        "simulated zone {} at http://{}/iaas/ (signed requests only), vxnet-pods 10.100.0.0/24",
        bed.sim.config().zone,
        bed.sim.local_addr
    ));
    let timers = "warm_min = 1\nwarm_max = 4\nreconcile_seconds = 2\ncold_add_wait_seconds = 20";
    let mut agents = Vec::new();
    for (i, node) in bed.sim.nodes.iter().enumerate() {
        agents.push(bed.start_agent(i, timers)?);
        say(&format!(
            "VM {} (netns {}, {}): hostnic-agent serving",
            node.instance,
            node.ns.name(),
            node.ip
        ));
    }
    // The service CIDR must not overlap any pod vxnet: a pod would send its
    // traffic for another vxnet to its node instead of its gateway.
    let routes = json!([{"dst": "10.96.0.0/16", "gw": "0.0.0.0"}]);

    let mut pods = Vec::new();
    for (i, (name, node)) in PODS.iter().enumerate() {
        let ns = Ns::new(name)?;
        let path = ns.path().display().to_string();
        let cid = format!("demo{i}");
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={name}");
        let env = CallEnv {
            container_id: &cid,
            netns: &path,
            ifname: "eth0",
            args: &args,
        };
        let conf = bed.netconf(*node, "1.1.0", routes.clone());
        let t = Instant::now();
        // As kubelet does: retry while the answer is "try again later" (a
        // cold NIC still attaching).
        let result = loop {
            match bed.hostnic(*node).call("ADD", &conf, &env)? {
                Ok(r) => break r,
                Err(e) if e.code == Some(11) && t.elapsed().as_secs() < 60 => {
                    std::thread::sleep(std::time::Duration::from_millis(200))
                }
                Err(e) => bail!("ADD {name}: {e}"),
            }
        };
        say(&format!(
            "ADD {name:8} on {} -> eth0 {} {} ({:.0} ms)",
            bed.sim.nodes[*node].instance,
            result["interfaces"][0]["mac"].as_str().unwrap_or("?"),
            result["ips"][0]["address"].as_str().unwrap_or("?"),
            t.elapsed().as_secs_f64() * 1e3
        ));
        pods.push((name, *node, ns, path, cid, result));
    }

    let (first, _, first_ns, ..) = &pods[0];
    say(&format!("inside {first}:"));
    for line in first_ns
        .ip(&["-br", "addr"])?
        .lines()
        .chain(first_ns.ip(&["route"])?.lines())
    {
        println!("      {line}");
    }
    for a in &pods {
        for b in &pods {
            if a.1 != b.1 && a.0 < b.0 {
                let to = ip_of(&b.5);
                check(
                    a.2.ping(&to),
                    &format!(
                        "{} (VM {}) pings {} (VM {}) at {to} over the SDN",
                        a.0, a.1, b.0, b.1
                    ),
                )?;
            }
        }
    }

    // A service IP, DNAT'ed on VM 0 as kube-proxy would: pods on VM 0 reach
    // it through the node's own NIC in the vxnet (the gw 0.0.0.0 template).
    let vm0 = &bed.sim.nodes[0];
    vm0.ns
        .exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                SERVICE_IP,
                "-p",
                "icmp",
                "-j",
                "DNAT",
                "--to-destination",
                &vm0.ip.to_string(),
            ],
        )
        .context("installing the demo's DNAT rule")?;
    for (name, node, ns, ..) in pods.iter().filter(|p| p.1 == 0) {
        check(
            ns.ping(SERVICE_IP),
            &format!("{name} (VM {node}) reaches service {SERVICE_IP} through its node"),
        )?;
    }

    for (_, node, _, path, cid, _) in &pods {
        del(
            &bed,
            *node,
            &bed.netconf(*node, "1.1.0", routes.clone()),
            cid,
            path,
        )?;
    }
    say("DEL every pod: their NICs wait, warm, on their VMs");
    let inspect = bed.sim.inspect();
    let nics = inspect["nics"].as_array().cloned().unwrap_or_default();
    for n in nics.iter().filter(|n| n["role"] == 0) {
        println!(
            "      {} {:13} {:8} on {}",
            n["id"].as_str().unwrap_or("?"),
            n["ip"].as_str().unwrap_or("?"),
            n["state"].as_str().unwrap_or("?"),
            n["instance"].as_str().unwrap_or("-")
        );
    }
    check(bed.leaked_nics().is_empty(), "no NIC leaked in the cloud")?;

    // A live policy swap: the vxnet hook goes from the original FailRotate
    // (every pod on the first vxnet) to RoundRotate by editing the agent's
    // config; the agent compiles, checks and swaps the guest without a
    // restart.
    say(
        "policy swap: hooks.vxnet config {\"policy\": \"RoundRotate\"} written to VM 0's agent config, SIGHUP",
    );
    let config =
        bed.agent_config(0, timers) + "[hooks.vxnet]\nconfig = '{\"policy\": \"RoundRotate\"}'\n";
    std::fs::write(bed.dir.path().join("node0/agent.toml"), config)?;
    agents[0].hup()?;
    let t = Instant::now();
    while !agents[0].log_text().contains("policy hook reloaded") {
        if t.elapsed().as_secs() > 10 {
            bail!(
                "the agent did not reload its hooks:\n{}",
                agents[0].log_text()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    say(&format!(
        "vxnet hook swapped in {:.0} ms, no restart",
        t.elapsed().as_secs_f64() * 1e3
    ));
    let mut vxnets_seen = std::collections::BTreeSet::new();
    for i in 0..4 {
        let ns = Ns::new(&format!("rr{i}"))?;
        let path = ns.path().display().to_string();
        let cid = format!("rr{i}");
        let env = CallEnv {
            container_id: &cid,
            netns: &path,
            ifname: "eth0",
            args: "",
        };
        let conf = bed.netconf(0, "1.1.0", json!([]));
        let t = Instant::now();
        let result = loop {
            match bed.hostnic(0).call("ADD", &conf, &env)? {
                Ok(r) => break r,
                Err(e) if e.code == Some(11) && t.elapsed().as_secs() < 60 => {
                    std::thread::sleep(std::time::Duration::from_millis(200))
                }
                Err(e) => bail!("ADD rr{i}: {e}"),
            }
        };
        let ip = ip_of(&result);
        let vxnet = if ip.starts_with("10.101.") {
            "vxnet-pods-b"
        } else {
            "vxnet-pods"
        };
        vxnets_seen.insert(vxnet);
        say(&format!("ADD rr{i} on VM 0 -> {ip} in {vxnet}"));
        bed.hostnic(0)
            .call("DEL", &conf, &env)?
            .map_err(|e| anyhow::anyhow!("DEL rr{i}: {e}"))?;
    }
    check(
        vxnets_seen.len() == 2,
        "after the swap, pods rotate across both vxnets",
    )?;
    let calls: u64 = bed.sim.calls().values().sum();
    say(&format!(
        "cloud API calls in the whole demo: {calls} ({:?})",
        bed.sim.calls()
    ));
    drop(agents);
    say("done; namespaces removed");
    Ok(())
}

/// DEL of pod `cid` (netns `netns`) on VM `node`, as its runtime sends it.
pub(crate) fn del(
    bed: &CloudBed,
    node: usize,
    conf: &Value,
    cid: &str,
    netns: &str,
) -> anyhow::Result<()> {
    let env = CallEnv {
        container_id: cid,
        netns,
        ifname: "eth0",
        args: "",
    };
    bed.hostnic(node)
        .call("DEL", conf, &env)?
        .map(drop)
        .map_err(|e| anyhow::anyhow!("DEL {cid}: {e}"))
}

pub(crate) fn ip_of(result: &Value) -> String {
    let cidr = result["ips"][0]["address"].as_str().unwrap_or_default();
    cidr.split('/').next().unwrap_or_default().to_string()
}

pub(crate) fn say(s: &str) {
    println!("==> {s}");
}

pub(crate) fn check(ok: bool, what: &str) -> anyhow::Result<()> {
    println!("    [{}] {what}", if ok { "ok" } else { "FAILED" });
    if ok {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{what}")).context("demo check failed")
    }
}
