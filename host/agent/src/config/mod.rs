//! The agent's one typed configuration: a TOML file, with command-line flags
//! overriding it, validated once at start. Nothing else reads the
//! environment or the file later; the parsed [`Config`] is passed down.
//!
//! Keys from the original hostnic agent (`iface`, `vxnets`, `policy`,
//! `zone`, `iaas_credentials`, `loglevel`) keep their names and meaning.
//! Each table with rules of its own has a module: `[hooks]`, `[inventory]`
//! with `[cloud]`, `[kubernetes]` and `[load_balancer]`.

mod cni;
mod hooks;
mod inventory;
mod kubernetes;
mod load_balancer;
mod shared;
mod wiring;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hostnic_proto::cni::MTU_RANGE;
use hostnic_proto::rpc::DEFAULT_SOCKET;
use serde::Deserialize;

pub use cni::Cni;
pub use hooks::{Failure, HookSpec, Hooks};
pub use inventory::{Cloud, Inventory, LeakSweep, NicSpec, Source};
pub use kubernetes::Kubernetes;
pub use load_balancer::{Backends, LoadBalancer};
pub use shared::{SharedVxnet, table_of};
pub use wiring::NicWiring;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The RPC socket the CNI executable calls.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Where allocations are recorded.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Guests compiled when the image was built (`hostnic-agent policy
    /// precompile`), loaded instead of compiling them at a node's first
    /// start; read-only, and used only if only the agent's user may write
    /// it. Missing: compiled at start, as without.
    #[serde(default = "default_compiled_guests_dir")]
    pub compiled_guests_dir: PathBuf,
    /// The node's primary interface. hostnic never moves, addresses or
    /// routes it, and keeps the node's default route on it.
    #[serde(default = "default_iface")]
    pub iface: String,
    /// How a pod's own NIC reaches it: `passthru` (a macvlan of the NIC
    /// made in the pod; the NIC stays on the node) or `move` (the NIC
    /// itself moved into the pod).
    #[serde(default)]
    pub wiring: NicWiring,
    /// Vxnets wired otherwise than `wiring` (a shared vxnet is always
    /// `shared`): `vxnet-id = "move"`.
    #[serde(default)]
    pub vxnet_wiring: std::collections::BTreeMap<String, NicWiring>,
    /// MTU for pod NICs when the network config does not set one.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    #[serde(default)]
    pub log: Log,
    /// Original agent settings, kept for its users; the cloud pool reads
    /// them. `zone`, when set, is the zone the API is called in (over the
    /// credentials file's).
    #[serde(default)]
    pub zone: Option<String>,
    /// The original agent's spelling of `log.level`, at the top level.
    #[serde(default)]
    pub loglevel: Option<String>,
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
    /// Services of type LoadBalancer on the cloud's load balancer.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// The network config the agent installs once it can serve.
    #[serde(default)]
    pub cni: Cni,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: Metrics,
    /// Vxnets in shared-NIC mode: their pods share the node's NIC.
    #[serde(default)]
    pub shared: Vec<SharedVxnet>,
    /// Where this config came from, so SIGHUP can read it again with the
    /// same flags.
    #[serde(skip)]
    pub config_path: Option<PathBuf>,
    #[serde(skip)]
    pub overrides: Overrides,
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

/// `[metrics]`: where `GET /metrics` is served.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// `host:port`; loopback by default, so nothing leaves the node unless
    /// the operator says so. `""` turns the endpoint off.
    #[serde(default = "default_metrics_address")]
    pub address: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            address: default_metrics_address(),
        }
    }
}

