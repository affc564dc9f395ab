//! The agent's one typed configuration: a TOML file, with command-line flags
//! overriding it, validated once at start. Nothing else reads the
//! environment or the file later; the parsed [`Config`] is passed down.
//!
//! Keys from the original hostnic agent (`iface`, `vxnets`, `policy`,
//! `zone`, `iaas_credentials`, `loglevel`) keep their names and meaning.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hostnic_netlink::Mac;
use hostnic_proto::cni::MTU_RANGE;
use hostnic_proto::rpc::DEFAULT_SOCKET;
use ipnet::Ipv4Net;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The RPC socket the CNI executable calls.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Where allocations are recorded.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The node's primary interface. hostnic never moves, addresses or
    /// routes it, and keeps the node's default route on it.
    #[serde(default = "default_iface")]
    pub iface: String,
    /// MTU for pod NICs when the network config does not set one.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    #[serde(default)]
    pub log: Log,
    /// Original agent settings, kept for its users; the cloud pool reads
    /// them.
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub vxnets: Vec<String>,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub iaas_credentials: Option<PathBuf>,
    #[serde(default)]
    pub inventory: Inventory,
    #[serde(default)]
    pub cloud: Cloud,
    /// The three policy hooks (WebAssembly guests).
    #[serde(default)]
    pub hooks: Hooks,
    /// The API server's view: the node's VM, its pods, the Lease.
    #[serde(default)]
    pub kubernetes: Kubernetes,
    /// Where this config came from, so SIGHUP can read it again with the
    /// same flags.
    #[serde(skip)]
    pub config_path: Option<PathBuf>,
    #[serde(skip)]
    pub overrides: Overrides,
}

/// The API server, for the DaemonSet: this node's VM from its Node's
/// `spec.providerID` (when `cloud.instance_id` is not set), the labels and
/// owner of its pods from a watch, and the Lease that elects the node doing
/// cluster-wide duties (`cloud.leak_sweep = "cluster"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    #[serde(default)]
    pub enabled: bool,
    /// A kubeconfig file; without it, the pod's ServiceAccount.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the DaemonSet passes `spec.nodeName` as
    /// `--node-name`).
    #[serde(default)]
    pub node_name: String,
    /// How long an ADD waits for a pod the watch has not delivered yet,
    /// before it goes on with what the runtime sent.
    #[serde(default = "default_pod_wait")]
    pub pod_wait_ms: u64,
    /// The Lease of the cluster-wide duties.
    #[serde(default = "default_lease_namespace")]
    pub lease_namespace: String,
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
}

impl Default for Kubernetes {
    fn default() -> Self {
        toml::from_str("").expect("the [kubernetes] defaults parse")
    }
}

fn default_pod_wait() -> u64 {
    1000
}
fn default_lease_namespace() -> String {
    "kube-system".into()
}
fn default_lease_name() -> String {
    "hostnic-cluster-duties".into()
}
fn default_lease_seconds() -> u64 {
    30
}

/// The policy hooks. Each runs the built-in default guest unless `path`
/// names another module; `enabled = false` bypasses all three with the
/// agent's native code (for operators who want no WebAssembly on the path,
/// and for the benchmark that prices the hooks).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How often module files are checked for changes (a changed file is
    /// compiled, validated and swapped in live).
    #[serde(default = "default_watch")]
    pub watch_seconds: u64,
    #[serde(default)]
    pub vxnet: HookSpec,
    #[serde(default)]
    pub ip: HookSpec,
    #[serde(default)]
    pub routes: HookSpec,
}

impl Default for Hooks {
    fn default() -> Self {
        toml::from_str("").expect("the [hooks] defaults parse")
    }
}

fn yes() -> bool {
    true
}
fn default_watch() -> u64 {
    2
}

/// One hook: which module, pinned by digest, with its configuration string,
/// limits and what to do when it fails.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSpec {
    /// The module; the built-in default guest when absent.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The module's sha256 (hex); a file with another digest is refused.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The guest's configuration string (validated by the guest's
    /// `validate-config` on every load).
    #[serde(default)]
    pub config: Option<String>,
    #[serde(default)]
    pub failure: Failure,
    /// Per-call deadline and memory cap; the runtime's defaults when absent.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
}

/// What an ADD does when a guest fails (trap, deadline, bad answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failure {
    /// The built-in default guest decides; a log line and a metric say so.
    #[default]
    Fallback,
    /// The ADD fails with the guest's reason.
    Fail,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a full tracing
    /// filter such as `info,hostnic_agent=debug`.
    #[serde(default = "default_loglevel", alias = "loglevel")]
    pub level: String,
    /// Log to this file instead of stderr.
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: default_loglevel(),
            file: None,
            format: LogFormat::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The original agent's vxnet rotation policies (names as it spelled them,
