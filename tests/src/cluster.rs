//! A real Kubernetes cluster on the simulated cloud: the control plane
//! (`controlplane.rs`) on the VMs' primary network, and on each VM a real
//! containerd, kubelet and kube-proxy (built from source by
//! `scripts/k8s-build`), with hostnic as the node's CNI: the real agent on
//! the VM taking NICs from the simulated cloud, and the real executable in
//! the node's CNI directory, called by containerd's CRI plugin for every pod
//! the kubelet starts.
//!
//! Each node lives in its VM's network namespace and in a mount namespace
//! of its own (held by a `sleep` process), where the directories a node
//! owns — /var/lib/kubelet, /var/log, /run/containerd, /var/lib/cni — are
//! the node's own, so two nodes share nothing. Its containers run in cgroup
//! `/hostnic-test-<vm>` of every v1 controller. Everything is stopped and
//! removed on drop, also when a test fails.
//!
//! Two facts of this machine, found by the spike that preceded this file:
//! it refuses to lower any process's `oom_score_adj` (so containerd
//! restricts it, and kubelet and kube-proxy keep 0), and `ip netns exec`
//! hides the cgroup mounts (so everything enters the VM's namespace with
//! setns, never through `ip netns exec`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::cloudbed::CloudBed;
use crate::controlplane::{ControlPlane, k8s_bin};
use crate::netns::run;
use crate::{Agent, bin};

/// The pod (pause) and test (busybox) images' references.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.1";
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:hostnic-test";
/// The Service CIDR, routed from pods through their node (`gw 0.0.0.0`).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Where the testbed's Services' `externalIPs` come from, routed from pods
/// through their node as a site routes its own (docs/operator-guide.md,
/// "Services and kube-proxy"): TEST-NET-3, the documentation range the
/// upstream e2e suite takes its external IPs from.
pub const EXTERNAL_IP_CIDR: &str = "203.0.113.0/24";
/// The cluster DNS Service's address, kubelet's `clusterDNS`, as kubeadm
/// sets it (the tenth of the Service CIDR). Like a kubeadm cluster before
/// its DNS add-on is applied, nothing answers there until a test deploys
/// CoreDNS (`conformance.rs`).
pub const CLUSTER_DNS: &str = "10.96.0.10";

const CGROUP_CONTROLLERS: [&str; 9] = [
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd",
];
/// The directories a node owns, bind-mounted from its own directory: the
/// kubelet's and containerd's, and those the DaemonSet's hostPath volumes
/// name.
const NODE_DIRS: [(&str, &str); 8] = [
    ("kubelet", "/var/lib/kubelet"),
    ("varlog", "/var/log"),
    ("run-containerd", "/run/containerd"),
    ("var-lib-cni", "/var/lib/cni"),
    ("opt-cni-bin", "/opt/cni/bin"),
    ("etc-cni-net.d", "/etc/cni/net.d"),
    ("run-hostnic", "/run/hostnic"),
    ("var-lib-hostnic", "/var/lib/hostnic"),
];

/// How hostnic comes to the nodes.
#[derive(Debug, Clone)]
pub enum Install {
    /// The test runs an agent on each VM (its config gets this appended)
    /// and puts the executable and conflist in the node's CNI directories.
    Agents(String),
    /// Nothing: the test applies `deploy/` with kubectl, as an operator
    /// does; each node has the hostnic image (`scripts/image`) and the
    /// standard CNI, hostnic and kubelet directories of its own.
    DaemonSet(PathBuf),
    /// The reference `ptp` plugin with `host-local` addresses (a /24 per
    /// node, 10.244.<i>.0/24) instead of hostnic: the benchmark's yardstick.
    Ptp,
    /// Test-run agents as with `Agents`, behind the real Multus thin plugin
    /// (`scripts/multus-build`): Multus is the node's CNI, hostnic its
    /// cluster network (on the simulator's first vxnet) and the delegate of
    /// every NetworkAttachmentDefinition
    /// of `"type": "hostnic"` (those reach the node's agent on the default
    /// socket, `/run/hostnic/agent.sock` in the node's mount namespace).
    Multus(String),
}

