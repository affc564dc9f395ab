//! The hostnic testbed: a node as a network namespace, its NICs as veth
//! pairs whose far ends sit on a "wire" namespace holding the subnet's
//! gateway on a bridge, pods as namespaces, and the real `hostnic-agent` and
//! `hostnic` binaries run inside the node namespace.
//!
//! Everything lives in namespaces created here and removed on drop (also on
//! panic); the machine's own interfaces and routes are never touched.

pub mod cloudbed;
pub mod cluster;
pub mod conformance;
pub mod controlplane;
pub mod deploy;
pub mod helm;
pub mod images;
pub mod iperf;
pub mod kubebed;
pub mod multus;
pub mod netns;
pub mod plugin;
pub mod rawclient;
pub mod sharedbed;
pub mod sim;
pub mod stats;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub use netns::Ns;
pub use plugin::{CallEnv, Chain, CniCall, PluginError, result_address};

/// The subnet of the testbed's vxnet and its gateway (on the wire bridge).
pub const SUBNET_PREFIX: &str = "10.99.0";
pub const GATEWAY: &str = "10.99.0.1";
/// The node's primary interface and its default gateway.
pub const NODE_IP: &str = "192.168.255.2";
pub const NODE_GATEWAY: &str = "192.168.255.1";

/// True when the test may run. Without root it prints a loud SKIPPED line;
/// in CI (CI=true) a missing root is a failure, never a silent pass.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root and CI runs as root: refusing to skip");
    }
    eprintln!("\n*** SKIPPED {test}: needs root (network namespaces) ***\n");
    // The harness hides a passing test's output; scripts/test collects
    // skips here and reports them, so a skip is never read as a pass.
    if let Some(path) = std::env::var_os("HOSTNIC_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            // One write per line: appends from parallel tests stay whole.
            let _ = f.write_all(format!("{test}: needs root\n").as_bytes());
        }
    }
    false
}

/// A binary of this workspace, built next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// One NIC of the testbed inventory.
#[derive(Clone, Debug)]
pub struct Nic {
    pub mac: String,
    pub ip: String,
    /// Its name on the node when the testbed creates it ("hot-plugged").
    pub node_name: String,
}

/// A node with `n` NICs on one wire.
#[derive(Debug)]
pub struct Testbed {
    pub nics: Vec<Nic>,
    /// The agent-wide `wiring` its agents get (see [`test_wiring`]).
    pub wiring: Option<String>,
    pub dir: tempfile::TempDir,
    // Drop order: node before wire, so NIC veths die with the node first.
    pub node: Ns,
    pub wire: Ns,
}

