//! hostnic installed the way cluster operators install a CNI: the Helm
//! chart `deploy/chart/hostnic`, with Helm built from source
//! (`scripts/helm-build`).
//!
//! Without a cluster: `helm lint` and `helm template` of every values file
//! the chart ships for CI, every agent.toml it renders accepted by the
//! agent's own parser, the plain manifests of `deploy/` identical to what
//! the chart renders, the split between what the agents reload live and
//! what rolls them, and the chart refusing what the agent would refuse.
//!
//! On the cluster testbed (root): `helm install` onto nodes without a CNI,
//! `helm upgrade` of a policy module (the agents reload it, no restart)
//! and of a warm target (the agents roll) while a Deployment scales,
//! `helm rollback`, and `helm uninstall` leaving nothing of hostnic's in
//! the API server but what the chart keeps on purpose.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hostnic_testbed::helm::{self, Helm, NAMESPACE, RELEASE, find};
use hostnic_testbed::{cluster, deploy, guest_wasm, require_root, sha256_file};
use serde_json::Value;

/// The chart's CI values files, and the values deploy/*.yaml are rendered
/// with.
fn values_files() -> Vec<String> {
    let ci = helm::chart().join("ci");
    let mut files: Vec<String> = std::fs::read_dir(&ci)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    files.push(
        deploy::repo()
            .join("deploy/chart/plain-values.yaml")
            .display()
            .to_string(),
    );
    files
}

/// A ConfigMap's text file `key`.
fn data<'a>(config_map: &'a Value, key: &str) -> &'a str {
    config_map["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no data key {key}: {config_map:#}"))
}

/// The DaemonSet pod template's hash of what the agent reads at start.
fn start_config(objects: &[Value]) -> String {
    let ds = find(objects, "DaemonSet", "hostnic-agent").unwrap();
    ds["spec"]["template"]["metadata"]["annotations"]["hostnic.io/start-config"]
        .as_str()
        .unwrap_or_else(|| panic!("no hostnic.io/start-config: {ds:#}"))
        .to_string()
}

#[test]
fn helm_lint_passes_with_every_values_file() {
    let helm = Helm::offline().unwrap();
    let chart = helm::chart().display().to_string();
    for file in values_files() {
        let out = helm
            .run(&["lint", "--strict", &chart, "-f", &file])
            .unwrap();
        assert!(out.contains("0 chart(s) failed"), "{file}:\n{out}");
        // lint reports a template's `fail` at INFO level only: template
        // must render.
        helm.template(&["-f", &file]).unwrap();
    }
}

