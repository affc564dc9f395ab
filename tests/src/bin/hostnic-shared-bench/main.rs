//! `hostnic-shared-bench`: shared-NIC mode (issue 12, `docs/shared-nic.md`)
//! next to exclusive NICs and the reference `ptp` + `host-local`, in one
//! run on the simulated cloud:
//!
//! 1. ADD and DEL latency, every call an exec of the plugin in the node
//!    namespace with a fresh pod namespace: a shared pod (a veth, an
//!    address of the vxnet's shared range), an exclusive pod (a warm NIC
//!    of its own) and a `ptp` pod (a veth, a `host-local` address);
//! 2. pod-to-pod throughput across two VMs with `iperf3`, each way;
//! 3. how many pods one node serves in shared mode, on how many cloud
//!    NICs, against exclusive mode's ceiling of 62 on a 64-NIC VM.
//!
//! Each mode has a simulated cloud of its own, so the NICs one mode keeps
//! (the exclusive warm pool) neither help nor count against another.
//!
//! Usage: hostnic-shared-bench [PODS] [PODS_PER_NODE] (default 100, 300;
//! the exclusive run takes min(PODS, 50) pods, its warm pool's size).

mod pods;
mod scale;
mod throughput;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::stats::{PHASES, ms, pct, phases};
use hostnic_testbed::{Agent, Ns, reference_plugin_dir};
use serde_json::Value;

use pods::{Mode, Pod, address_of, env, expect_ok};
use throughput::{primary_address, throughput, which};

