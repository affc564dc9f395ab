//! hostnic installed as operators install it: the image built from
//! `deploy/Containerfile` (`scripts/image`), and `deploy/` applied with
//! kubectl in the order deploy/README.md gives — RBAC, the ConfigMap with a
//! site's edits, the credentials Secret in the original form, the
//! DaemonSet — on a real cluster whose nodes have no CNI yet. The agents
//! run in their pods under the hostnic ServiceAccount, learn their VMs from
//! the Nodes, install the executable and the conflist, turn the nodes
//! Ready, and serve a Deployment's pods.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::cluster::{self, Cluster, Install};
use hostnic_testbed::require_root;
use hostnic_testbed::sim::SimConfig;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The hostnic image, built by `scripts/image` in the tests' profile.
fn image() -> PathBuf {
    let profile = hostnic_testbed::bin("hostnic")
        .parent()
        .and_then(Path::file_name)
        .and_then(|p| p.to_str())
        .unwrap()
        .to_string();
    let out = Command::new(repo().join("scripts/image"))
        .arg(profile)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/image failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
}

/// deploy/configmap.yaml with what deploy/README.md tells a site to edit:
/// its zone and vxnets, and its Service CIDR in the conflist's routes.
fn site_configmap(zone: &str, vxnets: &[&str]) -> String {
    let text = std::fs::read_to_string(repo().join("deploy/configmap.yaml")).unwrap();
    let list = format!("vxnets = {vxnets:?}");
    let edited = text
        .replace("zone = \"pek3a\"", &format!("zone = \"{zone}\""))
        .replace("vxnets = [\"vxnet-xxxxxxx\", \"vxnet-yyyyyyy\"]", &list)
        .replace(
            "\"dst\": \"10.96.0.0/12\"",
            &format!("\"dst\": \"{}\"", cluster::SERVICE_CIDR),
        );
    for edit in [&list, zone, cluster::SERVICE_CIDR] {
        assert!(
            edited.contains(edit),
            "deploy/configmap.yaml changed: {edit} not set"
        );
    }
    edited
}

/// A two-node cluster on a simulated cloud with `vxnets`, with hostnic
/// installed as deploy/README.md orders: RBAC, the site's ConfigMap, the
/// credentials Secret in the original form, the DaemonSet. Returns once
/// both agents and both nodes are Ready, with how long that took from the
/// first `kubectl apply`.
fn install(vxnets: &[(&str, &str)]) -> (Cluster, Duration) {
    let image = image();
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        vxnets: vxnets
            .iter()
            .map(|(id, cidr)| (id.to_string(), cidr.parse().unwrap()))
            .collect(),
        ..SimConfig::default()
    })
    .unwrap();
    let credentials = bed.dir.path().join("site");
    std::fs::create_dir_all(&credentials).unwrap();
    std::fs::write(credentials.join("config.yaml"), bed.sim.credentials_yaml()).unwrap();
    let zone = bed.sim.config().zone.clone();
    let cluster = Cluster::start(bed, Install::DaemonSet(image)).unwrap();
    for n in ["node-0", "node-1"] {
        assert_ne!(
            cluster.node_ready(n).as_deref(),
            Some("True"),
            "{n} is Ready without a CNI"
        );
    }

    // deploy/README.md, in its order.
    let started = Instant::now();
    let deploy = repo().join("deploy");
    cluster
        .kubectl(&[
            "apply",
            "-f",
            &deploy.join("namespace-rbac.yaml").display().to_string(),
        ])
        .unwrap();
    let ids: Vec<&str> = vxnets.iter().map(|(id, _)| *id).collect();
    cluster.cp.apply(&site_configmap(&zone, &ids)).unwrap();
    cluster
        .kubectl(&[
            "create",
            "secret",
            "generic",
            "qcsecret",
            &format!("--from-file={}", credentials.join("config.yaml").display()),
            "-n",
            "kube-system",
        ])
        .unwrap();
    cluster
        .kubectl(&[
            "apply",
            "-f",
            &deploy.join("daemonset.yaml").display().to_string(),
        ])
        .unwrap();
    // (A failure shows the pods, the events and the agents' logs.)
    cluster
        .wait(
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
        )
        .unwrap();
    cluster
        .wait("both nodes Ready", Duration::from_secs(60), || {
            ["node-0", "node-1"]
                .iter()
                .all(|n| cluster.node_ready(n).as_deref() == Some("True"))
        })
        .unwrap();
    let took = started.elapsed();
    (cluster, took)
}