#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<KubeNode>,
    pub agents: Vec<Agent>,
    pub cp: ControlPlane,
    pub bed: CloudBed,
}

/// One VM as a Kubernetes node.
#[derive(Debug)]
pub struct KubeNode {
    pub name: String,
    pub dir: PathBuf,
    cgroup: String,
    holder: Child,
    procs: Vec<(&'static str, Child)>,
}

impl Cluster {
    /// The control plane, then every VM of `bed` as a node `node-<i>` with
    /// hostnic installed as `install` says. With test-run agents it returns
    /// once every node is Ready; with the DaemonSet, once every node has
    /// registered (it turns Ready when hostnic's conflist is installed).
    pub fn start(bed: CloudBed, install: Install) -> anyhow::Result<Cluster> {
        let addr = match bed.sim.node_addr.ip() {
            std::net::IpAddr::V4(a) => a,
            other => bail!("the simulator's node address {other} is not IPv4"),
        };
        let mut cp = ControlPlane::start(bed.sim.sdn_ns(), addr)?;
        cp.start_controllers(bed.sim.sdn_ns())?;
        let mut images = images(&bed.dir.path().join("images"))?;
        if let Install::DaemonSet(image) = &install {
            images.push(image.clone());
        }
        let mut cluster = Cluster {
            nodes: Vec::new(),
            agents: Vec::new(),
            cp,
            bed,
        };
        if let Install::Multus(_) = &install {
            crate::multus::install_crd(&cluster.cp)?;
        }
        for i in 0..cluster.bed.sim.nodes.len() {
            if let Install::Agents(extra) | Install::Multus(extra) = &install {
                // The testbed's [cloud] timers, unless the test sets them.
                let defaults: String = [
                    "warm_min = 1",
                    "warm_max = 4",
                    "reconcile_seconds = 2",
                    "cold_add_wait_seconds = 20",
                ]
                .iter()
                .filter(|kv| !extra.contains(kv.split(' ').next().unwrap_or_default()))
                .map(|kv| format!("{kv}\n"))
                .collect();
                let agent = cluster.bed.start_agent(i, &format!("{defaults}{extra}"))?;
                cluster.agents.push(agent);
            }
            let node = KubeNode::start(&cluster, i, &images, &install)?;
            cluster.nodes.push(node);
        }
        let want = match install {
            Install::Agents(_) | Install::Multus(_) | Install::Ptp => "True",
            Install::DaemonSet(_) => "",
        };
        for n in &cluster.nodes {
            cluster.wait(
                &format!("node {} registered", n.name),
                Duration::from_secs(120),
                || {
                    cluster
                        .node_ready(&n.name)
                        .is_some_and(|r| want.is_empty() || r == want)
                },
            )?;
        }
        Ok(cluster)
    }

    /// The logs of the DaemonSet's agent pods (init containers included),
    /// the last `tail` lines of each, prefixed with pod and container.
    pub fn agent_pod_logs(&self, tail: i32) -> String {
        self.kubectl(&[
            "logs",
            "-n",
            "kube-system",
            "-l",
            "app.kubernetes.io/component=agent",
            "--prefix",
            &format!("--tail={tail}"),
            "--all-containers",
        ])
        .unwrap_or_else(|e| e.to_string())
    }

