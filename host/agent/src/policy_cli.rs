//! `hostnic-agent policy …`: tools for policy authors, on the agent's own
//! runtime (the same limits, validation and host functions as on a node).
//!
//! - `check FILE`: compile, show the digest, list the hooks it implements
//!   (or why not: a missing export, an import the host does not offer, a
//!   refused config).
//! - `run --hook H FILE INPUT.json`: one decision on facts from a JSON file,
//!   printed with the guest's log lines.
//! - `bench --hook H FILE`: per-call latency, a fresh store each call.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hostnic_policy::{
    Decision, FailureMode, HookConfig, IpHook, IpRequest, Limits, Nic, Node, Pod, PolicyEngine,
    RouteTemplate, RoutesHook, Vxnet, VxnetHook, bench_hook,
};
use ipnet::Ipv4Net;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookArg {
    Vxnet,
    Ip,
    Routes,
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Compile a module, print its sha256 and the hooks it implements.
    Check {
        file: PathBuf,
        /// The guest's configuration string, checked by its validate-config.
        #[arg(long, default_value = "")]
        guest_config: String,
    },
    /// Evaluate one hook on a JSON input and print the decision and logs.
    Run {
        #[arg(long, value_enum)]
        hook: HookArg,
        file: PathBuf,
        /// {"pod": {...}, "node": {...}, "candidates": [...], "random": 7} for
        /// vxnet; {"pod", "vxnet"} for ip; {"pod", "nic", "vxnet",
        /// "node_gateway", "templates"} for routes.
        input: PathBuf,
        #[arg(long, default_value = "")]
        guest_config: String,
    },
    /// Per-call latency of a hook (a fresh store per call).
    Bench {
        #[arg(long, value_enum)]
        hook: HookArg,
        file: PathBuf,
        #[arg(long, short, default_value_t = 10_000)]
        n: usize,
        #[arg(long, default_value = "")]
        guest_config: String,
    },
}

pub fn run(cmd: PolicyCmd) -> anyhow::Result<()> {
    let engine = PolicyEngine::in_memory().context("starting the policy runtime")?;
    match cmd {
        PolicyCmd::Check { file, guest_config } => check(&engine, &file, guest_config),
        PolicyCmd::Run {
            hook,
            file,
            input,
            guest_config,
        } => {
            let input: Input = serde_json::from_slice(
                &std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?,
            )
            .with_context(|| format!("parsing {}", input.display()))?;
            let cfg = config_for(&file, guest_config)?;
            match hook {
                HookArg::Vxnet => {
                    let h = VxnetHook::load(&engine, cfg)?;
                    let candidates: Vec<Vxnet> = input
                        .candidates
                        .iter()
                        .map(InVxnet::to_domain)
                        .collect::<anyhow::Result<_>>()?;
                    show(h.select_vxnet(
                        &input.pod.to_domain(),
                        &input.node.to_domain(),
                        &candidates,
                        input.random,
                    )?)
                }
                HookArg::Ip => {
                    let h = IpHook::load(&engine, cfg)?;
                    let vx = input
                        .vxnet
                        .as_ref()
                        .context("input needs \"vxnet\"")?
                        .to_domain()?;
                    show(
                        h.assign_ip(&input.pod.to_domain(), &vx)?
                            .map(|r: IpRequest| format!("{r:?}")),
                    )
                }
                HookArg::Routes => {
                    let h = RoutesHook::load(&engine, cfg)?;
                    let vx = input
                        .vxnet
                        .as_ref()
                        .context("input needs \"vxnet\"")?
                        .to_domain()?;
                    let nic = input.nic.as_ref().context("input needs \"nic\"")?;
                    let templates: Vec<RouteTemplate> = input
                        .templates
                        .iter()
                        .map(|t| {
                            Ok(RouteTemplate {
                                dst: t.dst.parse()?,
                                gw: t.gw.as_deref().map(str::parse).transpose()?,
                            })
                        })
                        .collect::<anyhow::Result<_>>()?;
                    let nic = Nic {
                        mac: nic.mac.clone(),
                        ip: nic.ip,
                        prefix_len: nic.prefix_len,
                    };
                    show(h.routes(
                        &input.pod.to_domain(),
                        &nic,
                        &vx,
                        input.node_gateway,
                        &templates,
                    )?)
                }
            }
        }
        PolicyCmd::Bench {
            hook,
            file,
            n,
            guest_config,
        } => {
            let cfg = config_for(&file, guest_config)?;
            let r = match hook {
                HookArg::Vxnet => bench_hook(&VxnetHook::load(&engine, cfg)?, n),
                HookArg::Ip => bench_hook(&IpHook::load(&engine, cfg)?, n),
                HookArg::Routes => bench_hook(&RoutesHook::load(&engine, cfg)?, n),
            };
            println!(
                "{n} calls: p50 {:?}, p99 {:?}, mean {:?}, min {:?}, max {:?}, errors {}",
                r.p50, r.p99, r.mean, r.min, r.max, r.errors
            );
            if let Some(e) = r.first_error {
                println!("first error: {e}");
            }
            Ok(())
        }
    }
}

