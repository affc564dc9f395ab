//! `hostnic-cloud-bench`: hostnic with its NICs from the simulated cloud.
//!
//! - cold ADD latency against the simulated attach latency,
//! - warm ADD in cloud mode,
//! - a burst of 60 pods on one node,
//! - cloud API calls per pod over a churn of 200 pods on a warm pool.
//!
//! Every ADD and DEL is an exec of the real `hostnic` in the VM's
//! namespace, retried on "try again later" as kubelet does.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sim::{Faults, SimConfig};
use hostnic_testbed::stats::{ms, pct};
use hostnic_testbed::{CallEnv, Ns};
use serde_json::{Value, json};

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-cloud-bench needs root: it creates network namespaces");
    }
    println!("hostnic-cloud-bench: the simulated cloud, exec'd hostnic, retries on code 11\n");
    cold_vs_latency()?;
    burst(60)?;
    churn(200)?;
    Ok(())
}

fn bed(latency_ms: u64) -> anyhow::Result<CloudBed> {
    CloudBed::new(SimConfig {
        nodes: 1,
        faults: Faults {
            attach_latency_ms: latency_ms,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
}

struct Pods {
    /// Kept so the namespaces live as long as the pods.
    _ns: Vec<Ns>,
    paths: Vec<String>,
    ids: Vec<String>,
}

impl Pods {
    fn new(n: usize, tag: &str) -> anyhow::Result<Pods> {
        let ns: Vec<Ns> = (0..n)
            .map(|i| Ns::new(&format!("{tag}{i}")))
            .collect::<Result<_, _>>()?;
        let paths = ns.iter().map(|p| p.path().display().to_string()).collect();
        let ids = (0..n).map(|i| format!("{tag}{i}")).collect();
        Ok(Pods {
            _ns: ns,
            paths,
            ids,
        })
    }

    fn env(&self, i: usize) -> CallEnv<'_> {
        CallEnv {
            container_id: &self.ids[i],
            netns: &self.paths[i],
            ifname: "eth0",
            args: "",
        }
    }
}

/// One ADD as kubelet drives it: retried while the answer is 11.
fn add(bed: &CloudBed, conf: &Value, env: &CallEnv) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        match bed.hostnic(0).call("ADD", conf, env)? {
            Ok(_) => return Ok(t.elapsed()),
            Err(e) if e.code == Some(11) && t.elapsed() < Duration::from_secs(120) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => bail!("ADD {}: {e}", env.container_id),
        }
    }
}

fn del(bed: &CloudBed, conf: &Value, env: &CallEnv) -> anyhow::Result<Duration> {
    let t = Instant::now();
    bed.hostnic(0)
        .call("DEL", conf, env)?
        .map_err(|e| anyhow::anyhow!("DEL {}: {e}", env.container_id))?;
    Ok(t.elapsed())
}

fn cold_vs_latency() -> anyhow::Result<()> {
    const PODS: usize = 8;
    println!(
        "| simulated attach latency | cold ADD p50 | cold ADD p99 | p50 over the latency | warm ADD p50 (cloud mode) |"
    );
    println!("|---|---|---|---|---|");
    for latency in [100u64, 250, 500, 1000] {
        let bed = bed(latency)?;
        // warm_min 0 and no timer: every ADD is cold.
        let agent = bed.start_agent(
            0,
            "warm_min = 0\nwarm_max = 64\nreconcile_seconds = 3600\ncold_add_wait_seconds = 60",
        )?;
        let conf = bed.netconf(0, "1.0.0", json!([]));
        let pods = Pods::new(PODS, "cold")?;
        let cold: Vec<Duration> = (0..PODS)
            .map(|i| add(&bed, &conf, &pods.env(i)))
            .collect::<Result<_, _>>()?;
        for i in 0..PODS {
            del(&bed, &conf, &pods.env(i))?;
        }
        // The same NICs again, now warm on the node.
        let warm: Vec<Duration> = (0..PODS)
            .map(|i| add(&bed, &conf, &pods.env(i)))
            .collect::<Result<_, _>>()?;
        let l = Duration::from_millis(latency);
        println!(
            "| {latency} ms | {} | {} | {} ({:.1}%) | {} |",
            ms(pct(&cold, 50)),
            ms(pct(&cold, 99)),
            ms(pct(&cold, 50).saturating_sub(l)),
            100.0 * (pct(&cold, 50).as_secs_f64() / l.as_secs_f64() - 1.0),
            ms(pct(&warm, 50))
        );
        for i in 0..PODS {
            del(&bed, &conf, &pods.env(i))?;
        }
        drop(agent);
    }
    println!();
    Ok(())
}