    /// The DaemonSet's agent pods (on `node` only, if given), as the API
    /// server has them: the `items` of `kubectl get pods -o json`.
    pub fn agent_pods(&self, node: Option<&str>) -> anyhow::Result<Vec<serde_json::Value>> {
        let on_node = node.map(|n| format!("--field-selector=spec.nodeName={n}"));
        let mut args = vec![
            "get",
            "pods",
            "-n",
            "kube-system",
            "-l",
            "app.kubernetes.io/component=agent",
            "-o",
            "json",
        ];
        args.extend(on_node.as_deref());
        let list: serde_json::Value = serde_json::from_str(&self.kubectl(&args)?)?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until no pod that `selector` picks is left (terminated).
    pub fn wait_gone(&self, selector: &str, limit: Duration) -> anyhow::Result<()> {
        self.wait(&format!("the pods {selector} to go"), limit, || {
            self.kubectl(&["get", "pods", "-l", selector, "-o", "name"])
                .is_ok_and(|o| o.trim().is_empty())
        })
    }

    /// A ClusterIP Service `app` (port 80 to the pods' 8080) in front of
    /// the pods labelled `app=<app>`; its cluster IP.
    pub fn expose(&self, app: &str) -> anyhow::Result<String> {
        self.cp.apply(
            &json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": app, "namespace": "default"},
                "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": 8080}]},
            })
            .to_string(),
        )?;
        self.kubectl(&["get", "svc", app, "-o", "jsonpath={.spec.clusterIP}"])
    }

    /// What `http://<ip>/` answers to `wget` run in pod `pod` (3 s at most).
    pub fn fetch(&self, pod: &str, ip: &str) -> anyhow::Result<String> {
        self.fetch_url(pod, &format!("http://{ip}/"))
    }

    /// What `url` answers to `wget` run in pod `pod` (3 s at most).
    pub fn fetch_url(&self, pod: &str, url: &str) -> anyhow::Result<String> {
        self.kubectl(&[
            "exec", pod, "--", "timeout", "3", "wget", "-q", "-O", "-", url,
        ])
    }

    /// The Running (and not terminating) pods that `selector` picks in the
    /// default namespace: name → (node, IP).
    pub fn running_pods(&self, selector: &str) -> BTreeMap<String, (String, String)> {
        let out = self
            .kubectl(&["get", "pods", "-l", selector, "-o", "json"])
            .unwrap_or_default();
        let list: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            })
            .map(|p| {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                (
                    s(&p["metadata"]["name"]),
                    (s(&p["spec"]["nodeName"]), s(&p["status"]["podIP"])),
                )
            })
            .collect()
    }

    /// Node `name`'s Ready condition ("True", "False", …) once registered.
    pub fn node_ready(&self, name: &str) -> Option<String> {
        self.cp
            .kubectl(&[
                "get",
                "node",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .ok()
    }

    /// Waits for `cond`, failing with the cluster's logs.
    pub fn wait(
        &self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > limit {
                bail!("{what}: not within {limit:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Creates the Deployment `web` of `replicas` pods ([`deployment`]) and
    /// waits up to 3 minutes for all of them Running; they, as
    /// [`Cluster::running_pods`] gives them.
    pub fn deploy_web(
        &self,
        replicas: usize,
    ) -> anyhow::Result<BTreeMap<String, (String, String)>> {
        self.cp.apply(&deployment("web", replicas))?;
        self.wait(
            &format!("{replicas} web pods Running"),
            Duration::from_secs(180),
            || self.running_pods("app=web").len() == replicas,
        )?;
        Ok(self.running_pods("app=web"))
    }

    /// The first answer of `url` to pod `pod` within `limit` (kube-proxy
    /// programs a new Service within a second or so); failing with the
    /// last error and the cluster's logs.
    pub fn fetch_within(&self, pod: &str, url: &str, limit: Duration) -> anyhow::Result<String> {
        let mut last = Err(anyhow::anyhow!("not tried"));
        let what = format!("{url} to answer {pod}");
        let waited = self.wait(&what, limit, || {
            last = self.fetch_url(pod, url);
            last.is_ok()
        });
        match (waited, last) {
            (Ok(()), Ok(answer)) => Ok(answer),
            (Err(e), Err(last)) => Err(e.context(format!("{last:#}"))),
            (_, last) => last,
        }
    }

    /// The first address in Service `name`'s `status.loadBalancer.ingress`.
    pub fn lb_ingress(&self, name: &str) -> Option<std::net::Ipv4Addr> {
        self.kubectl(&[
            "get",
            "svc",
            name,
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ])
        .ok()?
        .trim()
        .parse()
        .ok()
    }

    /// `kubectl` as the cluster admin.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cp.kubectl(args)
    }

    /// The tails of every component's log, the pods and the latest events,
    /// for a failure message.
    pub fn logs(&self) -> String {
        let mut text = self.cp.logs();
        let show = |args: &[&str]| self.kubectl(args).unwrap_or_else(|e| e.to_string());
        text += &crate::log_tail("pods", &show(&["get", "pods", "-A", "-o", "wide"]), 40);
        text += &crate::log_tail(
            "events",
            &show(&["get", "events", "-A", "--sort-by=.lastTimestamp"]),
            30,
        );
        text += &crate::log_tail("hostnic agent pods", &self.agent_pod_logs(30), 60);
        for n in &self.nodes {
            for name in ["containerd", "kubelet", "kube-proxy"] {
                let log =
                    std::fs::read_to_string(n.dir.join(format!("{name}.log"))).unwrap_or_default();
                text += &format!("--- {} {name}\n", n.name);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                for l in tail.into_iter().rev() {
                    text += l;
                    text.push('\n');
                }
            }
        }
        for (i, a) in self.agents.iter().enumerate() {
            text += &crate::log_tail(&format!("agent {i}"), &a.log_text(), 15);
        }
        text
    }
}

// Fields drop in order: the nodes (their containers) first, then the
// agents, the control plane and the simulated cloud.

impl Drop for KubeNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pod of `pods` (as [`Cluster::running_pods`] gives them) on `node`:
/// (name, IP).
pub fn pod_on(pods: &BTreeMap<String, (String, String)>, node: &str) -> (String, String) {
    pods.iter()
        .find(|(_, (n, _))| n == node)
        .map(|(name, (_, ip))| (name.clone(), ip.clone()))
        .unwrap_or_else(|| panic!("no pod on {node}: {pods:?}"))
}

/// The web pods' server: busybox httpd on 8080; `/` answers the pod's
/// name, `/cgi-bin/ip` its name and the client's address as it saw it.
pub const WEB_SERVER: &str = "mkdir -p /www/cgi-bin && hostname > /www/index.html && \
    printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $(hostname) $REMOTE_ADDR\\n' > /www/cgi-bin/ip && \
    chmod +x /www/cgi-bin/ip && exec httpd -f -p 8080 -h /www";

/// The `[cloud]` timers test-run agents get unless a test sets them.
pub const AGENT_TIMERS: &str =
    "warm_min = 1\nwarm_max = 4\nreconcile_seconds = 2\ncold_add_wait_seconds = 20\n";

/// A Deployment `name` of busybox httpd pods (label `app=<name>`,
/// [`WEB_SERVER`] on port 8080), spread over the nodes.
pub fn deployment(name: &str, replicas: usize) -> String {
    labelled_deployment(name, replicas, &[])
}

/// The same, its pods also carrying `labels`.
pub fn labelled_deployment(name: &str, replicas: usize, labels: &[(&str, &str)]) -> String {
    let mut pod_labels = serde_json::Map::new();
    pod_labels.insert("app".into(), name.into());
    for (k, v) in labels {
        pod_labels.insert(k.to_string(), v.to_string().into());
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "automountServiceAccountToken": false,
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": {"app": name}},
                    }],
                    "containers": [{
                        "name": "httpd", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                        // `/` answers the pod's name, `/cgi-bin/ip` its
                        // name and the address the request came from.
                        "command": ["/bin/sh", "-c", WEB_SERVER],
                    }],
                },
            },
        },
    })
    .to_string()
}

