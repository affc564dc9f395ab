//! `hostnic-multinet-bench`: what each extra network of a pod costs
//! (issue 10). Warm ADD and DEL of pods with 1, 2 and 3 cloud NICs from 3
//! vxnets, three ways, in rounds of one run, each round starting with the
//! next way:
//!
//! - **exec**: one `hostnic` call per network, as a runtime or a
//!   meta-plugin makes them (`eth0`, then `net1`, `net2`);
//! - **Multus**: the real Multus thin plugin (`scripts/multus-build`) with
//!   hostnic as every delegate, given the networks in its config (no API
//!   server on its path);
//! - **native**: one `hostnic` call; the agent reads the networks
//!   annotation and attaches every network (`[kubernetes] networks = true`).
//!
//! The per-NIC cost is compared with the agent's own wire time (the move
//! of the NIC into the pod and its configuration), which it reports with
//! each ADD's decision.
//!
//! Usage: hostnic-multinet-bench [ROUNDS] [PODS_PER_ROUND] (default 5 × 10).

use std::time::{Duration, Instant};

use anyhow::bail;
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::multus::{hostnic_nad, install_crd, multus_bin};
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::stats::{ms, pct};
use hostnic_testbed::{CallEnv, CniCall, Ns, kubebed};
use serde_json::{Value, json};

