//! `hostnic-demo`: the README's first command. A node (a network namespace)
//! with a few NICs on a vxnet, the real agent, and pods that get a NIC each
//! through the real `hostnic` executable, ping their gateway and each other,
//! and give their NICs back. Everything happens in namespaces created here
//! and removed at the end.

use std::time::Instant;

use anyhow::{Context, bail};
use hostnic_testbed::{CallEnv, GATEWAY, Ns, Testbed};
use serde_json::{Value, json};

const NICS: usize = 4;
const PODS: [&str; 3] = ["web-0", "web-1", "db-0"];

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-demo needs root: it creates network namespaces (try: sudo scripts/demo)");
    }
    let tb = Testbed::new(NICS)?;
    say(&format!(
        "node netns {} with {NICS} NICs on vxnet 10.99.0.0/24 (gateway {GATEWAY} in netns {})",
        tb.node.name(),
        tb.wire.name()
    ));
    let default_route = tb.node_default_route()?;
    say(&format!("node default route: {default_route}"));

    let agent = tb.start_agent()?;
    say(&format!(
        "hostnic-agent serving on {}",
        agent.socket.display()
    ));

    let cni = tb.hostnic();
    let conf = tb.netconf("1.1.0", json!([{"dst": "10.96.0.0/12", "gw": "0.0.0.0"}]));
    let mut pods = Vec::new();
    for (i, name) in PODS.iter().enumerate() {
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
        let t = Instant::now();
        let result = cni
            .call("ADD", &conf, &env)?
            .map_err(|e| anyhow::anyhow!("ADD {name}: {e}"))?;
        say(&format!(
            "ADD {name:6} -> eth0 {} {} ({:.1} ms)",
            result["interfaces"][0]["mac"].as_str().unwrap_or("?"),
            result["ips"][0]["address"].as_str().unwrap_or("?"),
            t.elapsed().as_secs_f64() * 1e3
        ));
        pods.push((name, ns, path, cid, result));
    }

    let (first, first_ns, ..) = &pods[0];
    say(&format!("inside {first}:"));
    for line in first_ns
        .ip(&["-br", "addr"])?
        .lines()
        .chain(first_ns.ip(&["route"])?.lines())
    {
        println!("      {line}");
    }
    for (name, ns, ..) in &pods {
        check(
            ns.ping(GATEWAY),
            &format!("{name} pings its gateway {GATEWAY}"),
        )?;
    }
    for w in pods.windows(2) {
        let to = ip_of(&w[1].4);
        check(
            w[0].1.ping(&to),
            &format!("{} pings {} at {to} over the vxnet", w[0].0, w[1].0),
        )?;
    }

    for (name, _, path, cid, result) in &pods {
        let mut c = conf.clone();
        c["prevResult"] = result.clone();
        let env = CallEnv {
            container_id: cid,
            netns: path,
            ifname: "eth0",
            args: "",
        };
        cni.call("CHECK", &c, &env)?
            .map_err(|e| anyhow::anyhow!("CHECK {name}: {e}"))?;
        say(&format!("CHECK {name}: the pod still has what ADD gave it"));
    }
    for (name, _, path, cid, _) in &pods {
        let env = CallEnv {
            container_id: cid,
            netns: path,
            ifname: "eth0",
            args: "",
        };
        cni.call("DEL", &conf, &env)?
            .map_err(|e| anyhow::anyhow!("DEL {name}: {e}"))?;
    }
    let parked = tb.parked_macs()?;
    say(&format!(
        "DEL all pods: {} of {NICS} NICs back in the pool",
        parked.len()
    ));
    check(parked.len() == NICS, "every NIC came back")?;
    check(
        tb.node_default_route()? == default_route,
        "the node's default route never moved",
    )?;
    drop(agent);
    say("done; namespaces removed");
    Ok(())
}

fn ip_of(result: &Value) -> String {
    let cidr = result["ips"][0]["address"].as_str().unwrap_or_default();
    cidr.split('/').next().unwrap_or_default().to_string()
}

fn say(s: &str) {
    println!("==> {s}");
}

fn check(ok: bool, what: &str) -> anyhow::Result<()> {
    println!("    [{}] {what}", if ok { "ok" } else { "FAILED" });
    if ok {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{what}")).context("demo check failed")
    }
}
