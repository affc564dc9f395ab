//! `hostnic-bench`: exec the real `hostnic` as a runtime does and compare
//! it, in the same run on the same kernel, with the reference plugins
//! `ptp` + `host-local` and `host-device` + `static`: warm ADD/DEL in both
//! NIC wirings (`move`, `passthru`), the same through a conflist chaining
//! `portmap` and `tuning` as libcni runs it, a burst of every pod at once
//! in each wiring (RTNL contention), and iperf3 from a pod on one
//! simulated VM to a pod on the other in each.
//!
//! Every plugin is exec'd inside the testbed's node namespace with the same
//! harness, so each number includes fork, exec and the plugin's whole work.
//! Run it with `scripts/bench` (release build, root).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::stats::{PHASES, ms, pct, phases};
use hostnic_testbed::{CallEnv, CniCall, Ns, Testbed, reference_plugin_dir};
use serde_json::{Value, json};

mod agent;
mod chain;
mod wirings;

use agent::{restart_to_serving, status_with_idle_clients};
use chain::chained;
use wirings::{burst, throughput};

const DEFAULT_PODS: usize = 60;
const EXEC_SAMPLES: usize = 300;
const IPERF_SECONDS: u32 = 5;

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-bench needs root: it creates network namespaces");
    }
    let pods: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("usage: hostnic-bench [PODS]")?,
        None => DEFAULT_PODS,
    };
    let plugins = reference_plugin_dir()
        .context("the reference CNI plugins are not installed (containernetworking-plugins)")?;
    println!("hostnic-bench: {pods} pods per plugin, every call an exec in the node namespace\n");

    let mut rows = Vec::new();

    // hostnic: warm ADD (the NIC is already on the node) and DEL, with the
    // three default policy guests deciding (what one guest call costs is
    // `hostnic-agent policy bench`'s to say), in each NIC wiring.
    let mut pt = Testbed::new(pods)?;
    pt.wiring = Some("passthru".into());
    let pt_conf = pt.netconf("1.0.0", json!([{"dst": "10.96.0.0/12", "gw": "0.0.0.0"}]));
    let pt_agent = pt.start_agent()?;
    let passthru_row = add_del(
        "hostnic passthru (warm NIC, default guests)",
        &pt.hostnic(),
        pods,
        |_| pt_conf.clone(),
    )?;
    let pt_phases = phases(&pt.status()?)?;
    pt.settle();
    let mut chained_rows = vec![chained(
        "hostnic passthru + portmap + tuning",
        &pt.hostnic(),
        (hostnic_testbed::bin("hostnic"), pt_conf.clone()),
        plugins,
        pods,
    )?];
    pt.settle();
    let pt_burst = burst(&pt, &pt_conf, pods)?;
    drop(pt_agent);
    drop(pt);

    let mut tb = Testbed::new(pods)?;
    tb.wiring = Some("move".into());
    let conf = tb.netconf("1.0.0", json!([{"dst": "10.96.0.0/12", "gw": "0.0.0.0"}]));
    let agent = tb.start_agent()?;
    rows.push(add_del(
        "hostnic move (warm NIC, default guests)",
        &tb.hostnic(),
        pods,
        |_| conf.clone(),
    )?);
    let move_phases = phases(&tb.status()?)?;
    rows.push(passthru_row);
    let rss_guests = agent.rss_kib();
    tb.settle();
    chained_rows.push(chained(
        "hostnic move + portmap + tuning",
        &tb.hostnic(),
        (hostnic_testbed::bin("hostnic"), conf.clone()),
        plugins,
        pods,
    )?);
    tb.settle();
    let exec_version = sample(EXEC_SAMPLES, || {
        let t = Instant::now();
        expect_ok(tb.hostnic().call(
            "VERSION",
            &json!({"cniVersion": "1.1.0"}),
            &CallEnv::default(),
        ))?;
        Ok(t.elapsed())
    })?;
    let status_conf = tb.netconf("1.1.0", json!([]));
    let exec_status = sample(EXEC_SAMPLES, || {
        let t = Instant::now();
        expect_ok(
            tb.hostnic()
                .call("STATUS", &status_conf, &CallEnv::default()),
        )?;
        Ok(t.elapsed())
    })?;
    let status_idle = status_with_idle_clients(&tb, &status_conf)?;
    let move_burst = burst(&tb, &conf, pods)?;
    drop(agent);
    let restarts = restart_to_serving(&tb)?;

    // ptp + host-local: a veth pair per pod and an IP from a file store.
    let tb2 = Testbed::new(0)?;
    let ptp = CniCall::new(plugins.join("ptp"), Some(tb2.node.path()));
    let data_dir = tb2.dir.path().join("host-local");
    let ptp_conf = json!({
        "cniVersion": "1.0.0", "name": "ptp-bench", "type": "ptp", "mtu": 1500,
        "ipam": {"type": "host-local", "subnet": "10.98.0.0/16", "dataDir": data_dir,
                 "routes": [{"dst": "0.0.0.0/0"}]}
    });
    rows.push(add_del("ptp + host-local", &ptp, pods, |_| {
        ptp_conf.clone()
    })?);
    chained_rows.push(chained(
        "ptp + host-local + portmap + tuning",
        &ptp,
        (plugins.join("ptp"), ptp_conf.clone()),
        plugins,
        pods,
    )?);

    // host-device + static: moves an existing device, like hostnic, but
    // with everything in the conflist and no daemon.
    let tb3 = Testbed::new(pods)?;
    let hd = CniCall::new(plugins.join("host-device"), Some(tb3.node.path()));
    let nics = tb3.nics.clone();
    rows.push(add_del("host-device + static", &hd, pods, |i| {
        json!({
            "cniVersion": "1.0.0", "name": "hd-bench", "type": "host-device",
            "device": nics[i].node_name,
            "ipam": {"type": "static", "addresses": [{"address": format!("{}/24", nics[i].ip), "gateway": hostnic_testbed::GATEWAY}],
                     "routes": [{"dst": "0.0.0.0/0", "gw": hostnic_testbed::GATEWAY}]}
        })
    })?);

    // The kernel floor: the same netns move every hostnic ADD and DEL (and
    // every host-device call) makes, done by `ip`, exec'd the same way.
    let tb4 = Testbed::new(1)?;
    let dev = tb4.nics[0].node_name.clone();
    let pod = Ns::new("floor")?;
    let mut floor_in = Vec::new();
    let mut floor_out = Vec::new();
    for _ in 0..pods {
        let t = Instant::now();
        tb4.node.ip(&["link", "set", &dev, "netns", pod.name()])?;
        floor_in.push(t.elapsed());
        let t = Instant::now();
        pod.ip(&["link", "set", &dev, "netns", tb4.node.name()])?;
        floor_out.push(t.elapsed());
    }
    rows.push(Row {
        name: "kernel floor: `ip link set DEV netns` alone",
        add: floor_in,
        del: floor_out,
    });

    print_rows("plugin", &rows);
    let ratio = |a: usize, b: usize| {
        pct(&rows[a].add, 50).as_secs_f64() / pct(&rows[b].add, 50).as_secs_f64()
    };
    println!();
    for (i, wiring) in [(0, "move"), (1, "passthru")] {
        println!(
            "hostnic {wiring} warm ADD p50 / ptp+host-local ADD p50    = {:.2} (target <= 0.50)",
            ratio(i, 2)
        );
        println!(
            "hostnic {wiring} warm ADD p50 / host-device+static ADD p50 = {:.2}",
            ratio(i, 3)
        );
    }
    println!(
        "{pods}-pod burst on one node, every ADD at once then every DEL at once: \
         move ADD {} DEL {}, passthru ADD {} DEL {}; move/passthru ADD = {:.2} (target >= 3)",
        ms(move_burst.0),
        ms(move_burst.1),
        ms(pt_burst.0),
        ms(pt_burst.1),
        move_burst.0.as_secs_f64() / pt_burst.0.as_secs_f64()
    );
    println!();
    println!("the agent's account of its latest warm ADDs (up to 20), p50:");
    println!("| phase | passthru | move |\n|---|---|---|");
    for (i, (phase, _)) in PHASES.iter().enumerate() {
        println!(
            "| {phase} | {} | {} |",
            ms(pct(&pt_phases[i], 50)),
            ms(pct(&move_phases[i], 50))
        );
    }
    let outside =
        |row: &Row, agent: &[Duration]| ms(pct(&row.add, 50).saturating_sub(pct(agent, 50)));
    println!(
        "| outside the agent: exec, the plugin, the socket (exec ADD p50 - agent total p50) | {} | {} |",
        outside(&rows[1], &pt_phases[PHASES.len() - 1]),
        outside(&rows[0], &move_phases[PHASES.len() - 1])
    );
    println!();
    print_rows("through libcni's way of running a conflist", &chained_rows);
    let chain_ratio = |a: usize| {
        pct(&chained_rows[a].add, 50).as_secs_f64() / pct(&chained_rows[2].add, 50).as_secs_f64()
    };
    println!(
        "chained ADD p50 / ptp chain ADD p50: passthru {:.2}, move {:.2}",
        chain_ratio(0),
        chain_ratio(1)
    );
    println!();
    let (mv_bps, pt_bps) = (throughput("move")?, throughput("passthru")?);
    println!(
        "iperf3 pod to pod, one VM to another ({IPERF_SECONDS} s, a NIC each): move {:.2} Gbit/s, \
         passthru {:.2} Gbit/s, passthru/move = {:.3} (target within 5%)",
        mv_bps / 1e9,
        pt_bps / 1e9,
        pt_bps / mv_bps
    );
    println!(
        "agent RSS with the three default guests loaded: {} KiB",
        rss_guests.map_or("?".into(), |k| k.to_string()),
    );
    println!(
        "hostnic move warm ADD p50 minus the kernel floor   = {}",
        ms(pct(&rows[0].add, 50).saturating_sub(pct(&rows[4].add, 50)))
    );
    println!();
    println!("| hostnic executable, {EXEC_SAMPLES} execs | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| VERSION (start to exit, no agent call) | {} | {} |",
        ms(pct(&exec_version, 50)),
        ms(pct(&exec_version, 99))
    );
    println!(
        "| STATUS (one round trip to the agent) | {} | {} |",
        ms(pct(&exec_status, 50)),
        ms(pct(&exec_status, 99))
    );
    println!(
        "| STATUS while 900 idle and 100 byte-a-second clients are connected (target p99 <= 100 ms) | {} | {} |",
        ms(pct(&status_idle, 50)),
        ms(pct(&status_idle, 99))
    );
    println!();
    println!(
        "| agent start to serving, {} starts each | p50 | max |",
        restarts.0.len()
    );
    println!("|---|---|---|");
    for (what, v) in [
        (
            "compiled-guest cache empty (compiles the three default guests)",
            &restarts.0,
        ),
        ("compiled-guest cache warm (target <= 100 ms)", &restarts.1),
    ] {
        println!("| {what} | {} | {} |", ms(pct(v, 50)), ms(pct(v, 100)));
    }
    Ok(())
}