/// The agent refuses an unknown or bad key at start; the chart must never
/// render one. Each values file's agent.toml (and one with a module) goes
/// through the agent's own parser and checks, and its conflist is one
/// `install-cni` takes.
#[test]
fn every_agent_config_the_chart_renders_is_one_the_agent_accepts() {
    let helm = Helm::offline().unwrap();
    let module = guest_wasm("example_policy");
    let with_module = helm
        .values_file(
            "module.yaml",
            &(helm::module_values("vxnet", &module).unwrap() + "  vxnets: [vxnet-a]\n"),
        )
        .unwrap();
    let mut files = values_files();
    files.push(with_module.clone());
    for file in &files {
        let objects = helm.template(&["-f", file]).unwrap();
        let cm = find(&objects, "ConfigMap", "hostnic").unwrap();
        let toml = data(cm, "agent.toml");
        let mut cfg = hostnic_agent::config::Config::parse(toml)
            .unwrap_or_else(|e| panic!("{file}: {e:#}\n{toml}"));
        // The DaemonSet passes it (--node-name).
        cfg.kubernetes.node_name = "node-1".into();
        cfg.validate()
            .unwrap_or_else(|e| panic!("{file}: {e:#}\n{toml}"));
        assert!(cfg.kubernetes.enabled, "{file}");
        assert_eq!(cfg.kubernetes.lease_namespace, NAMESPACE, "{file}");

        // The conflist: hostnic first, dialling the agent's socket, which
        // the DaemonSet mounts from the host at the same path and probes.
        let conflist: Value = serde_json::from_str(data(cm, "10-hostnic.conflist"))
            .unwrap_or_else(|e| panic!("{file}: the conflist is not JSON: {e}"));
        // The agent installs that conflist (the ConfigMap's, as mounted)
        // into the CNI config directory its container mounts, once ready.
        assert_eq!(
            cfg.cni.conflist,
            std::path::Path::new("/etc/hostnic/10-hostnic.conflist"),
            "{file}"
        );
        let ds = find(&objects, "DaemonSet", "hostnic-agent").unwrap();
        let agent = &ds["spec"]["template"]["spec"]["containers"][0];
        let conf_dir = cfg.cni.conf_dir.as_ref().expect("[cni] conf_dir");
        assert!(
            agent["volumeMounts"].as_array().unwrap().iter().any(|m| {
                m["name"] == "cni-conf" && m["mountPath"] == conf_dir.display().to_string().as_str()
            }),
            "{file}: the agent container does not mount cni-conf at {}",
            conf_dir.display()
        );
        let socket = cfg.socket.display().to_string();
        assert_eq!(conflist["plugins"][0]["type"], "hostnic", "{file}");
        assert_eq!(conflist["plugins"][0]["socket"], socket.as_str(), "{file}");
        // hostnic's entry as the runtime hands it to the executable (the
        // list's cniVersion and name added) parses and validates.
        let mut entry = conflist["plugins"][0].clone();
        entry["cniVersion"] = conflist["cniVersion"].clone();
        entry["name"] = conflist["name"].clone();
        hostnic_proto::cni::NetConf::parse(entry.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{file}: hostnic's conflist entry: {e:?}\n{entry}"));
        let ds = find(&objects, "DaemonSet", "hostnic-agent").unwrap();
        let pod = &ds["spec"]["template"]["spec"];
        let dir = cfg.socket.parent().unwrap().display().to_string();
        let run = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "run")
            .unwrap();
        assert_eq!(run["hostPath"]["path"], dir.as_str(), "{file}");
        let probe = &pod["containers"][0]["readinessProbe"]["exec"]["command"];
        assert_eq!(probe[3], socket.as_str(), "{file}: {probe}");

        // The Role may renew the Lease the agent is told to take.
        let role = find(&objects, "Role", "hostnic-lease").unwrap();
        assert_eq!(
            role["rules"][1]["resourceNames"][0],
            cfg.kubernetes.lease_name.as_str(),
            "{file}"
        );
        find(&objects, "Lease", &cfg.kubernetes.lease_name).unwrap();
    }

    // The module travels in the ConfigMap, pinned where agent.toml says.
    let objects = helm.template(&["-f", &with_module]).unwrap();
    let cm = find(&objects, "ConfigMap", "hostnic").unwrap();
    let b64 =
        hostnic_testbed::netns::run(std::process::Command::new("base64").arg("-w0").arg(&module))
            .unwrap();
    assert_eq!(cm["binaryData"]["vxnet.wasm"], b64.as_str());
    let cfg = hostnic_agent::config::Config::parse(data(cm, "agent.toml")).unwrap();
    assert_eq!(
        cfg.hooks.vxnet.path.as_deref(),
        Some(std::path::Path::new("/etc/hostnic/vxnet.wasm"))
    );
    assert_eq!(
        cfg.hooks.vxnet.sha256.as_deref(),
        Some(sha256_file(&module).unwrap().as_str())
    );
}

