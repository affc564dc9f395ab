//! `hostnic-lb-bench [CONNECTIONS] [SCALE_UPS]`: a Service of type
//! LoadBalancer on the testbed cluster, through the simulated cloud's load
//! balancer, from a VM on the vxnet outside the cluster.
//!
//! - The same Deployment (four echo servers, threads of this process in
//!   the pods' namespaces, so a figure is the path's and not a server's)
//!   behind the load balancer, first with the pods' own addresses as
//!   backends, then with every node on the NodePort
//!   (`hostnic.io/load-balancer-backends: nodeport`): CONNECTIONS (default
//!   2000) connections one after another, each a byte there and back;
//!   p50/p99 and connections a second.
//! - SCALE_UPS (default 5) times one more pod: from the moment the pod
//!   is seen Ready (the API server polled every 50 ms) to the moment the
//!   load balancer forwards to it (its applied backends), and the
//!   load-balancer calls made meanwhile.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::cluster::{AGENT_TIMERS, Cluster, Install};
use hostnic_testbed::kubebed;
use hostnic_testbed::netns::{in_netns, pod_netns};
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::stats::{ms, pct};
use serde_json::{Value, json};

const REPLICAS: usize = 4;
const ECHO_PORT: u16 = 9000;

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-lb-bench needs root: it runs a cluster in network namespaces");
    }
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        std::env::args()
            .nth(i)
            .map(|a| a.parse())
            .transpose()
            .context("arguments are numbers")
            .map(|v| v.unwrap_or(default))
    };
    let (connections, scale_ups) = (arg(1, 2000)?, arg(2, 5)?);
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        vxnets: vec![("vxnet-pods".into(), "10.100.0.0/24".parse()?)],
        ..SimConfig::default()
    })?;
    let mut cluster = Cluster::start(bed, Install::Agents(String::new()))?;
    kubebed::load_balancing_agents(&mut cluster, AGENT_TIMERS, "")?;
    let client = cluster.bed.sim.add_vm("outside", "vxnet-pods")?;
    let pods = cluster.deploy_web(REPLICAS)?;
    for name in pods.keys() {
        serve_echo(name)?;
    }
    cluster.cp.apply(
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "echo", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                     "ports": [{"name": "echo", "port": 80, "targetPort": ECHO_PORT}]},
        })
        .to_string(),
    )?;
    cluster.wait(
        "the load balancer's address",
        Duration::from_secs(120),
        || cluster.lb_ingress("echo").is_some(),
    )?;
    let target = SocketAddr::from((cluster.lb_ingress("echo").expect("waited for"), 80));

    println!(
        "Connections from a VM on the vxnet through the cloud's load balancer to {REPLICAS} pods \
         on 2 nodes, {connections} one after another (connect, 1-byte echo, close)"
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "backends", "p50", "p99", "conn/s"
    );
    let mut p50 = Vec::new();
    for (label, mode) in [
        ("the pods' own addresses", "pods"),
        ("every node on the NodePort", "nodeport"),
    ] {
        cluster.kubectl(&[
            "annotate",
            "--overwrite",
            "svc",
            "echo",
            &format!("hostnic.io/load-balancer-backends={mode}"),
        ])?;
        let instances = mode == "nodeport";
        cluster.wait(
            &format!("{mode} backends applied"),
            Duration::from_secs(60),
            || {
                let b = cluster.bed.sim.lb_forwards_to();
                !b.is_empty() && b.iter().all(|r| r.starts_with("i-") == instances)
            },
        )?;
        // Health checks mark new backends up within a second.
        std::thread::sleep(Duration::from_secs(2));
        in_client(&client.ns, move || run(target, 200))?;
        let (samples, took) = in_client(&client.ns, move || run(target, connections))?;
        println!(
            "{label:<34} {:>9} {:>9} {:>9.0}",
            ms(pct(&samples, 50)),
            ms(pct(&samples, 99)),
            connections as f64 / took.as_secs_f64()
        );
        p50.push(pct(&samples, 50));
    }
    println!(
        "pods / NodePort, p50: {:.2}",
        p50[0].as_secs_f64() / p50[1].as_secs_f64()
    );
    cluster.kubectl(&[
        "annotate",
        "--overwrite",
        "svc",
        "echo",
        "hostnic.io/load-balancer-backends=pods",
    ])?;
    cluster.wait("pod backends again", Duration::from_secs(60), || {
        cluster
            .bed
            .sim
            .lb_forwards_to()
            .iter()
            .all(|r| !r.starts_with("i-"))
    })?;

    println!(
        "\nOne more pod, {scale_ups} times: from seen Ready to forwarded to, and the cloud calls"
    );
    println!(
        "{:<12} {:>12} {:>22}",
        "pod", "ready → LB", "load-balancer calls"
    );
    let mut waits = Vec::new();
    for i in 0..scale_ups {
        let before = cluster.bed.sim.calls();
        let known = ready_pods(&cluster)?;
        cluster.kubectl(&[
            "scale",
            "deployment/web",
            &format!("--replicas={}", REPLICAS + i + 1),
        ])?;
        let start = Instant::now();
        let (ip, ready_at) = loop {
            if start.elapsed() > Duration::from_secs(120) {
                bail!("no new pod Ready within 2 minutes\n{}", cluster.logs());
            }
            let now = ready_pods(&cluster)?;
            if let Some((name, ip)) = now.into_iter().find(|p| !known.contains(p)) {
                serve_echo(&name)?;
                break (ip, Instant::now());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while !cluster.bed.sim.lb_forwards_to().contains(&ip) {
            if ready_at.elapsed() > Duration::from_secs(60) {
                bail!(
                    "pod {ip} not a backend within 60 s of Ready\n{}",
                    cluster.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let waited = ready_at.elapsed();
        let after = cluster.bed.sim.calls();
        let lb_calls: u64 = after
            .iter()
            .filter(|(k, _)| k.contains("LoadBalancer"))
            .map(|(k, v)| v - before.get(k).copied().unwrap_or(0))
            .sum();
        println!("{ip:<12} {:>12} {:>22}", ms(waited), lb_calls);
        waits.push(waited);
    }
    println!(
        "ready → forwarded to: p50 {} p99 {}",
        ms(pct(&waits, 50)),
        ms(pct(&waits, 99))
    );
    Ok(())
}

/// The Ready web pods: (name, address).
fn ready_pods(cluster: &Cluster) -> anyhow::Result<Vec<(String, String)>> {
    let list: Value =
        serde_json::from_str(&cluster.kubectl(&["get", "pods", "-l", "app=web", "-o", "json"])?)?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|p| {
            Some((
                p["metadata"]["name"].as_str()?.to_string(),
                p["status"]["podIP"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// An echo server on [`ECHO_PORT`] in pod `name`'s namespace.
fn serve_echo(name: &str) -> anyhow::Result<()> {
    let netns = pod_netns(name)?;
    let listener = in_netns(&netns, || TcpListener::bind(("0.0.0.0", ECHO_PORT)))??;
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut b = [0u8; 1];
            if stream.read_exact(&mut b).is_ok() {
                let _ = stream.write_all(&b);
            }
        }
    });
    Ok(())
}

fn in_client<T: Send + 'static>(
    ns: &hostnic_testbed::Ns,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    ns.inside(f)
}

/// `connections` connections to `target`, one after another: each one's
/// time, and the whole run's.
fn run(target: SocketAddr, connections: usize) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let mut samples = Vec::with_capacity(connections);
    let start = Instant::now();
    for i in 0..connections {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))
            .with_context(|| format!("connection {i} to {target}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_nodelay(true)?;
        s.write_all(b"x")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .with_context(|| format!("connection {i} to {target}: no echo"))?;
        samples.push(t.elapsed());
    }
    Ok((samples, start.elapsed()))
}