impl Testbed {
    pub fn new(n: usize) -> anyhow::Result<Testbed> {
        assert!(n <= 200, "the testbed subnet has room for 200 NICs");
        let node = Ns::new("node")?;
        let wire = Ns::new("wire")?;
        wire.ip_batch(&[
            // A fixed MAC, as a real gateway has (see sim/sdn.rs).
            "link add br0 address 02:00:00:00:00:99 type bridge".into(),
            format!("addr add {GATEWAY}/24 dev br0"),
            "link set br0 up".into(),
        ])?;
        // The node's primary interface and default route: hostnic must
        // never move either.
        node.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "up0",
            "netns",
            wire.name(),
        ])?;
        node.ip_batch(&[
            format!("addr add {NODE_IP}/24 dev eth0"),
            "link set eth0 up".into(),
            format!("route add default via {NODE_GATEWAY} dev eth0"),
        ])?;
        wire.ip_batch(&[
            format!("addr add {NODE_GATEWAY}/24 dev up0"),
            "link set up0 up".into(),
        ])?;

        let nics: Vec<Nic> = (0..n)
            .map(|i| Nic {
                mac: format!("52:54:00:99:{:02x}:{:02x}", i / 256, i % 256),
                ip: format!("{SUBNET_PREFIX}.{}", 10 + i),
                node_name: format!("eth{}", i + 1),
            })
            .collect();
        let mut node_cmds = Vec::new();
        let mut wire_cmds = Vec::new();
        for (i, nic) in nics.iter().enumerate() {
            node_cmds.push(format!(
                "link add {} address {} type veth peer name wnic{i} netns {}",
                nic.node_name,
                nic.mac,
                wire.name()
            ));
            wire_cmds.push(format!("link set wnic{i} master br0 up"));
        }
        node.ip_batch(&node_cmds)?;
        wire.ip_batch(&wire_cmds)?;
        Ok(Testbed {
            nics,
            wiring: test_wiring(),
            dir: tempfile::tempdir()?,
            node,
            wire,
        })
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The agent config for this testbed's inventory.
    pub fn agent_config(&self) -> String {
        let mut s = format!(
            "{}socket = {:?}\nstate_dir = {:?}\niface = \"eth0\"\n[log]\nlevel = \"debug\"\n",
            wiring_line(self.wiring.as_deref()),
            self.socket(),
            self.state_dir()
        );
        for nic in &self.nics {
            s += &format!(
                "[[inventory.nics]]\nmac = \"{}\"\naddress = \"{}/24\"\ngateway = \"{GATEWAY}\"\n",
                nic.mac, nic.ip
            );
        }
        s
    }

    /// Starts `hostnic-agent` in the node namespace and waits until it serves.
    pub fn start_agent(&self) -> anyhow::Result<Agent> {
        self.start_agent_with("")
    }

    /// The same with extra config tables appended (e.g. `[hooks]`).
    pub fn start_agent_with(&self, extra: &str) -> anyhow::Result<Agent> {
        Agent::spawn(
            &self.node,
            self.dir.path(),
            &format!("{}{extra}", self.agent_config()),
            self.socket(),
        )
    }

    /// A hostnic network config for this testbed.
    pub fn netconf(&self, version: &str, routes: Value) -> Value {
        json!({
            "cniVersion": version,
            "name": "hostnic-test",
            "type": "hostnic",
            "socket": self.socket(),
            "ipam": { "routes": routes },
        })
    }

    /// A call of the real `hostnic` binary, run in the node namespace as a
    /// runtime would.
    pub fn hostnic(&self) -> CniCall {
        CniCall::new(bin("hostnic"), Some(self.node.path()))
    }

    /// The node's default route, as `ip route show default` prints it.
    pub fn node_default_route(&self) -> anyhow::Result<String> {
        Ok(self
            .node
            .ip(&["route", "show", "default"])?
            .trim()
            .to_string())
    }

    /// The files in the allocation record directory.
    pub fn records(&self) -> Vec<String> {
        std::fs::read_dir(self.state_dir().join("allocations"))
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `hostnic-agent status --json` of this testbed's agent.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        agent_status(&self.socket())
    }

    /// Waits until every NIC a DEL was answered for is back (see
    /// [`wait_for_releases`]).
    pub fn settle(&self) {
        wait_for_releases(&self.state_dir()).expect("releases to finish");
    }

    /// Which inventory NICs sit parked and free in the node namespace now
    /// (see [`free_on_node`]): under `move` the NICs not in a pod, under
    /// `passthru` the NICs no pod's child holds.
    pub fn parked_macs(&self) -> anyhow::Result<Vec<String>> {
        let free = free_on_node(&self.node)?;
        Ok(self
            .nics
            .iter()
            .filter(|n| free.contains(&n.mac))
            .map(|n| n.mac.clone())
            .collect())
    }
}

/// The MACs of the NICs parked in `node` under the agent's name for them
/// and free: no passthru child holds them (a child keeps its lower
/// promiscuous, so the kernel's count is the proof of a holder wherever
/// the child's namespace is). Under `move` a NIC with a pod is not on the
/// node at all; under `passthru` it stays, held.
pub fn free_on_node(node: &Ns) -> anyhow::Result<Vec<String>> {
    let out = node.ip(&["-d", "-o", "link", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let name = l.split(':').nth(1)?.trim().split('@').next()?;
            let mac = l.split("link/ether ").nth(1)?.split_whitespace().next()?;
            let promiscuity = l
                .split_whitespace()
                .skip_while(|w| *w != "promiscuity")
                .nth(1)?;
            (name == parked_name(mac) && promiscuity == "0").then(|| mac.to_string())
        })
        .collect())
}

/// `hostnic-agent status --json` of the agent listening on `socket`.
pub fn agent_status(socket: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(bin("hostnic-agent"))
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()?;
    serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("hostnic-agent status --json: {e}"))
}

/// The wiring the testbeds' agents get unless a test sets its own:
/// `HOSTNIC_TEST_WIRING` (`passthru` or `move`) runs a whole suite under
/// one; unset, the agent's default.
pub fn test_wiring() -> Option<String> {
    std::env::var("HOSTNIC_TEST_WIRING")
        .ok()
        .filter(|w| !w.is_empty())
}

/// The config line for `wiring` (nothing: the agent's default).
pub fn wiring_line(wiring: Option<&str>) -> String {
    wiring
        .map(|w| format!("wiring = {w:?}\n"))
        .unwrap_or_default()
}

/// The agent's name for a NIC waiting in the node namespace.
pub fn parked_name(mac: &str) -> String {
    format!("hn{}", mac.replace(':', ""))
}