/// deploy/*.yaml come from the chart (scripts/render-deploy), so a change
/// to one without the other fails here.
#[test]
fn the_plain_manifests_are_what_the_chart_renders() {
    let script = deploy::repo().join("scripts/render-deploy");
    let out = std::process::Command::new(&script)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/ and the chart differ; edit the chart and run scripts/render-deploy:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the agents reload by themselves (policy, the hooks and their
/// modules) leaves the DaemonSet's pod template as it is, so helm upgrade
/// restarts nothing; everything they read only at start (a warm target,
/// the conflist, the credentials' Secret) changes it, so they roll.
#[test]
fn a_policy_change_reloads_and_any_other_change_rolls() {
    let helm = Helm::offline().unwrap();
    let base = ["--set", "config.vxnets={vxnet-a,vxnet-b}"];
    let render = |more: &[&str]| {
        let args: Vec<&str> = base.iter().chain(more).copied().collect();
        helm.template(&args).unwrap()
    };
    let before = render(&[]);
    // A module, the built-in vxnet order, which hooks a NAD may configure,
    // and the ip guest's config: everything the agents reload.
    let module = helm::module_values("vxnet", &guest_wasm("example_policy")).unwrap();
    let live = helm
        .values_file(
            "live.yaml",
            &format!(
                "{module}    network_config: [vxnet]\n    ip:\n      config: '{{\"statefulsets\": true}}'\n  policy: RoundRotate\n"
            ),
        )
        .unwrap();
    let live = render(&["-f", &live]);
    let cm = |o: &[Value]| find(o, "ConfigMap", "hostnic").unwrap().clone();
    assert_ne!(cm(&before), cm(&live), "the ConfigMap carries the change");
    assert_eq!(
        start_config(&before),
        start_config(&live),
        "a live change must not roll the agents"
    );
    for restart in [
        "config.cloud.warm_min=2",
        "config.hooks.watch_seconds=5",
        "config.hooks.enabled=false",
        "config.log.level=debug",
        "cni.routes[0].dst=10.43.0.0/16",
        "credentials.secretName=other",
    ] {
        assert_ne!(
            start_config(&before),
            start_config(&render(&["--set", restart])),
            "{restart} is read at start: the agents must roll"
        );
    }
}

/// The chart refuses, naming the key, what the agent would refuse only
/// once its pods crash-loop; and a module that is not its pinned digest.
#[test]
fn the_chart_refuses_bad_values_by_name() {
    let helm = Helm::offline().unwrap();
    // The module pinned by another digest (its first digit changed).
    let module = guest_wasm("example_policy");
    let digest = sha256_file(&module).unwrap();
    let other = format!(
        "{}{}",
        if digest.starts_with('0') { '1' } else { '0' },
        &digest[1..]
    );
    let wrong_digest = helm
        .values_file(
            "wrong.yaml",
            &helm::module_values("vxnet", &module)
                .unwrap()
                .replace(&digest, &other),
        )
        .unwrap();
    for (args, says) in [
        (vec![], "config.vxnets: name at least one vxnet"),
        (
            vec![
                "--set",
                "config.vxnets={a}",
                "--set",
                "config.cloud.warm_mn=2",
            ],
            "'warm_mn' not allowed",
        ),
        (
            vec![
                "--set",
                "config.vxnets={a}",
                "--set",
                "config.cloud.warm_min=5",
            ],
            "config.cloud.warm_min 5 is above config.cloud.warm_max 4",
        ),
        (
            vec![
                "--set",
                "config.vxnets={a}",
                "--set",
                "config.cloud.bank_max=8",
                "--set",
                "config.cloud.leak_sweep=node",
            ],
            "config.cloud.bank_max 8 needs config.cloud.leak_sweep: cluster",
        ),
        (
            vec![
                "--set",
                "config.vxnets={a}",
                "--set",
                "config.policy=MostFree",
            ],
            "/config/policy",
        ),
        (
            vec![
                "--set",
                "config.vxnets={a}",
                "--set",
                "config.hooks.ip.path=/x.wasm",
            ],
            "config.hooks.ip.sha256 is required",
        ),
        (
            vec!["--set", "config.vxnets={a}", "-f", wrong_digest.as_str()],
            "config.hooks.vxnet.module has sha256",
        ),
        (
            vec![
                "--set",
                "config.vxnets={a}",
                "--set",
                "config.shared[0].vxnet=b",
                "--set",
                "config.shared[0].range=10.0.0.0/24",
            ],
            "vxnet b is not one of config.vxnets",
        ),
    ] {
        let e = helm.template(&args).unwrap_err().to_string();
        assert!(e.contains(says), "{args:?}: {e}");
    }
}

/// Credentials from values are in the Secret and nowhere else the chart
/// renders (no ConfigMap, no annotation, no argument).
#[test]
fn credentials_from_values_are_only_in_the_secret() {
    let helm = Helm::offline().unwrap();
    let key = "EXAMPLE-SECRET-ACCESS-KEY-NOT-A-REAL-ONE";
    let file = helm
        .values_file(
            "credentials.yaml",
            &format!(
                "config: {{vxnets: [vxnet-a]}}\ncredentials:\n  create: true\n  configYaml: |\n    qy_access_key_id: EXAMPLEACCESSKEYIDXX\n    qy_secret_access_key: {key}\n    zone: pek3a\n"
            ),
        )
        .unwrap();
    let chart = helm::chart().display().to_string();
    let text = helm
        .run(&["template", RELEASE, &chart, "-n", NAMESPACE, "-f", &file])
        .unwrap();
    assert!(!text.contains(key), "the key is in the clear:\n{text}");
    let objects = helm::objects(&text).unwrap();
    let secret = find(&objects, "Secret", "qcsecret").unwrap();
    let b64 = secret["data"]["config.yaml"].as_str().unwrap();
    let decoded = hostnic_testbed::netns::run(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("echo {b64} | base64 -d")),
    )
    .unwrap();
    assert!(decoded.contains(key), "{decoded}");
    let ds = find(&objects, "DaemonSet", "hostnic-agent").unwrap();
    let volume = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "qingcloud")
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "qcsecret");
}

