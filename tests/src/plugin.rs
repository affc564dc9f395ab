//! Executing CNI plugins the way a runtime does: env, stdin, stdout, and
//! for a chain the `prevResult` threading libcni performs.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// A plugin call's failure: the CNI error it printed, or how it died.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginError {
    pub code: Option<u64>,
    pub msg: String,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "code {:?}: {} (stdout {:?}, stderr {:?})",
            self.code, self.msg, self.stdout, self.stderr
        )
    }
}

impl std::error::Error for PluginError {}

/// One plugin executable, run in `netns` (the node) when set.
#[derive(Clone, Debug)]
pub struct CniCall {
    pub bin: PathBuf,
    pub host_netns: Option<PathBuf>,
    pub cni_path: Vec<PathBuf>,
}

/// The `CNI_*` of one call.
#[derive(Clone, Debug, Default)]
pub struct CallEnv<'a> {
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
}

impl CniCall {
    pub fn new(bin: PathBuf, host_netns: Option<PathBuf>) -> CniCall {
        let mut cni_path = vec![bin.parent().map(PathBuf::from).unwrap_or_default()];
        if let Some(d) = crate::reference_plugin_dir() {
            cni_path.push(d.to_path_buf());
        }
        CniCall {
            bin,
            host_netns,
            cni_path,
        }
    }

    pub fn with_bin(&self, bin: PathBuf) -> CniCall {
        CniCall {
            bin,
            ..self.clone()
        }
    }

    /// Runs `command` with `conf` on stdin. Success is the parsed stdout
    /// (Null when empty); failure is the error JSON the plugin printed.
    pub fn call(
        &self,
        command: &str,
        conf: &Value,
        env: &CallEnv,
    ) -> anyhow::Result<Result<Value, PluginError>> {
        let stdin = serde_json::to_vec(conf)?;
        self.call_raw(command, &stdin, env, &[])
    }

    /// ADD as kubelet does it: retried while the answer is "try again
    /// later" (code 11: a cold ADD whose NIC is still on its way), for up
    /// to a minute.
    pub fn add_retrying(&self, conf: &Value, env: &CallEnv) -> Result<Value, PluginError> {
        let start = std::time::Instant::now();
        loop {
            match self.call("ADD", conf, env).expect("exec the plugin") {
                Err(e) if e.code == Some(11) && start.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// STATUS-like calls run as another user (the agent's root-only check).
    pub fn call_as(
        &self,
        command: &str,
        conf: &Value,
        uid: u32,
    ) -> anyhow::Result<Result<Value, PluginError>> {
        let mut c = Command::new(&self.bin);
        std::os::unix::process::CommandExt::uid(&mut c, uid);
        let mut child = c
            .env_clear()
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut pipe = child.stdin.take().context("stdin")?;
        pipe.write_all(&serde_json::to_vec(conf)?)?;
        drop(pipe);
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        if out.status.success() {
            return Ok(Ok(v));
        }
        Ok(Err(PluginError {
            code: v["code"].as_u64(),
            msg: v["msg"].as_str().unwrap_or_default().to_string(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }))
    }

    /// The same with raw stdin bytes and extra environment, for bad-input
    /// tests.
    pub fn call_raw(
        &self,
        command: &str,
        stdin: &[u8],
        env: &CallEnv,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Result<Value, PluginError>> {
        let mut cmd = match &self.host_netns {
            Some(ns) => {
                let f =
                    std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
                let mut c = Command::new(&self.bin);
                // SAFETY: runs in the forked child before exec; setns is an
                // async-signal-safe system call on an inherited descriptor.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut c, move || {
                        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(std::io::Error::from)
                    });
                }
                c
            }
            None => Command::new(&self.bin),
        };
        let path = std::env::join_paths(&self.cni_path)?;
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", env.container_id)
            .env("CNI_NETNS", env.netns)
            .env("CNI_IFNAME", env.ifname)
            .env("CNI_ARGS", env.args)
            .env("CNI_PATH", path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in extra_env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let mut pipe = child.stdin.take().context("stdin")?;
        // A plugin may exit before reading everything (oversized input).
        let _ = pipe.write_all(stdin);
        drop(pipe);
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            if stdout.trim().is_empty() {
                return Ok(Ok(Value::Null));
            }
            let v = serde_json::from_str(&stdout).with_context(|| {
                format!(
                    "{} printed non-JSON on success: {stdout:?}",
                    self.bin.display()
                )
            })?;
            return Ok(Ok(v));
        }
        let parsed: Option<Value> = serde_json::from_str(&stdout).ok();
        Ok(Err(PluginError {
            code: parsed.as_ref().and_then(|v| v["code"].as_u64()),
            msg: parsed
                .as_ref()
                .and_then(|v| v["msg"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("exited {}", out.status)),
            stdout,
            stderr,
        }))
    }
}

/// A conflist run as libcni runs it: ADD in order threading `prevResult`,
/// DEL in reverse with the cached result, CHECK in order with it.
#[derive(Debug)]
pub struct Chain<'a> {
    pub runner: &'a CniCall,
    pub name: &'a str,
    pub version: &'a str,
    /// (plugin binary name, its entry in the conflist)
    pub plugins: Vec<(PathBuf, Value)>,
}

impl Chain<'_> {
    fn entry(&self, conf: &Value, prev: Option<&Value>) -> Value {
        let mut c = conf.clone();
        c["name"] = Value::String(self.name.to_string());
        c["cniVersion"] = Value::String(self.version.to_string());
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }

    pub fn add(&self, env: &CallEnv) -> anyhow::Result<Result<Value, PluginError>> {
        let mut prev: Option<Value> = None;
        for (bin, conf) in &self.plugins {
            match self.runner.with_bin(bin.clone()).call(
                "ADD",
                &self.entry(conf, prev.as_ref()),
                env,
            )? {
                Ok(v) => prev = Some(v),
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(prev.unwrap_or(Value::Null)))
    }

    pub fn check(
        &self,
        env: &CallEnv,
        cached: &Value,
    ) -> anyhow::Result<Result<Value, PluginError>> {
        for (bin, conf) in &self.plugins {
            if let Err(e) = self.runner.with_bin(bin.clone()).call(
                "CHECK",
                &self.entry(conf, Some(cached)),
                env,
            )? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(Value::Null))
    }

    pub fn del(
        &self,
        env: &CallEnv,
        cached: Option<&Value>,
    ) -> anyhow::Result<Result<Value, PluginError>> {
        for (bin, conf) in self.plugins.iter().rev() {
            if let Err(e) =
                self.runner
                    .with_bin(bin.clone())
                    .call("DEL", &self.entry(conf, cached), env)?
            {
                return Ok(Err(e));
            }
        }
        Ok(Ok(Value::Null))
    }
}

/// The first address of an ADD result, without its prefix length.
pub fn result_address(result: &Value) -> anyhow::Result<std::net::Ipv4Addr> {
    let cidr = result["ips"][0]["address"]
        .as_str()
        .context("an ADD result without an address")?;
    Ok(cidr.split('/').next().unwrap_or_default().parse()?)
}
