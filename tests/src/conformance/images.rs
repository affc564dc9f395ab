//! The images the upstream e2e suite runs, made on this machine (no
//! registry is reachable) under the exact references its image manifest
//! (`test/utils/image/manifest.go`) asks for, so the kubelet finds each
//! one already there and never pulls (`IfNotPresent`, the default for a
//! tagged image).
//!
//! The suite execs shell commands in its test pods: `/bin/sh -c` with
//! `curl`, `wget -T`, `nc -u`, `dig`, `getent`, `ip`, and the usual text
//! tools. So the test
//! userland is Debian's dash as `/bin/sh` (busybox's shell runs its own
//! `nc` applet, which has no `-u`, even when another `nc` comes first on
//! PATH), the real curl, wget, netcat-openbsd's nc, dig and ip each with the
//! libraries `ldd` lists, and busybox applets for everything else.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use serde_json::json;

use crate::cluster::docker_archive;
use crate::netns::run;

/// The references, as manifest.go names them for Kubernetes v1.34. The
/// run checks each against `e2e.test --list-images`, so a version bump
/// that changes one fails loudly instead of pulling.
pub const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.56";
pub const JESSIE_DNSUTILS: &str = "registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7";
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1";
pub const NGINX: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-4";
pub const HTTPD: &str = "registry.k8s.io/e2e-test-images/httpd:2.4.38-4";
/// The cluster DNS, the version kubeadm v1.34 deploys (k8s/coredns).
pub const COREDNS: &str = "registry.k8s.io/coredns/coredns:v1.12.1";

/// Debian's tools the suite's commands call by name, from the packages
/// `scripts/setup` installs: (path on this machine, path in the image).
const TOOLS: [(&str, &str); 8] = [
    // The DNS specs' /etc/hosts checks (`getent hosts NAME`); glibc's own
    // files and dns lookups are in libc.so.6 since 2.34.
    ("/usr/bin/getent", "/usr/bin/getent"),
    ("/usr/bin/dash", "/usr/bin/dash"),
    // GNU wget: Debian's busybox 1.35 wget segfaults whenever `-T` (a
    // timeout) is given, and the suite's Service checks all pass `-T 1`.
    ("/usr/bin/wget", "/usr/bin/wget"),
    ("/usr/bin/curl", "/usr/bin/curl"),
    ("/usr/bin/nc.openbsd", "/usr/bin/nc"),
    ("/usr/bin/dig", "/usr/bin/dig"),
    ("/usr/bin/nslookup", "/usr/bin/nslookup"),
    ("/usr/bin/ip", "/usr/sbin/ip"),
];

/// Every image as a docker archive under `dir`, from `e2e_bin` (what
/// `scripts/e2e-build` made).
pub fn archives(dir: &Path, e2e_bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let userland = dir.join("userland");
    make_userland(&userland)?;
    // agnhost: the binary at the root, its symlink, the upload directory,
    // porter's certificate, the user and group the image defines
    // (test/images/agnhost/Dockerfile).
    std::fs::copy(e2e_bin.join("agnhost"), userland.join("agnhost"))?;
    std::os::unix::fs::symlink("agnhost", userland.join("agnhost-2"))?;
    std::fs::create_dir_all(userland.join("uploads"))?;
    // porter's TLS certificate, where its working directory (/) has it,
    // and a CoreDNS at /coredns: the DNS configMap specs run their own DNS
    // server pod as `/coredns -conf ...` in the agnhost image (upstream's
    // has CoreDNS 1.6.2 there; this one is the cluster's 1.12.1).
    for f in ["localhost.crt", "localhost.key", "coredns"] {
        std::fs::copy(e2e_bin.join(f), userland.join(f))?;
    }
    let env = json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]);
    let mut out = vec![
        docker_archive(
            dir,
            AGNHOST,
            &userland,
            json!({"Env": env, "Entrypoint": ["/agnhost"], "Cmd": ["pause"]}),
        )?,
        // jessie-dnsutils is Debian with dnsutils: the same userland has
        // dig and a shell.
        docker_archive(
            dir,
            JESSIE_DNSUTILS,
            &userland,
            json!({"Env": env, "Cmd": ["/bin/sh"]}),
        )?,
        docker_archive(
            dir,
            BUSYBOX,
            &userland,
            json!({"Env": env, "Cmd": ["/bin/sh"]}),
        )?,
        // nginx and httpd serve on port 80 where the suite uses them
        // (EndpointSlice tests, kubectl's guestbook): agnhost's netexec
        // stands in, as the suite's own agnhost-based tests do.
        docker_archive(
            dir,
            NGINX,
            &userland,
            json!({"Env": env, "Entrypoint": ["/agnhost", "netexec", "--http-port=80"]}),
        )?,
        docker_archive(
            dir,
            HTTPD,
            &userland,
            json!({"Env": env, "Entrypoint": ["/agnhost", "netexec", "--http-port=80"]}),
        )?,
    ];
    let dns_root = dir.join("coredns-root");
    std::fs::create_dir_all(&dns_root)?;
    std::fs::copy(e2e_bin.join("coredns"), dns_root.join("coredns"))?;
    out.push(docker_archive(
        dir,
        COREDNS,
        &dns_root,
        json!({"Entrypoint": ["/coredns"]}),
    )?);
    Ok(out)
}

