//! hostnic installed on the cluster testbed as an operator installs it:
//! the image from `deploy/Containerfile`, `deploy/` applied with kubectl in
//! the order deploy/README.md gives with a site's edits, and a policy
//! module swapped in the way its "Policy modules" section tells. The
//! DaemonSet tests and `scripts/demo --kubernetes` both go through here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::cloudbed::CloudBed;
use crate::cluster::{self, Cluster, Install};
use crate::sim::SimConfig;

/// The checkout this crate is part of.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The hostnic image, built by `scripts/image` from the binaries of the
/// profile the testbed runs (`bin("hostnic")`'s): a docker archive. Built
/// once per process (podman's storage takes one build at a time).
pub fn image() -> anyhow::Result<PathBuf> {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| build_image().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_image() -> anyhow::Result<PathBuf> {
    let profile = crate::bin("hostnic")
        .parent()
        .and_then(Path::file_name)
        .and_then(|p| p.to_str())
        .context("the profile of the hostnic binary")?
        .to_string();
    let script = repo().join("scripts/image");
    let out = Command::new(&script)
        .arg(profile)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "scripts/image failed ({})",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .last()
        .map(PathBuf::from)
        .context("scripts/image printed no archive")
}

/// deploy/configmap.yaml with what deploy/README.md tells a site to edit:
/// its zone and vxnets, its Service CIDR and the CIDR its Services'
/// `externalIPs` come from in the conflist's routes, and its `wiring` (or
/// the agent's default when `None`).
pub fn site_configmap(zone: &str, vxnets: &[&str], wiring: Option<&str>) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(repo().join("deploy/configmap.yaml"))?;
    let list = format!("vxnets = {vxnets:?}");
    let routes = format!(
        "{{ \"dst\": \"{}\", \"gw\": \"0.0.0.0\" }}, {{ \"dst\": \"{}\", \"gw\": \"0.0.0.0\" }}",
        cluster::SERVICE_CIDR,
        cluster::EXTERNAL_IP_CIDR
    );
    let edited = text
        .replace("zone = \"pek3a\"", &format!("zone = \"{zone}\""))
        .replace("vxnets = [\"vxnet-xxxxxxx\", \"vxnet-yyyyyyy\"]", &list)
        .replace(
            "{ \"dst\": \"10.96.0.0/12\", \"gw\": \"0.0.0.0\" }",
            &routes,
        );
    for edit in [&list, zone, &routes] {
        ensure!(
            edited.contains(edit),
            "deploy/configmap.yaml changed: {edit} not set"
        );
    }
    let Some(wiring) = wiring else {
        return Ok(edited);
    };
    let mut set = false;
    let lines: Vec<String> = edited
        .lines()
        .map(|l| match l.trim_start().strip_prefix("wiring = ") {
            Some(_) => {
                set = true;
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}wiring = {wiring:?}")
            }
            None => l.to_string(),
        })
        .collect();
    ensure!(set, "deploy/configmap.yaml changed: no wiring line");
    Ok(lines.join("\n") + "\n")
}

/// A two-node cluster on a simulated cloud with `vxnets` (id, CIDR), with
/// hostnic installed as deploy/README.md orders: RBAC, the site's
/// ConfigMap, the credentials Secret in the original form, the DaemonSet.
/// Returns once both agents and both nodes are Ready, with how long that
/// took from the first `kubectl apply`.
/// The wiring is the agent's default, or `HOSTNIC_TEST_WIRING`'s in a
/// suite run under one.
pub fn install(vxnets: &[(&str, &str)]) -> anyhow::Result<(Cluster, Duration)> {
    install_with(vxnets, crate::test_wiring().as_deref(), "")
}

