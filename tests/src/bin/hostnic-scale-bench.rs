//! `hostnic-scale-bench`: a cluster's share of the cloud API. Many VMs — an
//! agent in each VM's namespace — bring up pods from a cold start against
//! one simulator with an account-wide API rate limit, as kubelet would:
//! every ADD an exec of the real `hostnic`, retried on "try again later"
//! within the runtime's timeout.
//!
//! Usage: `hostnic-scale-bench [VMS] [PODS_PER_VM] [ACCOUNT_CALLS_PER_SECOND]
//! [--kube | --bank MIN:MAX]` (default 50 × 20, 20 calls/s). Prints the
//! time until every pod runs, ADD p50/p99, API calls per second at peak
//! and at rest, calls throttled and pods that failed.
//!
//! Without a flag the agents run outside Kubernetes, each told its place
//! in the account's rate. With `--kube` they run as the DaemonSet runs
//! them, against a real API server (a Node per VM, the Lease, every pod
//! bound to its node as the scheduler leaves it, named in the ADD as
//! kubelet names it): node 0 starts first and holds the Lease, the clock
//! starts with the others.
//! `--bank MIN:MAX` is `--kube` with the NIC bank on (`bank_min`,
//! `bank_max`), node 0's bank filled before the others start.
//!
//! The agents load their built-in guests compiled, as the image ships them
//! (`compiled_guests_dir`): a hundred VMs would each compile on their own
//! cores, where here they would share two. `--compile-at-start` has each
//! compile its own, as an image without them would.
//!
//! `--rest SECONDS` (default 60) is how long the nodes are watched at rest
//! once every pod runs, with each node's calls by action (from its
//! `hostnic-agent status`): an hour shows the long run (the slow poll and
//! the vxnet counts are minutes apart).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::controlplane::ControlPlane;
use hostnic_testbed::sim::{Faults, SimConfig};
use hostnic_testbed::stats::{ms, pct};
use hostnic_testbed::{Agent, CallEnv, Ns, kubebed, wait_for};
use serde_json::json;