/// The hook config for a module file, pinned to its own digest.
fn config_for(file: &Path, guest_config: String) -> anyhow::Result<HookConfig> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(HookConfig {
        path: Some(file.to_path_buf()),
        sha256: Some(sha256_hex(&bytes)),
        config: guest_config,
        limits: Limits::default(),
        failure: FailureMode::Fail,
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check(engine: &PolicyEngine, file: &Path, guest_config: String) -> anyhow::Result<()> {
    let cfg = config_for(file, guest_config)?;
    println!(
        "{}: {} bytes, sha256 {}",
        file.display(),
        std::fs::metadata(file)?.len(),
        cfg.sha256.as_deref().unwrap_or_default()
    );
    let results = [
        (
            "vxnet-selection",
            VxnetHook::load(engine, cfg.clone()).map(|h| h.status()),
        ),
        (
            "ip-assignment",
            IpHook::load(engine, cfg.clone()).map(|h| h.status()),
        ),
        (
            "route-templating",
            RoutesHook::load(engine, cfg).map(|h| h.status()),
        ),
    ];
    let mut any = false;
    for (name, r) in results {
        match r {
            Ok(s) => {
                any = true;
                println!(
                    "  implements {name}: ok ({}, compiled in {:?})",
                    s.guest, s.compile_time
                );
            }
            Err(e) => println!("  {name}: no — {}", hostnic_policy::error_chain(&e)),
        }
    }
    if !any {
        bail!("{} implements none of the hooks", file.display());
    }
    Ok(())
}

fn show<T: std::fmt::Debug>(d: Decision<T>) -> anyhow::Result<()> {
    for line in &d.log {
        println!("guest log [{:?}] {}", line.level, line.message);
    }
    println!(
        "{} decided in {:?}{}:",
        d.guest,
        d.elapsed,
        if d.fallback { " (fallback)" } else { "" }
    );
    println!("{:#?}", d.answer);
    Ok(())
}

trait MapAnswer<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Decision<U>;
}

impl<T> MapAnswer<T> for Decision<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Decision<U> {
        Decision {
            answer: f(self.answer),
            guest: self.guest,
            fallback: self.fallback,
            fallback_cause: self.fallback_cause,
            log: self.log,
            elapsed: self.elapsed,
        }
    }
}

/// The facts a `run` input file gives, in JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    pod: InPod,
    #[serde(default)]
    node: InNode,
    #[serde(default)]
    candidates: Vec<InVxnet>,
    #[serde(default)]
    random: u64,
    #[serde(default)]
    vxnet: Option<InVxnet>,
    #[serde(default)]
    nic: Option<InNic>,
    #[serde(default)]
    node_gateway: Option<Ipv4Addr>,
    #[serde(default)]
    templates: Vec<InTemplate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct InPod {
    namespace: String,
    name: String,
    uid: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

impl InPod {
    fn to_domain(&self) -> Pod {
        Pod {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct InNode {
    instance: String,
    zone: String,
    nics_in_use: u32,
    nic_limit: u32,
}

impl InNode {
    fn to_domain(&self) -> Node {
        Node {
            instance: self.instance.clone(),
            zone: self.zone.clone(),
            nics_in_use: self.nics_in_use,
            nic_limit: if self.nic_limit == 0 {
                64
            } else {
                self.nic_limit
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InVxnet {
    id: String,
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    #[serde(default)]
    free_ips: u32,
    #[serde(default)]
    warm_nics: u32,
    #[serde(default)]
    used_nics: u32,
    #[serde(default)]
    recent_failures: u32,
}

impl InVxnet {
    fn to_domain(&self) -> anyhow::Result<Vxnet> {
        Ok(Vxnet {
            id: self.id.clone(),
            cidr: self.cidr.trunc(),
            gateway: self.gateway,
            free_ips: self.free_ips,
            warm_nics: self.warm_nics,
            used_nics: self.used_nics,
            recent_failures: self.recent_failures,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InNic {
    mac: String,
    ip: Ipv4Addr,
    prefix_len: u8,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InTemplate {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
}
