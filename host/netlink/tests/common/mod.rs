//! What the real-kernel tests share: the root check and throwaway named
//! namespaces, removed when dropped (also while unwinding).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use hostnic_netlink::{Netlink, Netns};

/// True when the test may run. Without root it prints a loud SKIPPED line;
/// in CI (CI set) a missing root is a failure, never a silent pass. The
/// same contract as `hostnic_testbed::require_root`, which this crate
/// cannot depend on (the testbed depends on the whole workspace): the
/// skip goes to `HOSTNIC_SKIP_LOG` too, where scripts/test reports it.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root and CI runs as root: refusing to skip");
    }
    eprintln!("\n*** SKIPPED {test}: needs root (network namespaces) ***\n");
    if let Some(path) = std::env::var_os("HOSTNIC_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            // One write per line: appends from parallel tests stay whole.
            // A skip that cannot be logged is still printed above.
            let _ = f.write_all(format!("{test}: needs root\n").as_bytes());
        }
    }
    false
}

fn is_root() -> bool {
    // The effective uid: the second field of `Uid:` in /proc/self/status.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// `ip ARGS`, which must succeed; its stdout.
pub fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// `PROGRAM ARGS`, which must succeed; its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Named namespaces, deleted when dropped (also while unwinding).
pub struct Namespaces(Vec<String>);

impl Namespaces {
    pub fn create(names: &[String]) -> Namespaces {
        let mut nss = Namespaces(Vec::new());
        for name in names {
            // A leftover from an earlier run that was killed; usually
            // there is none, and then the error is expected.
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", name]);
            nss.0.push(name.clone());
        }
        nss
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            // Best-effort in a destructor; a failure shows on stderr.
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Two throwaway namespaces, `<prefix>-<pid>-a` and `-b`, open and each
/// with a netlink connection; removed when dropped.
// Each test binary compiles this module and reads its own part of it.
#[allow(dead_code)]
pub struct Pair {
    pub name_a: String,
    pub name_b: String,
    pub ns_a: Netns,
    pub ns_b: Netns,
    pub a: Netlink,
    pub b: Netlink,
    // Last: the namespaces go after everything that uses them.
    _guard: Namespaces,
}

impl Pair {
    pub async fn create(prefix: &str) -> Pair {
        let pid = std::process::id();
        let (name_a, name_b) = (format!("{prefix}-{pid}-a"), format!("{prefix}-{pid}-b"));
        let guard = Namespaces::create(&[name_a.clone(), name_b.clone()]);
        let open = |name: &str| Netns::open(&PathBuf::from(format!("/run/netns/{name}"))).unwrap();
        let (ns_a, ns_b) = (open(&name_a), open(&name_b));
        // Nothing here may act on the test's own namespace.
        let own = Netns::current().unwrap().id().unwrap();
        assert_ne!(ns_a.id().unwrap(), own);
        assert_ne!(ns_b.id().unwrap(), own);
        let a = ns_a.connect().await.unwrap();
        let b = ns_b.connect().await.unwrap();
        Pair {
            name_a,
            name_b,
            ns_a,
            ns_b,
            a,
            b,
            _guard: guard,
        }
    }
}
