//! `hostnic-agent policy …`: tools for policy authors, on the agent's own
//! runtime (the same limits, validation and host functions as on a node).
//!
//! - `new NAME --hook H`: a guest crate that builds and passes its tests as
//!   written (`new.rs`).
//! - `check FILE [--sha256 PIN]`: compile, show the digest, list the hooks
//!   it implements (or why not: a missing export, an import the host does
//!   not offer, a refused config).
//! - `run --hook H FILE FACTS.json`: one decision on facts from a file,
//!   printed with the guest's log lines.
//! - `bench --hook H FILE [--input FACTS.json]`: per-call latency, a fresh
//!   store each call.
//! - `decisions` and `replay FILE`: the decisions a running agent recorded,
//!   and what a candidate module would have decided instead (`replay.rs`).
//! - `precompile --out DIR`: the built-in guests compiled for this agent,
//!   for an image to ship (`compiled_guests_dir`).
//!
//! Facts files have the shape of `crate::facts::Facts`.

mod new;
mod replay;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hostnic_policy::{
    Decision, FailureMode, HookConfig, IpHook, Limits, LoadError, PolicyEngine, PolicyError,
    RoutesHook, VxnetHook, bench_calls, bench_hook,
};
use serde_json::Value;

use crate::facts::{self, Facts, HookName};

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Write a new guest crate for one hook: Cargo.toml, the contract
    /// (wit/policy.wit), a policy with a unit test, and a facts file.
    New {
        /// The crate's name and directory (created; must not exist).
        name: String,
        #[arg(long, value_enum)]
        hook: HookName,
    },
    /// Compile a module, print its sha256 and the hooks it implements.
    Check {
        file: PathBuf,
        /// The guest's configuration string, checked by its validate-config.
        #[arg(long, default_value = "")]
        guest_config: String,
        /// Fail unless the module's sha256 is this one (the pin the agent's
        /// config will carry).
        #[arg(long, value_name = "PIN")]
        sha256: Option<String>,
    },
    /// Evaluate one hook on facts from a JSON file; print the decision and
    /// the guest's log lines.
    Run {
        #[arg(long, value_enum)]
        hook: HookName,
        file: PathBuf,
        /// {"pod", "node", "candidates", "random"} for vxnet; {"pod",
        /// "vxnet"} for ip; {"pod", "vxnet", "nic", "node_gateway",
        /// "templates"} for routes. See GUIDE.md.
        facts: PathBuf,
        #[arg(long, default_value = "")]
        guest_config: String,
    },
    /// Per-call latency of a hook (a fresh store per call).
    Bench {
        #[arg(long, value_enum)]
        hook: HookName,
        file: PathBuf,
        /// The facts of every call (as for `run`); without it, a built-in
        /// sample that may never reach your policy's interesting branches.
        #[arg(long, value_name = "FACTS.json")]
        input: Option<PathBuf>,
        #[arg(long, short, default_value_t = 10_000)]
        n: usize,
        #[arg(long, default_value = "")]
        guest_config: String,
    },
    /// Print the decisions a running agent recorded (its latest hook calls),
    /// one JSON object per line: save them to replay later.
    Decisions {
        /// The agent's socket.
        #[arg(long, default_value = hostnic_proto::rpc::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// At most this many, the newest.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Compile the built-in guests for this agent's runtime into a
    /// directory an image ships (`compiled_guests_dir`), so a node's first
    /// start compiles nothing.
    Precompile {
        #[arg(long, value_name = "DIR", default_value = crate::config::SHIPPED_GUESTS_DIR)]
        out: PathBuf,
    },
    /// Run a candidate module on the decisions an agent recorded and show
    /// where it would decide differently, before you swap it in.
    Replay {
        file: PathBuf,
        /// Recorded decisions saved by `policy decisions` (JSON lines);
        /// without it, they are asked of the agent at --socket.
        #[arg(long, value_name = "FILE")]
        decisions: Option<PathBuf>,
        #[arg(long, default_value = hostnic_proto::rpc::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long, default_value = "")]
        guest_config: String,
        /// Exit 1 if any decision would change (for a pipeline gate).
        #[arg(long)]
        fail_on_change: bool,
    },
}

