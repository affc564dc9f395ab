//! The kubelet path: Debian's containerd (1.6) runs pod sandboxes on a
//! hostnic network through its CRI plugin, driven by a small CRI v1 client
//! standing in for kubelet. containerd runs inside the testbed's node
//! namespace with all its state under the test's temp dir.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::images::{
    LogsOnPanic, Podman, allocation_records, remove_cgroup, unique_cgroup, unmount_under,
};
use hostnic_testbed::netns::run;
use hostnic_testbed::{Testbed, require_root};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StatusRequest,
    StopPodSandboxRequest,
};
use serde_json::json;
use tonic::transport::{Channel, Endpoint, Uri};

const NETWORK: &str = "hostnic-test";
/// The sandbox ("pause") image: busybox sleeping forever.
const PAUSE: &str = "localhost/hostnic-pause:test";
/// An annotation only the CRI capability can have carried to the agent.
const ANNOTATION: &str = "hostnic.test/pod-marker";

#[test]
fn containerd_cri_runs_pod_sandboxes_on_hostnic() {
    if !require_root("containerd_cri_runs_pod_sandboxes_on_hostnic") {
        return;
    }
    let started = Instant::now();
    let tb = Testbed::new(3).unwrap();
    let agent = tb.start_agent().unwrap();
    let dir = tb.dir.path().join("containerd");

    // The pause image, built and saved by a podman that lives only as long
    // as this step.
    let archive = tb.dir.path().join("pause.tar");
    {
        let podman = Podman::new(&tb.node, tb.dir.path().join("podman")).unwrap();
        podman
            .import_busybox(PAUSE, &[r#"ENTRYPOINT ["/bin/sleep","infinity"]"#])
            .unwrap();
        podman.save_oci_archive(PAUSE, &archive).unwrap();
    }

    // Declared after the agent, so dropped (killed, unmounted) before it.
    let containerd = Containerd::start(&tb, dir, PAUSE).unwrap();
    let _logs = LogsOnPanic(vec![agent.log.clone(), containerd.log()]);
    let archive = archive.to_str().unwrap();
    containerd
        .ctr(&["images", "import", "--snapshotter", "native", archive])
        .unwrap();
    // sandbox_image was configured before the image existed: make sure the
    // name containerd gave the archive is that one.
    let images = containerd.ctr(&["images", "list", "--quiet"]).unwrap();
    assert!(
        images.lines().any(|l| l == PAUSE),
        "containerd knows the pause image as {images:?}, not {PAUSE}"
    );

    let mut cri = Cri::connect(&containerd.socket()).unwrap();
    cri.wait_ready(Duration::from_secs(20)).unwrap();

    // Run the pods, each with its own annotation.
    let nic_ips: BTreeSet<&str> = tb.nics.iter().map(|n| n.ip.as_str()).collect();
    let mut pods = Vec::new();
    for i in 0..tb.nics.len() {
        let name = format!("web-{i}");
        let uid = format!("uid-{i}");
        let marker = format!("marker-{i}");
        let t = Instant::now();
        let id = cri
            .run_pod(&name, &uid, &marker, &containerd.cgroup_parent)
            .unwrap();
        eprintln!("RunPodSandbox {name}: {:?}", t.elapsed());
        let ip = cri.pod_ip(&id).unwrap();
        assert!(
            nic_ips.contains(ip.as_str()),
            "pod {name} got {ip}, which no testbed NIC has"
        );
        pods.push(Pod {
            id,
            name,
            uid,
            marker,
            ip,
            netns: String::new(),
        });
    }
    let ips: BTreeSet<&str> = pods.iter().map(|p| p.ip.as_str()).collect();
    assert_eq!(ips.len(), pods.len(), "two pods share an address: {ips:?}");
    assert!(
        tb.parked_macs().unwrap().is_empty(),
        "every NIC is in a pod"
    );

    // The agent's allocation records name each pod, with the annotations
    // that only the io.kubernetes.cri.pod-annotations capability carries.
    let records = allocation_records(&tb).unwrap();
    assert_eq!(records.len(), pods.len(), "{records:#?}");
    for pod in &mut pods {
        let rec = records
            .iter()
            .find(|r| r["pod"]["name"] == pod.name.as_str())
            .unwrap_or_else(|| panic!("no allocation record for {}: {records:#?}", pod.name));
        let who = &rec["pod"];
        assert_eq!(who["namespace"], "default", "{rec:#}");
        assert_eq!(who["uid"], pod.uid.as_str(), "{rec:#}");
        assert_eq!(
            who["annotations"][ANNOTATION],
            pod.marker.as_str(),
            "{rec:#}"
        );
        assert_eq!(rec["key"]["container_id"], pod.id.as_str(), "{rec:#}");
        assert_eq!(rec["key"]["network"], NETWORK, "{rec:#}");
        // The record's NIC is the one whose address the pod reports.
        let nic = tb.nics.iter().find(|n| n.ip == pod.ip).unwrap();
        assert_eq!(rec["mac"], nic.mac.as_str(), "{rec:#}");
        // The kernel agrees: the netns containerd passed as CNI_NETNS holds
        // that NIC as eth0, with the address.
        pod.netns = rec["netns"].as_str().unwrap().to_string();
        let in_pod = |what: &str| {
            run(Command::new("nsenter")
                .arg(format!("--net={}", pod.netns))
                .args(["ip", "-o", what, "show", "dev", "eth0"]))
            .unwrap()
        };
        let addr = in_pod("addr");
        assert!(addr.contains(&format!("inet {}/24", pod.ip)), "{addr}");
        let link = in_pod("link");
        assert!(link.contains(&nic.mac), "{link}");
    }

    // Stop (DEL with the netns) then remove (DEL again, without one): the
    // NICs return to the pool and their records go.
    for pod in &pods {
        cri.stop_pod(&pod.id).unwrap();
        tb.settle();
        let nic = tb.nics.iter().find(|n| n.ip == pod.ip).unwrap();
        assert!(
            tb.parked_macs().unwrap().contains(&nic.mac),
            "StopPodSandbox {} left NIC {} out of the pool",
            pod.name,
            nic.mac
        );
        assert!(
            !Path::new(&pod.netns).exists(),
            "pod netns {} is left",
            pod.netns
        );
        cri.remove_pod(&pod.id).unwrap();
    }
    assert_eq!(cri.pod_count().unwrap(), 0);
    assert_eq!(tb.parked_macs().unwrap().len(), tb.nics.len());
    let records = allocation_records(&tb).unwrap();
    assert!(records.is_empty(), "allocation records left: {records:#?}");
    eprintln!("containerd test took {:?}", started.elapsed());
}

#[derive(Debug)]
struct Pod {
    id: String,
    name: String,
    uid: String,
    marker: String,
    ip: String,
    /// Its netns path, as the agent recorded it from CNI_NETNS.
    netns: String,
}

/// containerd started in the node namespace with its root, state, socket,
/// runc state, CNI dirs and pod netns mounts under `dir`. On drop it is
/// killed, and so is whatever it left: containers (through runc, which also
/// removes their cgroups), shims and their sockets, libcni cache entries,
/// mounts, the pods' cgroup parent. Outside `dir` only the directories
/// /run/containerd/s (shim sockets) and /var/lib/cni/results (libcni's
/// cache) stay, empty: containerd 1.6 has no setting for either.
#[derive(Debug)]
struct Containerd {
    child: Option<Child>,
    dir: PathBuf,
    /// Given to every pod (kubelet's kubepods/…): without one the pods'
    /// cgroups go under containerd's shared `k8s.io`, which nothing removes.
    cgroup_parent: String,
}

impl Containerd {
    fn start(tb: &Testbed, dir: PathBuf, sandbox_image: &str) -> anyhow::Result<Containerd> {
        // The CRI plugin looks plugins up in one bin_dir: ours, with hostnic
        // and the loopback plugin it always runs for the pod's lo.
        let cni_bin = dir.join("cni-bin");
        let cni_conf = dir.join("cni-conf");
        std::fs::create_dir_all(&cni_bin)?;
        std::fs::create_dir_all(&cni_conf)?;
        std::os::unix::fs::symlink(hostnic_testbed::bin("hostnic"), cni_bin.join("hostnic"))?;
        let reference = hostnic_testbed::reference_plugin_dir()
            .context("no reference CNI plugins (containernetworking-plugins)")?;
        std::os::unix::fs::symlink(reference.join("loopback"), cni_bin.join("loopback"))?;

        let mut hostnic = tb.netconf("1.0.0", json!([]));
        for k in ["cniVersion", "name"] {
            hostnic.as_object_mut().context("netconf")?.remove(k);
        }
        hostnic["capabilities"] = json!({ "io.kubernetes.cri.pod-annotations": true });
        let conflist = json!({ "cniVersion": "1.0.0", "name": NETWORK, "plugins": [hostnic] });
        std::fs::write(
            cni_conf.join("10-hostnic.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )?;

        let d = |sub: &str| dir.join(sub).display().to_string();
        // restrict_oom_score_adj: runc fails without it here (the sandbox
        // asks for -998, which this machine refuses). native: plain copies,
        // no overlay mounts. netns_mounts_under_state_dir: pod netns bind
        // mounts under our state dir rather than /var/run/netns. The
        // snapshotters we do not use are disabled: aufs would modprobe.
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"#,
            root = d("root"),
            state = d("state"),
            socket = d("containerd.sock"),
            opt = d("opt"),
            runc = d("runc"),
            cni_bin = d("cni-bin"),
            cni_conf = d("cni-conf"),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let child = tb
            .node
            .command("containerd")?
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let mut c = Containerd {
            child: Some(child),
            dir,
            cgroup_parent: unique_cgroup("containerd"),
        };
        c.wait_serving(Duration::from_secs(20))?;
        Ok(c)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    fn wait_serving(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("containerd exited ({status}) before serving");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("containerd did not serve within {limit:?}")
    }

    /// `ctr` against this containerd, in the CRI plugin's namespace.
    fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io"])
            .args(args))
    }

    /// Ends containerd, then every container and shim it left (only a
    /// failed test leaves any: RemovePodSandbox deletes them).
    fn kill_all(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            // SIGTERM is best effort: SIGKILL follows if it is ignored.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(c.try_wait(), Ok(None)) {
                eprintln!("testbed: containerd ignored SIGTERM; killing it");
                // Errors here mean it already exited.
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // runc's state: <runc root>/<containerd namespace>/<container id>.
        for ns_dir in subdirs(&self.dir.join("runc")) {
            for id in subdirs(&ns_dir) {
                let id = id.file_name().unwrap_or_default().to_owned();
                forget_cni_results(&id.to_string_lossy());
                let deleted = run(Command::new("runc")
                    .arg("--root")
                    .arg(&ns_dir)
                    .args(["delete", "--force"])
                    .arg(&id));
                if let Err(e) = deleted {
                    eprintln!("testbed: runc delete {id:?}: {e:#}");
                }
            }
        }
        // containerd 1.6 puts shim sockets in /run/containerd/s whatever
        // `state` says; a killed shim leaves its socket there. Each bundle
        // names its shim's.
        let tasks = self.dir.join("state/io.containerd.runtime.v2.task");
        let sockets: Vec<PathBuf> = subdirs(&tasks)
            .iter()
            .flat_map(|ns| subdirs(ns))
            .filter_map(|bundle| std::fs::read_to_string(bundle.join("address")).ok())
            .filter_map(|a| a.trim().strip_prefix("unix://").map(PathBuf::from))
            .filter(|p| p.starts_with("/run/containerd/s"))
            .collect();
        // Shims outlive containerd by design. Ours name its socket (unique
        // to this test) on their command line.
        let address = format!("-address\0{}\0", self.socket().display());
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("containerd-shim") && cmdline.contains(&address) {
                // Already gone is fine.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for socket in sockets {
            match std::fs::remove_file(&socket) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    eprintln!("testbed: removing {}: {e}", socket.display());
                }
                _ => {}
            }
        }
    }
}

/// libcni caches each attachment's result in /var/lib/cni/results (go-cni
/// in containerd 1.6 has no setting to move it) and drops it on DEL. A pod
/// killed without one leaves `<network>-<sandbox id>-<ifname>` files there.
fn forget_cni_results(sandbox_id: &str) {
    let dir = Path::new("/var/lib/cni/results");
    let needle = format!("-{sandbox_id}-");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().contains(&needle)
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            eprintln!("testbed: removing {}: {e}", entry.path().display());
        }
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill_all();
        for e in unmount_under(&self.dir)
            .into_iter()
            .chain(remove_cgroup(&self.cgroup_parent))
        {
            eprintln!("testbed: {e}");
        }
    }
}