/// How long a runtime keeps retrying an ADD (kubelet's sandbox creation
/// is retried for minutes; 4 is what containerd's CNI setup tolerates).
const RUNTIME_TIMEOUT: Duration = Duration::from_secs(240);
/// ADDs one node runs at once (kubelet starts pods in parallel).
const PER_NODE_PARALLEL: usize = 5;
/// The most free NICs a node keeps (the default `warm_max`).
const WARM_MAX: usize = 4;

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-scale-bench needs root: it creates network namespaces");
    }
    const USAGE: &str = "usage: hostnic-scale-bench [VMS] [PODS_PER_VM] [CALLS_PER_SECOND] [--kube | --bank MIN:MAX] [--compile-at-start] [--rest SECONDS]";
    let mut args: Vec<String> = std::env::args().collect();
    let mut rest_window = Duration::from_secs(60);
    if let Some(at) = args.iter().position(|a| a == "--rest") {
        args.remove(at);
        let v = args.get(at).context(USAGE)?.clone();
        args.remove(at);
        rest_window = Duration::from_secs(v.parse().context(USAGE)?);
    }
    let compile_at_start = match args.iter().position(|a| a == "--compile-at-start") {
        Some(at) => {
            args.remove(at);
            true
        }
        None => false,
    };
    let mut mode = Mode::Configured;
    if let Some(at) = args.iter().position(|a| a == "--kube") {
        args.remove(at);
        mode = Mode::Kube { bank: None };
    }
    if let Some(at) = args.iter().position(|a| a == "--bank") {
        args.remove(at);
        let v = args.get(at).context(USAGE)?.clone();
        args.remove(at);
        let (min, max) = v.split_once(':').context(USAGE)?;
        mode = Mode::Kube {
            bank: Some((min.parse().context(USAGE)?, max.parse().context(USAGE)?)),
        };
    }
    let arg = |i: usize, default: u64| -> anyhow::Result<u64> {
        args.get(i)
            .map_or(Ok(default), |v| v.parse().context(USAGE))
    };
    let (vms, per_vm, rate) = (
        arg(1, 50)? as usize,
        arg(2, 20)? as usize,
        arg(3, 20)? as u32,
    );
    println!(
        "hostnic-scale-bench: {vms} VMs × {per_vm} pods, cold start, account limit {rate} calls/s, attach 1 s, {}, {}\n",
        mode.describe(),
        match compile_at_start {
            true => "each agent compiling its guests",
            false => "guests shipped compiled",
        }
    );
    // The image's compiled guests, made as scripts/image makes them.
    let shipped = tempfile::tempdir()?;
    let shipped_dir = shipped.path().join("compiled");
    if !compile_at_start {
        let out = std::process::Command::new(hostnic_testbed::bin("hostnic-agent"))
            .args(["policy", "precompile", "--out"])
            .arg(&shipped_dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "hostnic-agent policy precompile: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let image = format!("compiled_guests_dir = {:?}\n", shipped_dir);
    // Each simulated vxnet is one Linux bridge of at most 1,024 ports: the
    // nodes are spread over as many vxnets as their pods' NICs, and the
    // warm NICs a node may keep beside them, need (as a cluster's node
    // pools are spread over subnets).
    let per_vxnet_ports = 1000;
    let vxnet_count = (vms * (per_vm + WARM_MAX)).div_ceil(per_vxnet_ports).max(1);
    let vxnets: Vec<(String, ipnet::Ipv4Net)> = (0..vxnet_count)
        .map(|i| {
            let cidr = format!("10.{}.0.0/19", 100 + i).parse()?;
            Ok((format!("vxnet-pods{i}"), cidr))
        })
        .collect::<anyhow::Result<_>>()?;
    println!(
        "{vxnet_count} vxnets, node n in vxnet-pods(n mod {vxnet_count}); warm_min 0, warm_max {WARM_MAX}\n"
    );
    let setup = Instant::now();
    let bed = CloudBed::new(SimConfig {
        nodes: vms,
        vxnets: vxnets.clone(),
        faults: Faults {
            attach_latency_ms: 1000,
            throttle_per_second: Some(rate),
            ..Faults::default()
        },
        ..SimConfig::default()
    })?;
    // The defaults an operator runs with, cold (no NIC exists yet), but no
    // warm NIC kept before the first pod (warm_min 0).
    // Outside Kubernetes each node is told its place in the account's
    // rate; in Kubernetes the Node list gives it.
    let timers = |n: usize| {
        let base = format!(
            "warm_min = 0\nwarm_max = {WARM_MAX}\ncold_add_wait_seconds = 20\naccount_api_rate = {rate}\n"
        );
        match mode {
            Mode::Configured => format!("{base}api_rate_nodes = {vms}\napi_rate_slot = {n}"),
            Mode::Kube { bank } => {
                let (min, max) = bank.unwrap_or((0, 0));
                format!("{base}leak_sweep = \"cluster\"\nbank_min = {min}\nbank_max = {max}")
            }
        }
    };
    // Outside Kubernetes a node knows its own vxnet only. In Kubernetes it
    // lists them all, its own first (FailRotate takes it unless it
    // fails), as one ConfigMap for the cluster would: the Lease holder
    // keeps the bank in each.
    let vxnet_of = |n: usize| match mode {
        Mode::Configured => vec![vxnets[n % vxnets.len()].0.clone()],
        Mode::Kube { .. } => (0..vxnets.len())
            .map(|k| vxnets[(n + k) % vxnets.len()].0.clone())
            .collect(),
    };
    let limit = Duration::from_secs(300);
    let calls = || -> u64 { bed.sim.calls().values().sum() };
    let (cp, first, start) = match mode {
        Mode::Configured => (None, Vec::new(), Instant::now()),
        Mode::Kube { bank } => {
            let cp = kubebed::control_plane(&bed, None)?;
            let kubeconfig = cp.service_account_kubeconfig("kube-system", "hostnic")?;
            let config = |n: usize| {
                image.clone()
                    + &kubebed::agent_config(
                        &bed,
                        n,
                        &vxnet_of(n),
                        &kubeconfig,
                        (&timers(n), "lease_seconds = 15\n"),
                        "",
                    )
            };
            // Node 0 is there first: it holds the Lease (and fills the
            // bank) before the others come.
            let zero = kubebed::spawn_agent(&bed, 0, &config(0), limit)?;
            let held = Instant::now();
            let want = bank.map_or(0, |(min, _)| min * vxnet_count);
            wait_for(
                "node-0 to hold the Lease and fill the bank",
                Duration::from_secs(120),
                || kubebed::lease(&cp, "{.spec.holderIdentity}") == "node-0" && banked(&cp) >= want,
            )?;
            // The pods, bound to their nodes as the scheduler leaves them
            // (kubelet asks for a pod's sandbox only once it is bound).
            let bound = Instant::now();
            let pods: Vec<serde_json::Value> = (0..vms)
                .flat_map(|n| (0..per_vm).map(move |i| (n, i)))
                .map(|(n, i)| {
                    serde_json::from_str(&kubebed::pod_object(
                        &format!("s{n}x{i}"),
                        &format!("node-{n}"),
                    ))
                })
                .collect::<Result<_, _>>()?;
            let list = json!({"apiVersion": "v1", "kind": "List", "items": pods});
            cp.kubectl_as(
                &cp.admin_kubeconfig(),
                &["create", "-f", "-"],
                Some(&list.to_string()),
            )?;
            println!(
                "{} pods bound to their nodes in {:.1} s",
                vms * per_vm,
                bound.elapsed().as_secs_f64()
            );
            println!(
                "node 0 holds the Lease{} after {:.1} s; {} calls so far",
                if want > 0 {
                    format!(", its bank of {want} NICs listed,")
                } else {
                    String::new()
                },
                held.elapsed().as_secs_f64(),
                calls()
            );
            let start = Instant::now();
            let others: Vec<Agent> = std::thread::scope(|s| {
                let handles: Vec<_> = (1..vms)
                    .map(|n| {
                        let (bed, config) = (&bed, &config);
                        s.spawn(move || kubebed::spawn_agent(bed, n, &config(n), limit))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("agent thread"))
                    .collect::<Result<_, _>>()
            })?;
            let mut all = vec![zero];
            all.extend(others);
            (Some(cp), all, start)
        }
    };
    // Agents start as the DaemonSet starts them: all at once.
    let agents: Vec<Agent> = match mode {
        Mode::Kube { .. } => first,
        Mode::Configured => std::thread::scope(|s| {
            let handles: Vec<_> = (0..vms)
                .map(|n| {
                    let (bed, timers, vxnet_of, image) = (&bed, &timers, &vxnet_of, &image);
                    let config = image.clone() + &bed.agent_config_in(n, &vxnet_of(n), &timers(n));
                    s.spawn(move || bed.spawn_agent(n, &config, limit))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("agent thread"))
                .collect::<Result<_, _>>()
        })?,
    };
    println!(
        "{vms} agents serving {:.1} s after their start ({:.1} s of testbed setup before)",
        start.elapsed().as_secs_f64(),
        (start - setup).as_secs_f64()
    );
    let pods: Vec<Vec<Ns>> = (0..vms)
        .map(|n| (0..per_vm).map(|i| Ns::new(&format!("s{n}x{i}"))).collect())
        .collect::<Result<_, _>>()?;

    // Sample the API rate every second while the pods come up.
    let done = AtomicBool::new(false);
    let (times, failures, samples, node_done) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut per_second = Vec::new();
            let mut last = calls();
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(1));
                let now = calls();
                per_second.push(now - last);
                last = now;
            }
            per_second
        });
        let workers: Vec<_> = (0..vms)
            .flat_map(|n| (0..PER_NODE_PARALLEL).map(move |w| (n, w)))
            .map(|(n, w)| {
                let (bed, pods) = (&bed, &pods);
                s.spawn(move || {
                    let conf = bed.netconf(n, "1.0.0", json!([]));
                    // As kubelet sends them (in Kubernetes the agent finds
                    // the pod in its watch).
                    let mut out = Vec::new();
                    for i in (w..per_vm).step_by(PER_NODE_PARALLEL) {
                        let id = format!("s{n}x{i}");
                        let path = pods[n][i].path().display().to_string();
                        let args =
                            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}");
                        let env = CallEnv {
                            container_id: &id,
                            netns: &path,
                            ifname: "eth0",
                            args: &args,
                        };
                        let t = Instant::now();
                        let r = loop {
                            match bed.hostnic(n).call("ADD", &conf, &env) {
                                Ok(Ok(_)) => break Ok(t.elapsed()),
                                Ok(Err(e))
                                    if e.code == Some(11) && t.elapsed() < RUNTIME_TIMEOUT =>
                                {
                                    std::thread::sleep(Duration::from_secs(1));
                                }
                                Ok(Err(e)) => break Err(format!("{id}: {e}")),
                                Err(e) => break Err(format!("{id}: {e:#}")),
                            }
                        };
                        out.push(r);
                    }
                    (n, out, start.elapsed())
                })
            })
            .collect();
        // When each node had every pod running: its last worker's end.
        let mut node_done = vec![Duration::ZERO; vms];
        let mut results: Vec<Result<Duration, String>> = Vec::new();
        for h in workers {
            let (n, out, ended) = h.join().expect("worker");
            node_done[n] = node_done[n].max(ended);
            results.extend(out);
        }
        done.store(true, Ordering::SeqCst);
        let samples = sampler.join().expect("sampler");
        let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
        (
            ok.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            failed
                .into_iter()
                .map(|e| e.unwrap_err())
                .collect::<Vec<_>>(),
            samples,
            node_done,
        )
    });
    let all_running = start.elapsed();
    let during = calls();
    let throttled: u64 = bed.sim.injected().get(&5100).copied().unwrap_or(0);

    // What the nodes leave for a quiet moment (tagging the new NICs,
    // counting the vxnets' addresses) comes once the pods run.
    let deferred_window = Duration::from_secs(20);
    std::thread::sleep(deferred_window);
    let deferred = calls() - during;

    // At rest: every pod running, nothing to do.
    let before_rest = calls();
    let by_node_before: Vec<_> = (0..vms).map(|n| node_calls(&bed, n)).collect();
    std::thread::sleep(rest_window);
    let at_rest = calls() - before_rest;
    let by_node: Vec<_> = (0..vms)
        .map(|n| node_calls(&bed, n))
        .zip(&by_node_before)
        .map(|(after, before)| {
            after
                .into_iter()
                .map(|(action, n)| {
                    let was = before.get(&action).copied().unwrap_or(0);
                    (action, n.saturating_sub(was))
                })
                .filter(|(_, n)| *n > 0)
                .collect::<std::collections::BTreeMap<_, _>>()
        })
        .collect();

    let total = vms * per_vm;
    println!("| {vms} VMs × {per_vm} pods, account limit {rate} calls/s | value |");
    println!("|---|---|");
    println!("| pods running | {} of {total} |", times.len());
    println!(
        "| all running after (from the agents' start) | {:.1} s |",
        all_running.as_secs_f64()
    );
    println!(
        "| nodes with every pod running after, p50 / p90 / last | {:.1} s / {:.1} s / {:.1} s |",
        pct(&node_done, 50).as_secs_f64(),
        pct(&node_done, 90).as_secs_f64(),
        pct(&node_done, 100).as_secs_f64()
    );
    if !times.is_empty() {
        println!(
            "| pod ADD p50 / p99 (with the runtime's retries) | {} / {} |",
            ms(pct(&times, 50)),
            ms(pct(&times, 99))
        );
    }
    println!(
        "| cloud API requests to bring them up, refused ones included | {during} ({:.2} per pod; {} accepted) |",
        during as f64 / total as f64,
        during - throttled
    );
    println!(
        "| requests in the {} s after, left for a quiet moment (tags, counts) | {deferred} |",
        deferred_window.as_secs()
    );
    println!(
        "| API requests per second at peak, refused ones included | {} |",
        samples.iter().max().copied().unwrap_or(0)
    );
    println!("| calls throttled by the account limit (ret_code 5100) | {throttled} |");
    println!("| pods failed (target 0) | {} |", failures.len());
    println!(
        "| API calls in {} s at rest, all {vms} nodes | {at_rest} |",
        rest_window.as_secs()
    );
    // Per node and hour at rest: the Lease holder (node 0 in Kubernetes)
    // apart, as it does the cluster's duties.
    let hourly = |n: u64| n as f64 * 3600.0 / rest_window.as_secs_f64();
    let sum = |m: &std::collections::BTreeMap<String, u64>| m.values().sum::<u64>();
    let others = &by_node[usize::from(cp.is_some()).min(by_node.len())..];
    let other_calls: Vec<u64> = others.iter().map(sum).collect();
    println!(
        "\nat rest, {} s: calls per node per hour, {}: mean {:.1}, max {:.1}",
        rest_window.as_secs(),
        match cp.is_some() {
            true => "nodes not holding the Lease",
            false => "every node",
        },
        hourly(other_calls.iter().sum::<u64>()) / other_calls.len().max(1) as f64,
        hourly(other_calls.iter().copied().max().unwrap_or(0)),
    );
    let mut other_actions = std::collections::BTreeMap::<String, u64>::new();
    for m in others {
        for (action, n) in m {
            *other_actions.entry(action.clone()).or_default() += n;
        }
    }
    println!("  by action, all of them: {other_actions:?}");
    if cp.is_some()
        && let Some(holder) = by_node.first()
    {
        println!(
            "  the Lease holder: {:.1} per hour, {holder:?}",
            hourly(sum(holder))
        );
    }
    println!("\n| action | requests | refused (5100) | per pod, accepted |\n|---|---|---|---|");
    let refused = bed.sim.throttled();
    for (action, n) in bed.sim.calls() {
        let r = refused.get(&action).copied().unwrap_or(0);
        println!(
            "| {action} | {n} | {r} | {:.2} |",
            (n - r) as f64 / total as f64
        );
    }
    for f in failures.iter().take(5) {
        println!("failed: {f}");
    }
    let logs: Vec<String> = agents.iter().map(Agent::log_text).collect();
    let count = |what: &str| logs.iter().map(|l| l.matches(what).count()).sum::<usize>();
    // A request woken more than half a slot late waits for its node's next
    // slot, a whole cycle on: on a loaded machine, time the pace loses.
    println!(
        "\nrequests woken too late for their slot, sent a cycle later: {}",
        count("woke too late for this node's slot")
    );
    if let Some(cp) = &cp {
        let inspect = bed.sim.inspect();
        let attached: Vec<&serde_json::Value> = inspect["nics"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|n| n["role"] == 0 && !n["instance"].is_null())
                    .collect()
            })
            .unwrap_or_default();
        let from_bank = attached
            .iter()
            .filter(|n| n["name"].as_str().is_some_and(|s| s.ends_with("-bank")))
            .count();
        println!(
            "\nNICs attached to the nodes at the end: {}, {from_bank} of them claimed from the bank; bank NICs listed on the Lease: {}",
            attached.len(),
            banked(cp)
        );
        println!(
            "claims (one AttachNics each): {} taken, {} refused (another node was first)",
            count("claimed NICs from the bank"),
            count("claiming NICs from the bank failed")
        );
        for line in logs
            .iter()
            .flat_map(|l| l.lines())
            .filter(|l| l.contains("claiming NICs from the bank failed"))
            .take(3)
        {
            println!("  {line}");
        }
    }
    drop(agents);
    Ok(())
}

