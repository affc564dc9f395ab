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
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/k8s-build");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed ({})", script.display(), out.status));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .last()
            .map(PathBuf::from)
            .ok_or_else(|| format!("{} printed no directory", script.display()))
    })
    .clone()
    .map_err(anyhow::Error::msg)
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
                "--allow-privileged=true",
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

    fn certificates(&self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let openssl = |args: &[&str]| -> anyhow::Result<()> {
            run(Command::new("openssl").args(args).current_dir(d)).map(drop)
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=hostnic-test-ca",
        ])?;
        let sign = |name: &str, subject: &str, ext: &str| -> anyhow::Result<()> {
            std::fs::write(d.join(format!("{name}.ext")), ext)?;
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                subject,
            ])?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ])
        };
        sign(
            "apiserver",
            "/CN=kube-apiserver",
            &format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName=IP:{},IP:127.0.0.1,IP:10.96.0.1,\
                 DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n",
                self.addr
            ),
        )?;
        sign(
            "admin",
            "/O=system:masters/CN=admin",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        )?;
        openssl(&["genrsa", "-out", "sa.key", "2048"])?;
        openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        let admin = self.kubeconfig(&format!(
            "client-certificate: {}\n    client-key: {}",
            d.join("admin.crt").display(),
            d.join("admin.key").display()
        ));
        std::fs::write(self.admin_kubeconfig(), admin)?;
        Ok(())
    }

    fn kubeconfig(&self, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{}:{PORT}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n    {user}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: user\ncurrent-context: test\n",
            self.addr,
            self.dir.path().join("ca.crt").display()
        )
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
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for name in ["etcd", "kube-apiserver"] {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            text += &format!("--- {name}\n");
            for l in tail.into_iter().rev() {
                text += l;
                text.push('\n');
            }
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
