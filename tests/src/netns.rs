//! Named network namespaces that delete themselves, and commands run inside
//! them. Every namespace of the testbed is created here, named
//! `hntest-<pid>-<n>-<role>`, so a run killed half-way is swept by the next
//! one and nothing touches the machine's own namespace.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

const PREFIX: &str = "hntest-";
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace under /var/run/netns, deleted on drop.
#[derive(Debug)]
pub struct Ns {
    name: String,
}

impl Ns {
    pub fn new(role: &str) -> anyhow::Result<Ns> {
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{role}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Ns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs many `ip` commands in one process (`ip -batch`).
    pub fn ip_batch(&self, lines: &[String]) -> anyhow::Result<()> {
        self.batch("ip", lines)
    }

    /// Runs many commands of `program` (`ip`, `bridge`: both take `-n` and
    /// `-batch`) in one process.
    pub fn batch(&self, program: &str, lines: &[String]) -> anyhow::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut child = Command::new(program)
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {program} -batch"))?;
        child
            .stdin
            .take()
            .with_context(|| format!("{program} -batch stdin"))?
            .write_all(lines.join("\n").as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{program} -n {} -batch failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A command that will run inside this namespace (network only, like
    /// `nsenter --net`: the mount namespace and /sys stay as they are, which
    /// runc needs).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        let ns = File::open(self.path()).with_context(|| format!("opening netns {}", self.name))?;
        let mut cmd = Command::new(program);
        // SAFETY: the closure runs in the forked child before exec and only
        // makes the setns system call, which is async-signal-safe; `ns` is
        // an open descriptor inherited from the parent.
        unsafe {
            cmd.pre_exec(move || {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        Ok(cmd)
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        run(self.command(program)?.args(args))
    }

    /// Binds a TCP listener inside the namespace: a socket belongs to the
    /// namespace it was created in, so a thread enters it, binds, and
    /// exits.
    pub fn listen(&self, addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
        self.inside(move || Ok(std::net::TcpListener::bind(addr)?))
            .with_context(|| format!("binding {addr} in netns {}", self.name))
    }

    /// Whether a TCP connection from here to `addr` is accepted within
    /// `timeout` (refused, unreachable or silent: false).
    pub fn connects(&self, addr: std::net::SocketAddr, timeout: std::time::Duration) -> bool {
        self.inside(move || Ok(std::net::TcpStream::connect_timeout(&addr, timeout)?))
            .is_ok()
    }

    /// Runs `f` on a thread of its own that entered the namespace.
    pub fn inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let file = std::fs::File::open(self.path())?;
        std::thread::spawn(move || -> anyhow::Result<T> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in netns {} panicked", self.name))?
    }

    /// One `GET /` (HTTP/1.0, a new connection) from here to `addr`: the
    /// body of a 200 answer, trimmed; None for anything else (refused,
    /// closed, silent for 3 s, another status).
    pub fn http_get(&self, addr: std::net::SocketAddr) -> Option<String> {
        use std::io::{Read, Write};
        let answer = self
            .inside(move || {
                let timeout = std::time::Duration::from_secs(3);
                let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
                s.set_read_timeout(Some(timeout))?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })
            .ok()?;
        if !answer.starts_with("HTTP/1.") || answer.get(8..13) != Some(" 200 ") {
            return None;
        }
        let body = answer.split_once("\r\n\r\n")?.1.trim();
        (!body.is_empty()).then(|| body.to_string())
    }

    /// Whether `ping` from here reaches `ip` (one packet, one second).
    pub fn ping(&self, ip: &str) -> bool {
        self.exec("ping", &["-c", "1", "-W", "1", "-q", ip]).is_ok()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "testbed: deleting netns {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("testbed: deleting netns {}: {e}", self.name),
        }
    }
}

/// Runs a command, returning stdout or an error with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes testbed namespaces left by runs whose process is gone.
fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
                continue;
            };
            if pid
                .parse::<u32>()
                .is_ok_and(|p| !PathBuf::from(format!("/proc/{p}")).exists())
            {
                // Best effort: a sweep that fails leaves the namespace to the
                // next run.
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
    });
}

/// Runs `f` on a thread of its own inside `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &File,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let netns = netns.try_clone()?;
    std::thread::spawn(move || -> anyhow::Result<T> {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the pod's netns")?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in the pod's netns panicked"))?
}

/// The network namespace of pod `name`: that of a process whose
/// environment says `HOSTNAME=<name>` (containerd sets it for every
/// container of the pod).
pub fn pod_netns(name: &str) -> anyhow::Result<File> {
    let want = format!("HOSTNAME={name}");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let dir: PathBuf = entry.path();
        let Ok(environ) = std::fs::read(dir.join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
            return File::open(dir.join("ns/net"))
                .with_context(|| format!("opening {}/ns/net", dir.display()));
        }
    }
    bail!("no process of pod {name} found")
}
