//! `hostnic-k8s-bench [PODS]`: pod created → Running on the real cluster
//! (kubelet, containerd, the control plane; see `cluster.rs`), one pod at a
//! time so that each measures the path and not a queue, with hostnic on a
//! warm pool in each NIC wiring (`passthru`, `move`) next to the reference
//! ptp plugin (host-local addresses) on the same testbed, in the same run.
//! Prints p50/p99 and the ratios.
//!
//! The time is the client's: from `kubectl apply` of the pod to the first
//! `kubectl get` that shows it Running (polled every ~50 ms, each poll a
//! kubectl process), so both columns carry the same overhead.
//!
//! Then the agent's restart inside the cluster, installed from deploy/ as
//! an operator does: node-0's agent pod deleted while pods hold NICs there,
//! timed to its replacement Ready (the DaemonSet controller, kubelet, the
//! init container, the agent's start and its readiness probe), and the
//! agent's own part from its log (first line to "serving").

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::cluster::{self, BUSYBOX_IMAGE, Cluster, Install};
use hostnic_testbed::deploy;
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::stats::{self, ms, pct};
use serde_json::json;

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-k8s-bench needs root: it runs a cluster in network namespaces");
    }
    let pods: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("PODS must be a number")?
        .unwrap_or(20);
    let per_node = pods.div_ceil(2);
    println!("pod created -> Running, {pods} pods one at a time over 2 nodes (p50 / p99 / max)");
    let mut rows = Vec::new();
    let warm = Install::Agents(format!(
        "warm_min = {}\nwarm_max = {}\n",
        per_node + 1,
        per_node + 4
    ));
    for (name, install, wiring) in [
        (
            "hostnic passthru (warm pool)",
            warm.clone(),
            Some("passthru"),
        ),
        ("hostnic move (warm pool)", warm, Some("move")),
        ("ptp + host-local", Install::Ptp, None),
    ] {
        let mut bed = CloudBed::new(SimConfig {
            nodes: 2,
            vxnets: vec![("vxnet-pods".into(), "10.100.0.0/24".parse()?)],
            ..SimConfig::default()
        })?;
        bed.wiring = wiring.map(str::to_string);
        let cluster = Cluster::start(bed, install.clone())?;
        if let Install::Agents(_) = install {
            // Warm: every pod will find a free NIC on its node.
            cluster.wait("the warm pools to fill", Duration::from_secs(120), || {
                let inspect = cluster.bed.sim.inspect();
                cluster.bed.sim.nodes.iter().all(|vm| {
                    inspect["nics"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|n| n["instance"] == vm.instance.as_str() && n["role"] == 0)
                        .count()
                        > per_node
                })
            })?;
        }
        let samples = measure(&cluster, pods)?;
        println!(
            "  {name:20} {} / {} / {}",
            ms(pct(&samples, 50)),
            ms(pct(&samples, 99)),
            ms(*samples.iter().max().unwrap_or(&Duration::ZERO))
        );
        if let Install::Agents(_) = install {
            // How much of it is hostnic's: the agents' own account of
            // their latest ADDs.
            let mut total = Vec::new();
            for node in 0..cluster.nodes.len() {
                let phases = stats::phases(&cluster.bed.status(node)?)?;
                total.extend(phases[stats::PHASES.len() - 1].iter().copied());
            }
            println!(
                "  {:20} the agents' own ADD p50 / p99: {} / {}",
                "",
                ms(pct(&total, 50)),
                ms(pct(&total, 99))
            );
        }
        rows.push(pct(&samples, 50));
    }
    if let [passthru, moved, ptp] = rows[..] {
        let ratio = |a: Duration| a.as_secs_f64() / ptp.as_secs_f64().max(1e-9);
        println!(
            "  p50 ratio hostnic / ptp: passthru {:.2}, move {:.2}",
            ratio(passthru),
            ratio(moved)
        );
    }
    restarts(5)
}