pub fn run(cmd: PolicyCmd) -> anyhow::Result<()> {
    let engine = || PolicyEngine::in_memory().context("starting the policy runtime");
    match cmd {
        PolicyCmd::New { name, hook } => new::create(&name, hook),
        PolicyCmd::Precompile { out } => {
            let written = engine()?
                .precompile_builtins(&out)
                .with_context(|| format!("writing the compiled guests to {}", out.display()))?;
            for path in written {
                println!("{}", path.display());
            }
            Ok(())
        }
        PolicyCmd::Check {
            file,
            guest_config,
            sha256,
        } => check(&engine()?, &file, guest_config, sha256.as_deref()),
        PolicyCmd::Run {
            hook,
            file,
            facts,
            guest_config,
        } => {
            let facts = read_facts(&facts)?;
            let h = AnyHook::load(&engine()?, hook, config_for(&file, guest_config)?)?;
            show(hook, h.decide(&facts, None)??);
            Ok(())
        }
        PolicyCmd::Bench {
            hook,
            file,
            input,
            n,
            guest_config,
        } => {
            let h = AnyHook::load(&engine()?, hook, config_for(&file, guest_config)?)?;
            let r = match &input {
                Some(path) => {
                    let facts = read_facts(path)?;
                    // Bad facts fail here, once, rather than n times.
                    h.decide(&facts, None)?.ok();
                    println!("facts: {}", path.display());
                    bench_calls(n, || h.decide(&facts, None).expect("facts checked above"))
                }
                None => {
                    println!(
                        "facts: the built-in sample (a pod without labels or annotations, \
                         three vxnets, two route templates); use --input FILE for your own"
                    );
                    h.bench_sample(n)
                }
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
        PolicyCmd::Decisions { socket, limit } => replay::print_decisions(&socket, limit),
        PolicyCmd::Replay {
            file,
            decisions,
            socket,
            guest_config,
            fail_on_change,
        } => {
            let recorded = match &decisions {
                Some(path) => replay::read_decisions(path)?,
                None => replay::fetch_decisions(&socket, None)?,
            };
            let changed = replay::replay(&engine()?, &file, guest_config, &recorded)?;
            if fail_on_change && changed > 0 {
                bail!("{changed} decisions would change");
            }
            Ok(())
        }
    }
}

fn read_facts(path: &Path) -> anyhow::Result<Facts> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("parsing the facts in {}", path.display()))
}

/// One hook of any kind, answering in JSON (the shape the decision log
/// records).
pub(crate) enum AnyHook {
    Vxnet(VxnetHook),
    Ip(IpHook),
    Routes(RoutesHook),
}

impl AnyHook {
    pub(crate) fn load(
        engine: &PolicyEngine,
        hook: HookName,
        cfg: HookConfig,
    ) -> Result<AnyHook, LoadError> {
        Ok(match hook {
            HookName::Vxnet => AnyHook::Vxnet(VxnetHook::load(engine, cfg)?),
            HookName::Ip => AnyHook::Ip(IpHook::load(engine, cfg)?),
            HookName::Routes => AnyHook::Routes(RoutesHook::load(engine, cfg)?),
        })
    }

    /// One call on `facts`, with a network's own config string if the
    /// recorded call had one. The outer error: the facts lack what this
    /// hook needs; the inner one: the call failed or the guest refused
    /// (the network's config too).
    pub(crate) fn decide(
        &self,
        facts: &Facts,
        network_config: Option<&str>,
    ) -> anyhow::Result<Result<Decision<Value>, PolicyError>> {
        let pod = facts.pod();
        Ok(match self {
            AnyHook::Vxnet(h) => match configured(h, network_config)? {
                Ok(h) => h
                    .select_vxnet(&pod, &facts.node(), &facts.candidates(), facts.random)
                    .map(|d| map(d, |a| facts::vxnets_json(&a))),
                Err(e) => Err(e),
            },
            AnyHook::Ip(h) => match configured(h, network_config)? {
                Ok(h) => h
                    .assign_ip(&pod, &facts.vxnet()?)
                    .map(|d| map(d, |a| facts::ip_json(&a))),
                Err(e) => Err(e),
            },
            AnyHook::Routes(h) => match configured(h, network_config)? {
                Ok(h) => h
                    .routes(
                        &pod,
                        &facts.nic()?,
                        &facts.vxnet()?,
                        facts.node_gateway,
                        &facts.templates(),
                    )
                    .map(|d| map(d, |a| facts::routes_json(&a))),
                Err(e) => Err(e),
            },
        })
    }