#[test]
fn kubectl_apply_of_deploy_brings_hostnic_up_and_pods_get_cloud_nics() {
    if !require_root("kubectl_apply_of_deploy_brings_hostnic_up_and_pods_get_cloud_nics") {
        return;
    }
    let (cluster, took) = install(&[("vxnet-pods", "10.100.0.0/24")]);
    eprintln!("daemonset: kubectl apply to both agents and nodes Ready in {took:?}");

    // The agents learnt their VMs from the Nodes' provider ids.
    let logs = cluster.agent_pod_logs(-1);
    for vm in &cluster.bed.sim.nodes {
        assert!(
            logs.contains(&format!("instance={}", vm.instance)),
            "no agent found its VM {}:\n{logs}",
            vm.instance
        );
    }

    // Pods get NICs from the cloud through the installed executable.
    let replicas = 6;
    cluster
        .cp
        .apply(&cluster::deployment("web", replicas))
        .unwrap();
    cluster
        .wait("the web pods Running", Duration::from_secs(180), || {
            cluster.running_pods("app=web").len() == replicas
        })
        .unwrap();
    let pods = cluster.running_pods("app=web");
    let ips: BTreeSet<&str> = pods.values().map(|(_, ip)| ip.as_str()).collect();
    assert_eq!(ips.len(), replicas, "{pods:?}");
    assert!(ips.iter().all(|ip| ip.starts_with("10.100.0.")), "{pods:?}");

    // A rolling restart of the agents while pods are being created and
    // running pods talk across nodes: no creation fails for good (the
    // kubelet retries an ADD answered "try again later"), and not one
    // packet of a running pod is lost — its NIC is in its namespace, not
    // in the agent.
    let on = |node: &str| {
        pods.iter()
            .find(|(_, (n, _))| n == node)
            .map(|(name, (_, ip))| (name.clone(), ip.clone()))
            .unwrap()
    };
    let ((from, _), (to_pod, to)) = (on("node-0"), on("node-1"));
    let pinger = {
        let kubeconfig = cluster.cp.admin_kubeconfig();
        let kubectl = cluster.cp.bin.join("kubectl");
        let sdn = cluster.bed.sim.sdn_ns().command(kubectl).unwrap();
        let mut cmd = sdn;
        cmd.arg("--kubeconfig").arg(kubeconfig).args([
            "exec", &from, "--", "ping", "-c", "150", "-i", "0.2", "-W", "1", &to,
        ]);
        std::thread::spawn(move || cmd.output())
    };
    std::thread::sleep(Duration::from_secs(2));
    // The agents about to be replaced, for a failure message.
    let before = cluster.agent_pod_logs(-1);
    let wiring = |pod: &str| {
        cluster
            .kubectl(&["exec", pod, "--", "sh", "-c", "ip addr; ip route"])
            .unwrap_or_else(|e| e.to_string())
    };
    let restarted = Instant::now();
    cluster
        .kubectl(&[
            "rollout",
            "restart",
            "ds/hostnic-agent",
            "-n",
            "kube-system",
        ])
        .unwrap();
    let more = 12;
    cluster.cp.apply(&cluster::deployment("web", more)).unwrap();
    cluster
        .kubectl(&[
            "rollout",
            "status",
            "ds/hostnic-agent",
            "-n",
            "kube-system",
            "--timeout=180s",
        ])
        .unwrap();
    eprintln!(
        "daemonset: rolling restart of both agents done in {:?}",
        restarted.elapsed()
    );
    cluster
        .wait(
            "the web pods Running after the restart",
            Duration::from_secs(180),
            || cluster.running_pods("app=web").len() == more,
        )
        .unwrap();
    let ping = pinger.join().unwrap().unwrap();
    let out = String::from_utf8_lossy(&ping.stdout);
    assert!(
        out.contains("150 packets transmitted, 150 packets received"),
        "packets lost across the agents' restart:\n{out}{}\n\
         --- {from}\n{}\n--- {to_pod}\n{}\n{}{}",
        String::from_utf8_lossy(&ping.stderr),
        wiring(&from),
        wiring(&to_pod),
        hostnic_testbed::log_tail("the agents before the restart", &before, 200),
        cluster.logs(),
    );
    let after = cluster.running_pods("app=web");
    let ips: BTreeSet<&str> = after.values().map(|(_, ip)| ip.as_str()).collect();
    assert_eq!(ips.len(), more, "{after:?}");

    cluster.cp.apply(&cluster::deployment("web", 0)).unwrap();
    cluster
        .wait_gone("app=web", Duration::from_secs(120))
        .unwrap();
    assert!(
        cluster.bed.leaked_nics().is_empty(),
        "{:?}",
        cluster.bed.leaked_nics()
    );
}