pub const TIMERS: &str = "reconcile_seconds = 1\ncold_add_wait_seconds = 20\n";
/// Shared mode: vxnet-a, node 0 addressing its pods from 10.100.1.0/24
/// (254 addresses) and node 1 from 10.100.0.64/26; no warm NICs.
const SHARED_CIDR: &str = "10.100.0.0/23";
const SHARED_RANGES: [&str; 2] = ["10.100.1.0/24", "10.100.0.64/26"];
const SHARED_MAX_PODS: usize = 254;
/// Exclusive mode: vxnet-b, a NIC per pod from a warm pool.
const EXCLUSIVE_CIDR: &str = "10.101.0.0/24";
const EXCLUSIVE_MAX_PODS: usize = 50;
/// Pods per node: vxnet-c, a range of 510 addresses that leaves out the
/// low addresses the cloud hands its own NICs.
pub const SCALE_CIDR: &str = "10.102.0.0/22";
pub const SCALE_RANGE: &str = "10.102.2.0/23";
pub const SCALE_GATEWAY: &str = "10.102.0.1";
const SCALE_MAX_PODS: usize = 510;
/// ptp: each node's pods from a subnet of their own.
pub const PTP_SUBNETS: [&str; 2] = ["10.210.0.0/24", "10.211.0.0/24"];
/// Untimed ADD/DEL pairs before each timed run (the first shared ADD also
/// sets up the node's NIC in the vxnet).
const WARMUP: usize = 3;
/// A pause between runs for the kernel's teardown of the previous run's
/// pod namespaces (it holds RTNL, as every device move does).
const QUIET: std::time::Duration = std::time::Duration::from_secs(5);
pub const IPERF_SECONDS: u32 = 3;

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-shared-bench needs root: it creates network namespaces");
    }
    let usage = "usage: hostnic-shared-bench [PODS] [PODS_PER_NODE]";
    let mut args = std::env::args().skip(1);
    let pods: usize = args.next().map_or(Ok(100), |a| a.parse()).context(usage)?;
    let target: usize = args.next().map_or(Ok(300), |a| a.parse()).context(usage)?;
    if !(1..=SHARED_MAX_PODS).contains(&pods) {
        bail!("PODS must be 1..={SHARED_MAX_PODS}: the shared range holds that many");
    }
    if !(2..=SCALE_MAX_PODS).contains(&target) {
        bail!("PODS_PER_NODE must be 2..={SCALE_MAX_PODS}: the shared range holds that many");
    }
    let plugins = reference_plugin_dir()
        .context("the reference CNI plugins are not installed (containernetworking-plugins)")?;
    which("iperf3").context("iperf3 is not installed (scripts/setup installs it)")?;
    let exclusive_pods = pods.min(EXCLUSIVE_MAX_PODS);
    println!(
        "hostnic-shared-bench: {pods} shared pods, {exclusive_pods} exclusive pods (warm NICs), \
         {pods} ptp pods; every call an exec in the node namespace\n"
    );

    // The shared cloud: vxnet-a shared on both nodes.
    let shared = CloudBed::new(SimConfig::with_vxnets(&[("vxnet-a", SHARED_CIDR)])?)?;
    let shared_agents = (0..2)
        .map(|n| {
            shared.start_agent(
                n,
                &format!(
                    "warm_min = 0\nwarm_max = 0\n{TIMERS}[[shared]]\nvxnet = \"vxnet-a\"\nrange = \"{}\"\n",
                    SHARED_RANGES[n]
                ),
            )
        })
        .collect::<anyhow::Result<Vec<Agent>>>()?;
    // The exclusive cloud: vxnet-b, warm NICs for every pod of node 0 and
    // for node 1's one.
    let exclusive = CloudBed::new(SimConfig::with_vxnets(&[("vxnet-b", EXCLUSIVE_CIDR)])?)?;
    let exclusive_agents = [exclusive_pods, 1]
        .iter()
        .enumerate()
        .map(|(n, warm)| {
            exclusive.start_agent(
                n,
                &format!("warm_min = {warm}\nwarm_max = {warm}\n{TIMERS}"),
            )
        })
        .collect::<anyhow::Result<Vec<Agent>>>()?;

    // 1. ADD and DEL latency.
    let shared_cni = Mode::hostnic(&shared, 0, "vxnet-a");
    let exclusive_cni = Mode::hostnic(&exclusive, 0, "vxnet-b");
    let ptp_cni = Mode::ptp(&shared, 0, plugins);
    warm_up(&shared_cni)?;
    let shared_row = add_del(&shared_cni, pods)?;
    let shared_phases = phases(&shared.status(0)?)?;
    check_shared_address(&shared_row.first, SHARED_RANGES[0])?;
    // The shared DELs answered before their veths were deleted: that
    // kernel work, and the teardown of the 100 pod namespaces, must not
    // land in the exclusive run's device moves (both hold RTNL).
    let drained = Instant::now();
    shared.settle(0);
    let drained = drained.elapsed();
    std::thread::sleep(QUIET);
    exclusive.wait_warm(0, "vxnet-b", exclusive_pods)?;
    warm_up(&exclusive_cni)?;
    exclusive.settle(0);
    exclusive.wait_warm(0, "vxnet-b", exclusive_pods)?;
    let exclusive_row = add_del(&exclusive_cni, exclusive_pods)?;
    let exclusive_phases = phases(&exclusive.status(0)?)?;
    exclusive.settle(0);
    std::thread::sleep(QUIET);
    warm_up(&ptp_cni)?;
    let ptp_row = add_del(&ptp_cni, pods)?;
    let floor_row = veth_floor(&shared.sim.nodes[0].ns, pods)?;

    let rows = [
        ("hostnic shared (veth, shared NIC)", &shared_row),
        ("hostnic exclusive (warm NIC)", &exclusive_row),
        ("ptp + host-local", &ptp_row),
        (
            "kernel floor: `ip link add` / `ip link del` of a veth into the pod",
            &floor_row,
        ),
    ];
    println!("| plugin | pods | ADD p50 | ADD p99 | DEL p50 | DEL p99 |");
    println!("|---|---|---|---|---|---|");
    for (name, r) in rows {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            r.add.len(),
            ms(pct(&r.add, 50)),
            ms(pct(&r.add, 99)),
            ms(pct(&r.del, 50)),
            ms(pct(&r.del, 99))
        );
    }
    let ratio =
        |a: &[Duration], b: &[Duration]| pct(a, 50).as_secs_f64() / pct(b, 50).as_secs_f64();
    println!();
    println!(
        "shared ADD p50 / ptp+host-local ADD p50    = {:.2} (target <= 1.00)",
        ratio(&shared_row.add, &ptp_row.add)
    );
    println!(
        "shared DEL p50 / ptp+host-local DEL p50    = {:.2}",
        ratio(&shared_row.del, &ptp_row.del)
    );
    println!(
        "shared ADD p50 / exclusive (warm) ADD p50  = {:.2}",
        ratio(&shared_row.add, &exclusive_row.add)
    );
    println!(
        "shared DEL p50 / exclusive (warm) DEL p50  = {:.2}",
        ratio(&shared_row.del, &exclusive_row.del)
    );
    println!(
        "shared: the background releases of the {pods} DELs were done {} after the last DEL answered",
        ms(drained)
    );
    println!();
    println!("the agent's account of its latest ADDs (up to 20), p50:");
    println!("| phase | shared | exclusive |\n|---|---|---|");
    for (i, (phase, _)) in PHASES.iter().enumerate() {
        println!(
            "| {phase} | {} | {} |",
            ms(pct(&shared_phases[i], 50)),
            ms(pct(&exclusive_phases[i], 50))
        );
    }
    println!(
        "| outside the agent: exec, the plugin, the socket (exec ADD p50 - agent total p50) | {} | {} |",
        ms(pct(&shared_row.add, 50).saturating_sub(pct(&shared_phases[PHASES.len() - 1], 50))),
        ms(pct(&exclusive_row.add, 50)
            .saturating_sub(pct(&exclusive_phases[PHASES.len() - 1], 50)))
    );

    // 2. Throughput, a pod on node 0 to a pod on node 1.
    println!();
    println!(
        "pod on node 0 -> pod on node 1, iperf3 -t {IPERF_SECONDS} (one TCP stream), received:"
    );
    println!("| mode | Gbit/s |\n|---|---|");
    let gbps = throughput(
        &Mode::hostnic(&shared, 0, "vxnet-a"),
        &Mode::hostnic(&shared, 1, "vxnet-a"),
    )?;
    println!("| hostnic shared (vxnet-a, both nodes shared) | {gbps:.2} |");
    let gbps = throughput(
        &Mode::hostnic(&exclusive, 0, "vxnet-b"),
        &Mode::hostnic(&exclusive, 1, "vxnet-b"),
    )?;
    println!("| hostnic exclusive (a NIC per pod) | {gbps:.2} |");
    // ptp's pods are reached through the nodes' primary addresses: a route
    // to the other node's pod subnet in each simulated VM's namespace.
    for (n, other) in [(0, 1), (1, 0)] {
        let via = primary_address(&shared.sim.nodes[other].ns)?;
        shared.sim.nodes[n].ns.ip(&[
            "route",
            "add",
            PTP_SUBNETS[other],
            "via",
            &via,
            "dev",
            "eth0",
        ])?;
    }
    let gbps = throughput(
        &Mode::ptp(&shared, 0, plugins),
        &Mode::ptp(&shared, 1, plugins),
    )?;
    println!("| ptp + host-local (routed by the nodes' primary NICs) | {gbps:.2} |");

    // 3. Pods per node.
    drop((shared_agents, exclusive_agents));
    drop((shared, exclusive));
    println!();
    scale::pods_per_node(target)?;
    Ok(())
}