/// Deletes node-0's agent pod `n` times while 3 pods hold NICs on that
/// node, and prints how long until its replacement is Ready and how long
/// the agent in it took from its first log line to serving.
fn restarts(n: usize) -> anyhow::Result<()> {
    println!();
    println!(
        "agent restart to serving in the cluster (DaemonSet from deploy/), {n} restarts of node-0's agent with 3 pods holding NICs there (p50 / max)"
    );
    let (cluster, _) = deploy::install(&[("vxnet-pods", "10.100.0.0/24")])?;
    cluster.cp.apply(&cluster::deployment("hold", 6))?;
    cluster.wait("6 pods Running", Duration::from_secs(180), || {
        cluster.running_pods("app=hold").len() == 6
    })?;
    // (pod, Ready) of node-0's agent pods, the one being deleted included.
    let agent_pods = || -> anyhow::Result<Vec<(String, bool)>> {
        Ok(cluster
            .agent_pods(Some("node-0"))?
            .iter()
            .map(|p| {
                let ready = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                (
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    ready,
                )
            })
            .collect())
    };
    let (mut gone, mut ready, mut start) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let old = match &agent_pods()?[..] {
            [(name, true)] => name.clone(),
            other => bail!("node-0's agent pods: {other:?}"),
        };
        let t = Instant::now();
        cluster.kubectl(&["delete", "pod", "-n", "kube-system", &old, "--wait=false"])?;
        let (mut new, mut old_gone) = (String::new(), None);
        cluster.wait("the new agent Ready", Duration::from_secs(120), || {
            let pods = agent_pods().unwrap_or_default();
            if old_gone.is_none() && !pods.iter().any(|(p, _)| *p == old) {
                old_gone = Some(t.elapsed());
            }
            match pods.iter().find(|(p, ready)| *p != old && *ready) {
                Some((p, _)) => {
                    new = p.clone();
                    true
                }
                None => false,
            }
        })?;
        ready.push(t.elapsed());
        gone.push(old_gone.unwrap_or_default());
        let log = cluster.kubectl(&["logs", "-n", "kube-system", &new, "-c", "agent"])?;
        let took = serving_after(&log).context("no 'serving' line in the new agent's log")?;
        if took > Duration::from_secs(1) {
            // A slow start is explained by its log: show what it waited on.
            eprintln!("agent {new} took {took:?} to serve; its log:\n{log}");
        }
        start.push(took);
    }
    let row = |name: &str, s: &[Duration]| {
        println!(
            "  {name:42} {} / {}",
            ms(pct(s, 50)),
            ms(*s.iter().max().unwrap_or(&Duration::ZERO))
        );
    };
    row("agent pod deleted -> old pod gone", &gone);
    row("agent pod deleted -> replacement Ready", &ready);
    row("agent process: first log line -> serving", &start);
    let running = cluster.running_pods("app=hold").len();
    println!("  pods still Running afterwards: {running} of 6");
    Ok(())
}

/// From the agent's first log line to its "serving" line, by the
/// timestamps it logged.
fn serving_after(log: &str) -> Option<Duration> {
    let at = |line: &str| humantime::parse_rfc3339(line.split_whitespace().next()?).ok();
    let first = log.lines().find_map(at)?;
    let serving = log
        .lines()
        .filter(|l| l.contains(" serving "))
        .find_map(at)?;
    serving.duration_since(first).ok()
}

/// Creates `n` pods one after another, alternating nodes, and times each
/// to Running.
fn measure(cluster: &Cluster, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("bench-{i}");
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "bench"}},
            "spec": {
                "nodeName": format!("node-{}", i % 2),
                "terminationGracePeriodSeconds": 1,
                "automountServiceAccountToken": false,
                "containers": [{"name": "c", "image": BUSYBOX_IMAGE,
                                "imagePullPolicy": "Never", "command": ["sleep", "3600"]}],
            },
        });
        let start = Instant::now();
        cluster.cp.apply(&pod.to_string())?;
        loop {
            let phase = cluster
                .kubectl(&["get", "pod", &name, "-o", "jsonpath={.status.phase}"])
                .unwrap_or_default();
            if phase == "Running" {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("{name} not Running within 60 s:\n{}", cluster.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        samples.push(start.elapsed());
    }
    cluster.kubectl(&["delete", "pods", "-l", "app=bench", "--wait=false"])?;
    Ok(samples)
}