fn burst(n: usize) -> anyhow::Result<()> {
    let bed = bed(200)?;
    let agent = bed.start_agent(
        0,
        "warm_min = 0\nwarm_max = 64\nreconcile_seconds = 3600\ncold_add_wait_seconds = 20",
    )?;
    let conf = bed.netconf(0, "1.0.0", json!([]));
    let pods = Pods::new(n, "burst")?;
    let before: u64 = bed.sim.calls().values().sum();
    let start = Instant::now();
    let times: Vec<Duration> = std::thread::scope(|s| {
        let (bed, conf, pods) = (&bed, &conf, &pods);
        let handles: Vec<_> = (0..n)
            .map(|i| s.spawn(move || add(bed, conf, &pods.env(i))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect::<Result<Vec<_>, _>>()
    })
    .with_context(|| agent.log_text())?;
    let all = start.elapsed();
    let calls: u64 = bed.sim.calls().values().sum::<u64>() - before;
    println!("| burst of {n} pods on one node (cold pool, attach 200 ms) | value |");
    println!("|---|---|");
    println!("| all {n} running after | {} |", ms(all));
    println!(
        "| per-pod ADD (with retries) p50 / p99 | {} / {} |",
        ms(pct(&times, 50)),
        ms(pct(&times, 99))
    );
    println!(
        "| cloud API calls | {calls} ({:.2} per pod) |",
        calls as f64 / n as f64
    );
    println!();
    for i in 0..n {
        del(&bed, &conf, &pods.env(i))?;
    }
    Ok(())
}

fn churn(n: usize) -> anyhow::Result<()> {
    let bed = bed(200)?;
    // A warm pool, and the reconcile timer on so its calls are counted.
    let agent = bed.start_agent(
        0,
        "warm_min = 2\nwarm_max = 4\nreconcile_seconds = 5\ncold_add_wait_seconds = 20",
    )?;
    let conf = bed.netconf(0, "1.0.0", json!([]));
    let pods = Pods::new(1, "churn")?;
    // Let the first tick warm the pool.
    let warm = Instant::now();
    while bed.sim.inspect()["nics"].as_array().map_or(0, |a| {
        a.iter()
            .filter(|n| n["role"] == 0 && n["state"] == "in-use")
            .count()
    }) < 2
    {
        if warm.elapsed() > Duration::from_secs(30) {
            bail!("the pool never warmed:\n{}", agent.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let before: u64 = bed.sim.calls().values().sum();
    let start = Instant::now();
    let mut adds = Vec::with_capacity(n);
    for _ in 0..n {
        adds.push(add(&bed, &conf, &pods.env(0))?);
        del(&bed, &conf, &pods.env(0))?;
    }
    let took = start.elapsed();
    let after = bed.sim.calls();
    let calls: u64 = after.values().sum::<u64>() - before;
    println!("| churn: {n} pods created and deleted on a warm pool | value |");
    println!("|---|---|");
    println!("| duration | {} |", ms(took));
    println!(
        "| ADD p50 / p99 | {} / {} |",
        ms(pct(&adds, 50)),
        ms(pct(&adds, 99))
    );
    println!(
        "| cloud API calls | {calls} = {:.3} per pod lifecycle (target <= 1) |",
        calls as f64 / n as f64
    );
    Ok(())
}
