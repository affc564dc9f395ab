//! `hostnic-services-bench [CONNECTIONS]`: what keeping the client's
//! address costs a Service connection. On the real cluster (kube-proxy
//! with its defaults, hostnic's return path), a client pod on node-0 opens
//! CONNECTIONS (default 2000) TCP connections one after another to a
//! ClusterIP Service whose four backends are spread over both nodes; each
//! connection sends a byte and waits for its echo. Then the same with the
//! nodes masquerading every translated connection, which is what
//! kube-proxy's `masqueradeAll` does to them (an nft table on each node,
//! so both columns run in the same cluster, the same run). Prints the
//! connection's latency p50/p99 and connections a second, and the share
//! of connections whose backend saw the client's own address (the client
//! is one of the four backends: kube-proxy masquerades the quarter of
//! its connections that come back to itself, as it does all hairpin
//! traffic).
//!
//! The client and the echo servers are threads of this process inside the
//! pods' network namespaces (found by their processes' `HOSTNAME`), so the
//! figures are the network path's and not a server's fork.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::cluster::{self, AGENT_TIMERS, Cluster, Install};
use hostnic_testbed::kubebed;
use hostnic_testbed::netns::{in_netns, pod_netns};
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::stats::{ms, pct};
use serde_json::json;

const REPLICAS: usize = 4;
const ECHO_PORT: u16 = 9000;
/// The nodes' stand-in for `masqueradeAll`: every connection kube-proxy
/// translated leaves the node from the node's address.
const MASQUERADE_ALL: &str = "table ip bench-masquerade-all {\n\
    \tchain postrouting {\n\
    \t\ttype nat hook postrouting priority srcnat - 10;\n\
    \t\tct status dnat masquerade\n\
    \t}\n\
    }\n";

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-services-bench needs root: it runs a cluster in network namespaces");
    }
    let connections: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("CONNECTIONS must be a number")?
        .unwrap_or(2000);
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        vxnets: vec![("vxnet-pods".into(), "10.100.0.0/24".parse()?)],
        ..SimConfig::default()
    })?;
    let mut cluster = Cluster::start(bed, Install::Agents(String::new()))?;
    kubebed::watching_agents(&mut cluster, AGENT_TIMERS, "")?;
    let pods = cluster.deploy_web(REPLICAS)?;
    let (client, client_ip) = cluster::pod_on(&pods, "node-0");
    let client_ip: Ipv4Addr = client_ip.parse()?;
    // Every backend echoes and tells whom it saw.
    let seen_client = Arc::new(AtomicUsize::new(0));
    for name in pods.keys() {
        let netns = pod_netns(name)?;
        let seen = seen_client.clone();
        std::thread::spawn(move || echo(netns, client_ip, seen));
    }
    cluster.cp.apply(
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "echo", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": ECHO_PORT}]},
        })
        .to_string(),
    )?;
    let service: Ipv4Addr = cluster
        .kubectl(&["get", "svc", "echo", "-o", "jsonpath={.spec.clusterIP}"])?
        .trim()
        .parse()?;
    let target = SocketAddr::from((service, 80));
    let client_ns = pod_netns(&client)?;
    // kube-proxy programs the Service within a second or two.
    cluster.wait(
        "the echo Service to answer",
        Duration::from_secs(60),
        || in_netns(&client_ns, move || connect_once(target)).is_ok_and(|r| r.is_ok()),
    )?;

    println!(
        "Service connections from a pod on node-0 to 4 backends on both nodes (itself one), \
         {connections} one after another (connect, 1-byte echo, close)"
    );
    println!(
        "{:<38} {:>9} {:>9} {:>11} {:>14}",
        "path", "p50", "p99", "conn/s", "client's addr"
    );
    let mut rows = BTreeMap::new();
    for (name, masquerade) in [
        ("kube-proxy defaults + return path", false),
        ("masqueradeAll (the nodes SNAT)", true),
    ] {
        for node in &cluster.bed.sim.nodes {
            let table = if masquerade {
                MASQUERADE_ALL.to_string()
            } else {
                "table ip bench-masquerade-all\ndelete table ip bench-masquerade-all\n".into()
            };
            nft(&node.ns, &table)?;
        }
        // Warm up: conntrack, ARP, the Service's rules.
        in_netns(&client_ns, move || run(target, 200))??;
        seen_client.store(0, Ordering::SeqCst);
        let (samples, took) = in_netns(&client_ns, move || run(target, connections))??;
        let kept = seen_client.load(Ordering::SeqCst);
        let row = format!(
            "{name:<38} {:>9} {:>9} {:>11.0} {:>13.0}%",
            ms(pct(&samples, 50)),
            ms(pct(&samples, 99)),
            connections as f64 / took.as_secs_f64(),
            100.0 * kept as f64 / connections as f64,
        );
        println!("{row}");
        rows.insert(name, pct(&samples, 50));
    }
    let (ours, masq) = (
        rows["kube-proxy defaults + return path"],
        rows["masqueradeAll (the nodes SNAT)"],
    );
    println!(
        "return path / masquerade, p50: {:.2}",
        ours.as_secs_f64() / masq.as_secs_f64()
    );
    Ok(())
}

/// `connections` connections to `target`, one after another: each one's
/// time, and the whole run's.
fn run(target: SocketAddr, connections: usize) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let mut samples = Vec::with_capacity(connections);
    let start = Instant::now();
    for i in 0..connections {
        let t = Instant::now();
        connect_once(target).with_context(|| format!("connection {i} to {target}"))?;
        samples.push(t.elapsed());
    }
    Ok((samples, start.elapsed()))
}

/// One connection: a byte there and back.
fn connect_once(target: SocketAddr) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_nodelay(true)?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(())
}

/// An echo server on [`ECHO_PORT`] in `netns`, counting the connections
/// that came from `client` itself.
fn echo(netns: File, client: Ipv4Addr, seen_client: Arc<AtomicUsize>) {
    if let Err(e) = nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
        eprintln!("echo server: entering the pod's netns: {e}");
        return;
    }
    let listener = match TcpListener::bind(("0.0.0.0", ECHO_PORT)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo server: {e}");
            return;
        }
    };
    for stream in listener.incoming().flatten() {
        if stream.peer_addr().is_ok_and(|p| p.ip() == client) {
            seen_client.fetch_add(1, Ordering::Relaxed);
        }
        let mut stream = stream;
        let mut b = [0u8; 1];
        if stream.read_exact(&mut b).is_ok() {
            let _ = stream.write_all(&b);
        }
    }
}

fn nft(ns: &hostnic_testbed::netns::Ns, ruleset: &str) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("hostnic-services-bench-{}.nft", ns.name()));
    std::fs::write(&path, ruleset)?;
    let out = ns.exec("nft", &["-f", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    out.map(drop)
}
