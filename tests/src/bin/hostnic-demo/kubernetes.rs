//! `hostnic-demo --kubernetes`: the story on a real cluster built from
//! source. The control plane and two worker nodes (each a simulated VM
//! with its own containerd, kubelet and kube-proxy), hostnic installed with
//! one `helm install` as deploy/README.md shows, a Deployment whose pods
//! get cloud NICs, and a policy module swapped by one `helm upgrade`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use hostnic_testbed::cluster::{self, Cluster};
use hostnic_testbed::helm::{self, Helm};
use hostnic_testbed::{controlplane, deploy, guest_wasm};

use crate::{check, say};

const WANT: [(&str, &str); 1] = [("hostnic.io/vxnet", "vxnet-pods-b")];

pub fn run() -> anyhow::Result<()> {
    say("Kubernetes from source (scripts/k8s-build): about 10 min the first time, cached after");
    let bin = controlplane::k8s_bin()?;
    say(&format!("Kubernetes binaries in {}", bin.display()));
    say("Helm from source (scripts/helm-build): a few minutes the first time, cached after");
    say(&format!("Helm in {}", helm::helm_bin()?.display()));
    say(
        "the hostnic image from deploy/Containerfile (scripts/image), then a control plane and two nodes without a CNI",
    );
    let cluster = deploy::without_cni(&[
        ("vxnet-pods", "10.100.0.0/24"),
        ("vxnet-pods-b", "10.101.0.0/24"),
    ])?;
    deploy::create_credentials(&cluster)?;
    say(
        "kubectl create secret generic qcsecret --from-file=./config.yaml -n kube-system (the simulator's credentials)",
    );
    let helm = Helm::on(&cluster)?;
    let site_values = helm::site_values(&cluster, &["vxnet-pods", "vxnet-pods-b"], "");
    let site = helm.values_file("site.yaml", &site_values)?;
    say(
        "helm install hostnic deploy/chart/hostnic -n kube-system -f site.yaml --wait, with site.yaml:",
    );
    for line in site_values.lines() {
        println!("    {line}");
    }
    let started = std::time::Instant::now();
    let chart = helm::chart().display().to_string();
    helm.run(&[
        "install",
        helm::RELEASE,
        &chart,
        "-n",
        helm::NAMESPACE,
        "-f",
        &site,
        "--wait",
    ])?;
    deploy::wait_agents_ready(&cluster)?;
    say(&format!(
        "both agents and both nodes Ready {:.1?} after helm install",
        started.elapsed()
    ));
    show(&cluster, &["get", "nodes", "-o", "wide"])?;
    show(
        &cluster,
        &["get", "pods", "-n", "kube-system", "-o", "wide"],
    )?;

    let web = |n| cluster::labelled_deployment("web", n, &WANT);
    cluster.cp.apply(&web(4))?;
    wait_running(&cluster, 4)?;
    say(
        "Deployment web, 4 pods labelled hostnic.io/vxnet=vxnet-pods-b; the built-in vxnet guest (FailRotate) reads no labels, so each has a NIC in vxnet-pods:",
    );
    show(&cluster, &["get", "pods", "-l", "app=web", "-o", "wide"])?;
    let pods = cluster.running_pods("app=web");
    let on = |node: &str| pods.iter().find(|(_, (n, _))| n == node);
    if let (Some((from, _)), Some((_, (_, to)))) = (on("node-0"), on("node-1")) {
        let ping = cluster.kubectl(&["exec", from, "--", "ping", "-c", "3", "-W", "1", to])?;
        let summary = ping.lines().find(|l| l.contains("packets")).unwrap_or("");
        say(&format!(
            "{from} (node-0) pings {to} (node-1) over the vxnet: {summary}"
        ));
    }

    let module = guest_wasm("example_policy");
    say(&format!(
        "swapping in {} (it reads the label) by one helm upgrade, as deploy/README.md tells:",
        module.display()
    ));
    println!(
        "    helm upgrade hostnic deploy/chart/hostnic -n kube-system --reuse-values \\\n      --set-file config.hooks.vxnet.module=example_policy.wasm.b64 --set config.hooks.vxnet.sha256=<its digest>"
    );
    let values = helm.values_file("module.yaml", &helm::module_values("vxnet", &module)?)?;
    let started = std::time::Instant::now();
    helm.run(&[
        "upgrade",
        helm::RELEASE,
        &chart,
        "-n",
        helm::NAMESPACE,
        "--reuse-values",
        "-f",
        &values,
    ])?;
    deploy::wait_reloaded(&cluster, "vxnet", &hostnic_testbed::sha256_file(&module)?)?;
    let took = started.elapsed();
    say(&format!(
        "both agents swapped it live {took:.1?} after the upgrade (kubelet's sync period), without a restart:"
    ));
    for line in cluster
        .agent_pod_logs(-1)
        .lines()
        .filter(|l| l.contains("policy hook reloaded"))
    {
        println!("    {line}");
    }

    let before: BTreeSet<String> = pods.keys().cloned().collect();
    cluster.cp.apply(&web(8))?;
    wait_running(&cluster, 8)?;
    say("scaled to 8: the 4 new pods are in vxnet-pods-b, where their label asks:");
    show(&cluster, &["get", "pods", "-l", "app=web", "-o", "wide"])?;
    let after = cluster.running_pods("app=web");
    let new: Vec<&String> = after
        .iter()
        .filter(|(name, _)| !before.contains(*name))
        .map(|(_, (_, ip))| ip)
        .collect();
    check(
        new.len() == 4 && new.iter().all(|ip| ip.starts_with("10.101.0.")),
        "the pods created after the swap are in vxnet-pods-b",
    )?;

    cluster.cp.apply(&web(0))?;
    cluster.wait_gone("app=web", Duration::from_secs(120))?;
    let leaked = cluster.bed.leaked_nics();
    check(
        leaked.is_empty(),
        "scaled to 0: every NIC back in a warm pool, none leaked",
    )?;
    say("done; the cluster's processes, namespaces and mounts are removed");
    Ok(())
}

fn wait_running(cluster: &Cluster, n: usize) -> anyhow::Result<()> {
    cluster
        .wait(
            &format!("{n} web pods Running"),
            Duration::from_secs(180),
            || cluster.running_pods("app=web").len() == n,
        )
        .context("the Deployment")
}

/// Prints a kubectl command and its output, indented.
fn show(cluster: &Cluster, args: &[&str]) -> anyhow::Result<()> {
    println!("  $ kubectl {}", args.join(" "));
    for line in cluster.kubectl(args)?.lines() {
        println!("    {line}");
    }
    Ok(())
}
