//! `hostnic-iaas-sim`: the simulated QingCloud, standalone. It creates an
//! SDN namespace and node VMs as namespaces, serves the API until Ctrl-C,
//! and removes everything it made on exit.
//!
//! Usage: hostnic-iaas-sim [NODES] [ATTACH_LATENCY_MS] (`--help` says more)

use std::process::ExitCode;

use anyhow::bail;
use clap::Parser;
use hostnic_testbed::sim::{Faults, Sim, SimConfig};

/// The simulated QingCloud, standalone: an SDN namespace and one network
/// namespace per node VM, the QingCloud API subset over HTTP until Ctrl-C.
/// Everything it creates is removed on exit. Needs root.
#[derive(Debug, Parser)]
#[command(name = "hostnic-iaas-sim")]
struct Cli {
    /// How many node VMs to create.
    #[arg(default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    nodes: u16,
    /// How long an AttachNics job takes until the NIC's link appears, in
    /// milliseconds.
    #[arg(default_value_t = Faults::default().attach_latency_ms)]
    attach_latency_ms: u64,
}

fn main() -> ExitCode {
    // Parsed before anything else: `--help` needs no root, and a bad
    // argument is clap's usage error (exit 2), not a backtrace.
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostnic-iaas-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root: it creates network namespaces");
    }
    let cfg = SimConfig {
        nodes: cli.nodes.into(),
        faults: Faults {
            attach_latency_ms: cli.attach_latency_ms,
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
            // Without a handler SIGINT's default action ends the process,
            // and the namespaces with it: nothing to report either way.
            let _ = tokio::signal::ctrl_c().await;
        });
        // The receiver lives until main returns.
        let _ = tx.send(());
    });
    // Err only if the sender is gone, which is also the end of the wait.
    let _ = rx.recv();
    drop(sim);
    Ok(())
}