/// `rows` as a markdown table of ADD and DEL p50/p99, headed `what`.
fn print_rows(what: &str, rows: &[Row]) {
    println!("| {what} | ADD p50 | ADD p99 | DEL p50 | DEL p99 |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name,
            ms(pct(&r.add, 50)),
            ms(pct(&r.add, 99)),
            ms(pct(&r.del, 50)),
            ms(pct(&r.del, 99))
        );
    }
}

#[derive(Debug)]
pub struct Row {
    pub name: &'static str,
    pub add: Vec<Duration>,
    pub del: Vec<Duration>,
}

/// ADD `pods` pods one after another, then DEL them, timing each exec.
/// Namespaces are created before and removed after the timed calls.
fn add_del(
    name: &'static str,
    cni: &CniCall,
    pods: usize,
    conf: impl Fn(usize) -> Value,
) -> anyhow::Result<Row> {
    let nss: Vec<Ns> = (0..pods)
        .map(|i| Ns::new(&format!("b{i}")))
        .collect::<Result<_, _>>()?;
    let paths: Vec<String> = nss.iter().map(|n| n.path().display().to_string()).collect();
    let ids: Vec<String> = (0..pods).map(|i| format!("bench{i}")).collect();
    let env = |i: usize| CallEnv {
        container_id: &ids[i],
        netns: &paths[i],
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p",
    };
    let mut add = Vec::with_capacity(pods);
    let mut results = Vec::with_capacity(pods);
    for i in 0..pods {
        let c = conf(i);
        let t = Instant::now();
        let r = expect_ok(cni.call("ADD", &c, &env(i)))
            .with_context(|| format!("{name}: ADD of pod {i}"))?;
        add.push(t.elapsed());
        results.push(r);
    }
    let mut del = Vec::with_capacity(pods);
    for (i, prev) in results.into_iter().enumerate() {
        let mut c = conf(i);
        c["prevResult"] = prev;
        let t = Instant::now();
        expect_ok(cni.call("DEL", &c, &env(i)))
            .with_context(|| format!("{name}: DEL of pod {i}"))?;
        del.push(t.elapsed());
    }
    drop(nss);
    Ok(Row { name, add, del })
}

fn expect_ok(
    r: anyhow::Result<Result<Value, hostnic_testbed::PluginError>>,
) -> anyhow::Result<Value> {
    match r? {
        Ok(v) => Ok(v),
        Err(e) => bail!("{e}"),
    }
}

fn sample(
    n: usize,
    mut f: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<Vec<Duration>> {
    (0..n).map(|_| f()).collect()
}
