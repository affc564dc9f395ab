//! `hostnic-agent`: see the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hostnic_agent::config::{Config, LogFormat, Overrides};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "hostnic node agent: gives every pod its own cloud NIC"
)]
struct Cli {
    /// The agent's TOML config file [default: /etc/hostnic/agent.toml,
    /// which may be absent; a path given here must exist].
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Tools for policy authors: check, run and bench a policy module.
    #[command(subcommand)]
    Policy(hostnic_agent::policy_cli::PolicyCmd),
    /// Installs the CNI executable and the network config on the node,
    /// atomically (the DaemonSet's init container runs this).
    InstallCni(hostnic_agent::install::InstallCni),
    /// Shows what the running agent holds: its NICs (with the pods holding
    /// them), its policy guests, its latest ADD decisions and why, and its
    /// cloud API calls.
    Status {
        /// The agent's socket.
        #[arg(long, default_value = hostnic_proto::rpc::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// JSON instead of tables, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Asks the running agent whether an ADD could succeed now (its CNI
    /// STATUS); exits 0 if so. For the DaemonSet's readiness and liveness
    /// probes.
    Probe {
        /// The agent's socket.
        #[arg(long, default_value = hostnic_proto::rpc::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Exit 0 whenever the agent answers, ready or not (liveness: a
        /// node out of NICs is alive and must not be restarted).
        #[arg(long)]
        alive: bool,
    },
}

/// Where the agent looks for its config when `--config` is not given.
const DEFAULT_CONFIG: &str = "/etc/hostnic/agent.toml";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Probe { socket, alive }) = &cli.command {
        return probe(socket, *alive);
    }
    if let Some(Command::Status { socket, json }) = &cli.command {
        return status(socket, *json);
    }
    if let Some(Command::InstallCni(args)) = &cli.command {
        return match hostnic_agent::install::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hostnic-agent install-cni: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Policy(cmd)) = cli.command {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_target(false)
            .init();
        return match hostnic_agent::policy_cli::run(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hostnic-agent policy: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Everything the agent creates (socket, records, logs) is root's alone.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Only the default path may be absent (built-in defaults): a path the
    // operator named that does not exist is a typo or an unmounted
    // ConfigMap, and starting without NICs would hide it.
    let path = match &cli.config {
        Some(p) if !p.exists() => {
            eprintln!(
                "hostnic-agent: the config file {} given with --config does not exist",
                p.display()
            );
            return ExitCode::from(2);
        }
        Some(p) => Some(p.as_path()),
        None => Some(std::path::Path::new(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    let cfg = match Config::load(path, &cli.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hostnic-agent: bad configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&cfg) {
        eprintln!("hostnic-agent: {e:#}");
        return ExitCode::from(2);
    }
    if let Err(e) = hostnic_agent::fds::raise_fd_limit() {
        tracing::warn!(error = %e, "raising the descriptor limit; keeping the default");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hostnic-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(hostnic_agent::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("hostnic-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The crates that compile and run guests (a target matches its prefix:
/// `wasmtime` is also `wasmtime_cranelift`), whose `debug` output (~50,000
/// lines, 5 MB, to compile the default guests) would bury the agent's own
/// when an operator asks for `debug`.
const GUEST_COMPILER: [&str; 2] = ["cranelift", "wasmtime"];

/// The tracing filter for the configured level: the guest compiler stays at
/// `info` unless the filter names it.
fn log_filter(level: &str) -> String {
    let mut filter = level.to_string();
    for target in GUEST_COMPILER {
        if !level.contains(target) {
            filter += &format!(",{target}=info");
        }
    }
    filter
}

fn init_logging(cfg: &Config) -> anyhow::Result<()> {
    use anyhow::Context;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(log_filter(&cfg.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let writer = match &cfg.log.file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating log directory {}", dir.display()))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log file {}", path.display()))?;
            BoxMakeWriter::new(std::sync::Mutex::new(file))
        }
        None => BoxMakeWriter::new(std::io::stderr),
    };
    match cfg.log.format {
        LogFormat::Text => {
            // Colour only for a person at a terminal, never into a file.
            use std::io::IsTerminal;
            let ansi = cfg.log.file.is_none() && std::io::stderr().is_terminal();
            builder.with_writer(writer).with_ansi(ansi).init()
        }
        LogFormat::Json => builder.json().with_writer(writer).init(),
    }
    Ok(())
}

/// `hostnic-agent probe`: one STATUS round trip over the socket.
fn probe(socket: &std::path::Path, alive: bool) -> ExitCode {
    use hostnic_proto::rpc::{Op, Response};
    let answer = hostnic_agent::client::call(socket, Op::Status, std::time::Duration::from_secs(5));
    match answer {
        Ok(Response { result: Ok(_), .. }) => {
            println!("ready");
            ExitCode::SUCCESS
        }
        Ok(Response { result: Err(e), .. }) => {
            println!("not ready: {e}");
            if alive {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            println!("hostnic-agent at {} did not answer: {e}", socket.display());
            ExitCode::FAILURE
        }
    }
}

fn status(socket: &std::path::Path, json: bool) -> ExitCode {
    use hostnic_agent::inspect::{Inspection, render};
    use hostnic_proto::rpc::{Op, Reply, Response};
    let answer =
        hostnic_agent::client::call(socket, Op::Inspect, std::time::Duration::from_secs(5));
    let state = match answer {
        Ok(Response {
            result: Ok(Reply::Inspection { state }),
            ..
        }) => state,
        Ok(Response { result: Err(e), .. }) => {
            eprintln!("hostnic-agent status: {e}");
            return ExitCode::FAILURE;
        }
        Ok(other) => {
            eprintln!(
                "hostnic-agent status: unexpected answer {:?}; is the agent older than this command?",
                other.result
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!(
                "hostnic-agent status: the agent at {} did not answer: {e}",
                socket.display()
            );
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&state).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    match serde_json::from_value::<Inspection>(state) {
        Ok(i) => {
            print!("{}", render(&i));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hostnic-agent status: the agent's answer does not parse: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn the_guest_compiler_stays_at_info_unless_named() {
        assert_eq!(log_filter("debug"), "debug,cranelift=info,wasmtime=info");
        assert_eq!(
            log_filter("debug,wasmtime=trace"),
            "debug,wasmtime=trace,cranelift=info"
        );
    }
}