/// A policy module delivered as deploy/README.md says: a binaryData key of
/// the hostnic ConfigMap, beside the agent.toml that pins its digest, so
/// one `kubectl apply` changes both at once. Applied while pods are being
/// created, the running agents swap it in live (same pods, no restart), no
/// pod creation fails, and the pods created afterwards are placed by it.
#[test]
fn a_policy_module_swapped_by_kubectl_apply_places_new_pods_without_restarting_agents() {
    if !require_root(
        "a_policy_module_swapped_by_kubectl_apply_places_new_pods_without_restarting_agents",
    ) {
        return;
    }
    let (cluster, _) = install(&[
        ("vxnet-pods", "10.100.0.0/24"),
        ("vxnet-b", "10.101.0.0/24"),
    ]);
    // name -> (uid, restarts) of the agent pods.
    let agents = || -> BTreeMap<String, String> {
        let out = cluster
            .kubectl(&[
                "get",
                "pods",
                "-n",
                "kube-system",
                "-l",
                "app.kubernetes.io/component=agent",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} \
                 {.status.containerStatuses[0].restartCount}{\"\\n\"}{end}",
            ])
            .unwrap();
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, rest)| (n.to_string(), rest.to_string()))
            .collect()
    };
    let before = agents();
    assert_eq!(before.len(), 2, "{before:?}");

    // Pods that ask for vxnet-b by label. The built-in vxnet guest orders
    // by `policy` and reads no label: they land in vxnet-pods.
    let want = [("hostnic.io/vxnet", "vxnet-b")];
    let placed = |n| cluster::labelled_deployment("placed", n, &want);
    let c = &cluster;
    let running = |n: usize| move || c.running_pods("app=placed").len() == n;
    cluster.cp.apply(&placed(4)).unwrap();
    cluster
        .wait("4 pods Running", Duration::from_secs(180), running(4))
        .unwrap();
    let first = cluster.running_pods("app=placed");
    assert!(
        first.values().all(|(_, ip)| ip.starts_with("10.100.0.")),
        "{first:?}"
    );

    // The site's ConfigMap as files, the module added and pinned.
    let module = hostnic_testbed::guest_wasm("example_policy");
    let digest = hostnic_testbed::sha256_file(&module).unwrap();
    let site = cluster.bed.dir.path().join("hostnic-config");
    std::fs::create_dir_all(&site).unwrap();
    let key = |k: &str| {
        cluster
            .kubectl(&[
                "get",
                "configmap",
                "hostnic",
                "-n",
                "kube-system",
                "-o",
                &format!("jsonpath={{.data.{}}}", k.replace('.', "\\.")),
            ])
            .unwrap()
    };
    let toml = format!(
        "{}\n[hooks.vxnet]\npath = \"/etc/hostnic/vxnet.wasm\"\nsha256 = \"{digest}\"\n",
        key("agent.toml")
    );
    std::fs::write(site.join("agent.toml"), toml).unwrap();
    std::fs::write(site.join("10-hostnic.conflist"), key("10-hostnic.conflist")).unwrap();
    std::fs::copy(&module, site.join("vxnet.wasm")).unwrap();
    let yaml = cluster
        .kubectl(&[
            "create",
            "configmap",
            "hostnic",
            "-n",
            "kube-system",
            &format!("--from-file={}", site.display()),
            "--dry-run=client",
            "-o",
            "yaml",
        ])
        .unwrap();
    assert!(yaml.contains("binaryData:"), "{yaml}");

    // The swap, while six more pods are being created.
    cluster.cp.apply(&placed(10)).unwrap();
    let applied = Instant::now();
    cluster.cp.apply(&yaml).unwrap();
    let swapped = |logs: &str| {
        logs.lines()
            .filter(|l| {
                l.contains("policy hook reloaded") && l.contains(&format!("@{}", &digest[..12]))
            })
            .filter_map(|l| l.split_whitespace().next())
            .collect::<BTreeSet<_>>()
            .len()
    };
    cluster
        .wait(
            "both agents swapping the module in",
            Duration::from_secs(120),
            || swapped(&cluster.agent_pod_logs(-1)) == 2,
        )
        .unwrap();
    eprintln!(
        "daemonset: the module swapped in on both agents {:?} after kubectl apply",
        applied.elapsed()
    );
    cluster
        .wait("10 pods Running", Duration::from_secs(180), running(10))
        .unwrap();

    // Pods created after the swap go where the module sends them.
    let during = cluster.running_pods("app=placed");
    cluster.cp.apply(&placed(14)).unwrap();
    cluster
        .wait("14 pods Running", Duration::from_secs(180), running(14))
        .unwrap();
    let after = cluster.running_pods("app=placed");
    let new: Vec<&(String, String)> = after
        .iter()
        .filter(|(name, _)| !during.contains_key(*name))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(new.len(), 4, "{after:?}");
    assert!(
        new.iter().all(|(_, ip)| ip.starts_with("10.101.0.")),
        "pods created after the swap are not in vxnet-b: {new:?}"
    );
    let ips: BTreeSet<&str> = after.values().map(|(_, ip)| ip.as_str()).collect();
    assert_eq!(ips.len(), 14, "{after:?}");

    // Swapped live: the same agent pods, never restarted; no creation
    // failed for good.
    assert_eq!(agents(), before);
    let failed = cluster
        .kubectl(&[
            "get",
            "pods",
            "-l",
            "app=placed",
            "--field-selector=status.phase=Failed",
            "-o",
            "name",
        ])
        .unwrap();
    assert!(failed.trim().is_empty(), "{failed}");

    cluster.cp.apply(&placed(0)).unwrap();
    cluster
        .wait_gone("app=placed", Duration::from_secs(120))
        .unwrap();
    assert!(
        cluster.bed.leaked_nics().is_empty(),
        "{:?}",
        cluster.bed.leaked_nics()
    );
}