/// A StatefulSet `name` of busybox pods (label `app=<name>`, pods
/// `<name>-0` … `<name>-<replicas - 1>`), all started at once.
pub fn statefulset(name: &str, replicas: usize) -> String {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "automountServiceAccountToken": false,
                    "containers": [{
                        "name": "c", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                        "command": ["sleep", "3600"],
                    }],
                },
            },
        },
    })
    .to_string()
}

/// The pause and busybox images as docker archives made here: one layer
/// each, from the static pause binary `scripts/k8s-build` makes and
/// Debian's static busybox. No registry, no image builder.
fn images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let k8s = k8s_bin()?;
    std::fs::create_dir_all(dir)?;
    let pause_root = dir.join("pause-root");
    std::fs::create_dir_all(&pause_root)?;
    std::fs::copy(k8s.join("pause"), pause_root.join("pause"))?;
    let bb_root = dir.join("busybox-root");
    std::fs::create_dir_all(bb_root.join("bin"))?;
    std::fs::create_dir_all(bb_root.join("tmp"))?;
    std::fs::copy("/bin/busybox", bb_root.join("bin/busybox"))
        .context("Debian's busybox-static (scripts/setup installs it)")?;
    for applet in [
        "sh", "sleep", "ping", "ip", "wget", "nc", "httpd", "cat", "timeout",
    ] {
        std::os::unix::fs::symlink("busybox", bb_root.join("bin").join(applet))?;
    }
    Ok(vec![
        docker_archive(
            dir,
            PAUSE_IMAGE,
            &pause_root,
            json!({"Entrypoint": ["/pause"], "User": "65535:65535"}),
        )?,
        docker_archive(
            dir,
            BUSYBOX_IMAGE,
            &bb_root,
            json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}),
        )?,
    ])
}

