//! How many pods one node serves in shared mode, and on how many cloud
//! NICs.

use std::time::{Duration, Instant};

use anyhow::bail;
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::stats::{ms, pct};

use crate::pods::{Mode, Pod};
use crate::{SCALE_CIDR, SCALE_GATEWAY, SCALE_RANGE, TIMERS};

/// Shared mode on one node until `target` pods, in a vxnet of its own:
/// the last pod reaches the first and the vxnet's gateway, and the node's
/// cloud NICs are counted.
pub fn pods_per_node(target: usize) -> anyhow::Result<()> {
    let bed = CloudBed::new(SimConfig {
        nodes: 1,
        ..SimConfig::with_vxnets(&[("vxnet-c", SCALE_CIDR)])?
    })?;
    let _agent = bed.start_agent(
        0,
        &format!(
            "warm_min = 0\nwarm_max = 0\n{TIMERS}[[shared]]\nvxnet = \"vxnet-c\"\nrange = \"{SCALE_RANGE}\"\n"
        ),
    )?;
    let mode = Mode::hostnic(&bed, 0, "vxnet-c");
    let start = Instant::now();
    let mut pods = Vec::with_capacity(target);
    for i in 0..target {
        pods.push(Pod::add(&mode, &format!("scale-{i}"))?);
    }
    let added = start.elapsed();
    let add: Vec<Duration> = pods.iter().map(|p| p.took).collect();
    let (first, last) = (&pods[0], &pods[target - 1]);
    let first_ip = first.ip()?;
    for to in [first_ip.as_str(), SCALE_GATEWAY] {
        if !last.ns.ping(to) {
            bail!("pod {} ({}) cannot reach {to}", target, last.ip()?);
        }
    }
    let instance = &bed.sim.nodes[0].instance;
    let nics = bed.sim.inspect()["nics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["instance"].as_str() == Some(instance.as_str()) && n["vxnet"] != "vxnet-mgmt")
        .count();
    println!(
        "pods per node: {target} on {nics} cloud NIC{} (exclusive mode's ceiling: 62 on a 64-NIC VM)",
        if nics == 1 { "" } else { "s" }
    );
    println!(
        "  pod {target} ({}) pings pod 1 ({first_ip}) and the vxnet gateway {SCALE_GATEWAY}",
        last.ip()?
    );
    let tenth = (target / 10).max(1);
    println!(
        "  {target} ADDs in {:.1} s (with the pods' namespaces); ADD p50 of the first {tenth}: {}, of the last {tenth}: {}, p99 of all: {}",
        added.as_secs_f64(),
        ms(pct(&add[..tenth], 50)),
        ms(pct(&add[target - tenth..], 50)),
        ms(pct(&add, 99))
    );
    let start = Instant::now();
    let del = pods
        .into_iter()
        .map(Pod::del)
        .collect::<anyhow::Result<Vec<Duration>>>()?;
    println!(
        "  {target} DELs in {:.1} s (with the pods' namespaces); DEL p50 {}, p99 {}",
        start.elapsed().as_secs_f64(),
        ms(pct(&del, 50)),
        ms(pct(&del, 99))
    );
    Ok(())
}
