//! Kubernetes' own e2e suite (`e2e.test`, built from source by
//! `scripts/e2e-build`) against the testbed cluster with hostnic installed
//! from `deploy/` as an operator installs it, in one wiring mode: the
//! cluster, its DNS (CoreDNS, deployed as kubeadm deploys it), the suite's
//! images loaded into every node, then `e2e.test` run where the API
//! server listens, its JUnit report read back. `scripts/conformance` and
//! `tests/tests/conformance.rs` both come through [`run`].

mod images;
mod report;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

pub use report::{Outcome, Spec};

use crate::cluster::{CLUSTER_DNS, Cluster};
use crate::controlplane::built_by;

/// How pods are wired, as the agent's config says it: the mode's name,
/// its `wiring` and the TOML tables appended to the ConfigMap's
/// agent.toml. A new mode is one more entry of [`WIRINGS`].
#[derive(Debug)]
pub struct Wiring {
    pub name: &'static str,
    /// The agent's `wiring`; `None`: its default (or
    /// `HOSTNIC_TEST_WIRING`'s in a suite run under one).
    pub wiring: Option<&'static str>,
    pub agent_toml: &'static str,
    /// Specs that fail in this mode on a limitation of hostnic's with an
    /// open issue (docs/testing.md): left out of the default selection,
    /// named in every summary, never counted as passed.
    pub known_failures: &'static str,
}

impl Wiring {
    /// The default `--skip` in this mode: [`SKIP`] and its known failures.
    pub fn default_skip(&self) -> String {
        if self.known_failures.is_empty() {
            SKIP.to_string()
        } else {
            format!("{SKIP}|{}", self.known_failures)
        }
    }

    /// The `wiring` the agents get.
    fn agent_wiring(&self) -> Option<String> {
        self.wiring.map(str::to_string).or_else(crate::test_wiring)
    }
}

/// The cluster network: one vxnet, on which the shared range is the upper
/// half (the cloud hands out NIC addresses from the bottom).
const VXNET: (&str, &str) = ("vxnet-pods", "10.100.0.0/24");

pub const WIRINGS: [Wiring; 3] = [
    // Every pod its own cloud NIC, in the default wiring (passthru: a
    // macvlan of the NIC in the pod).
    Wiring {
        name: "exclusive",
        wiring: None,
        agent_toml: "",
        known_failures: "",
    },
    // Every pod its own cloud NIC, the device itself moved into the pod.
    Wiring {
        name: "move",
        wiring: Some("move"),
        agent_toml: "",
        known_failures: "",
    },
    // Every pod an address of the node's NIC in the vxnet, behind a veth
    // (docs/shared-nic.md).
    Wiring {
        name: "shared",
        wiring: None,
        agent_toml: "[[shared]]\nvxnet = \"vxnet-pods\"\nrange = \"10.100.0.128/25\"\n",
        known_failures: "",
    },
];

/// The wiring called `name`.
pub fn wiring(name: &str) -> anyhow::Result<&'static Wiring> {
    WIRINGS.iter().find(|w| w.name == name).with_context(|| {
        let names: Vec<&str> = WIRINGS.iter().map(|w| w.name).collect();
        format!("no wiring mode {name:?}; there are {names:?}")
    })
}

/// `scripts/e2e-build`'s bin directory: e2e.test, ginkgo, agnhost, coredns.
pub fn e2e_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| built_by("e2e-build"))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The specs to run: ginkgo's `--focus` and `--skip` regular expressions,
/// and how many processes run them at once.
#[derive(Debug, Clone)]
pub struct Selection {
    pub focus: String,
    pub skip: String,
    /// ginkgo's `--procs`: the specs in that many e2e.test processes, as
    /// upstream's CI runs them (`hack/ginkgo-e2e.sh --nodes`); a spec
    /// marked `[Serial]` still runs alone, after the others.
    pub procs: usize,
}

/// The default selection (`scripts/conformance` without a FOCUS): every
/// `[sig-network]` `[Conformance]` spec, and the sig-network groups the
/// testbed's cluster is judged by, NetworkPolicy's among them.
pub const FOCUS: &str = concat!(
    r"\[sig-network\].*\[Conformance\]",
    r"|\[sig-network\] (Networking Granular Checks|HostPort|Services|DNS|Netpol)",
);

/// What the default selection leaves out, each for a reason that is the
/// testbed's and not hostnic's (docs/testing.md lists every spec it
/// drops): features off by default or absent from this machine's kernel,
/// a cloud load balancer, IPv6, SCTP (no SCTP in the kernel), specs that
/// restart or break the cluster's components, known-flaky specs, and a
/// spec that resolves a public address (the testbed has no way out).
/// `[Feature:NetworkPolicy]` is the one feature kept: ginkgo's regular
/// expressions have no look-ahead, so "a feature not named NetworkPolicy"
/// is spelt out a letter at a time.
pub const SKIP: &str = concat!(
    r"\[Feature:([^N]|N[^e]|Ne[^t]|Net[^w]|Netw[^o]|Netwo[^r]|Networ[^k]|Network[^P])",
    r"|\[FeatureGate:[^\]]*\] \[(Alpha|Beta)\]|\[Disruptive\]|\[Flaky\]",
    r"|LoadBalancer|ESIPP|IPv6|DualStack|[Ss][Cc][Tt][Pp]",
    r"|DNS configMap nameserver Forward PTR lookup",
);

