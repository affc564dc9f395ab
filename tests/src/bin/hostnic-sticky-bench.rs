//! `hostnic-sticky-bench [ROUNDS]`: a StatefulSet's pod rescheduled to the
//! other node, timed from `kubectl delete pod` (its node cordoned) to the
//! replacement Running there, in the real cluster (see `cluster.rs`): with
//! the default ip guest's `"statefulsets": true`, its sticky NIC moves with
//! it (detached from the old VM, attached to the new one); without, it
//! takes a warm NIC there. Each with the simulated cloud's attach and
//! detach taking 1 s and then 5 s, on a cluster of its own. Prints p50 and
//! max, and the ADD's own time with the part spent getting the NIC.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::cluster::{self, Cluster, Install};
use hostnic_testbed::sim::{Faults, SimConfig};
use hostnic_testbed::stats::{ms, pct};
use hostnic_testbed::{bin, kubebed};
use serde_json::Value;

const TIMERS: &str = "warm_min = 1\nwarm_max = 4\nreconcile_seconds = 1\n\
                      cold_add_wait_seconds = 20\nsticky_release_seconds = 0";
const STATEFULSETS: &str = "[hooks.ip]\nconfig = '{\"statefulsets\": true}'\n";

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-sticky-bench needs root: it runs a cluster in network namespaces");
    }
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("ROUNDS must be a number")?
        .unwrap_or(3);
    println!(
        "StatefulSet pod deleted -> Running on the other node, {rounds} rounds each \
         (p50 / max); its ADD: whole / getting the NIC (p50)"
    );
    for latency in [1000, 5000] {
        println!("  attach and detach {latency} ms each:");
        for (name, hooks) in [
            ("sticky (its NIC moves)", STATEFULSETS),
            ("not sticky (a warm NIC)", ""),
        ] {
            let [moves, add, wait] = run(latency, hooks, rounds)?;
            println!(
                "    {name:24} {} / {}; ADD {} / {}",
                ms(pct(&moves, 50)),
                ms(*moves.iter().max().unwrap_or(&Duration::ZERO)),
                ms(pct(&add, 50)),
                ms(pct(&wait, 50)),
            );
        }
    }
    Ok(())
}

/// One cluster: `rounds` reschedules of db-0; the times, and its ADDs'
/// whole and acquire times.
fn run(latency: u64, hooks: &str, rounds: usize) -> anyhow::Result<[Vec<Duration>; 3]> {
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        faults: Faults {
            attach_latency_ms: latency,
            detach_latency_ms: latency,
            ..Faults::default()
        },
        ..SimConfig::default()
    })?;
    let mut cluster = Cluster::start(bed, Install::Agents(String::new()))?;
    kubebed::watching_agents(&mut cluster, TIMERS, hooks)?;
    cluster.cp.apply(&cluster::statefulset("db", 1))?;
    cluster.wait("db-0 Running", Duration::from_secs(180), || {
        cluster.running_pods("app=db").len() == 1
    })?;
    // Both nodes' warm pools full before the first move.
    std::thread::sleep(Duration::from_millis(latency * 2 + 2000));
    let (first_ip, _) = pod_on(&cluster, "app=db").context("db-0")?;
    let (mut moves, mut add, mut wait) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (t, ip) = reschedule(&cluster, "app=db", latency)?;
        if !hooks.is_empty() && ip != first_ip {
            bail!("db-0 came back with {ip}, not {first_ip}");
        }
        moves.push(t);
        let d = last_add(&cluster).context("db-0's ADD decision")?;
        add.push(Duration::from_micros(d["total_us"].as_u64().unwrap_or(0)));
        wait.push(Duration::from_micros(d["acquire_us"].as_u64().unwrap_or(0)));
    }
    Ok([moves, add, wait])
}

/// The node and address of the one Running pod `selector` picks.
fn pod_on(cluster: &Cluster, selector: &str) -> Option<(String, String)> {
    let pods = cluster.running_pods(selector);
    let (_, (node, ip)) = pods.into_iter().next()?;
    Some((ip, node))
}

/// Cordons the pod's node, deletes the pod, and times it to Running on
/// the other node; then uncordons and lets the warm pools refill.
fn reschedule(
    cluster: &Cluster,
    selector: &str,
    latency: u64,
) -> anyhow::Result<(Duration, String)> {
    let (_, node) = pod_on(cluster, selector).context("the pod before")?;
    let name = cluster
        .running_pods(selector)
        .into_keys()
        .next()
        .context("its name")?;
    cluster.kubectl(&["cordon", &node])?;
    let t = Instant::now();
    cluster.kubectl(&["delete", "pod", &name, "--wait=false"])?;
    let mut ip = String::new();
    cluster.wait(
        "the pod Running on the other node",
        Duration::from_secs(120),
        || match pod_on(cluster, selector) {
            Some((i, n)) if n != node => {
                ip = i;
                true
            }
            _ => false,
        },
    )?;
    let took = t.elapsed();
    cluster.kubectl(&["uncordon", &node])?;
    std::thread::sleep(Duration::from_millis(latency * 2 + 2000));
    Ok((took, ip))
}

/// The latest successful ADD decision for db-0 on either node.
fn last_add(cluster: &Cluster) -> Option<Value> {
    (0..2)
        .flat_map(|i| {
            let out = std::process::Command::new(bin("hostnic-agent"))
                .args(["status", "--json", "--socket"])
                .arg(cluster.bed.socket(i))
                .output()
                .ok()?;
            let status: Value = serde_json::from_slice(&out.stdout).ok()?;
            status["decisions"].as_array().cloned()
        })
        .flatten()
        .filter(|d| d["pod"] == "db-0" && d["error"].is_null())
        .max_by_key(|d| d["at_ms"].as_u64().unwrap_or(0))
}