struct Row {
    add: Vec<Duration>,
    del: Vec<Duration>,
    /// What the first ADD answered.
    first: Value,
}

/// ADD `pods` pods one after another, then DEL them, timing each exec.
/// Namespaces are created before and removed after the timed calls.
fn add_del(mode: &Mode, pods: usize) -> anyhow::Result<Row> {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nss: Vec<Ns> = (0..pods)
        .map(|i| Ns::new(&format!("sb{i}")))
        .collect::<Result<_, _>>()?;
    let paths: Vec<String> = nss.iter().map(|n| n.path().display().to_string()).collect();
    let ids: Vec<String> = (0..pods).map(|i| format!("bench{run}-{i}")).collect();
    let mut add = Vec::with_capacity(pods);
    let mut results = Vec::with_capacity(pods);
    for i in 0..pods {
        let t = Instant::now();
        let r = expect_ok(mode.cni.call("ADD", &mode.conf, &env(&ids[i], &paths[i])))
            .with_context(|| format!("{}: ADD of pod {i}", mode.name))?;
        add.push(t.elapsed());
        results.push(r);
    }
    let first = results.first().cloned().unwrap_or(Value::Null);
    let mut del = Vec::with_capacity(pods);
    for (i, prev) in results.into_iter().enumerate() {
        let mut c = mode.conf.clone();
        c["prevResult"] = prev;
        let t = Instant::now();
        expect_ok(mode.cni.call("DEL", &c, &env(&ids[i], &paths[i])))
            .with_context(|| format!("{}: DEL of pod {i}", mode.name))?;
        del.push(t.elapsed());
    }
    drop(nss);
    Ok(Row { add, del, first })
}

/// Untimed ADD and DEL of a few pods, retried while the agent says "try
/// again later" (the first shared ADD on a node waits for its NIC in the
/// vxnet), so the timed runs start with the caches warm.
fn warm_up(mode: &Mode) -> anyhow::Result<()> {
    for i in 0..WARMUP {
        Pod::add(mode, &format!("warmup-{i}"))?.del()?;
    }
    Ok(())
}

/// The kernel's part of a veth pod: one `ip` exec creating a veth with its
/// far end in a fresh pod namespace, and one deleting it, per pod.
fn veth_floor(node: &Ns, pods: usize) -> anyhow::Result<Row> {
    let nss: Vec<Ns> = (0..pods)
        .map(|i| Ns::new(&format!("sf{i}")))
        .collect::<Result<_, _>>()?;
    let mut add = Vec::with_capacity(pods);
    for (i, pod) in nss.iter().enumerate() {
        let name = format!("vfloor{i}");
        let t = Instant::now();
        node.ip(&[
            "link",
            "add",
            &name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ])?;
        add.push(t.elapsed());
    }
    let mut del = Vec::with_capacity(pods);
    for i in 0..pods {
        let name = format!("vfloor{i}");
        let t = Instant::now();
        node.ip(&["link", "del", &name])?;
        del.push(t.elapsed());
    }
    drop(nss);
    Ok(Row {
        add,
        del,
        first: Value::Null,
    })
}

/// The shared pod got a /32 of its node's range, as the mode promises.
fn check_shared_address(result: &Value, range: &str) -> anyhow::Result<()> {
    let range: ipnet::Ipv4Net = range.parse()?;
    let ip: std::net::Ipv4Addr = address_of(result)?.parse()?;
    let full = result["ips"][0]["address"].as_str().unwrap_or_default();
    if !range.contains(&ip) || !full.ends_with("/32") {
        bail!("a shared pod got {full}, not a /32 of {range}");
    }
    Ok(())
}