/// The same with `wiring` (`None`: the agent's default) and `agent_toml`
/// (TOML tables, such as a `[[shared]]`) appended to the ConfigMap's
/// agent.toml, as a site adds its own.
pub fn install_with(
    vxnets: &[(&str, &str)],
    wiring: Option<&str>,
    agent_toml: &str,
) -> anyhow::Result<(Cluster, Duration)> {
    let cluster = without_cni(vxnets)?;

    // deploy/README.md, in its order.
    let started = Instant::now();
    let deploy = repo().join("deploy");
    let apply_file =
        |name: &str| cluster.kubectl(&["apply", "-f", &deploy.join(name).display().to_string()]);
    apply_file("crds.yaml")?;
    apply_file("namespace-rbac.yaml")?;
    let ids: Vec<&str> = vxnets.iter().map(|(id, _)| *id).collect();
    let zone = cluster.bed.sim.config().zone.clone();
    cluster.cp.apply(&site_configmap(&zone, &ids, wiring)?)?;
    if !agent_toml.is_empty() {
        let toml = config_key(&cluster, "agent.toml")?;
        let patch = serde_json::json!({"data": {"agent.toml": format!("{toml}\n{agent_toml}")}});
        cluster.kubectl(&[
            "patch",
            "configmap",
            "hostnic",
            "-n",
            "kube-system",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ])?;
    }
    create_credentials(&cluster)?;
    apply_file("daemonset.yaml")?;
    wait_agents_ready(&cluster)?;
    Ok((cluster, started.elapsed()))
}

/// A two-node cluster on a simulated cloud with `vxnets` (id, CIDR), its
/// nodes registered but not Ready: they have no CNI until hostnic is
/// installed. The hostnic image is on both nodes.
pub fn without_cni(vxnets: &[(&str, &str)]) -> anyhow::Result<Cluster> {
    let image = image()?;
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        ..SimConfig::with_vxnets(vxnets)?
    })?;
    let cluster = Cluster::start(bed, Install::DaemonSet(image))?;
    for n in ["node-0", "node-1"] {
        if cluster.node_ready(n).as_deref() == Some("True") {
            bail!("{n} is Ready without a CNI");
        }
    }
    Ok(cluster)
}

/// The credentials Secret `qcsecret` as deploy/README.md has a site create
/// it: `config.yaml` in the original form, written outside the repository,
/// then `kubectl create secret generic --from-file`.
pub fn create_credentials(cluster: &Cluster) -> anyhow::Result<()> {
    let site = cluster.bed.dir.path().join("site");
    std::fs::create_dir_all(&site)?;
    let file = site.join("config.yaml");
    std::fs::write(&file, cluster.bed.sim.credentials_yaml())?;
    cluster.kubectl(&[
        "create",
        "secret",
        "generic",
        "qcsecret",
        &format!("--from-file={}", file.display()),
        "-n",
        "kube-system",
    ])?;
    Ok(())
}

/// Waits until both agents and both nodes are Ready. (A failure shows the
/// pods, the events and the agents' logs.)
pub fn wait_agents_ready(cluster: &Cluster) -> anyhow::Result<()> {
    cluster.wait(
        "the agents Ready on both nodes",
        Duration::from_secs(180),
        || {
            cluster
                .kubectl(&[
                    "get",
                    "ds",
                    "hostnic-agent",
                    "-n",
                    "kube-system",
                    "-o",
                    "jsonpath={.status.numberReady}",
                ])
                .is_ok_and(|n| n == "2")
        },
    )?;
    cluster.wait("both nodes Ready", Duration::from_secs(60), || {
        ["node-0", "node-1"]
            .iter()
            .all(|n| cluster.node_ready(n).as_deref() == Some("True"))
    })
}

/// Key `key` of the hostnic ConfigMap, as the API server has it.
fn config_key(cluster: &Cluster, key: &str) -> anyhow::Result<String> {
    cluster.kubectl(&[
        "get",
        "configmap",
        "hostnic",
        "-n",
        "kube-system",
        "-o",
        &format!("jsonpath={{.data.{}}}", key.replace('.', "\\.")),
    ])
}

/// The DaemonSet's agent pods: name -> "uid restarts", to tell a restart
/// or a replacement from a live reload.
pub fn agent_identities(cluster: &Cluster) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(cluster
        .agent_pods(None)?
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                format!(
                    "{} {}",
                    p["metadata"]["uid"].as_str().unwrap_or_default(),
                    p["status"]["containerStatuses"][0]["restartCount"]
                ),
            )
        })
        .collect())
}