fn default_metrics_address() -> String {
    "127.0.0.1:9273".into()
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

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
/// Where `scripts/image` puts the built-in guests, compiled.
pub const SHIPPED_GUESTS_DIR: &str = "/usr/lib/hostnic/compiled";

fn default_compiled_guests_dir() -> PathBuf {
    PathBuf::from(SHIPPED_GUESTS_DIR)
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
    /// Where to serve metrics (metrics.address; "" turns them off).
    #[arg(long)]
    pub metrics_address: Option<String>,
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
        if let Some(v) = self.loglevel.take() {
            self.log.level = v;
        }
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
        if let Some(v) = &o.metrics_address {
            self.metrics.address.clone_from(v);
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
            if self.cloud.instance_id.is_empty() && !self.kubernetes.enabled {
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
            if !self.inventory.nics.is_empty() {
                bail!("inventory.nics lists static NICs but inventory.source is \"cloud\"");
            }
            self.cloud.validate()?;
            if self.cloud.bank_max > 0 && !self.kubernetes.enabled {
                bail!(
                    "cloud.bank_max {} needs [kubernetes] enabled: the NIC bank is kept by the Lease holder and published on its Lease",
                    self.cloud.bank_max
                );
            }
        }
        if !self.metrics.address.is_empty()
            && self
                .metrics
                .address
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            bail!(
                "metrics.address {:?} is not host:port with an IP address (e.g. \"127.0.0.1:9273\", or \"\" to turn metrics off)",
                self.metrics.address
            );
        }
        self.hooks.validate()?;
        self.kubernetes.validate()?;
        self.load_balancer.validate(
            self.kubernetes.enabled,
            self.inventory.source == Source::Cloud,
        )?;
        shared::validate(&self.shared, &self.vxnets)?;
        let vxnets: Vec<String> = match self.inventory.source {
            Source::Cloud => self.vxnets.clone(),
            Source::Static => self
                .inventory
                .nics
                .iter()
                .filter_map(|n| n.vxnet.clone())
                .collect(),
        };
        let shared: Vec<String> = self.shared.iter().map(|s| s.vxnet.clone()).collect();
        wiring::validate(&self.vxnet_wiring, &vxnets, &shared)?;
        if !self.shared.is_empty() && self.inventory.source != Source::Cloud {
            bail!(
                "[[shared]] needs inventory.source = \"cloud\": a shared vxnet's pods go through the node's own NIC there, which the agent makes"
            );
        }
        self.inventory.validate_static()
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

        // The original agent's top-level spelling, as its users wrote it.
        let path = std::env::temp_dir().join(format!("hostnic-cfg-{}.toml", std::process::id()));
        std::fs::write(&path, "loglevel = \"warn\"\n").unwrap();
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.log.level, "warn");
        let bad = std::env::temp_dir().join(format!("hostnic-bad-{}.toml", std::process::id()));
        std::fs::write(&bad, "loglevel = \"hostnic=loud\"\n").unwrap();
        let e = format!(
            "{:#}",
            Config::load(Some(&bad), &Overrides::default()).unwrap_err()
        );
        std::fs::remove_file(&bad).unwrap();
        assert!(e.contains("log.level \"hostnic=loud\""), "{e}");
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
        assert_eq!(c.cloud.account_api_rate, 20.0);
        assert_eq!(Config::parse("").unwrap().cloud.warm_max, 4);
        // The account's rate, an integer as Helm writes it, and this
        // node's place among the nodes sharing it.
        let shared = format!("{ok}account_api_rate = 50\napi_rate_nodes = 5\napi_rate_slot = 4\n");
        let c = Config::parse(&shared).unwrap();
        c.validate().unwrap();
        assert_eq!(c.cloud.account_api_rate, 50.0);
        assert!(err(&format!("{ok}account_api_rate = 0\n")).contains("account_api_rate"));
        let outside = format!("{ok}api_rate_nodes = 2\napi_rate_slot = 2\n");
        assert!(err(&outside).contains("api_rate_slot 2 must be below"));
        // The NIC bank: bounds in order and within one CreateNics, the
        // cluster's leak sweep, and a Lease to keep it by.
        let bank = |keys: &str| format!("{ok}{keys}\n");
        assert!(err(&bank("bank_min = 5\nbank_max = 4")).contains("bank_min 5"));
        assert!(err(&bank("bank_max = 253")).contains("<= 252"));
        assert!(err(&bank("bank_max = 8")).contains("leak_sweep = \"cluster\""));
        let swept = bank("bank_max = 8\nleak_sweep = \"cluster\"");
        assert!(err(&swept).contains("needs [kubernetes] enabled"));
        let c = Config::parse(&format!(
            "{swept}[kubernetes]\nenabled = true\nnode_name = \"n\"\n"
        ))
        .unwrap();
        c.validate().unwrap();
        assert_eq!((c.cloud.bank_min, c.cloud.bank_max), (0, 8));
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
