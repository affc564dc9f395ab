//! `hostnic-netpol-bench`: what NetworkPolicy enforcement costs (issue
//! 25), on the cloud testbed with a real API server.
//!
//! 1. Warm ADD and DEL through the executable with enforcement off, and on
//!    with 0, 10 and 100 policies in the pods' namespace (each selecting
//!    the pods, each rule a pod selector and a port), in rounds of the same
//!    run, each round starting with the next mode. The selectors pick no
//!    pod (a rule admitting nobody is not written), except in the last
//!    mode: 100 peer pods (of another node, their addresses reported),
//!    one for each policy, so each ADD writes 100 rules and 100 sets.
//! 2. From a policy's creation to its enforcement: a pod listening, a peer
//!    probing it every few milliseconds; the time from `kubectl apply` of a
//!    policy that shuts the peer out until the peer is refused, and from
//!    its deletion until the peer is let in again.
//! 3. Throughput (iperf3) from the peer to the pod, no policy isolating
//!    the pod, then one admitting the peer (every packet then passes the
//!    pod's connection tracking and rules), in alternating runs.
//!
//! Usage: hostnic-netpol-bench [ROUNDS] [PODS_PER_ROUND] [FLIPS]
//! (default 6 × 15, 20).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::controlplane::ControlPlane;
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::stats::{self, ms, pct};
use hostnic_testbed::{CallEnv, Ns, iperf, kubebed, result_address};
use serde_json::{Value, json};

const WARM: &str = "warm_min = 20\nwarm_max = 40\n";
const PORT: u16 = 8080;

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-netpol-bench needs root: it creates network namespaces");
    }
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(6), |a| a.parse())?;
    let per_round: usize = args.next().map_or(Ok(15), |a| a.parse())?;
    let flips: usize = args.next().map_or(Ok(20), |a| a.parse())?;
    let bed = CloudBed::new(SimConfig {
        nodes: 1,
        ..SimConfig::default()
    })?;
    let cp = kubebed::control_plane(&bed, None)?;
    println!(
        "hostnic-netpol-bench: {rounds} rounds × {per_round} pods per mode, warm NICs, a real API server\n"
    );
    let items: Vec<Value> = (0..per_round).map(|i| pod(&format!("p{i}"))).collect();
    cp.apply(&json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string())?;

    // The peers the last mode's policies admit: client-<i> for policy i.
    // (no controller manager makes the namespace's ServiceAccount here)
    let peers: Vec<Value> = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "clients"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "default", "namespace": "clients"}}),
    ]
    .into_iter()
    .chain((0..100).map(peer))
    .collect();
    cp.apply(&json!({"apiVersion": "v1", "kind": "List", "items": peers}).to_string())?;
    for i in 0..100u8 {
        kubebed::report_pod_ip_in(
            &cp,
            "clients",
            &format!("client-{i}"),
            std::net::Ipv4Addr::new(192, 0, 2, i + 1),
        )?;
    }

    // (name, [kubernetes] keys, policies in the namespace, their peers'
    // namespace)
    let modes = [
        ("enforcement off", "network_policy = false\n", 0, NOBODY),
        ("on, 0 policies", "network_policy = true\n", 0, NOBODY),
        ("on, 10 policies", "network_policy = true\n", 10, NOBODY),
        ("on, 100 policies", "network_policy = true\n", 100, NOBODY),
        (
            "on, 100 policies, a peer each",
            "network_policy = true\n",
            100,
            "clients",
        ),
    ];
    let mut samples: Vec<Samples> = modes.iter().map(|_| Samples::default()).collect();
    for round in 0..rounds {
        for m in (0..modes.len()).map(|k| (k + round) % modes.len()) {
            let (_, kube, policies, peers) = modes[m];
            set_policies(&cp, policies, peers)?;
            let agent = kubebed::agent(&bed, &cp, 0, (WARM, kube), "")?;
            wait_warm(&bed, per_round)?;
            let sets = if peers == NOBODY { 0 } else { policies };
            add_del(&bed, round * per_round, per_round, sets, &mut samples[m])?;
            // The agent's own time for each of this round's ADDs (its
            // audit), free of the executable's start.
            let phases = stats::phases(&bed.status(0)?)?;
            samples[m]
                .inside
                .extend(phases.last().into_iter().flatten());
            bed.settle(0);
            drop(agent);
        }
    }
    set_policies(&cp, 0, NOBODY)?;

    println!("| mode | ADD p50 | ADD p99 | in the agent p50 | DEL p50 | DEL p99 |");
    println!("|---|---|---|---|---|---|");
    for ((name, ..), s) in modes.iter().zip(&samples) {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            ms(pct(&s.add, 50)),
            ms(pct(&s.add, 99)),
            ms(pct(&s.inside, 50)),
            ms(pct(&s.del, 50)),
            ms(pct(&s.del, 99))
        );
    }
    println!();
    let (off, off_inside) = (pct(&samples[0].add, 50), pct(&samples[0].inside, 50));
    for ((name, ..), s) in modes.iter().zip(&samples).skip(1) {
        let added = pct(&s.add, 50).as_secs_f64() - off.as_secs_f64();
        let inside = pct(&s.inside, 50).as_secs_f64() - off_inside.as_secs_f64();
        println!(
            "ADD p50, {name} − off: {:+.2} ms, in the agent {:+.2} ms (target ≤ 1 ms)",
            added * 1000.0,
            inside * 1000.0
        );
    }

    // 2. Policy created / deleted → enforced.
    let agent = kubebed::agent(&bed, &cp, 0, (WARM, "network_policy = true\n"), "")?;
    wait_warm(&bed, 2)?;
    let (shut, opened, (open, admitted)) = flip(&bed, &cp, flips)?;
    drop(agent);
    println!(
        "\npolicy created → peer refused: p50 {} p99 {} ({flips} times)",
        ms(pct(&shut, 50)),
        ms(pct(&shut, 99))
    );
    println!(
        "policy deleted → peer let in: p50 {} p99 {}",
        ms(pct(&opened, 50)),
        ms(pct(&opened, 99))
    );
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (open, admitted) = (median(&open), median(&admitted));
    println!(
        "\npeer → pod throughput, median of {THROUGHPUT_RUNS} × {THROUGHPUT_SECONDS} s: no policy {:.2} Gbit/s, a policy admitting the peer {:.2} Gbit/s ({:+.1} %, target within 5 %)",
        open / 1e9,
        admitted / 1e9,
        (admitted / open - 1.0) * 100.0
    );
    Ok(())
}

