//! hostnic installed with Helm: the chart `deploy/chart/hostnic`, Helm
//! itself built from source by `scripts/helm-build` (cached beside
//! Kubernetes), run offline for `lint`/`template` or against the cluster
//! testbed for `install`/`upgrade`/`rollback`/`uninstall`. Helm's own state
//! (its config, cache and data directories) lives in a temporary directory
//! of each [`Helm`], never in `$HOME`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cluster::{self, Cluster};
use crate::controlplane::built_by;
use crate::deploy::repo;

/// The release name and namespace the docs use.
pub const RELEASE: &str = "hostnic";
pub const NAMESPACE: &str = "kube-system";

/// Helm: `scripts/helm-build`'s binary (built on first use on a machine,
/// then cached).
pub fn helm_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| built_by("helm-build"))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The chart's directory.
pub fn chart() -> PathBuf {
    repo().join("deploy/chart/hostnic")
}

/// One Helm client: offline, or talking to a cluster testbed's API server
/// from the simulator's SDN namespace (where kubectl runs too).
#[derive(Debug)]
pub struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
    netns: Option<PathBuf>,
}

impl Helm {
    /// For `lint` and `template`: no cluster.
    pub fn offline() -> anyhow::Result<Helm> {
        Ok(Helm {
            bin: helm_bin()?,
            home: tempfile::tempdir()?,
            kubeconfig: None,
            netns: None,
        })
    }

    /// As the cluster admin of `cluster`.
    pub fn on(cluster: &Cluster) -> anyhow::Result<Helm> {
        Ok(Helm {
            kubeconfig: Some(cluster.cp.admin_kubeconfig()),
            netns: Some(cluster.bed.sim.sdn_ns().path()),
            ..Helm::offline()?
        })
    }

    /// `helm ARGS`; its stdout, or an error with its stderr.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let ns = std::fs::File::open(ns)?;
                let mut cmd = Command::new(&self.bin);
                // SAFETY: as in `Ns::command`: only setns between fork and
                // exec, on a descriptor the child inherited.
                unsafe {
                    use std::os::unix::process::CommandExt;
                    cmd.pre_exec(move || {
                        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(std::io::Error::from)
                    });
                }
                cmd
            }
            None => Command::new(&self.bin),
        };
        for (var, dir) in [
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ] {
            cmd.env(var, self.home.path().join(dir));
        }
        if let Some(k) = &self.kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        cmd.args(args);
        let out = cmd
            .output()
            .with_context(|| format!("running helm {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "helm {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `helm template` of the chart as release [`RELEASE`] in
    /// [`NAMESPACE`], with `args` (values files, `--set`s); the objects.
    pub fn template(&self, args: &[&str]) -> anyhow::Result<Vec<Value>> {
        let chart = chart().display().to_string();
        let mut all = vec!["template", RELEASE, &chart, "--namespace", NAMESPACE];
        all.extend(args);
        objects(&self.run(&all)?)
    }

    /// A values file in this client's directory, for `-f`.
    pub fn values_file(&self, name: &str, yaml: &str) -> anyhow::Result<String> {
        let path = self.home.path().join(name);
        std::fs::write(&path, yaml)?;
        Ok(path.display().to_string())
    }
}

/// The objects of a multi-document YAML stream (empty documents left out).
pub fn objects(yaml: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(yaml) {
        let v = Value::deserialize(doc).context("a rendered document is not YAML")?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// The object of `kind` named `name` among `objects`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} rendered"))
}

/// A values file that puts the chart on `cluster`: the simulator's zone,
/// `vxnets` (all of them the cluster network's), the cluster's Service
/// CIDR in the conflist's routes, and `extra` (more YAML at the top level).
pub fn site_values(cluster: &Cluster, vxnets: &[&str], extra: &str) -> String {
    let zone = &cluster.bed.sim.config().zone;
    format!(
        "config:\n  zone: {zone}\n  vxnets: {vxnets:?}\ncni:\n  routes:\n    - {{dst: {}, gw: 0.0.0.0}}\n{extra}",
        cluster::SERVICE_CIDR
    )
}

/// Values that swap `module` in as the `hook` guest: the module, base64,
/// as the chart takes it (`config.hooks.<hook>.module`), and its digest.
pub fn module_values(hook: &str, module: &Path) -> anyhow::Result<String> {
    let digest = crate::sha256_file(module)?;
    let b64 = crate::netns::run(Command::new("base64").arg("-w0").arg(module))?;
    Ok(format!(
        "config:\n  hooks:\n    {hook}:\n      sha256: {digest}\n      module: {b64}\n"
    ))
}