/// A `docker save` archive of one layer made of `root`: manifest.json, the
/// image config, the layer, named by their sha256 as the format wants.
pub fn docker_archive(
    dir: &Path,
    reference: &str,
    root: &Path,
    config: serde_json::Value,
) -> anyhow::Result<PathBuf> {
    let name = reference.replace(['/', ':'], "_");
    let work = dir.join(format!("{name}.d"));
    std::fs::create_dir_all(&work)?;
    let layer = work.join("layer.tar");
    tar(root, &layer, &["."])?;
    let digest = |p: &Path| -> anyhow::Result<String> {
        Ok(run(Command::new("sha256sum").arg(p))?
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string())
    };
    let diff = digest(&layer)?;
    std::fs::create_dir_all(work.join(&diff))?;
    std::fs::rename(&layer, work.join(&diff).join("layer.tar"))?;
    let image_config = json!({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff}")]},
    });
    let config_path = work.join("config.json");
    std::fs::write(&config_path, image_config.to_string())?;
    let c = digest(&config_path)?;
    std::fs::rename(&config_path, work.join(format!("{c}.json")))?;
    std::fs::write(
        work.join("manifest.json"),
        json!([{"Config": format!("{c}.json"), "RepoTags": [reference], "Layers": [format!("{diff}/layer.tar")]}]).to_string(),
    )?;
    let out = dir.join(format!("{name}.tar"));
    tar(&work, &out, &["manifest.json", &format!("{c}.json"), &diff])?;
    Ok(out)
}

/// A reproducible tar of `entries` of `dir` (sorted, root-owned, time 0).
fn tar(dir: &Path, out: &Path, entries: &[&str]) -> anyhow::Result<()> {
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "-C",
        ])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .args(entries))
    .map(drop)
}

