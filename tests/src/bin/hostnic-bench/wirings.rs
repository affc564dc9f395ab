//! What tells the two NIC wirings apart beyond one ADD: a burst of every
//! pod at once on one node (RTNL contention) and throughput over the wire.

use std::time::{Duration, Instant};

use anyhow::Context;
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

/// iperf3 between two pods of one node, each with its own NIC in
/// `wiring`, through the wire's bridge: bits per second.
pub fn throughput(wiring: &str) -> anyhow::Result<f64> {
    let mut tb = Testbed::new(2)?;
    tb.wiring = Some(wiring.into());
    let conf = tb.netconf("1.0.0", json!([]));
    let _agent = tb.start_agent()?;
    let pods = [Ns::new("ipc")?, Ns::new("ips")?];
    let paths: Vec<String> = pods
        .iter()
        .map(|p| p.path().display().to_string())
        .collect();
    let mut ips = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let id = format!("iperf{i}");
        let env = CallEnv {
            container_id: &id,
            netns: path,
            ifname: "eth0",
            args: "IgnoreUnknown=1",
        };
        let r = expect_ok(tb.hostnic().call("ADD", &conf, &env))?;
        let a = r["ips"][0]["address"].as_str().context("no address")?;
        ips.push(a.split('/').next().unwrap_or(a).to_string());
    }
    iperf::bits_per_second(&pods[0], &pods[1], &ips[1], IPERF_SECONDS, false)
}