/// Checks that the suite asks for each image under the reference made
/// here: `e2e.test --list-images` prints every one it may use.
pub fn check_references(e2e_test: &Path) -> anyhow::Result<()> {
    let listed = run(Command::new(e2e_test).arg("--list-images"))?;
    let listed: BTreeSet<&str> = listed.lines().map(str::trim).collect();
    for want in [AGNHOST, JESSIE_DNSUTILS, BUSYBOX, NGINX, HTTPD] {
        ensure!(
            listed.contains(want),
            "e2e.test --list-images does not name {want}: the suite's image manifest changed; \
             update tests/src/conformance/images.rs"
        );
    }
    Ok(())
}

/// A root file system: busybox applets in /bin (but none where a real tool
/// stands), the Debian tools with their libraries, /bin/sh as dash, a /tmp,
/// and passwd/group with the image's users.
fn make_userland(root: &Path) -> anyhow::Result<()> {
    if root.exists() {
        std::fs::remove_dir_all(root)?;
    }
    for d in ["bin", "usr/bin", "usr/sbin", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    let mut libs = BTreeSet::new();
    for (host, image) in TOOLS {
        copy_file(Path::new(host), &root.join(image.trim_start_matches('/')))
            .with_context(|| format!("{host} (scripts/setup installs it)"))?;
        libs.extend(libraries(Path::new(host))?);
    }
    for lib in libs {
        copy_file(&lib, &root.join(lib.strip_prefix("/")?))?;
    }
    std::os::unix::fs::symlink("/usr/bin/dash", root.join("bin/sh"))?;
    std::fs::copy(crate::images::BUSYBOX, root.join("bin/busybox"))
        .context("Debian's busybox-static (scripts/setup installs it)")?;
    let real: BTreeSet<&str> = TOOLS
        .iter()
        .filter_map(|(_, image)| image.rsplit('/').next())
        .chain(["sh"])
        .collect();
    for applet in run(Command::new(crate::images::BUSYBOX).arg("--list"))?.lines() {
        let applet = applet.trim();
        if !applet.is_empty() && !real.contains(applet) && applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    // One try, as busybox's wget (the one the upstream image has) makes:
    // GNU wget retries a timed-out request 20 times by default.
    std::fs::write(root.join("etc/wgetrc"), "tries = 1\n")?;
    std::fs::write(root.join("etc/nsswitch.conf"), "hosts: files dns\n")?;
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser-defined-in-image:x:1000:1000::/home:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nuser-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n\
         nogroup:x:65534:\n",
    )?;
    Ok(())
}

/// The shared libraries `ldd` says `binary` loads, the dynamic loader
/// included.
fn libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = run(Command::new("ldd").arg(binary))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            // "libx.so.1 => /lib/.../libx.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copies `from` (its content, links followed) to `to`, making its parents.
fn copy_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}