/// A running `hostnic-agent`; stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    /// Starts `hostnic-agent` inside `ns` with `config` (written to
    /// `dir/agent.toml`, log in `dir/agent.log`) and waits until it serves.
    pub fn spawn(ns: &Ns, dir: &Path, config: &str, socket: PathBuf) -> anyhow::Result<Agent> {
        Self::spawn_within(ns, dir, config, socket, Duration::from_secs(20))
    }

    /// The same, waiting up to `limit` for it to serve (many agents
    /// starting at once against a rate-limited cloud take longer).
    pub fn spawn_within(
        ns: &Ns,
        dir: &Path,
        config: &str,
        socket: PathBuf,
        limit: Duration,
    ) -> anyhow::Result<Agent> {
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, config)?;
        let log_path = dir.join("agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = ns
            .command(bin("hostnic-agent"))?
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting hostnic-agent")?;
        let mut agent = Agent {
            child: Some(child),
            socket,
            log: log_path,
        };
        agent.wait_ready(limit)?;
        Ok(agent)
    }

    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "hostnic-agent exited ({status}) before serving:\n{}",
                    self.log_text()
                );
            }
            // Fine-grained: the benchmark times agent starts with this.
            std::thread::sleep(Duration::from_millis(1));
        }
        bail!(
            "hostnic-agent did not serve within {limit:?}:\n{}",
            self.log_text()
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's resident memory, in KiB (VmRSS).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// SIGHUP: re-read the config (the agent reloads its policy hooks).
    pub fn hup(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("the agent is not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )?;
        Ok(())
    }

    /// kill -9: no chance to finish anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the graceful stop a DaemonSet rollout does.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
            let start = Instant::now();
            while c.try_wait()?.is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    c.kill()?;
                    c.wait()?;
                    bail!("hostnic-agent ignored SIGTERM for 10 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.stop().is_err() {
            self.kill9();
        }
    }
}

/// The CNI environment of pod `cid` (netns `netns`, interface eth0), with
/// the `CNI_ARGS` containerd sends.
pub fn pod_env<'a>(cid: &'a str, netns: &'a str) -> CallEnv<'a> {
    CallEnv {
        container_id: cid,
        netns,
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
    }
}

/// The last `n` lines of a log, under a `--- title` line, for failure
/// messages.
pub fn log_tail(title: &str, log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(n);
    let mut text = format!("--- {title}\n");
    for l in &lines[from..] {
        text += l;
        text.push('\n');
    }
    text
}

/// The result of a call that must succeed.
pub fn ok(r: anyhow::Result<Result<serde_json::Value, PluginError>>) -> serde_json::Value {
    match r.expect("exec") {
        Ok(v) => v,
        Err(e) => panic!("plugin failed: {e}"),
    }
}

/// The CNI error code of a call that must fail.
pub fn err_code(r: anyhow::Result<Result<serde_json::Value, PluginError>>) -> u64 {
    match r.expect("exec") {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e.code.unwrap_or_else(|| panic!("no CNI error JSON: {e}")),
    }
}

/// Waits until the agent whose state is in `state_dir` has brought back
/// every NIC it answered a DEL for: DEL answers once the release is
/// recorded, and the NIC returns in the background.
pub fn wait_for_releases(state_dir: &Path) -> anyhow::Result<()> {
    // NIC records, and shared-NIC mode's (whose veths are deleted after
    // DEL answers).
    let releasing = || {
        ["allocations", "shared"]
            .iter()
            .flat_map(|d| std::fs::read_dir(state_dir.join(d)))
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .any(|e| {
                std::fs::read_to_string(e.path())
                    .is_ok_and(|t| t.contains("\"phase\": \"releasing\""))
            })
    };
    wait_for(
        "the NICs and veths DELs answered for to be released",
        Duration::from_secs(10),
        || !releasing(),
    )
}

/// Waits for `path` to disappear or appear, for tests that watch files.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A policy guest built by the workspace build (`guests/`), e.g.
/// `guest_wasm("vxnet_select")`.
pub fn guest_wasm(name: &str) -> PathBuf {
    let hostnic = bin("hostnic");
    // target/<profile>/hostnic -> target/guests/wasm32-wasip2/release/
    let target = hostnic.parent().and_then(Path::parent).expect("target dir");
    let path = target
        .join("guests/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is not built; the hostnic-policy build builds the guests",
        path.display()
    );
    path
}

/// The sha256 of a file, hex, as `sha256sum` prints it.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let out = netns::run(Command::new("sha256sum").arg(path))?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// The reference plugins from Debian's containernetworking-plugins.
pub fn reference_plugin_dir() -> Option<&'static Path> {
    ["/usr/lib/cni", "/opt/cni/bin"]
        .into_iter()
        .map(Path::new)
        .find(|d| d.join("portmap").exists())
}
