//! A real Kubernetes control plane for the tests: etcd and kube-apiserver,
//! built from source by `scripts/k8s-build` (cached per machine), run in a
//! network namespace the test made — the simulator's SDN namespace, where
//! the VMs' primary network has its gateway, so agents on the VMs reach
//! the API server as a node reaches its control plane. Certificates are
//! made here with openssl, for this control plane only.
//!
//! No kubelet and no controllers: the API server is real (authentication,
//! RBAC, admission, watches, optimistic concurrency), and the tests create
//! the objects a cluster would have.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netns::{Ns, run};

/// The API server's port.
pub const PORT: u16 = 6443;

/// The Kubernetes binaries: `scripts/k8s-build`'s bin directory (built on
/// first use on a machine, about ten minutes; then cached).
pub fn k8s_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| built_by("k8s-build"))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Runs `scripts/<script>`, which builds something into a cache (or finds
/// it there) and prints its path last.
pub(crate) fn built_by(script: &str) -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(script);
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({})", script.display(), out.status));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(PathBuf::from)
        .ok_or_else(|| format!("{} printed no path", script.display()))
}

#[derive(Debug)]
pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    /// Where the API server listens (in `ns`), port [`PORT`].
    pub addr: Ipv4Addr,
    pub bin: PathBuf,
    ns: PathBuf,
    procs: Vec<(&'static str, Child)>,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver in namespace `ns`, the API server on
    /// `addr` (an address of that namespace), and waits until it is ready.
    pub fn start(ns: &Ns, addr: Ipv4Addr) -> anyhow::Result<ControlPlane> {
        let bin = k8s_bin()?;
        let dir = tempfile::Builder::new().prefix("hostnic-cp").tempdir()?;
        let mut cp = ControlPlane {
            dir,
            addr,
            bin,
            ns: ns.path(),
            procs: Vec::new(),
        };
        cp.certificates()?;
        let d = cp.dir.path().to_path_buf();
        let etcd = cp.spawn(
            "etcd",
            ns,
            &[
                "--data-dir",
                &d.join("etcd").display().to_string(),
                "--listen-client-urls",
                "http://127.0.0.1:2379",
                "--advertise-client-urls",
                "http://127.0.0.1:2379",
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )?;
        cp.procs.push(("etcd", etcd));
        let file = |n: &str| d.join(n).display().to_string();
        let apiserver = cp.spawn(
            "kube-apiserver",
            ns,
            &[
                "--etcd-servers=http://127.0.0.1:2379",
                &format!("--bind-address={addr}"),
                &format!("--advertise-address={addr}"),
                &format!("--secure-port={PORT}"),
                &format!("--tls-cert-file={}", file("apiserver.crt")),
                &format!("--tls-private-key-file={}", file("apiserver.key")),
                &format!("--client-ca-file={}", file("ca.crt")),
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!("--service-account-key-file={}", file("sa.pub")),
                &format!("--service-account-signing-key-file={}", file("sa.key")),
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                &format!(
                    "--kubelet-client-certificate={}",
                    file("apiserver-kubelet-client.crt")
                ),
                &format!(
                    "--kubelet-client-key={}",
                    file("apiserver-kubelet-client.key")
                ),
                &format!("--kubelet-certificate-authority={}", file("ca.crt")),
                "--kubelet-preferred-address-types=InternalIP",
                "--v=1",
            ],
        )?;
        cp.procs.push(("kube-apiserver", apiserver));
        cp.wait_ready(Duration::from_secs(90))?;
        Ok(cp)
    }

    fn spawn(&self, name: &str, ns: &Ns, args: &[&str]) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))?;
        ns.command(self.bin.join(name))?
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))
    }

    fn openssl(&self, args: &[&str]) -> anyhow::Result<()> {
        run(Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path()))
        .map(drop)
    }

    /// An ECDSA P-256 key (an order of magnitude faster to make than RSA).
    fn key(&self, name: &str) -> anyhow::Result<()> {
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ])
    }

    /// A certificate `name.crt` (key `name.key`) signed by the test CA.
    fn sign(
        &self,
        name: &str,
        subject: &str,
        usage: &str,
        san: Option<&str>,
    ) -> anyhow::Result<()> {
        let d = self.dir.path();
        let mut ext = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
        );
        if let Some(san) = san {
            ext += &format!("subjectAltName={san}\n");
        }
        std::fs::write(d.join(format!("{name}.ext")), ext)?;
        self.key(&format!("{name}.key"))?;
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            subject,
            "-out",
            &format!("{name}.csr"),
        ])?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-sha256",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ])
    }

    fn certificates(&self) -> anyhow::Result<()> {
        self.key("ca.key")?;
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-sha256",
            "-days",
            "2",
            "-subj",
            "/CN=hostnic-test-ca",
            "-out",
            "ca.crt",
        ])?;
        self.sign(
            "apiserver",
            "/CN=kube-apiserver",
            "serverAuth",
            Some(&format!(
                "IP:{},IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc",
                self.addr
            )),
        )?;
        self.sign(
            "apiserver-kubelet-client",
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            "clientAuth",
            None,
        )?;
        self.sign("admin", "/O=system:masters/CN=admin", "clientAuth", None)?;
        self.key("sa.key")?;
        self.openssl(&["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        std::fs::write(self.admin_kubeconfig(), self.cert_kubeconfig("admin"))?;
        Ok(())
    }

    /// A kubeconfig authenticating with certificate `name.crt`.
    fn cert_kubeconfig(&self, name: &str) -> String {
        let d = self.dir.path();
        self.kubeconfig(&format!(
            "client-certificate: {}\n    client-key: {}",
            d.join(format!("{name}.crt")).display(),
            d.join(format!("{name}.key")).display()
        ))
    }

    /// Starts the controller manager (service accounts, deployments,
    /// endpoints, garbage collection) and the scheduler, and waits until
    /// the default ServiceAccount exists.
    pub fn start_controllers(&mut self, ns: &Ns) -> anyhow::Result<()> {
        for (name, cn) in [
            ("controller-manager", "system:kube-controller-manager"),
            ("scheduler", "system:kube-scheduler"),
        ] {
            self.sign(name, &format!("/CN={cn}"), "clientAuth", None)?;
            std::fs::write(
                self.dir.path().join(format!("{name}.kubeconfig")),
                self.cert_kubeconfig(name),
            )?;
        }
        let d = self.dir.path().to_path_buf();
        let kc = |n: &str| d.join(format!("{n}.kubeconfig")).display().to_string();
        let f = |n: &str| d.join(n).display().to_string();
        let cm = self.spawn(
            "kube-controller-manager",
            ns,
            &[
                &format!("--kubeconfig={}", kc("controller-manager")),
                &format!("--authentication-kubeconfig={}", kc("controller-manager")),
                &format!("--authorization-kubeconfig={}", kc("controller-manager")),
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                &format!("--service-account-private-key-file={}", f("sa.key")),
                &format!("--root-ca-file={}", f("ca.crt")),
                &format!("--cluster-signing-cert-file={}", f("ca.crt")),
                &format!("--cluster-signing-key-file={}", f("ca.key")),
                "--allocate-node-cidrs=false",
                "--controllers=*,-nodeipam",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
        )?;
        self.procs.push(("kube-controller-manager", cm));
        let sched = self.spawn(
            "kube-scheduler",
            ns,
            &[
                &format!("--kubeconfig={}", kc("scheduler")),
                &format!("--authentication-kubeconfig={}", kc("scheduler")),
                &format!("--authorization-kubeconfig={}", kc("scheduler")),
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
            ],
        )?;
        self.procs.push(("kube-scheduler", sched));
        let start = Instant::now();
        while self
            .kubectl(&["-n", "default", "get", "serviceaccount", "default"])
            .is_err()
        {
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the controller manager made no default ServiceAccount:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Node `name`'s credentials: a kubeconfig (system:node:<name>), and a
    /// serving certificate for `ip`, as (kubeconfig, cert, key).
    pub fn node_credentials(&self, name: &str, ip: Ipv4Addr) -> anyhow::Result<[PathBuf; 3]> {
        let client = format!("kubelet-{name}");
        let serving = format!("kubelet-{name}-serving");
        self.sign(
            &client,
            &format!("/O=system:nodes/CN=system:node:{name}"),
            "clientAuth",
            None,
        )?;
        self.sign(
            &serving,
            &format!("/O=system:nodes/CN=system:node:{name}"),
            "serverAuth",
            Some(&format!("IP:{ip},DNS:{name}")),
        )?;
        let d = self.dir.path();
        let kubeconfig = d.join(format!("{client}.kubeconfig"));
        std::fs::write(&kubeconfig, self.cert_kubeconfig(&client))?;
        Ok([
            kubeconfig,
            d.join(format!("{serving}.crt")),
            d.join(format!("{serving}.key")),
        ])
    }

    /// kube-proxy's kubeconfig (system:kube-proxy).
    pub fn kube_proxy_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("kube-proxy.kubeconfig");
        if !path.exists() {
            self.sign("kube-proxy", "/CN=system:kube-proxy", "clientAuth", None)?;
            std::fs::write(&path, self.cert_kubeconfig("kube-proxy"))?;
        }
        Ok(path)
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn kubeconfig(&self, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{}:{PORT}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n    {user}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: user\ncurrent-context: test\n",
            self.addr,
            self.dir.path().join("ca.crt").display()
        )
    }

    /// Pod `name`'s (namespace default) `k8s.v1.cni.cncf.io/network-status`
    /// entries; none while it has no such annotation.
    pub fn network_status(&self, pod: &str) -> Vec<serde_json::Value> {
        let out = self
            .kubectl(&[
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.metadata.annotations.k8s\\.v1\\.cni\\.cncf\\.io/network-status}",
            ])
            .unwrap_or_default();
        serde_json::from_str(&out).unwrap_or_default()
    }

    /// The cluster-admin's kubeconfig.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// A kubeconfig that authenticates as ServiceAccount `namespace/name`
    /// (a token from the TokenRequest API, valid for an hour).
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        let token = self.kubectl(&["create", "token", name, "-n", namespace, "--duration=1h"])?;
        let path = self
            .dir
            .path()
            .join(format!("{namespace}-{name}.kubeconfig"));
        std::fs::write(&path, self.kubeconfig(&format!("token: {}", token.trim())))?;
        Ok(path)
    }

    /// `kubectl` as the cluster admin; its stdout.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_as(&self.admin_kubeconfig(), args, None)
    }

    /// `kubectl` with `kubeconfig`, `stdin` fed to it if given.
    pub fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<String> {
        use std::io::Write;
        let ns = std::fs::File::open(&self.ns)?;
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
        // SAFETY: as in `Ns::command`: only setns between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kubectl")?;
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(text.as_bytes())?;
        }
        drop(child.stdin.take());
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        self.kubectl_as(&self.admin_kubeconfig(), &["apply", "-f", "-"], Some(yaml))
    }

    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            match self.kubectl(&["get", "--raw", "/readyz"]) {
                Ok(out) if out.trim() == "ok" => return Ok(()),
                _ if start.elapsed() > limit => {
                    bail!(
                        "the API server was not ready within {limit:?}:\n{}",
                        self.logs()
                    )
                }
                _ => {}
            }
            let mut exited = None;
            for (name, child) in &mut self.procs {
                if let Some(status) = child.try_wait()? {
                    exited = Some(format!("{name} exited ({status})"));
                }
            }
            if let Some(what) = exited {
                bail!("{what}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The tails of etcd's and the API server's logs, for failures.
    /// Stops (SIGSTOP) or resumes (SIGCONT) component `name`
    /// (`kube-apiserver`, `etcd`): an API server that is away without
    /// closing its connections.
    pub fn pause(&self, name: &str, paused: bool) -> anyhow::Result<()> {
        let (_, child) = self
            .procs
            .iter()
            .find(|(n, _)| *n == name)
            .with_context(|| format!("no {name} in this control plane"))?;
        let signal = if paused {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)?;
        Ok(())
    }

    pub fn logs(&self) -> String {
        let mut text = String::new();
        for name in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            let Ok(log) = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            else {
                continue;
            };
            text += &crate::log_tail(name, &log, 20);
        }
        text
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The API server first, then its store.
        for (_, child) in self.procs.iter_mut().rev() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
