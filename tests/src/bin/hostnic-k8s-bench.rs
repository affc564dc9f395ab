//! `hostnic-k8s-bench [PODS]`: pod created → Running on the real cluster
//! (kubelet, containerd, the control plane; see `cluster.rs`), one pod at a
//! time so that each measures the path and not a queue, with hostnic on a
//! warm pool next to the reference ptp plugin (host-local addresses) on the
//! same testbed, in the same run. Prints p50/p99 and the ratio.
//!
//! The time is the client's: from `kubectl apply` of the pod to the first
//! `kubectl get` that shows it Running (polled every ~50 ms, each poll a
//! kubectl process), so both columns carry the same overhead.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::cluster::{BUSYBOX_IMAGE, Cluster, Install};
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::stats::{ms, pct};
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
    for (name, install) in [
        (
            "hostnic (warm pool)",
            Install::Agents(format!(
                "warm_min = {}\nwarm_max = {}\n",
                per_node + 1,
                per_node + 4
            )),
        ),
        ("ptp + host-local", Install::Ptp),
    ] {
        let bed = CloudBed::new(SimConfig {
            nodes: 2,
            vxnets: vec![("vxnet-pods".into(), "10.100.0.0/24".parse()?)],
            ..SimConfig::default()
        })?;
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
        rows.push(pct(&samples, 50));
    }
    if let [hostnic, ptp] = rows[..] {
        println!(
            "  p50 ratio hostnic / ptp: {:.2}",
            hostnic.as_secs_f64() / ptp.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
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