const THROUGHPUT_RUNS: usize = 5;
const THROUGHPUT_SECONDS: u32 = 3;

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
    /// The agent's own time for each ADD.
    inside: Vec<Duration>,
}

/// Pod `name` of node-0 in namespace default, labelled app=web, with a
/// named port.
fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-0", "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "busybox",
                                 "ports": [{"name": "http", "containerPort": PORT}]}]},
    })
}

/// A namespace without pods: policies admitting its pods admit nobody.
const NOBODY: &str = "nobody";

/// Peer pod `client-<i>` of namespace clients (on a node of its own), the
/// only pod labelled role=client-<i>.
fn peer(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("client-{i}"), "namespace": "clients",
                     "labels": {"role": format!("client-{i}")}},
        "spec": {"nodeName": "node-elsewhere", "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "busybox"}]},
    })
}

/// Exactly `n` policies in namespace default, each selecting app=web and
/// admitting role=client-<i> of namespace `peers` on the named port.
fn set_policies(cp: &ControlPlane, n: usize, peers: &str) -> anyhow::Result<()> {
    cp.kubectl(&[
        "delete",
        "networkpolicies",
        "--all",
        "-n",
        "default",
        "--wait=true",
    ])?;
    if n == 0 {
        return Ok(());
    }
    let items: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": format!("np{i}"), "namespace": "default"},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                         "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": peers}},
                                                "podSelector": {"matchLabels": {"role": format!("client-{i}")}}}],
                                      "ports": [{"port": "http"}]}]},
            })
        })
        .collect();
    cp.apply(&json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string())?;
    Ok(())
}

