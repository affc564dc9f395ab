//! Images and runtime state for the tests that drive real container runtimes
//! (podman, containerd): a busybox image built without a registry, a podman
//! whose state lives under the test's temp dir, and the clean-up of what a
//! runtime leaves behind when a test fails half-way (mounts, cgroups).

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

use crate::Ns;
use crate::netns::run;

/// Debian's busybox-static: one static binary is a whole userland.
pub const BUSYBOX: &str = "/bin/busybox";

/// Writes `dir/rootfs` (a static busybox, the applet links the tests call
/// by name, a /tmp) and returns a tar of it, the input `podman import` wants.
pub fn busybox_tar(dir: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)?;
    }
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(BUSYBOX, bin.join("busybox"))
        .with_context(|| format!("copying {BUSYBOX}: is busybox-static installed?"))?;
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    // Runtimes create the mount points they need, but not a writable /tmp.
    let tmp = rootfs.join("tmp");
    std::fs::create_dir(&tmp)?;
    std::fs::set_permissions(&tmp, Permissions::from_mode(0o1777))?;
    let tar = dir.join("busybox.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg("."))?;
    Ok(tar)
}

/// podman, run inside the node namespace with its state under `dir`:
/// storage, run root, libpod's tmp dir, events, the CNI network configs.
/// The machine's own podman state is neither read nor written; what stays
/// outside is transient (runc's /run/runc/<id>, libcni's cache entry in
/// /var/lib/cni/results, the pod netns in /run/netns), and podman removes
/// each with its container. Containers still there on drop are removed
/// (their CNI DEL goes to the agent, so drop this before the agent), then
/// leftover mounts under `dir` and the containers' cgroup parent.
#[derive(Debug)]
pub struct Podman<'a> {
    node: &'a Ns,
    dir: PathBuf,
    cgroup_parent: String,
}

impl<'a> Podman<'a> {
    /// Its CNI plugins are the `hostnic` binary and the reference plugins.
    pub fn new(node: &'a Ns, dir: PathBuf) -> anyhow::Result<Podman<'a>> {
        for sub in ["net", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let hostnic = crate::bin("hostnic");
        let mut plugin_dirs = vec![hostnic.parent().context("hostnic's dir")?.to_path_buf()];
        plugin_dirs.extend(crate::reference_plugin_dir().map(Path::to_path_buf));
        // crun fails on this machine's hybrid cgroup layout and on raising
        // rlimits: runc with fixed ulimits (reference/cni.md). No systemd
        // here, hence cgroupfs and a file for events.
        let conf = format!(
            "[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [engine]\n\
             runtime = \"runc\"\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = {:?}\n\
             tmp_dir = {:?}\n\
             image_copy_tmp_dir = {:?}\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = {:?}\n\
             network_config_dir = {:?}\n",
            dir.join("events.log"),
            dir.join("tmp"),
            dir.join("tmp"),
            plugin_dirs,
            dir.join("net"),
        );
        std::fs::write(dir.join("containers.conf"), conf)?;
        // vfs: plain directories, no overlay mounts to leak if a run dies.
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {:?}\nrunroot = {:?}\n",
            dir.join("root"),
            dir.join("run"),
        );
        std::fs::write(dir.join("storage.conf"), storage)?;
        Ok(Podman {
            node,
            dir,
            cgroup_parent: unique_cgroup("podman"),
        })
    }

    /// Pass as `--cgroup-parent` to `podman run`: the container's and
    /// conmon's cgroups then go under a parent that drop removes, instead
    /// of podman's shared `libpod_parent`, which nothing ever removes.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// Where podman reads conflists: a file here is `--network <its name>`.
    pub fn network_dir(&self) -> PathBuf {
        self.dir.join("net")
    }

    /// `podman <args>` in the node namespace; returns stdout.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.node.command("podman")?;
        self.hermetic(&mut cmd);
        run(cmd.args(args))
    }

    /// Imports the busybox rootfs as `image`, with `--change` instructions
    /// (e.g. `ENTRYPOINT [...]`).
    pub fn import_busybox(&self, image: &str, changes: &[&str]) -> anyhow::Result<()> {
        let tar = busybox_tar(&self.dir)?;
        let tar = tar.to_str().context("temp dir path is not UTF-8")?;
        let mut args = vec!["import"];
        for change in changes {
            args.extend(["--change", change]);
        }
        args.extend([tar, image]);
        self.run_copying(&args).map(drop)
    }

    /// Writes `image` as an OCI archive, the format `ctr images import` takes.
    pub fn save_oci_archive(&self, image: &str, out: &Path) -> anyhow::Result<()> {
        let out = out.to_str().context("archive path is not UTF-8")?;
        self.run_copying(&["save", "--format", "oci-archive", "-o", out, image])
            .map(drop)
    }

