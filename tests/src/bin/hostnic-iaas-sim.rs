//! `hostnic-iaas-sim`: the simulated QingCloud, standalone. It creates an
//! SDN namespace and node VMs as namespaces, serves the API until Ctrl-C,
//! and removes everything it made on exit.
//!
//! Usage: hostnic-iaas-sim [NODES] [ATTACH_LATENCY_MS]

use anyhow::{Context, bail};
use hostnic_testbed::sim::{Faults, Sim, SimConfig};

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-iaas-sim needs root: it creates network namespaces");
    }
    let mut args = std::env::args().skip(1);
    let nodes = args
        .next()
        .map(|n| n.parse())
        .transpose()
        .context("NODES must be a number")?;
    let latency = args
        .next()
        .map(|n| n.parse())
        .transpose()
        .context("ATTACH_LATENCY_MS must be a number")?;
    let cfg = SimConfig {
        nodes: nodes.unwrap_or(2),
        faults: Faults {
            attach_latency_ms: latency.unwrap_or(Faults::default().attach_latency_ms),
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    let sim = Sim::start(cfg)?;
    println!("API (this namespace): http://{}/iaas/", sim.local_addr);
    println!("API (from nodes):     http://{}/iaas/", sim.node_addr);
    println!(
        "inspect:              curl http://{}/inspect",
        sim.local_addr
    );
    println!(
        "faults:               curl -XPOST -H 'content-type: application/json' -d '{{\"errors\":[{{\"code\":5100}}]}}' http://{}/control/faults",
        sim.local_addr
    );
    for n in &sim.nodes {
        println!("node {} in netns {} ({})", n.instance, n.ns.name(), n.ip);
    }
    println!(
        "credentials for agents on the nodes:\n{}",
        sim.credentials_yaml()
    );
    println!("Ctrl-C to stop");
    let (tx, rx) = std::sync::mpsc::channel();
    // Ctrl-C ends the wait; the simulator's drop removes its namespaces.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        let _ = tx.send(());
    });
    let _ = rx.recv();
    drop(sim);
    Ok(())
}