/// A CRI v1 client over containerd's unix socket, with blocking calls.
struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    fn connect(socket: &Path) -> anyhow::Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let socket = socket.to_path_buf();
        let channel = rt.block_on(async move {
            // gRPC wants a URI; the connector ignores it and dials the socket.
            Endpoint::try_from("http://[::]:50051")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(socket).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
        })?;
        Ok(Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// Waits until the runtime reports RuntimeReady and NetworkReady (the
    /// latter once the CRI plugin has loaded our conflist).
    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let status = self
                .rt
                .block_on(self.client.status(StatusRequest::default()))?
                .into_inner()
                .status
                .unwrap_or_default();
            let ready = |t: &str| status.conditions.iter().any(|c| c.r#type == t && c.status);
            if ready("RuntimeReady") && ready("NetworkReady") {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("containerd not ready after {limit:?}: {status:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn run_pod(
        &mut self,
        name: &str,
        uid: &str,
        marker: &str,
        cgroup_parent: &str,
    ) -> anyhow::Result<String> {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            annotations: HashMap::from([(ANNOTATION.to_string(), marker.to_string())]),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = RunPodSandboxRequest {
            config: Some(config),
            ..Default::default()
        };
        let resp = self
            .rt
            .block_on(self.client.run_pod_sandbox(req))
            .with_context(|| format!("RunPodSandbox {name}"))?;
        Ok(resp.into_inner().pod_sandbox_id)
    }

    fn pod_ip(&mut self, id: &str) -> anyhow::Result<String> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        let status = self
            .rt
            .block_on(self.client.pod_sandbox_status(req))?
            .into_inner()
            .status
            .context("PodSandboxStatus without a status")?;
        Ok(status.network.unwrap_or_default().ip)
    }

    fn stop_pod(&mut self, id: &str) -> anyhow::Result<()> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt
            .block_on(self.client.stop_pod_sandbox(req))
            .with_context(|| format!("StopPodSandbox {id}"))?;
        Ok(())
    }

    fn remove_pod(&mut self, id: &str) -> anyhow::Result<()> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt
            .block_on(self.client.remove_pod_sandbox(req))
            .with_context(|| format!("RemovePodSandbox {id}"))?;
        Ok(())
    }

    fn pod_count(&mut self) -> anyhow::Result<usize> {
        let resp = self.rt.block_on(
            self.client
                .list_pod_sandbox(ListPodSandboxRequest::default()),
        )?;
        Ok(resp.into_inner().items.len())
    }
}

impl std::fmt::Debug for Cri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cri")
    }
}