    /// A podman command that copies an image. containers/image then opens a
    /// blob-info cache at /var/lib/containers/cache, which podman 4.3 has no
    /// setting for; so it runs in a private mount namespace with a tmpfs over
    /// /var/lib, where the cache is created and dies with the command. Only
    /// for commands that start no container: a container's mounts must stay
    /// visible to the next podman call.
    fn run_copying(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.node.command("unshare")?;
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount -t tmpfs hostnic-test /var/lib && exec "$@""#,
            "sh",
            "podman",
        ]);
        self.hermetic(&mut cmd);
        run(cmd.args(args))
    }

    /// The environment and global flags that keep podman inside `dir`.
    fn hermetic(&self, cmd: &mut Command) {
        let d = &self.dir;
        cmd.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"));
        // runc's own state stays in /run/runc (removed with each
        // container): with `--runtime-flag root=…` podman 4.3 leaves every
        // container's cgroups behind.
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        // Best effort: a container left by a failed test must not keep
        // mounts under the temp dir or processes in the node namespace.
        if let Err(e) = self.run(&["rm", "--all", "--force", "--time", "0"]) {
            eprintln!("testbed: podman rm --all: {e:#}");
        }
        for e in unmount_under(&self.dir)
            .into_iter()
            .chain(remove_cgroup(&self.cgroup_parent))
        {
            eprintln!("testbed: {e}");
        }
    }
}

/// A cgroup path no other test or run uses, `/hostnic-test-<pid>-<n>-<role>`,
/// for a runtime to put its containers under.
pub fn unique_cgroup(role: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("/hostnic-test-{}-{n}-{role}", std::process::id())
}

/// Removes cgroup `path` and every cgroup below it, in every hierarchy
/// (cgroup v1 controllers, the named and unified ones, or a pure v2 root).
/// rmdir only removes an empty cgroup, so one still holding processes stays
/// and is reported. A runtime's monitor (conmon) can take a moment to exit
/// after its container was removed, hence a few tries. Returns what failed.
pub fn remove_cgroup(path: &str) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let errors = remove_cgroup_once(path);
        if errors.is_empty() || start.elapsed() > std::time::Duration::from_secs(5) {
            return errors;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn remove_cgroup_once(path: &str) -> Vec<String> {
    let root = Path::new("/sys/fs/cgroup");
    let rel = path.trim_start_matches('/');
    // An empty or foreign path would sweep every empty cgroup of the machine.
    if !rel.starts_with("hostnic-test-") || rel.contains("..") {
        return vec![format!(
            "refusing to remove cgroup {path:?}: not a testbed cgroup"
        )];
    }
    let mut hierarchies = vec![root.to_path_buf()];
    hierarchies.extend(
        std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    let mut dirs = Vec::new();
    for h in hierarchies {
        collect_dirs(&h.join(rel), &mut dirs);
    }
    // Children before parents.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.into_iter()
        .filter_map(|d| {
            std::fs::remove_dir(&d)
                .err()
                .map(|e| format!("removing cgroup {}: {e}", d.display()))
        })
        .collect()
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    out.push(dir.to_path_buf());
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}

/// Lazily unmounts every mount at or below `dir`, deepest first, so that a
/// runtime that died holding mounts there (shm, rootfs, netns bind mounts)
/// does not stop the temp dir from being removed. Returns what failed.
pub fn unmount_under(dir: &Path) -> Vec<String> {
    let info = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(s) => s,
        Err(e) => return vec![format!("reading /proc/self/mountinfo: {e}")],
    };
    // Field 5 is the mount point, with space, tab, newline and backslash
    // written as octal escapes.
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    // Deepest first. A path listed twice has two stacked mounts: each
    // unmount takes the top one.
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points
        .into_iter()
        .filter_map(|p| {
            run(Command::new("umount").arg("--lazy").arg(&p))
                .err()
                .map(|e| format!("unmounting {}: {e:#}", p.display()))
        })
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The agent's allocation records (`<state_dir>/allocations/*.json`),
/// parsed: what it remembers about the pods a runtime asked it for.
pub fn allocation_records(tb: &crate::Testbed) -> anyhow::Result<Vec<serde_json::Value>> {
    let dir = tb.state_dir().join("allocations");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            out.push(
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?,
            );
        }
    }
    Ok(out)
}

/// Prints the named log files if the test panics while this is alive: a
/// runtime's failure is usually explained in the agent's or its own log.
#[derive(Debug)]
pub struct LogsOnPanic(pub Vec<PathBuf>);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for path in &self.0 {
            let text =
                std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read it: {e})"));
            eprintln!("----- {} -----\n{text}", path.display());
        }
    }
}