/// Brings up the cluster in `wiring`, runs the `selection` of the suite
/// against it, and returns what the JUnit report says. Everything the run
/// writes (the JUnit report, the suite's log) goes to `report_dir`.
pub fn run(wiring: &Wiring, selection: &Selection, report_dir: &Path) -> anyhow::Result<Outcome> {
    let e2e = e2e_bin()?;
    images::check_references(&e2e.join("e2e.test"))?;
    std::fs::create_dir_all(report_dir)?;
    let (cluster, took) = crate::deploy::install_with(
        &[VXNET],
        wiring.agent_wiring().as_deref(),
        wiring.agent_toml,
    )?;
    eprintln!(
        "conformance: {} wiring, hostnic installed from deploy/, both nodes Ready in {took:.1?}",
        wiring.name
    );
    let archives = images::archives(&cluster.bed.dir.path().join("e2e-images"), &e2e)?;
    for node in &cluster.nodes {
        for a in &archives {
            node.import_image(a)
                .with_context(|| format!("importing {} on {}", a.display(), node.name))?;
        }
    }
    deploy_dns(&cluster)?;
    let outcome = run_suite(&cluster, &e2e, selection, report_dir);
    if outcome.is_err() {
        eprintln!("{}", cluster.logs());
    }
    outcome
}

/// CoreDNS as kubeadm deploys it (k8s/coredns/coredns.yaml), at kubelet's
/// `clusterDNS`; waits until both replicas are Ready and a name resolves.
fn deploy_dns(cluster: &Cluster) -> anyhow::Result<()> {
    let manifest = include_str!("../../../k8s/coredns/coredns.yaml")
        .replace("{{IMAGE}}", images::COREDNS)
        .replace("{{DNS_IP}}", CLUSTER_DNS);
    cluster.cp.apply(&manifest)?;
    cluster.wait(
        "CoreDNS Ready (2 replicas)",
        Duration::from_secs(180),
        || {
            cluster
                .kubectl(&[
                    "get",
                    "deploy",
                    "coredns",
                    "-n",
                    "kube-system",
                    "-o",
                    "jsonpath={.status.readyReplicas}",
                ])
                .is_ok_and(|n| n == "2")
        },
    )
}

/// `e2e.test` under the ginkgo CLI in the SDN namespace (where the API server listens and
/// every node and pod is routed), its output to `report_dir/e2e.log` and
/// to stderr as it comes.
fn run_suite(
    cluster: &Cluster,
    e2e: &Path,
    selection: &Selection,
    report_dir: &Path,
) -> anyhow::Result<Outcome> {
    // Absolute: ginkgo runs e2e.test in the binary's own directory, where
    // a relative --report-dir would put the report. And no report of an
    // earlier run left to be read as this one's.
    let report_dir = &std::path::absolute(report_dir)?;
    let junit = report_dir.join("junit_01.xml");
    match std::fs::remove_file(&junit) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let home = report_dir.join("home");
    std::fs::create_dir_all(&home)?;
    let log_path = report_dir.join("e2e.log");
    let mut log = std::fs::File::create(&log_path)?;
    let kubectl = cluster.cp.bin.join("kubectl");
    // The ginkgo CLI runs e2e.test (its children inherit the namespace):
    // the runner's flags first, then the binary, then after `--` the
    // suite's own.
    let mut cmd = cluster.bed.sim.sdn_ns().command(e2e.join("ginkgo"))?;
    cmd.arg(format!("--procs={}", selection.procs.max(1)))
        .args(["--no-color", "--timeout=6h", "--flake-attempts=1"])
        .arg(format!("--focus={}", selection.focus))
        .arg(format!("--skip={}", selection.skip))
        .arg(e2e.join("e2e.test"))
        .arg("--")
        .arg(format!(
            "--kubeconfig={}",
            cluster.cp.admin_kubeconfig().display()
        ))
        .arg(format!("--kubectl-path={}", kubectl.display()))
        .arg(format!("--report-dir={}", report_dir.display()))
        .args([
            // No cloud: the suite's provider-neutral code paths; the specs
            // that need a provider (SSH to nodes, load balancers) skip
            // themselves with their reason.
            "--provider=skeleton",
            "--num-nodes=2",
            "--allowed-not-ready-nodes=0",
            "--dump-logs-on-failure=false",
        ])
        .env("HOME", &home)
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", cluster.cp.bin.display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting ginkgo")?;
    let mut out = child.stdout.take().context("ginkgo's stdout")?;
    // Bytes as they come, not lines: a spec's output may hold what a
    // server answered (the proxy specs' binary replies), and ginkgo marks
    // each spec that passed with a `•` on a line that ends only when the
    // suite does.
    let copied = (|| -> std::io::Result<()> {
        let mut buf = [0u8; 8192];
        loop {
            let n = out.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            log.write_all(&buf[..n])?;
            let mut err = std::io::stderr().lock();
            err.write_all(&buf[..n])?;
            err.flush()?;
        }
    })();
    if copied.is_err() {
        // Nobody reads its output any more: it would block on the pipe.
        // (It may have exited already; the error that matters is below.)
        let _ = child.kill();
    }
    let status = child.wait()?;
    copied.context("copying the suite's output")?;
    let duration = started.elapsed();
    ensure!(
        junit.exists(),
        "e2e.test ({status}) wrote no JUnit report; its log: {}",
        log_path.display()
    );
    let mut outcome = report::read(&junit)?;
    outcome.duration = duration;
    outcome.log = log_path;
    // A failed spec fails e2e.test; anything else making it fail (a bad
    // flag, a suite that could not start) has no failed spec to show.
    ensure!(
        status.success() || outcome.failed() > 0,
        "e2e.test failed ({status}) without a failed spec; see {}",
        outcome.log.display()
    );
    Ok(outcome)
}
