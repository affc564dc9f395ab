//! `hostnic-conformance`: Kubernetes' own sig-network e2e suite against
//! the testbed cluster with hostnic installed from deploy/, once per wiring
//! mode (`scripts/conformance` runs it). Each mode gets a fresh cluster;
//! the JUnit report and the suite's log of each go under
//! `<report-dir>/<mode>/`. Exits non-zero if a spec failed.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;
use hostnic_testbed::conformance::{self, Selection, WIRINGS};

/// Runs the upstream e2e suite (scripts/e2e-build) against the testbed
/// cluster. Needs root; everything it creates is removed at exit.
#[derive(Debug, Parser)]
#[command(name = "hostnic-conformance")]
struct Cli {
    /// The wiring modes to run, in order (default: every one).
    #[arg(long = "wiring", value_name = "MODE")]
    wirings: Vec<String>,
    /// ginkgo's --focus (default: the sig-network selection of docs/testing.md).
    #[arg(long)]
    focus: Option<String>,
    /// ginkgo's --skip (default: what the testbed cannot run, and the
    /// mode's known failures; the reasons in docs/testing.md).
    #[arg(long)]
    skip: Option<String>,
    /// How many e2e.test processes run the specs at once (ginkgo's
    /// --procs); `[Serial]` specs run alone at the end.
    #[arg(long, default_value_t = 4)]
    procs: usize,
    /// Where the reports go.
    #[arg(long, default_value = "target/conformance")]
    report_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-conformance needs root: it creates network namespaces");
    }
    let wirings = if cli.wirings.is_empty() {
        WIRINGS.iter().collect()
    } else {
        cli.wirings
            .iter()
            .map(|w| conformance::wiring(w))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let focus = cli.focus.unwrap_or_else(|| conformance::FOCUS.to_string());
    let mut lines = Vec::new();
    let mut failed = 0;
    for wiring in wirings {
        let selection = Selection {
            focus: focus.clone(),
            skip: cli.skip.clone().unwrap_or_else(|| wiring.default_skip()),
            procs: cli.procs,
        };
        let dir = cli.report_dir.join(wiring.name);
        let outcome = conformance::run(wiring, &selection, &dir)?;
        failed += outcome.failed();
        let mut text = format!("{}: {}\n", wiring.name, outcome.summary());
        if cli.skip.is_none() && !wiring.known_failures.is_empty() {
            text += &format!(
                "  NOT RUN, known failures of hostnic (docs/testing.md): {}\n",
                wiring.known_failures
            );
        }
        for spec in &outcome.specs {
            match spec.status.as_str() {
                "passed" => {}
                "skipped" => text += &format!("  SKIPPED {}: {}\n", spec.name, spec.reason),
                other => text += &format!("  FAILED ({other}) {}\n", spec.name),
            }
        }
        text += &format!(
            "  JUnit {}\n  log {}\n",
            outcome.junit.display(),
            outcome.log.display()
        );
        eprint!("{text}");
        lines.push(text);
    }
    println!("\nconformance:");
    for l in lines {
        print!("{l}");
    }
    if failed > 0 {
        bail!("{failed} specs failed");
    }
    Ok(())
}
