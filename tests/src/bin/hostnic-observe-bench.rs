//! `hostnic-observe-bench`: what observability costs (issue 9), on the
//! cloud testbed with a real API server.
//!
//! 1. Warm ADD and DEL through the executable with everything on — the
//!    metrics endpoint scraped every second, the decision audit, the
//!    network-status and decision annotations written to the API server,
//!    events — against everything that can be turned off (`[metrics]
//!    address = ""`, `[kubernetes] annotate = false`, `events = false`),
//!    in rounds of the same run, each round starting with the next mode.
//!    The audit ring and the counters are always on: their cost is in
//!    every column.
//! 2. The agent's resident memory before and after its pod cache holds 100
//!    pods of its node.
//!
//! Usage: hostnic-observe-bench [ROUNDS] [PODS_PER_ROUND] (default 8 × 15).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::stats::{ms, pct};
use hostnic_testbed::{CallEnv, Ns, kubebed};
use serde_json::{Value, json};

const WARM: &str = "warm_min = 20\nwarm_max = 40\n";

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-observe-bench needs root: it creates network namespaces");
    }
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(8), |a| a.parse())?;
    let per_round: usize = args.next().map_or(Ok(15), |a| a.parse())?;
    let bed = CloudBed::new(SimConfig {
        nodes: 1,
        ..SimConfig::default()
    })?;
    let cp = kubebed::control_plane(&bed, None)?;
    println!(
        "hostnic-observe-bench: {rounds} rounds × {per_round} pods per mode, warm NICs, a real API server\n"
    );

    // The pod cache: 100 pods of node-0 in the API server.
    let agent = kubebed::agent(&bed, &cp, 0, (WARM, ""), "")?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_empty = agent.rss_kib().context("the agent's RSS")?;
    let items: Vec<Value> = (0..100)
        .map(|i| serde_json::from_str(&kubebed::pod_object(&format!("p{i}"), "node-0")))
        .collect::<Result<_, _>>()?;
    cp.apply(&json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string())?;
    std::thread::sleep(Duration::from_secs(3));
    let rss_100 = agent.rss_kib().context("the agent's RSS")?;
    drop(agent);

    // The modes, alternating round by round so drift on a shared machine
    // hits them all: (name, [kubernetes] keys, tables, scraped).
    let no_writes = "annotate = false\nevents = false\n";
    let no_metrics = "[metrics]\naddress = \"\"\n";
    let modes = [
        ("all of these off", no_writes, no_metrics, false),
        (
            "metrics served and scraped every second",
            no_writes,
            "",
            true,
        ),
        ("annotations and events written", "", no_metrics, false),
        ("all on", "", "", true),
    ];
    let mut samples: Vec<Samples> = modes.iter().map(|_| Samples::default()).collect();
    for round in 0..rounds {
        // Each round starts with the next mode, so none always runs first.
        for m in (0..modes.len()).map(|k| (k + round) % modes.len()) {
            let (_, kube, tables, scraped) = &modes[m];
            let agent = kubebed::agent(&bed, &cp, 0, (WARM, kube), tables)?;
            wait_warm(&bed, per_round)?;
            let scraping = Arc::new(AtomicBool::new(*scraped));
            let scraper = {
                let (flag, ns) = (scraping.clone(), bed.sim.nodes[0].ns.path().to_path_buf());
                std::thread::spawn(move || {
                    while flag.load(Ordering::Relaxed) {
                        let _ = std::process::Command::new("nsenter")
                            .arg(format!("--net={}", ns.display()))
                            .args([
                                "curl",
                                "-sf",
                                "-o",
                                "/dev/null",
                                "http://127.0.0.1:9273/metrics",
                            ])
                            .status();
                        std::thread::sleep(Duration::from_secs(1));
                    }
                })
            };
            add_del(&bed, round * per_round, per_round, &mut samples[m])?;
            scraping.store(false, Ordering::Relaxed);
            scraper.join().ok();
            bed.settle(0);
            drop(agent);
        }
    }

    println!("| mode | ADD p50 | ADD p99 | DEL p50 | DEL p99 |");
    println!("|---|---|---|---|---|");
    for ((name, ..), s) in modes.iter().zip(&samples) {
        println!(
            "| {name} | {} | {} | {} | {} |",
            ms(pct(&s.add, 50)),
            ms(pct(&s.add, 99)),
            ms(pct(&s.del, 50)),
            ms(pct(&s.del, 99))
        );
    }
    println!();
    let off = pct(&samples[0].add, 50).as_secs_f64();
    for ((name, ..), s) in modes.iter().zip(&samples).skip(1) {
        let ratio = pct(&s.add, 50).as_secs_f64() / off;
        println!(
            "ADD p50, {name} / all off: {ratio:.3} ({:+.1}%; target < 3%)",
            (ratio - 1.0) * 100.0
        );
    }
    let decision = cp.kubectl(&[
        "get",
        "pod",
        "p0",
        "-o",
        "jsonpath={.metadata.annotations.hostnic\\.io/decision}",
    ])?;
    println!("a pod's hostnic.io/decision: {decision}");
    println!(
        "agent RSS: {} MiB with its pod cache empty, {} MiB with 100 pods of its node ({:+} KiB)",
        rss_empty / 1024,
        rss_100 / 1024,
        rss_100 as i64 - rss_empty as i64
    );
    Ok(())
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

/// Waits until the warm pool has `n` free NICs, so every ADD is warm.
fn wait_warm(bed: &CloudBed, n: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let out = std::process::Command::new(hostnic_testbed::bin("hostnic-agent"))
            .args(["status", "--json", "--socket"])
            .arg(bed.socket(0))
            .output()?;
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
            let free = v["nics"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["state"] == "free")
                .count();
            if free >= n {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the warm pool did not reach {n} free NICs in 60 s")
}

/// How the runtime calls for a pod (container id, netns path, CNI_ARGS).
fn env((cid, path, args): &(String, String, String)) -> CallEnv<'_> {
    CallEnv {
        container_id: cid,
        netns: path,
        ifname: "eth0",
        args,
    }
}

/// ADD then DEL of `n` pods (`p<first>`…), each timed through the
/// executable as a runtime calls it.
fn add_del(bed: &CloudBed, first: usize, n: usize, s: &mut Samples) -> anyhow::Result<()> {
    let conf = bed.netconf(0, "1.1.0", json!([]));
    let nss: Vec<Ns> = (0..n)
        .map(|i| Ns::new(&format!("ob{i}")))
        .collect::<Result<_, _>>()?;
    let pods: Vec<(String, String, String)> = nss
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            (
                format!("obs{}", first + i),
                ns.path().display().to_string(),
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p{}",
                    (first + i) % 100
                ),
            )
        })
        .collect();
    let mut results = Vec::new();
    for pod in &pods {
        let t = Instant::now();
        match bed.hostnic(0).call("ADD", &conf, &env(pod))? {
            Ok(r) => {
                s.add.push(t.elapsed());
                results.push(r);
            }
            Err(e) => bail!("ADD {}: {e}", pod.0),
        }
    }
    for (pod, prev) in pods.iter().zip(results) {
        let mut c = conf.clone();
        c["prevResult"] = prev;
        let t = Instant::now();
        if let Err(e) = bed.hostnic(0).call("DEL", &c, &env(pod))? {
            bail!("DEL {}: {e}", pod.0);
        }
        s.del.push(t.elapsed());
    }
    Ok(())
}