/// Waits until the warm pool has `n` free NICs, so every ADD is warm.
fn wait_warm(bed: &CloudBed, n: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let status = hostnic_testbed::agent_status(&bed.socket(0));
        if let Ok(v) = status {
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

/// ADD of pod `name` into `ns` through the executable; its result.
fn add(bed: &CloudBed, cid: &str, name: &str, ns: &Ns) -> anyhow::Result<Value> {
    call(bed, "ADD", cid, name, ns, None)
}

fn del(bed: &CloudBed, cid: &str, name: &str, ns: &Ns, prev: Value) -> anyhow::Result<()> {
    call(bed, "DEL", cid, name, ns, Some(prev)).map(drop)
}

/// `verb` for pod `name` (namespace default) in `ns`, as a runtime calls
/// it.
fn call(
    bed: &CloudBed,
    verb: &str,
    cid: &str,
    name: &str,
    ns: &Ns,
    prev: Option<Value>,
) -> anyhow::Result<Value> {
    let path = ns.path().display().to_string();
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
    let env = CallEnv {
        container_id: cid,
        netns: &path,
        ifname: "eth0",
        args: &args,
    };
    let mut conf = bed.netconf(0, "1.1.0", json!([]));
    if let Some(prev) = prev {
        conf["prevResult"] = prev;
    }
    match bed.hostnic(0).call(verb, &conf, &env)? {
        Ok(r) => Ok(r),
        Err(e) => bail!("{verb} {name}: {e}"),
    }
}

/// ADD then DEL of `n` pods (`p0`…), each timed through the executable;
/// the first pod's table must have `sets` sets of peers.
fn add_del(
    bed: &CloudBed,
    first: usize,
    n: usize,
    sets: usize,
    s: &mut Samples,
) -> anyhow::Result<()> {
    let nss: Vec<Ns> = (0..n)
        .map(|i| Ns::new(&format!("npb{i}")))
        .collect::<Result<_, _>>()?;
    let mut results = Vec::new();
    for (i, ns) in nss.iter().enumerate() {
        let t = Instant::now();
        results.push(add(
            bed,
            &format!("npb{}", first + i),
            &format!("p{i}"),
            ns,
        )?);
        s.add.push(t.elapsed());
    }
    if let Some(ns) = nss.first().filter(|_| n > 0) {
        let listed = ns.exec("nft", &["list", "table", "inet", "hostnic-policy"]);
        let found = listed.map_or(0, |l| {
            l.lines().filter(|l| l.contains("set ingress-")).count()
        });
        if found != sets {
            bail!("pod p0's table has {found} sets of peers, not {sets}");
        }
    }
    for ((i, ns), prev) in nss.iter().enumerate().zip(results) {
        let t = Instant::now();
        del(
            bed,
            &format!("npb{}", first + i),
            &format!("p{i}"),
            ns,
            prev,
        )?;
        s.del.push(t.elapsed());
    }
    Ok(())
}

/// Bits per second with no policy and with one admitting the peer.
type Throughput = (Vec<f64>, Vec<f64>);

/// `flips` times: a policy shutting the peer out is created, then
/// deleted; how long each took to be enforced, seen from the peer. Then
/// the throughput from the peer, with and without a policy.
fn flip(
    bed: &CloudBed,
    cp: &ControlPlane,
    flips: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, Throughput)> {
    cp.apply(
        &json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "peer", "namespace": "default", "labels": {"role": "peer"}},
        "spec": {"nodeName": "node-0", "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "busybox"}]}})
        .to_string(),
    )?;
    let (server, peer) = (Ns::new("npb-server")?, Ns::new("npb-peer")?);
    let s = add(bed, "npb-server", "p0", &server)?;
    let p = add(bed, "npb-peer", "peer", &peer)?;
    for (name, result) in [("p0", &s), ("peer", &p)] {
        kubebed::report_pod_ip(cp, name, result_address(result)?)?;
    }
    let target = SocketAddr::from((result_address(&s)?, PORT));
    let listener = server.listen(SocketAddr::from(([0, 0, 0, 0], PORT)))?;
    std::thread::spawn(move || for _ in listener.incoming() {});
    let policy = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "shut", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]},
    })
    .to_string();
    let until = |want: bool| -> anyhow::Result<Duration> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if peer.connects(target, Duration::from_millis(200)) == want {
                return Ok(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        bail!(
            "the peer was not {} in 30 s",
            if want { "let in" } else { "refused" }
        )
    };
    until(true).context("before any policy")?;
    let (mut shut, mut opened) = (Vec::new(), Vec::new());
    for _ in 0..flips {
        cp.apply(&policy)?;
        shut.push(until(false)?);
        cp.kubectl(&["delete", "networkpolicy", "shut", "-n", "default"])?;
        opened.push(until(true)?);
    }
    // The admitting policy opens iperf3's port only: the peer refused on
    // PORT says it is enforced.
    let admit = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "admit", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "peer"}}}],
                              "ports": [{"port": 5201}]}]},
    })
    .to_string();
    let server_ip = result_address(&s)?.to_string();
    let measure = || iperf::bits_per_second(&peer, &server, &server_ip, THROUGHPUT_SECONDS, false);
    let (mut open, mut admitted) = (Vec::new(), Vec::new());
    for _ in 0..THROUGHPUT_RUNS {
        open.push(measure()?);
        cp.apply(&admit)?;
        until(false)?;
        admitted.push(measure()?);
        cp.kubectl(&["delete", "networkpolicy", "admit", "-n", "default"])?;
        until(true)?;
    }
    del(bed, "npb-server", "p0", &server, s)?;
    del(bed, "npb-peer", "peer", &peer, p)?;
    Ok((shut, opened, (open, admitted)))
}
