//! What tells the two NIC wirings apart beyond one ADD: a burst of every
//! pod at once on one node (RTNL contention) and throughput over the wire.

use std::time::{Duration, Instant};

use anyhow::Context;
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::{CallEnv, Ns, Testbed, iperf};
use serde_json::{Value, json};

use crate::{IPERF_SECONDS, expect_ok};

/// Every pod's ADD at once (one thread each), then every DEL at once:
/// the wall time of each wave, RTNL contention included.
pub fn burst(tb: &Testbed, conf: &Value, pods: usize) -> anyhow::Result<(Duration, Duration)> {
    let nss: Vec<Ns> = (0..pods)
        .map(|i| Ns::new(&format!("u{i}")))
        .collect::<Result<_, _>>()?;
    let wave = |verb: &'static str| -> anyhow::Result<Duration> {
        let t = Instant::now();
        std::thread::scope(|s| {
            let calls: Vec<_> = nss
                .iter()
                .enumerate()
                .map(|(i, ns)| {
                    let (cni, path) = (tb.hostnic(), ns.path().display().to_string());
                    s.spawn(move || {
                        let id = format!("burst{i}");
                        let env = CallEnv {
                            container_id: &id,
                            netns: &path,
                            ifname: "eth0",
                            args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p",
                        };
                        expect_ok(cni.call(verb, conf, &env))
                            .with_context(|| format!("burst {verb} of pod {i}"))
                    })
                })
                .collect();
            calls
                .into_iter()
                .try_for_each(|c| c.join().expect("a burst call panicked").map(drop))
        })?;
        Ok(t.elapsed())
    };
    let add = wave("ADD")?;
    let del = wave("DEL")?;
    tb.settle();
    Ok((add, del))
}

/// iperf3 from a pod on one simulated VM to a pod on the other, each with
/// a NIC of its own wired `wiring`, through the simulator's SDN (strict:
/// it forwards only to the MAC the cloud gave each NIC): bits per second.
pub fn throughput(wiring: &str) -> anyhow::Result<f64> {
    let mut bed = CloudBed::new(SimConfig::with_vxnets(&[("vxnet-a", "10.90.0.0/24")])?)?;
    bed.wiring = Some(wiring.into());
    let _agents = (0..2)
        .map(|n| bed.start_agent(n, "warm_min = 1\nwarm_max = 1\nreconcile_seconds = 1\n"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pods = [Ns::new("ipc")?, Ns::new("ips")?];
    let mut ips = Vec::new();
    for (node, pod) in pods.iter().enumerate() {
        bed.wait_warm(node, "vxnet-a", 1)?;
        let (id, path) = (format!("iperf{node}"), pod.path().display().to_string());
        let env = CallEnv {
            container_id: &id,
            netns: &path,
            ifname: "eth0",
            args: "IgnoreUnknown=1",
        };
        let conf = bed.netconf(node, "1.0.0", json!([]));
        let r = expect_ok(bed.hostnic(node).call("ADD", &conf, &env))?;
        let a = r["ips"][0]["address"].as_str().context("no address")?;
        ips.push(a.split('/').next().unwrap_or(a).to_string());
    }
    iperf::bits_per_second(&pods[0], &pods[1], &ips[1], IPERF_SECONDS, false)
}
