//! Pod-to-pod throughput across two VMs with iperf3.

use anyhow::Context;
use hostnic_testbed::{Ns, iperf};

use crate::IPERF_SECONDS;
use crate::pods::{Mode, Pod};

/// One iperf3 run from a pod of `from` to a pod of `to`: Gbit/s received.
pub fn throughput(from: &Mode, to: &Mode) -> anyhow::Result<f64> {
    let client = Pod::add(from, "iperf-client")?;
    let server = Pod::add(to, "iperf-server")?;
    let ip = server.ip()?;
    let bps = iperf::bits_per_second(&client.ns, &server.ns, &ip, IPERF_SECONDS, false)
        .with_context(|| format!("{} -> {}", from.name, to.name))?;
    client.del()?;
    server.del()?;
    Ok(bps / 1e9)
}

/// The node's primary address, as its eth0 has it.
pub fn primary_address(node: &Ns) -> anyhow::Result<String> {
    let out = node.ip(&["-4", "-o", "addr", "show", "dev", "eth0"])?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
        .with_context(|| format!("no address on eth0: {out}"))
}

/// Where `program` is on PATH.
pub fn which(program: &str) -> anyhow::Result<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} is not on PATH"))
}
