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

/// Where NICs come from. `static`: a fixed list of NICs already attached to
/// the node (bare-metal nodes, tests).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    #[serde(default)]
    pub nics: Vec<NicSpec>,
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