const VXNETS: [(&str, &str, &str); 3] = [
    ("vxnet-pods", "10.100.0.0/24", "hostnic"),
    ("vxnet-storage", "10.101.0.0/24", "storage"),
    ("vxnet-admin", "10.102.0.0/24", "mgmt"),
];

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Exec,
    Multus,
    Native,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Exec => "exec, one call per network",
            Way::Multus => "Multus, hostnic as every delegate",
            Way::Native => "native, one call",
        }
    }
}

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-multinet-bench needs root: it creates network namespaces");
    }
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let per_round: usize = args.next().map_or(Ok(10), |a| a.parse())?;
    let multus = multus_bin()?;
    let bed = CloudBed::new(SimConfig {
        nodes: 1,
        vxnets: VXNETS
            .iter()
            .map(|(id, cidr, _)| Ok((id.to_string(), cidr.parse()?)))
            .collect::<anyhow::Result<_>>()?,
        ..SimConfig::default()
    })?;
    let cp = kubebed::control_plane(&bed, None)?;
    install_crd(&cp)?;
    for (id, _, name) in &VXNETS[1..] {
        cp.apply(&hostnic_nad(name, &[id]))?;
    }
    // The pods in the API server, so no ADD waits for its pod watch.
    let items: Vec<Value> = (0..per_round)
        .map(|i| serde_json::from_str(&kubebed::pod_object(&format!("m{i}"), "node-0")))
        .collect::<Result<_, _>>()?;
    cp.apply(&json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string())?;
    let warm = format!("warm_min = {per_round}\nwarm_max = {}\n", per_round + 4);
    let _agent = kubebed::agent(
        &bed,
        &cp,
        0,
        (&warm, "networks = true\nannotate = false\nevents = false\n"),
        "",
    )?;
    println!(
        "hostnic-multinet-bench: {rounds} rounds × {per_round} pods per way and NIC count, warm NICs\n"
    );

    // The networks' configs, as a conflist entry and NADs give them.
    let conf = |i: usize| {
        let (id, _, name) = VXNETS[i];
        let mut c = bed.netconf(0, "1.0.0", json!([]));
        c["name"] = json!(name);
        c["vxnets"] = json!([id]);
        c
    };
    let hostnic = bed.hostnic(0);
    let multus_call = hostnic.with_bin(multus);
    let work = bed.dir.path().join("multinet-bench");
    std::fs::create_dir_all(&work)?;

    let ways = [Way::Exec, Way::Multus, Way::Native];
    let mut samples: Vec<Vec<Samples>> = ways
        .iter()
        .map(|_| (0..3).map(|_| Samples::default()).collect())
        .collect();
    for round in 0..rounds {
        for w in (0..ways.len()).map(|k| (k + round) % ways.len()) {
            for nics in 1..=3 {
                wait_warm(&bed, per_round)?;
                let s = &mut samples[w][nics - 1];
                let nss: Vec<Ns> = (0..per_round)
                    .map(|i| Ns::new(&format!("mb{i}")))
                    .collect::<Result<_, _>>()?;
                let paths: Vec<String> =
                    nss.iter().map(|n| n.path().display().to_string()).collect();
                let cids: Vec<String> = (0..per_round)
                    .map(|i| format!("mb{round}-{w}-{nics}-{i}"))
                    .collect();
                let argv: Vec<String> = (0..per_round)
                    .map(|i| format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=m{i}"))
                    .collect();
                for verb in ["ADD", "DEL"] {
                    for i in 0..per_round {
                        let calls = calls(ways[w], nics, &conf, &work);
                        let t = Instant::now();
                        for (conf, ifname) in &calls {
                            let env = CallEnv {
                                container_id: &cids[i],
                                netns: &paths[i],
                                ifname,
                                args: &argv[i],
                            };
                            let cni: &CniCall = if ways[w] == Way::Multus {
                                &multus_call
                            } else {
                                &hostnic
                            };
                            if let Err(e) = cni.call(verb, conf, &env)? {
                                bail!("{} {verb} of {} NICs: {e}", ways[w].name(), nics);
                            }
                        }
                        let took = t.elapsed();
                        if verb == "ADD" {
                            s.add.push(took);
                        } else {
                            s.del.push(took);
                        }
                    }
                }
                bed.settle(0);
            }
        }
    }

    println!("| way | NICs | ADD p50 | ADD p99 | DEL p50 | per extra NIC (ADD p50) |");
    println!("|---|---|---|---|---|---|");
    for (w, way) in ways.iter().enumerate() {
        let one = pct(&samples[w][0].add, 50);
        for nics in 1..=3 {
            let s = &samples[w][nics - 1];
            let p50 = pct(&s.add, 50);
            let extra = if nics == 1 {
                "-".to_string()
            } else {
                ms(p50.saturating_sub(one) / (nics as u32 - 1))
            };
            println!(
                "| {} | {nics} | {} | {} | {} | {extra} |",
                way.name(),
                ms(p50),
                ms(pct(&s.add, 99)),
                ms(pct(&s.del, 50)),
            );
        }
    }
    // Where an attachment's time goes, from the agent's own account of its
    // latest ADDs: the first NIC of a pod and the extra ones apart.
    let v = bed.status(0)?;
    println!(
        "\nthe agent's account of its latest ADDs, p50 per attachment (first NIC / extra NICs):"
    );
    println!("| phase | eth0 | net1, net2 |\n|---|---|---|");
    for (phase, key) in [
        (
            "before the plan (checks, the pod's routes, API facts)",
            "prepare_us",
        ),
        ("plan (vxnet and ip guests)", "plan_us"),
        ("acquire (reserve a warm NIC)", "acquire_us"),
        (
            "wire: the kernel's move into the pod and configuration",
            "attach_us",
        ),
        (
            "wire: routes guest and the two record writes",
            "wire_us-attach_us",
        ),
        ("the whole attachment in the agent", "total_us"),
    ] {
        let first = phase_times(&v, key, true)?;
        let extra = phase_times(&v, key, false)?;
        println!(
            "| {phase} | {} | {} |",
            ms(pct(&first, 50)),
            ms(pct(&extra, 50))
        );
    }
    Ok(())
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

/// The calls one pod with `nics` networks takes, each (config, ifname).
fn calls(
    way: Way,
    nics: usize,
    conf: &dyn Fn(usize) -> Value,
    work: &std::path::Path,
) -> Vec<(Value, &'static str)> {
    const IFNAMES: [&str; 3] = ["eth0", "net1", "net2"];
    match way {
        Way::Exec => (0..nics).map(|i| (conf(i), IFNAMES[i])).collect(),
        Way::Multus => {
            let delegates: Vec<Value> = (0..nics).map(conf).collect();
            let c = json!({
                "cniVersion": "1.0.0", "name": "multus-bench", "type": "multus",
                "delegates": delegates,
                "cniDir": work.join("multus"),
                "binDir": hostnic_testbed::bin("hostnic").parent().expect("bin dir"),
            });
            vec![(c, "eth0")]
        }
        Way::Native => {
            let names: Vec<&str> = VXNETS[1..nics].iter().map(|(_, _, n)| *n).collect();
            let mut c = conf(0);
            c["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": if names.is_empty() {
                json!({})
            } else {
                json!({"k8s.v1.cni.cncf.io/networks": names.join(", ")})
            }});
            vec![(c, "eth0")]
        }
    }
}

/// Waits until each vxnet has `n` free NICs, so every ADD is warm.
fn wait_warm(bed: &CloudBed, n: usize) -> anyhow::Result<()> {
    for (id, ..) in VXNETS {
        bed.wait_warm(0, id, n)?;
    }
    Ok(())
}

/// One phase's times (`key`: an audit field, or `a-b` for their
/// difference) in the agent's latest ADD decisions, of first NICs
/// (`eth0`) or of the extra ones.
fn phase_times(status: &Value, key: &str, first: bool) -> anyhow::Result<Vec<Duration>> {
    let field = |d: &Value, k: &str| d[k].as_u64();
    let times: Vec<Duration> = status["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| (d["ifname"] == "eth0") == first)
        .filter_map(|d| match key.split_once('-') {
            Some((a, b)) => Some(field(d, a)?.saturating_sub(field(d, b)?)),
            None => field(d, key),
        })
        .map(Duration::from_micros)
        .collect();
    if times.is_empty() {
        bail!("the agent reported no decisions");
    }
    Ok(times)
}