/// with `Random` spelled right).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Policy {
    #[default]
    FailRotate,
    RoundRotate,
    Random,
}

/// Where NICs come from: `cloud` creates and attaches them through the
/// QingCloud API (`vxnets`, `policy`, `iaas_credentials`, `[cloud]`);
/// `static` is a fixed list of NICs already attached to the node (bare-metal
/// nodes, tests).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    #[serde(default)]
    pub source: Source,
    #[serde(default)]
    pub nics: Vec<NicSpec>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    #[default]
    Static,
    Cloud,
}

/// The cloud NIC pool.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cloud {
    /// This node's VM; NICs are attached to it.
    #[serde(default)]
    pub instance_id: String,
    /// Names and tags every NIC the agent creates (`hostnic-<cluster>-…`),
    /// so that leaked ones can be found and reclaimed.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Free NICs to keep ready per vxnet, and the most to keep idle.
    #[serde(default = "default_warm_min")]
    pub warm_min: usize,
    #[serde(default = "default_warm_max")]
    pub warm_max: usize,
    /// NICs per VM, its primary and the gateway NICs included.
    #[serde(default = "default_max_nics")]
    pub max_nics: usize,
    /// A free NIC above `warm_max` is detached and deleted after this long.
    #[serde(default = "default_idle")]
    pub idle_seconds: u64,
    /// A detached NIC with our name older than this is a leak.
    #[serde(default = "default_leak_grace")]
    pub leak_grace_seconds: u64,
    /// How often the node is checked without asking the cloud: the
    /// default route, NICs gone from the node, the warm pool's targets.
    /// Kernel changes (a link gone, a route changed) also trigger the check
    /// at once, from netlink notifications.
    #[serde(default = "default_reconcile")]
    pub reconcile_seconds: u64,
    /// How often the cloud is asked what is attached to this VM (one
    /// DescribeNics of the NICs named for this node, which also finds the
    /// ones it created and lost), jittered ±20% so nodes spread out. Slow
    /// by design: a node at rest costs 3600 / this calls an hour.
    #[serde(default = "default_cloud_poll")]
    pub cloud_poll_seconds: u64,
    /// Which leaked NICs this agent deletes: `node`, only those named for
    /// this node (what every node does); `cluster`, every detached NIC named
    /// for the cluster, those of dead nodes too — a duty for one node at a
    /// time (see the Lease election), never for all at once.
    #[serde(default)]
    pub leak_sweep: LeakSweep,
    /// How long a cold ADD waits for its NIC before answering "try again
    /// later"; the attach goes on and the retried ADD finds it warm. Keep it
    /// under the runtime's CNI timeout.
    #[serde(default = "default_cold_wait")]
    pub cold_add_wait_seconds: u64,
}

/// See [`Cloud::leak_sweep`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakSweep {
    #[default]
    Node,
    Cluster,
}

impl Default for Cloud {
    fn default() -> Self {
        // Serde's defaults, from an empty table.
        toml::from_str("").expect("the [cloud] defaults parse")
    }
}

fn default_cloud_poll() -> u64 {
    1200
}
fn default_cluster() -> String {
    "kubernetes".into()
}
fn default_warm_min() -> usize {
    1
}
fn default_warm_max() -> usize {
    4
}
fn default_max_nics() -> usize {
    64
}
fn default_idle() -> u64 {
    300
}
fn default_leak_grace() -> u64 {
    600
}
fn default_reconcile() -> u64 {
    60
}
fn default_cold_wait() -> u64 {
    20
}

/// One NIC of the static inventory.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    pub mac: Mac,
    /// The address the pod gets, with its subnet's prefix.
    pub address: Ipv4Net,
    /// The subnet's gateway: the pod's default route.
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub vxnet: Option<String>,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/hostnic")
}
fn default_iface() -> String {
    "eth0".into()
}
fn default_mtu() -> u32 {
    1500
}
fn default_loglevel() -> String {
    "info".into()
}

/// Command-line overrides; every one wins over the file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// The RPC socket path.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Where allocations are recorded.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The node's primary interface (never touched).
    #[arg(long)]
    pub iface: Option<String>,
    /// Log level or tracing filter.
    #[arg(long)]
    pub loglevel: Option<String>,
    /// Log to this file instead of stderr.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// This node's VM instance id (cloud inventory).
    #[arg(long)]
    pub instance_id: Option<String>,
    /// This node's Kubernetes name (kubernetes.node_name).
    #[arg(long)]
    pub node_name: Option<String>,
}