impl KubeNode {
    fn start(
        cluster: &Cluster,
        i: usize,
        images: &[PathBuf],
        install: &Install,
    ) -> anyhow::Result<KubeNode> {
        let vm = &cluster.bed.sim.nodes[i];
        let name = format!("node-{i}");
        let dir = cluster.bed.dir.path().join(format!("kube-{name}"));
        let k8s = k8s_bin()?;
        let cgroup = format!("hostnic-test-{}", vm.ns.name());
        for c in CGROUP_CONTROLLERS {
            std::fs::create_dir_all(format!("/sys/fs/cgroup/{c}/{cgroup}"))
                .with_context(|| format!("creating cgroup {c}/{cgroup}"))?;
        }
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let v = std::fs::read_to_string(format!("/sys/fs/cgroup/cpuset/{f}"))?;
            std::fs::write(format!("/sys/fs/cgroup/cpuset/{cgroup}/{f}"), v.trim())?;
        }
        // A node routes: Service traffic, translated by kube-proxy, leaves
        // again towards the endpoint pod.
        vm.ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        for (own, _) in NODE_DIRS {
            std::fs::create_dir_all(dir.join(own))?;
        }
        for d in [
            "containerd/root",
            "containerd/state",
            "cni/net.d",
            "opt",
            "runc",
        ] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        for (_, host) in NODE_DIRS {
            // Mount points; empty, and left so (other tools may use them).
            std::fs::create_dir_all(host)?;
        }
        // The node's mount namespace, held by a sleep, with its own dirs,
        // and its own UTS namespace: the VM's hostname is the node's name,
        // as on a real node, for kubelet, containerd and the hostNetwork
        // pods (a namespace shared with the machine would name every VM
        // after the machine).
        let mounts: String = NODE_DIRS
            .iter()
            .map(|(own, host)| format!("mount --bind {} {host} && ", dir.join(own).display()))
            .collect();
        let holder = vm
            .ns
            .command("unshare")?
            // Slave: the machine's mounts reach the node (kubelet wants a
            // shared or slave mount for HostToContainer propagation), the
            // node's never reach the machine.
            .args(["-m", "-u", "--propagation", "slave", "--", "sh", "-c"])
            .arg(format!("hostname {name} && {mounts}exec sleep infinity"))
            .stdin(Stdio::null())
            .spawn()
            .context("starting the node's mount namespace")?;
        let mut node = KubeNode {
            name: name.clone(),
            dir: dir.clone(),
            cgroup: cgroup.clone(),
            holder,
            procs: Vec::new(),
        };
        let pid = node.holder.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "sleep")
        {
            if Instant::now() > deadline {
                bail!("the node's mount namespace did not come up");
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        let d = |p: &str| dir.join(p).display().to_string();
        // hostnic as the node's CNI: with test-run agents, the conflist an
        // operator installs (this node's agent socket, the Service CIDR
        // through the node) and the executable where the tests built it;
        // with the DaemonSet, the standard directories its init container
        // fills.
        let (bin_dirs, conf_dir) = match install {
            Install::Agents(_) | Install::Multus(_) => {
                let mut conflist = json!({
                    "cniVersion": "1.0.0", "name": "hostnic",
                    "plugins": [{
                        "type": "hostnic",
                        "socket": cluster.bed.socket(i),
                        "ipam": {"routes": [
                            {"dst": SERVICE_CIDR, "gw": "0.0.0.0"},
                            {"dst": EXTERNAL_IP_CIDR, "gw": "0.0.0.0"},
                        ]},
                        "capabilities": {"io.kubernetes.cri.pod-annotations": true},
                    }],
                });
                // Behind Multus the cluster network keeps to the first
                // vxnet; NetworkAttachmentDefinitions name the others.
                if let Install::Multus(_) = install {
                    let first = &cluster.bed.sim.config().vxnets[0].0;
                    conflist["plugins"][0]["vxnets"] = json!([first]);
                }
                std::fs::write(
                    dir.join("cni/net.d/10-hostnic.conflist"),
                    conflist.to_string(),
                )?;
                let hostnic_dir = bin("hostnic")
                    .parent()
                    .expect("bin dir")
                    .display()
                    .to_string();
                if let Install::Multus(_) = install {
                    let multus_dir = crate::multus::install_on_node(
                        &dir,
                        &cluster.bed.socket(i),
                        &hostnic_dir,
                        &cluster.cp.admin_kubeconfig(),
                    )?;
                    (
                        format!("'{multus_dir}', '{hostnic_dir}', '/usr/lib/cni'"),
                        d("cni/net.d"),
                    )
                } else {
                    (format!("'{hostnic_dir}', '/usr/lib/cni'"), d("cni/net.d"))
                }
            }
            Install::Ptp => {
                let conflist = json!({
                    "cniVersion": "1.0.0", "name": "ptp",
                    "plugins": [{
                        "type": "ptp",
                        "ipam": {"type": "host-local", "dataDir": d("cni/ipam"),
                                 "ranges": [[{"subnet": format!("10.244.{i}.0/24")}]],
                                 "routes": [{"dst": "0.0.0.0/0"}]},
                    }],
                });
                std::fs::write(dir.join("cni/net.d/10-ptp.conflist"), conflist.to_string())?;
                ("'/usr/lib/cni'".to_string(), d("cni/net.d"))
            }
            Install::DaemonSet(_) => {
                // The reference plugins a node has before any CNI is
                // installed (kubeadm's kubernetes-cni package): containerd
                // runs `loopback` for every pod, the conflist chains
                // portmap and tuning.
                for entry in std::fs::read_dir("/usr/lib/cni")
                    .context("the reference CNI plugins (scripts/setup installs them)")?
                {
                    let entry = entry?;
                    std::fs::copy(
                        entry.path(),
                        dir.join("opt-cni-bin").join(entry.file_name()),
                    )?;
                }
                ("'/opt/cni/bin'".to_string(), "/etc/cni/net.d".to_string())
            }
        };
        let d = |p: &str| dir.join(p).display().to_string();
        let sock = d("containerd/containerd.sock");
        std::fs::write(
            dir.join("containerd.toml"),
            format!(
                r#"version = 3
root = '{root}'
state = '{state}'
disabled_plugins = ['io.containerd.nri.v1.nri', 'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.zfs', 'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.blockfile', 'io.containerd.tracing.processor.v1.otlp',
  'io.containerd.internal.v1.tracing']
[grpc]
  address = '{sock}'
[ttrpc]
  address = '{sock}.ttrpc'
[debug]
  address = '{debug}'
[metrics]
  address = ''
[plugins.'io.containerd.internal.v1.opt']
  path = '{opt}'
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{PAUSE_IMAGE}'
[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = '{runc}'
        Root = '{runc_root}'
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [{bin_dirs}]
    conf_dir = '{conf_dir}'
    max_conf_num = 1
"#,
                root = d("containerd/root"),
                state = d("containerd/state"),
                debug = d("containerd/debug.sock"),
                opt = d("opt"),
                runc = k8s.join("runc").display(),
                runc_root = d("runc"),
            ),
        )?;
        let containerd = node.spawn(
            "containerd",
            &k8s.join("containerd"),
            &["--config", &d("containerd.toml")],
        )?;
        node.procs.push(("containerd", containerd));
        let ctr = |args: &[&str]| -> anyhow::Result<String> {
            run(node
                .enter(&k8s.join("ctr"))?
                .args(["--address", &sock])
                .args(args))
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ctr(&["version"]).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "containerd on {name} did not serve:\n{}",
                    node.log("containerd")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for image in images {
            ctr(&[
                "-n",
                "k8s.io",
                "images",
                "import",
                &image.display().to_string(),
            ])?;
        }

        let [kubeconfig, cert, key] = cluster.cp.node_credentials(&name, vm.ip)?;
        std::fs::write(
            dir.join("kubelet.yaml"),
            format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{sock}
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup}
cgroupsPerQOS: true
failSwapOn: false
failCgroupV1: false
address: {ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
authentication:
  anonymous: {{ enabled: false }}
  webhook: {{ enabled: true }}
  x509: {{ clientCAFile: {ca} }}
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: [{CLUSTER_DNS}]
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
  imagefs.inodesFree: "0%"
serializeImagePulls: false
registerNode: true
maxPods: 110
staticPodPath: ""
oomScoreAdj: 0
# How often each pod is synced, which is when an updated ConfigMap reaches
# its volume: 1m by default, shortened so a policy swap lands in seconds.
syncFrequency: 10s
"#,
                ip = vm.ip,
                cert = cert.display(),
                key = key.display(),
                ca = cluster.cp.ca().display(),
            ),
        )?;
        let kubelet = node.spawn(
            "kubelet",
            &k8s.join("kubelet"),
            &[
                &format!("--config={}", d("kubelet.yaml")),
                &format!("--kubeconfig={}", kubeconfig.display()),
                &format!("--hostname-override={name}"),
                &format!("--node-ip={}", vm.ip),
                &format!("--provider-id=qingcloud://{}", vm.instance),
                "--root-dir=/var/lib/kubelet",
                "--v=2",
            ],
        )?;
        node.procs.push(("kubelet", kubelet));

        // kube-proxy as Kubernetes ships it: no masqueradeAll, no
        // clusterCIDR. The answers of Service traffic come back through the
        // node that translated it by hostnic's return path
        // (host/agent/src/return_path/).
        std::fs::write(
            dir.join("kube-proxy.yaml"),
            format!(
                r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
oomScoreAdj: 0
clientConnection:
  kubeconfig: {kc}
hostnameOverride: {name}
bindAddress: {ip}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
iptables:
  syncPeriod: 30s
  minSyncPeriod: 1s
"#,
                kc = cluster.cp.kube_proxy_kubeconfig()?.display(),
                ip = vm.ip,
            ),
        )?;
        let proxy = node.spawn(
            "kube-proxy",
            &k8s.join("kube-proxy"),
            &[&format!("--config={}", d("kube-proxy.yaml")), "--v=2"],
        )?;
        node.procs.push(("kube-proxy", proxy));
        Ok(node)
    }

    /// Imports a docker archive into this node's containerd (namespace
    /// k8s.io), for images a test adds once the cluster runs.
    pub fn import_image(&self, archive: &Path) -> anyhow::Result<()> {
        let sock = self.dir.join("containerd/containerd.sock");
        run(self
            .enter(&k8s_bin()?.join("ctr"))?
            .arg("--address")
            .arg(&sock)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive))
        .map(drop)
    }

    /// A command in this node's network, mount and UTS namespaces.
    fn enter(&self, program: &Path) -> anyhow::Result<Command> {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.holder.id().to_string(), "-m", "-n", "-u", "--"])
            .arg(program)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        Ok(cmd)
    }

    fn spawn(&self, name: &str, program: &Path, args: &[&str]) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        self.enter(program)?
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name} on {}", self.name))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Stops the node: kubelet and kube-proxy, every container (the
    /// processes of its cgroups, and the shims of its containerd), then
    /// containerd and the mount namespace; removes its cgroups.
    fn stop(&mut self) {
        for (name, child) in self.procs.iter_mut().rev() {
            if *name != "containerd" {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // The containers' processes, by cgroup.
        for _ in 0..3 {
            for pid in cgroup_pids(&format!("/sys/fs/cgroup/pids/{}", self.cgroup)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The shims of this node's containerd (they outlive it otherwise).
        let address = self
            .dir
            .join("containerd/containerd.sock")
            .display()
            .to_string();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                if cmdline.contains("containerd-shim") && cmdline.contains(&address) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        for (_, child) in self.procs.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        for c in CGROUP_CONTROLLERS {
            remove_cgroup(Path::new(&format!("/sys/fs/cgroup/{c}/{}", self.cgroup)));
        }
    }
}

/// Every pid in cgroup `dir` and below.
fn cgroup_pids(dir: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack = vec![PathBuf::from(dir)];
    while let Some(d) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

/// Removes cgroup `dir` and its children, deepest first.
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