#[derive(Clone, Copy)]
enum Mode {
    /// Outside Kubernetes: each agent told its place in the account's rate.
    Configured,
    /// As the DaemonSet runs them, with the NIC bank's `(min, max)` or none.
    Kube { bank: Option<(usize, usize)> },
}

impl Mode {
    fn describe(&self) -> String {
        match self {
            Mode::Configured => "outside Kubernetes (each agent told its slot)".into(),
            Mode::Kube { bank: None } => "in Kubernetes, no NIC bank".into(),
            Mode::Kube {
                bank: Some((min, max)),
            } => {
                format!("in Kubernetes, NIC bank {min}..={max} per vxnet")
            }
        }
    }
}

/// The cloud calls node `n`'s agent made so far, by action (its
/// `hostnic-agent status`).
fn node_calls(bed: &CloudBed, n: usize) -> std::collections::BTreeMap<String, u64> {
    let status = bed.status(n).unwrap_or_default();
    serde_json::from_value(status["cloud"]["calls"].clone()).unwrap_or_default()
}

/// The bank's NICs the Lease lists, every vxnet's.
fn banked(cp: &ControlPlane) -> usize {
    let listing: serde_json::Value = serde_json::from_str(&kubebed::lease(
        cp,
        "{.metadata.annotations.hostnic\\.io/nic-bank}",
    ))
    .unwrap_or_default();
    listing.as_object().map_or(0, |m| {
        m.values().filter_map(|v| v.as_array()).map(Vec::len).sum()
    })
}
