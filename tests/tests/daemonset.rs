//! hostnic installed as operators install it: the image built from
//! `deploy/Containerfile` (`scripts/image`), and `deploy/` applied with
//! kubectl in the order deploy/README.md gives — RBAC, the ConfigMap with a
//! site's edits, the credentials Secret in the original form, the
//! DaemonSet — on a real cluster whose nodes have no CNI yet. The agents
//! run in their pods under the hostnic ServiceAccount, learn their VMs from
//! the Nodes, install the executable and the conflist, turn the nodes
//! Ready, and serve a Deployment's pods.

use std::collections::BTreeSet;
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
fn site_configmap(zone: &str) -> String {
    let text = std::fs::read_to_string(repo().join("deploy/configmap.yaml")).unwrap();
    let edited = text
        .replace("zone = \"pek3a\"", &format!("zone = \"{zone}\""))
        .replace(
            "vxnets = [\"vxnet-xxxxxxx\", \"vxnet-yyyyyyy\"]",
            "vxnets = [\"vxnet-pods\"]",
        )
        .replace(
            "\"dst\": \"10.96.0.0/12\"",
            &format!("\"dst\": \"{}\"", cluster::SERVICE_CIDR),
        );
    for edit in ["vxnet-pods", zone, cluster::SERVICE_CIDR] {
        assert!(
            edited.contains(edit),
            "deploy/configmap.yaml changed: {edit} not set"
        );
    }
    edited
}

#[test]
fn kubectl_apply_of_deploy_brings_hostnic_up_and_pods_get_cloud_nics() {
    if !require_root("kubectl_apply_of_deploy_brings_hostnic_up_and_pods_get_cloud_nics") {
        return;
    }
    let image = image();
    let bed = CloudBed::new(SimConfig {
        nodes: 2,
        vxnets: vec![("vxnet-pods".into(), "10.100.0.0/24".parse().unwrap())],
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
    cluster.cp.apply(&site_configmap(&zone)).unwrap();
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
    eprintln!(
        "daemonset: kubectl apply to both agents and nodes Ready in {:?}",
        started.elapsed()
    );

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
