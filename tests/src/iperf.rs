//! TCP throughput between two namespaces with `iperf3` (scripts/setup
//! installs it): the bandwidth tests' measure and the benchmarks'.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use crate::Ns;

/// Bits per second received in one run of `seconds` between an `iperf3 -s`
/// in `server` (listening on `server_ip`) and a client in `client`;
/// `reverse`: the server sends (`-R`). The first second is left out
/// (`-O 1`): TCP's slow start and a shaper's initial burst are not the
/// steady rate.
pub fn bits_per_second(
    client: &Ns,
    server: &Ns,
    server_ip: &str,
    seconds: u32,
    reverse: bool,
) -> anyhow::Result<f64> {
    let _server = Running(
        server
            .command("iperf3")?
            .args(["-s", "-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?,
    );
    let secs = seconds.to_string();
    let mut args = vec!["-c", server_ip, "-t", &secs, "-O", "1", "-J"];
    if reverse {
        args.push("-R");
    }
    // The server listens within a moment; until it does the client is
    // refused.
    // (With -J a refused client may still exit 0, its JSON naming the
    // error.)
    let start = Instant::now();
    let v: Value = loop {
        let refused = match client.exec("iperf3", &args) {
            Ok(out) => {
                let v: Value = serde_json::from_str(&out).context("iperf3 -J output")?;
                match v["error"].as_str() {
                    Some(e) => anyhow::anyhow!("iperf3 -c {server_ip}: {e}"),
                    None => break v,
                }
            }
            Err(e) => e.context(format!("iperf3 -c {server_ip}")),
        };
        if start.elapsed() > Duration::from_secs(5) {
            return Err(refused);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no end.sum_received.bits_per_second in {v}"))
}

/// A process a test started, killed (if still running) on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // Already gone (it serves one client, -1) is fine.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