    fn bench_sample(&self, n: usize) -> hostnic_policy::BenchResult {
        match self {
            AnyHook::Vxnet(h) => bench_hook(h, n),
            AnyHook::Ip(h) => bench_hook(h, n),
            AnyHook::Routes(h) => bench_hook(h, n),
        }
    }
}

/// `hook` with a network's config string; the guest refusing the string
/// is a refusal of the call.
fn configured<'h, K: hostnic_policy::Kind>(
    hook: &'h hostnic_policy::Hook<K>,
    config: Option<&str>,
) -> anyhow::Result<Result<hostnic_policy::Configured<'h, K>, PolicyError>> {
    let Some(config) = config else {
        return Ok(Ok(hook.configured()));
    };
    match hook.with_config(config) {
        Ok(h) => Ok(Ok(h)),
        Err(LoadError::ConfigRefused { guest, reason }) => Ok(Err(PolicyError::Refused {
            guest,
            reason: format!("the network's config: {reason}"),
        })),
        Err(e) => Err(anyhow::Error::new(e).context("the network's config")),
    }
}

fn map<T, U>(d: Decision<T>, f: impl FnOnce(T) -> U) -> Decision<U> {
    Decision {
        answer: f(d.answer),
        guest: d.guest,
        fallback: d.fallback,
        fallback_cause: d.fallback_cause,
        log: d.log,
        elapsed: d.elapsed,
    }
}

/// The hook config for a module file, pinned to its own digest, failing
/// (never falling back) so that the author sees their guest's errors.
pub(crate) fn config_for(file: &Path, guest_config: String) -> anyhow::Result<HookConfig> {
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

fn check(
    engine: &PolicyEngine,
    file: &Path,
    guest_config: String,
    pin: Option<&str>,
) -> anyhow::Result<()> {
    let cfg = config_for(file, guest_config)?;
    let digest = cfg.sha256.clone().unwrap_or_default();
    println!(
        "{}: {} bytes, sha256 {digest}",
        file.display(),
        std::fs::metadata(file)?.len(),
    );
    if let Some(pin) = pin {
        let pin = pin
            .trim()
            .trim_start_matches("sha256:")
            .to_ascii_lowercase();
        if pin != digest {
            bail!(
                "{} has sha256 {digest}, not the pinned {pin}: the agent would refuse it",
                file.display()
            );
        }
        println!("  sha256 matches the pin");
    }
    let mut implemented = 0;
    let mut refused = None;
    for hook in [HookName::Vxnet, HookName::Ip, HookName::Routes] {
        let world = match hook {
            HookName::Vxnet => "vxnet-selection",
            HookName::Ip => "ip-assignment",
            HookName::Routes => "route-templating",
        };
        match AnyHook::load(engine, hook, cfg.clone()) {
            Ok(_) => {
                implemented += 1;
                println!("  implements {world} (--hook {hook}): ok, its config is accepted");
            }
            // The module implements the hook; its config is what failed.
            Err(e @ (LoadError::ConfigRefused { .. } | LoadError::ConfigCheckFailed { .. })) => {
                implemented += 1;
                let why = hostnic_policy::error_chain(&e);
                println!("  implements {world} (--hook {hook}), but: {why}");
                refused = Some(why);
            }
            Err(LoadError::WrongHook { .. }) => println!("  {world}: not implemented"),
            Err(e) => println!("  {world}: no — {}", hostnic_policy::error_chain(&e)),
        }
    }
    if let Some(why) = refused {
        bail!("{why}");
    }
    if implemented == 0 {
        bail!("{} implements none of the hooks", file.display());
    }
    Ok(())
}

fn show(hook: HookName, d: Decision<Value>) {
    for line in &d.log {
        println!("guest log [{:?}] {}", line.level, line.message);
    }
    println!(
        "{} decided in {:?}{}:",
        d.guest,
        d.elapsed,
        if d.fallback { " (fallback)" } else { "" }
    );
    println!("  {}", facts::show_answer(hook, &d.answer));
}