/// One cluster through a release's life, timed. Pods labelled
/// hostnic.io/vxnet=vxnet-b land in vxnet-pods under the built-in vxnet
/// guest and in vxnet-b under the example module.
#[test]
fn helm_install_upgrade_rollback_and_uninstall_on_the_testbed() {
    if !require_root("helm_install_upgrade_rollback_and_uninstall_on_the_testbed") {
        return;
    }
    let total = Instant::now();
    let cluster = deploy::without_cni(&[
        ("vxnet-pods", "10.100.0.0/24"),
        ("vxnet-b", "10.101.0.0/24"),
    ])
    .unwrap();
    let helm = Helm::on(&cluster).unwrap();
    let chart = helm::chart().display().to_string();
    let site = helm
        .values_file(
            "site.yaml",
            &helm::site_values(&cluster, &["vxnet-pods", "vxnet-b"], ""),
        )
        .unwrap();
    let upgrade = |args: &[&str]| {
        let mut all = vec![
            "upgrade",
            RELEASE,
            &chart,
            "-n",
            NAMESPACE,
            "--reuse-values",
            "--wait",
            "--timeout",
            "300s",
        ];
        all.extend(args);
        helm.run(&all).unwrap();
    };
    let want = [("hostnic.io/vxnet", "vxnet-b")];
    let placed = |n| cluster::labelled_deployment("placed", n, &want);
    let scale = |n: usize| {
        cluster.cp.apply(&placed(n)).unwrap();
    };
    let running = |n: usize| {
        cluster
            .wait(
                &format!("{n} placed pods Running"),
                Duration::from_secs(180),
                || cluster.running_pods("app=placed").len() == n,
            )
            .unwrap();
        cluster.running_pods("app=placed")
    };
    // Scales from `from` to `to` pods: the new ones' addresses must start
    // with `prefix` (which vxnet placed them).
    let grow = |from: usize, to: usize, prefix: &str| {
        let before = running(from);
        scale(to);
        let after = running(to);
        let new: Vec<&String> = after
            .iter()
            .filter(|(name, _)| !before.contains_key(*name))
            .map(|(_, (_, ip))| ip)
            .collect();
        assert_eq!(new.len(), to - from, "{after:?}");
        assert!(
            new.iter().all(|ip| ip.starts_with(prefix)),
            "the pods added from {from} to {to} are not all in {prefix}x: {new:?}"
        );
        after
    };

    // Install: the Secret first (deploy/README.md), then one helm install.
    deploy::create_credentials(&cluster).unwrap();
    let t = Instant::now();
    helm.run(&[
        "install",
        RELEASE,
        &chart,
        "-n",
        NAMESPACE,
        "-f",
        &site,
        "--wait",
        "--timeout",
        "300s",
    ])
    .unwrap();
    deploy::wait_agents_ready(&cluster).unwrap();
    eprintln!(
        "helm: install to both agents and nodes Ready in {:?}",
        t.elapsed()
    );
    // The chart made the Lease vacant; an agent takes it.
    cluster
        .wait(
            "an agent holding the Lease",
            Duration::from_secs(60),
            || {
                cluster
                    .kubectl(&[
                        "get",
                        "lease",
                        "hostnic-cluster-duties",
                        "-n",
                        NAMESPACE,
                        "-o",
                        "jsonpath={.spec.holderIdentity}",
                    ])
                    .is_ok_and(|h| h.starts_with("node-"))
            },
        )
        .unwrap();
    scale(4);
    let first = running(4);
    assert!(
        first.values().all(|(_, ip)| ip.starts_with("10.100.0.")),
        "{first:?}"
    );
    let installed = deploy::agent_identities(&cluster).unwrap();
    assert_eq!(installed.len(), 2, "{installed:?}");

    // Upgrade 1, while the Deployment scales: a policy module. Only the
    // ConfigMap changes; the agents swap the module in live.
    let module = guest_wasm("example_policy");
    let digest = sha256_file(&module).unwrap();
    let module_values = helm
        .values_file(
            "module.yaml",
            &helm::module_values("vxnet", &module).unwrap(),
        )
        .unwrap();
    scale(8);
    let t = Instant::now();
    upgrade(&["-f", &module_values]);
    deploy::wait_reloaded(&cluster, "vxnet", &digest).unwrap();
    eprintln!(
        "helm: module upgrade reloaded by both agents in {:?}",
        t.elapsed()
    );
    running(8);
    assert_eq!(
        deploy::agent_identities(&cluster).unwrap(),
        installed,
        "a module swap restarted or replaced an agent"
    );
    // Pods created after the reload go where the module sends them.
    grow(8, 10, "10.101.0.");

    // Upgrade 2, while the Deployment scales: a warm target, read at
    // start. The DaemonSet rolls; the new agents keep the module.
    scale(14);
    let t = Instant::now();
    upgrade(&["--set", "config.cloud.warm_min=2"]);
    let rolled = deploy::agent_identities(&cluster).unwrap();
    eprintln!(
        "helm: warm-target upgrade rolled both agents in {:?}",
        t.elapsed()
    );
    assert!(
        rolled.keys().all(|k| !installed.contains_key(k)),
        "not every agent was replaced: {installed:?} -> {rolled:?}"
    );
    running(14);
    cluster
        .wait(
            "2 free NICs per vxnet on both nodes",
            Duration::from_secs(120),
            || {
                deploy::nics_in_state(&cluster, "free").is_ok_and(|nodes| {
                    nodes.iter().all(|by_vxnet| {
                        ["vxnet-pods", "vxnet-b"]
                            .iter()
                            .all(|v| by_vxnet.get(*v).copied().unwrap_or_default() >= 2.0)
                    })
                })
            },
        )
        .unwrap();

    // Rollback to revision 1: the built-in guest and warm_min 1 again; the
    // start config changes back, so the agents roll again.
    let t = Instant::now();
    helm.run(&[
        "rollback",
        RELEASE,
        "1",
        "-n",
        NAMESPACE,
        "--wait",
        "--timeout",
        "300s",
    ])
    .unwrap();
    let back = deploy::agent_identities(&cluster).unwrap();
    eprintln!("helm: rollback rolled both agents in {:?}", t.elapsed());
    assert!(
        back.keys().all(|k| !rolled.contains_key(k)),
        "{rolled:?} -> {back:?}"
    );
    // The built-in guest places pods again.
    let after = grow(14, 16, "10.100.0.");
    let history = helm
        .run(&["history", RELEASE, "-n", NAMESPACE, "-o", "json"])
        .unwrap();
    let history: Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history.as_array().map(Vec::len), Some(4), "{history:#}");

    // Not one pod failed for good through two rolls and a reload.
    let failed = deploy::failed_pods(&cluster, "app=placed").unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    let ips: BTreeSet<String> = after.values().map(|(_, ip)| ip.clone()).collect();
    assert_eq!(ips.len(), 16, "{after:?}");

    // Uninstall, once the pods have given their NICs back.
    scale(0);
    cluster
        .wait_gone("app=placed", Duration::from_secs(120))
        .unwrap();
    let t = Instant::now();
    helm.run(&[
        "uninstall",
        RELEASE,
        "-n",
        NAMESPACE,
        "--wait",
        "--timeout",
        "120s",
    ])
    .unwrap();
    cluster
        .wait("the agent pods gone", Duration::from_secs(120), || {
            cluster.agent_pods(None).is_ok_and(|p| p.is_empty())
        })
        .unwrap();
    eprintln!(
        "helm: uninstall to the agent pods gone in {:?}",
        t.elapsed()
    );
    let left = left_behind(&cluster);
    assert_eq!(
        left,
        ["customresourcedefinition.apiextensions.k8s.io/hostnicblocks.hostnic.io"],
        "helm uninstall left more than the CRD it keeps on purpose"
    );
    let records = cluster
        .kubectl(&[
            "get",
            "secrets",
            "-n",
            NAMESPACE,
            "-l",
            "owner=helm",
            "-o",
            "name",
        ])
        .unwrap();
    assert!(records.trim().is_empty(), "release records left: {records}");
    // Kept on the nodes on purpose (deploy/README.md, "Uninstall"): the
    // CNI files, so pods still running can be torn down and a new install
    // takes over, and the records.
    for node in &cluster.nodes {
        for file in ["etc-cni-net.d/10-hostnic.conflist", "opt-cni-bin/hostnic"] {
            assert!(node.dir.join(file).exists(), "{}: no {file}", node.name);
        }
    }
    assert!(
        cluster.bed.leaked_nics().is_empty(),
        "{:?}",
        cluster.bed.leaked_nics()
    );
    eprintln!(
        "helm: install, 2 upgrades, rollback and uninstall on a fresh cluster in {:?}",
        total.elapsed()
    );
}

/// Every object the API server lists, in any namespace, labelled as
/// hostnic's: `kind.group/name`.
fn left_behind(cluster: &cluster::Cluster) -> Vec<String> {
    let kinds = cluster
        .kubectl(&["api-resources", "--verbs=list", "-o", "name"])
        .unwrap();
    let kinds: Vec<&str> = kinds.lines().filter(|k| !k.trim().is_empty()).collect();
    let out = cluster
        .kubectl(&[
            "get",
            &kinds.join(","),
            "-A",
            "-l",
            "app.kubernetes.io/name=hostnic",
            "-o",
            "name",
        ])
        .unwrap();
    out.lines().map(str::to_string).collect()
}
