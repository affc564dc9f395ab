//! `hostnic-agent install-cni`: what the DaemonSet's init container runs to
//! put the CNI executable and the network config on the node, without a
//! shell in the image.
//!
//! Each file is written under a temporary name in its target directory,
//! synced, and renamed into place: a rename is atomic, so the runtime sees
//! the old file or the new one, never a partly written one, and a running
//! `hostnic` is never overwritten in place. The temporary names start with
//! a dot and end neither in .conf, .conflist nor .json, so runtimes ignore
//! them. Only hostnic's own files are touched: the two it installs, and
//! temporary files a killed earlier run of this command left behind.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

#[derive(Debug, clap::Args)]
pub struct InstallCni {
    /// The CNI executable to install.
    #[arg(long, default_value = "/usr/local/bin/hostnic")]
    pub executable: PathBuf,
    /// The network config (a conflist whose first plugin is hostnic).
    #[arg(long, default_value = "/etc/hostnic/10-hostnic.conflist")]
    pub conflist: PathBuf,
    /// The node's CNI plugin directory, as mounted in the container.
    #[arg(long, default_value = "/host/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The node's CNI config directory, as mounted in the container.
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// Install the executable only (the conflist is still checked): the
    /// agent installs the conflist itself once it can serve (`[cni]
    /// conf_dir`), so the node's network is not ready before.
    #[arg(long)]
    pub without_conflist: bool,
}

pub fn run(args: &InstallCni) -> anyhow::Result<()> {
    // Validate, then act: a broken conflist never reaches the node, and
    // fails the init container rather than the agent later.
    read_conflist(&args.conflist)?;
    let exe = fs::read(&args.executable)
        .with_context(|| format!("reading {}", args.executable.display()))?;
    remove_stale_temporaries(&args.bin_dir, "hostnic")?;
    install(&args.bin_dir, "hostnic", &exe, 0o755)?;
    println!("installed {}", args.bin_dir.join("hostnic").display());
    if !args.without_conflist {
        let path = install_conflist(&args.conflist, &args.conf_dir)?;
        println!("installed {}", path.display());
    }
    Ok(())
}

/// Installs the network config `conflist` (checked first) into the
/// runtime's config directory `conf_dir`, atomically; returns its path
/// there.
pub fn install_conflist(conflist: &Path, conf_dir: &Path) -> anyhow::Result<PathBuf> {
    let conf = read_conflist(conflist)?;
    let name = file_name(conflist)?;
    remove_stale_temporaries(conf_dir, name)?;
    install(conf_dir, name, &conf, 0o644)?;
    Ok(conf_dir.join(name))
}

/// The conflist's bytes, if it is one hostnic serves.
pub fn read_conflist(conflist: &Path) -> anyhow::Result<Vec<u8>> {
    let conf = fs::read(conflist).with_context(|| format!("reading {}", conflist.display()))?;
    check_conflist(&conf).with_context(|| format!("{}", conflist.display()))?;
    Ok(conf)
}

fn file_name(p: &Path) -> anyhow::Result<&str> {
    p.file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", p.display()))
}

/// The conflist must be JSON with a `plugins` list whose first entry is
/// hostnic: anything else would replace the node's network with something
/// this agent does not serve.
fn check_conflist(bytes: &[u8]) -> anyhow::Result<()> {
    let v: serde_json::Value = serde_json::from_slice(bytes).context("not JSON")?;
    let first = v["plugins"]
        .as_array()
        .and_then(|p| p.first())
        .context("no \"plugins\" list")?;
    if first["type"] != "hostnic" {
        bail!("its first plugin is {}, not hostnic", first["type"]);
    }
    if v["name"].as_str().is_none_or(str::is_empty) {
        bail!("it has no network \"name\"");
    }
    Ok(())
}

fn temporary(name: &str) -> String {
    format!(".{name}.hostnic-tmp-{}", std::process::id())
}

/// Writes `dir/name` atomically with mode `mode`.
fn install(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = dir.join(temporary(name));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("installing {}", dir.join(name).display()))
    })
}

/// Temporary files of `name` that a killed run left in `dir`.
fn remove_stale_temporaries(dir: &Path, name: &str) -> anyhow::Result<()> {
    let prefix = format!(".{name}.hostnic-tmp-");
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_atomically_and_touches_only_its_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&conf).unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("hostnic"), b"\x7fELF new").unwrap();
        let conflist = src.join("10-hostnic.conflist");
        fs::write(
            &conflist,
            br#"{"cniVersion":"1.0.0","name":"hostnic","plugins":[{"type":"hostnic"}]}"#,
        )
        .unwrap();
        // Another CNI's files, and a leftover of a killed run.
        fs::write(bin.join("bridge"), b"other").unwrap();
        fs::write(conf.join("05-other.conflist"), b"{}").unwrap();
        fs::write(bin.join(".hostnic.hostnic-tmp-99"), b"half").unwrap();
        fs::write(bin.join("hostnic"), b"old").unwrap();
        let args = InstallCni {
            executable: src.join("hostnic"),
            conflist: conflist.clone(),
            bin_dir: bin.clone(),
            conf_dir: conf.clone(),
            without_conflist: false,
        };
        run(&args).unwrap();
        assert_eq!(fs::read(bin.join("hostnic")).unwrap(), b"\x7fELF new");
        let mode = fs::metadata(bin.join("hostnic"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(conf.join("10-hostnic.conflist").exists());
        let mut names: Vec<String> = fs::read_dir(&bin)
            .unwrap()
            .chain(fs::read_dir(&conf).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "05-other.conflist",
                "10-hostnic.conflist",
                "bridge",
                "hostnic"
            ]
        );

        // A conflist that is not hostnic's is refused before anything moves.
        fs::write(&conflist, br#"{"name":"x","plugins":[{"type":"bridge"}]}"#).unwrap();
        fs::write(src.join("hostnic"), b"\x7fELF newer").unwrap();
        let e = run(&args).unwrap_err();
        assert!(format!("{e:#}").contains("not hostnic"), "{e:#}");
        assert_eq!(fs::read(bin.join("hostnic")).unwrap(), b"\x7fELF new");
    }
}
