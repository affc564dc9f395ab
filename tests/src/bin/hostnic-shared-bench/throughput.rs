//! Pod-to-pod throughput across two VMs with iperf3.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use hostnic_testbed::Ns;
use serde_json::Value;

use crate::IPERF_SECONDS;
use crate::pods::{Mode, Pod};

/// One iperf3 run from a pod of `from` to a pod of `to`: Gbit/s received.
pub fn throughput(from: &Mode, to: &Mode) -> anyhow::Result<f64> {
    let client = Pod::add(from, "iperf-client")?;
    let server = Pod::add(to, "iperf-server")?;
    let ip = server.ip()?;
    let gbps = {
        let _iperf = Running(
            server
                .ns
                .command("iperf3")?
                .args(["-s", "-1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting iperf3 -s")?,
        );
        // The server listens within a moment; until it does the client is
        // refused.
        let start = Instant::now();
        let out = loop {
            match client
                .ns
                .exec("iperf3", &["-c", &ip, "-t", IPERF_SECONDS, "-J"])
            {
                Ok(out) => break out,
                Err(_) if start.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(e.context(format!("{} -> {}: iperf3 -c {ip}", from.name, to.name)));
                }
            }
        };
        let v: Value = serde_json::from_str(&out).context("iperf3 -J output")?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .with_context(|| format!("no end.sum_received.bits_per_second in {out}"))?
            / 1e9
    };
    client.del()?;
    server.del()?;
    Ok(gbps)
}

/// A process this benchmark started, killed (if still running) on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