/// The pods `selector` picks (default namespace) that failed for good
/// (phase Failed): a pod whose sandbox creation is retried is not one.
pub fn failed_pods(cluster: &Cluster, selector: &str) -> anyhow::Result<Vec<String>> {
    let out = cluster.kubectl(&[
        "get",
        "pods",
        "-l",
        selector,
        "--field-selector=status.phase=Failed",
        "-o",
        "name",
    ])?;
    Ok(out.lines().map(str::to_string).collect())
}

/// Each node's NICs in `state` (free, held, ...) by vxnet, from its agent's
/// metrics, scraped in the node's namespace where the agent runs with
/// hostNetwork.
pub fn nics_in_state(cluster: &Cluster, state: &str) -> anyhow::Result<Vec<BTreeMap<String, f64>>> {
    let label = format!("state=\"{state}\"");
    cluster
        .bed
        .sim
        .nodes
        .iter()
        .map(|n| {
            let text =
                n.ns.exec("curl", &["-sf", "http://127.0.0.1:9273/metrics"])?;
            let mut by_vxnet = BTreeMap::new();
            for l in text.lines() {
                if !(l.starts_with("hostnic_nics{") && l.contains(&label)) {
                    continue;
                }
                let vxnet = l
                    .split("vxnet=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or_default();
                let count = l.rsplit_once(' ').and_then(|(_, c)| c.parse::<f64>().ok());
                *by_vxnet.entry(vxnet.to_string()).or_default() += count.unwrap_or_default();
            }
            Ok(by_vxnet)
        })
        .collect()
}

/// `toml` without the table `header` (its header line up to the next
/// table's, or the end), for a swap that replaces an earlier one.
fn without_table(toml: &str, header: &str) -> String {
    let mut inside = false;
    let mut out = String::new();
    for line in toml.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t == header;
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Swaps `module` in as the `hook` guest ("vxnet", "ip" or "routes") the
/// way deploy/README.md's "Policy modules" tells: the ConfigMap's keys as
/// files, the module beside them and pinned at the end of agent.toml, the
/// directory applied with `kubectl create configmap --from-file --dry-run
/// | kubectl apply`. Waits until both agents log the module's digest and
/// returns how long that took from the apply.
pub fn swap_module(cluster: &Cluster, hook: &str, module: &Path) -> anyhow::Result<Duration> {
    let digest = crate::sha256_file(module)?;
    let site = cluster.bed.dir.path().join("hostnic-config");
    std::fs::create_dir_all(&site)?;
    let key = |k: &str| config_key(cluster, k);
    let file = format!("{hook}.wasm");
    let toml = format!(
        "{}\n[hooks.{hook}]\npath = \"/etc/hostnic/{file}\"\nsha256 = \"{digest}\"\n",
        without_table(&key("agent.toml")?, &format!("[hooks.{hook}]"))
    );
    std::fs::write(site.join("agent.toml"), toml)?;
    std::fs::write(
        site.join("10-hostnic.conflist"),
        key("10-hostnic.conflist")?,
    )?;
    std::fs::copy(module, site.join(&file))?;
    let yaml = cluster.kubectl(&[
        "create",
        "configmap",
        "hostnic",
        "-n",
        "kube-system",
        &format!("--from-file={}", site.display()),
        "--dry-run=client",
        "-o",
        "yaml",
    ])?;
    ensure!(
        yaml.contains("binaryData:"),
        "kubectl did not put the module in binaryData:\n{yaml}"
    );
    let applied = Instant::now();
    cluster.cp.apply(&yaml)?;
    wait_reloaded(cluster, hook, &digest)?;
    Ok(applied.elapsed())
}

/// Waits until both agents log that they swapped in the `hook` guest whose
/// module has `digest`, without a restart (a reload from the changed
/// config file).
pub fn wait_reloaded(cluster: &Cluster, hook: &str, digest: &str) -> anyhow::Result<()> {
    // One line per agent pod: `[pod/…/agent] … policy hook reloaded hook="vxnet" guest=guest vxnet@<digest>`.
    let reloaded = format!("guest {hook}@{}", &digest[..12]);
    let swapped = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains("policy hook reloaded") && l.contains(&reloaded))
            .filter_map(|l| l.split_whitespace().next())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    cluster.wait(
        "both agents swapping the module in",
        Duration::from_secs(120),
        || swapped(&cluster.agent_pod_logs(-1)) == 2,
    )
}
