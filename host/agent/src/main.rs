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
    /// The agent's TOML config file.
    #[arg(long, short, default_value = "/etc/hostnic/agent.toml")]
    config: PathBuf,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let path = cli.config.exists().then_some(cli.config.as_path());
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

fn init_logging(cfg: &Config) -> anyhow::Result<()> {
    use anyhow::Context;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&cfg.log.level)?;
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