impl Config {
    /// Reads the file (if any), applies the overrides and validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading config file {}", p.display()))?,
            None => String::new(),
        };
        let mut cfg = Config::parse(&text).with_context(|| match path {
            Some(p) => format!("config file {}", p.display()),
            None => "built-in config".to_string(),
        })?;
        cfg.apply(overrides);
        cfg.validate()?;
        cfg.config_path = path.map(Path::to_path_buf);
        cfg.overrides = overrides.clone();
        Ok(cfg)
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        // toml's message names the key and shows the line.
        Ok(toml::from_str(text)?)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.socket {
            self.socket.clone_from(v);
        }
        if let Some(v) = &o.state_dir {
            self.state_dir.clone_from(v);
        }
        if let Some(v) = &o.iface {
            self.iface.clone_from(v);
        }
        if let Some(v) = &o.loglevel {
            self.log.level.clone_from(v);
        }
        if let Some(v) = &o.log_file {
            self.log.file = Some(v.clone());
        }
        if let Some(v) = o.log_format {
            self.log.format = v;
        }
        if let Some(v) = &o.instance_id {
            self.cloud.instance_id.clone_from(v);
        }
        if let Some(v) = &o.node_name {
            self.kubernetes.node_name.clone_from(v);
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !MTU_RANGE.contains(&self.mtu) {
            bail!(
                "mtu {} is outside {}..={}",
                self.mtu,
                MTU_RANGE.start(),
                MTU_RANGE.end()
            );
        }
        if self.iface.is_empty() || self.iface.len() > 15 {
            bail!("iface {:?} is not an interface name", self.iface);
        }
        if !self.socket.is_absolute() {
            bail!("socket {} must be an absolute path", self.socket.display());
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).with_context(|| {
            format!(
                "log.level {:?} is not a log level or filter",
                self.log.level
            )
        })?;
        if self.inventory.source == Source::Cloud {
            let c = &self.cloud;
            if c.instance_id.is_empty() && !self.kubernetes.enabled {
                bail!(
                    "cloud.instance_id is required with inventory.source = \"cloud\" (or pass --instance-id, or enable [kubernetes] to read it from the Node's spec.providerID)"
                );
            }
            if self.iaas_credentials.is_none() {
                bail!(
                    "iaas_credentials (the QingCloud credentials file) is required with inventory.source = \"cloud\""
                );
            }
            if self.vxnets.is_empty() {
                bail!("vxnets must list at least one vxnet with inventory.source = \"cloud\"");
            }
            if c.warm_min > c.warm_max {
                bail!(
                    "cloud.warm_min {} is above cloud.warm_max {}",
                    c.warm_min,
                    c.warm_max
                );
            }
            if !(2..=64).contains(&c.max_nics) {
                bail!(
                    "cloud.max_nics {} must be 2..=64 (a VM takes at most 64 NICs, its primary included)",
                    c.max_nics
                );
            }
            if c.cluster.is_empty()
                || !c
                    .cluster
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
            {
                bail!(
                    "cloud.cluster {:?} must be letters, digits and '-'",
                    c.cluster
                );
            }
            if c.reconcile_seconds == 0 || c.cold_add_wait_seconds == 0 || c.cloud_poll_seconds == 0
            {
                bail!(
                    "cloud.reconcile_seconds, cloud.cloud_poll_seconds and cloud.cold_add_wait_seconds must be at least 1"
                );
            }
            if !self.inventory.nics.is_empty() {
                bail!("inventory.nics lists static NICs but inventory.source is \"cloud\"");
            }
        }
        for (name, h) in [
            ("vxnet", &self.hooks.vxnet),
            ("ip", &self.hooks.ip),
            ("routes", &self.hooks.routes),
        ] {
            match (&h.path, &h.sha256) {
                (Some(p), None) => bail!(
                    "hooks.{name}.sha256 is required with hooks.{name}.path {}: modules are pinned by digest (sha256sum the file)",
                    p.display()
                ),
                (None, Some(_)) => bail!("hooks.{name}.sha256 is set but hooks.{name}.path is not"),
                _ => {}
            }
            if let Some(d) = &h.sha256
                && (d.len() != 64 || !d.chars().all(|c| c.is_ascii_hexdigit()))
            {
                bail!("hooks.{name}.sha256 {d:?} is not a sha256 (64 hex digits)");
            }
            if h.deadline_ms == Some(0) || h.memory_mb == Some(0) {
                bail!("hooks.{name}: deadline_ms and memory_mb must be at least 1");
            }
        }
        let k = &self.kubernetes;
        if k.enabled {
            if k.node_name.is_empty() {
                bail!(
                    "kubernetes.node_name is required with kubernetes.enabled (the DaemonSet passes --node-name=$(NODE_NAME))"
                );
            }
            if k.lease_seconds < 3 || k.pod_wait_ms > 60_000 {
                bail!("kubernetes.lease_seconds must be at least 3 and pod_wait_ms at most 60000");
            }
        }
        if self.hooks.watch_seconds == 0 {
            bail!("hooks.watch_seconds must be at least 1");
        }
        let mut macs = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, nic) in self.inventory.nics.iter().enumerate() {
            let key = format!("inventory.nics[{i}]");
            if !macs.insert(nic.mac) {
                bail!("{key}.mac {} is listed twice", nic.mac);
            }
            if !addrs.insert(nic.address.addr()) {
                bail!("{key}.address {} is given to two NICs", nic.address.addr());
            }
            if nic.address.prefix_len() >= 31 {
                bail!(
                    "{key}.address {}: a pod subnet needs a prefix shorter than /31",
                    nic.address
                );
            }
            if nic.address.addr() == nic.address.network()
                || nic.address.addr() == nic.address.broadcast()
            {
                bail!(
                    "{key}.address {} is the subnet's network or broadcast address",
                    nic.address
                );
            }
            if !nic.address.contains(&nic.gateway) || nic.gateway == nic.address.addr() {
                bail!(
                    "{key}.gateway {} must be another address inside {}",
                    nic.gateway,
                    nic.address.trunc()
                );
            }
        }
        self.validate_static_vxnets()
    }

    /// A static inventory gives every NIC a vxnet or none (the vxnet hook
    /// chooses among vxnets; a NIC outside all of them could never be
    /// chosen), and the NICs of one vxnet share its subnet and gateway.
    fn validate_static_vxnets(&self) -> anyhow::Result<()> {
        let nics = &self.inventory.nics;
        let with = nics.iter().filter(|n| n.vxnet.is_some()).count();
        if with > 0 && with < nics.len() {
            let i = nics.iter().position(|n| n.vxnet.is_none()).unwrap_or(0);
            bail!(
                "inventory.nics[{i}] has no vxnet while other NICs have one: give every static NIC a vxnet, or none"
            );
        }
        for (i, nic) in nics.iter().enumerate() {
            let first = nics
                .iter()
                .position(|n| n.vxnet.is_some() && n.vxnet == nic.vxnet)
                .unwrap_or(i);
            let f = &nics[first];
            if f.address.trunc() != nic.address.trunc() || f.gateway != nic.gateway {
                bail!(
                    "inventory.nics[{i}] is in vxnet {} with subnet {} via {}, but inventory.nics[{first}] puts that vxnet at {} via {}",
                    nic.vxnet.as_deref().unwrap_or_default(),
                    nic.address.trunc(),
                    nic.gateway,
                    f.address.trunc(),
                    f.gateway
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        let r = Config::parse(text).and_then(|c| c.validate().map(|()| c));
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn defaults_are_usable() {
        let c = Config::parse("").unwrap();
        c.validate().unwrap();
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.iface, "eth0");
        assert_eq!(c.policy, Policy::FailRotate);
    }

    #[test]
    fn the_seeds_keys_are_understood() {
        let c = Config::parse(
            r#"
            iface = "eth1"
            zone = "pek3a"
            vxnets = ["vxnet-a", "vxnet-b"]
            policy = "RoundRotate"
            iaas_credentials = "/etc/qingcloud/client.yaml"
            [log]
            loglevel = "debug"
            [[inventory.nics]]
            mac = "52:54:00:00:00:01"
            address = "10.0.1.10/24"
            gateway = "10.0.1.1"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.vxnets.len(), 2);
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.inventory.nics[0].mac.to_string(), "52:54:00:00:00:01");
    }

    #[test]
    fn errors_name_the_bad_key() {
        assert!(
            err("sokcet = \"/x\"").contains("sokcet"),
            "{}",
            err("sokcet = \"/x\"")
        );
        assert!(err("mtu = 10").contains("mtu 10"));
        assert!(err("policy = \"Randm\"").contains("Randm"));
        let nic = |mac: &str, addr: &str, gw: &str| {
            format!(
                "[[inventory.nics]]\nmac = \"{mac}\"\naddress = \"{addr}\"\ngateway = \"{gw}\"\n"
            )
        };
        let dup = nic("52:54:00:00:00:01", "10.0.1.10/24", "10.0.1.1")
            + &nic("52:54:00:00:00:01", "10.0.1.11/24", "10.0.1.1");
        assert!(err(&dup).contains("inventory.nics[1].mac"));
        assert!(
            err(&nic("52:54:00:00:00:01", "10.0.1.10/24", "10.0.2.1"))
                .contains("inventory.nics[0].gateway")
        );
        assert!(err(&nic("52:54:00:00:00:0g", "10.0.1.10/24", "10.0.1.1")).contains("not a MAC"));
        assert!(err("[log]\nlevel = \"loud=[\"").contains("log.level"));
    }

    #[test]
    fn the_cloud_source_needs_its_settings() {
        let base = "[inventory]\nsource = \"cloud\"\n";
        assert!(err(base).contains("cloud.instance_id"));
        let with_id = format!("{base}[cloud]\ninstance_id = \"i-1\"\n");
        assert!(err(&with_id).contains("iaas_credentials"));
        let full = format!(
            "iaas_credentials = \"/c\"\nvxnets = [\"vxnet-a\"]\n{base}[cloud]\ninstance_id = \"i-1\"\nwarm_min = 3\nwarm_max = 2\n"
        );
        assert!(err(&full).contains("warm_min"));
        let ok = format!(
            "iaas_credentials = \"/c\"\nvxnets = [\"vxnet-a\"]\n{base}[cloud]\ninstance_id = \"i-1\"\n"
        );
        let c = Config::parse(&ok).unwrap();
        c.validate().unwrap();
        assert_eq!(c.cloud.max_nics, 64);
        assert_eq!(Config::parse("").unwrap().cloud.warm_max, 4);
    }

    #[test]
    fn static_vxnets_are_all_or_nothing_and_consistent() {
        let nic = |mac: u8, addr: &str, gw: &str, vxnet: Option<&str>| {
            let mut t = format!(
                "[[inventory.nics]]\nmac = \"52:54:00:00:00:{mac:02x}\"\naddress = \"{addr}\"\ngateway = \"{gw}\"\n"
            );
            if let Some(v) = vxnet {
                t += &format!("vxnet = \"{v}\"\n");
            }
            t
        };
        let mixed = nic(1, "10.0.1.10/24", "10.0.1.1", Some("vxnet-a"))
            + &nic(2, "10.0.1.11/24", "10.0.1.1", None);
        assert!(
            err(&mixed).contains("inventory.nics[1] has no vxnet"),
            "{}",
            err(&mixed)
        );
        let split = nic(1, "10.0.1.10/24", "10.0.1.1", Some("vxnet-a"))
            + &nic(2, "10.0.2.11/24", "10.0.2.1", Some("vxnet-a"));
        assert!(
            err(&split).contains("inventory.nics[1] is in vxnet vxnet-a"),
            "{}",
            err(&split)
        );
        let good = nic(1, "10.0.1.10/24", "10.0.1.1", Some("vxnet-a"))
            + &nic(2, "10.0.2.11/24", "10.0.2.1", Some("vxnet-b"))
            + &nic(3, "10.0.1.12/24", "10.0.1.1", Some("vxnet-a"));
        Config::parse(&good).unwrap().validate().unwrap();
    }

    #[test]
    fn hooks_are_pinned_by_digest() {
        assert!(
            err("[hooks.vxnet]\npath = \"/p.wasm\"\n").contains("hooks.vxnet.sha256 is required")
        );
        assert!(err("[hooks.ip]\npath = \"/p.wasm\"\nsha256 = \"abc\"\n").contains("not a sha256"));
        assert!(err("[hooks.routes]\nfailure = \"explode\"\n").contains("explode"));
        let digest = "a".repeat(64);
        let c = Config::parse(&format!(
            "[hooks.vxnet]\npath = \"/p.wasm\"\nsha256 = \"{digest}\"\nconfig = '{{\"policy\":\"MostFree\"}}'\nfailure = \"fail\"\n"
        ))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.hooks.vxnet.failure, Failure::Fail);
        assert_eq!(c.hooks.ip, HookSpec::default());
        assert!(c.hooks.enabled);
    }

    #[test]
    fn flags_override_the_file() {
        let mut c = Config::parse("iface = \"eth0\"\nsocket = \"/a.sock\"").unwrap();
        c.apply(&Overrides {
            iface: Some("ens3".into()),
            ..Default::default()
        });
        assert_eq!(c.iface, "ens3");
        assert_eq!(c.socket, PathBuf::from("/a.sock"));
    }
}
