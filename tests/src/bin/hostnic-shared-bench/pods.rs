//! A pod as each mode makes it: the plugin exec'd on a node with its
//! config, and a pod that stays until it is deleted through it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::{CallEnv, CniCall, Ns};
use serde_json::{Value, json};

use crate::PTP_SUBNETS;

/// How a pod is added and deleted: the plugin exec'd on a node, its
/// config.
pub struct Mode {
    pub name: String,
    pub cni: CniCall,
    pub conf: Value,
}

impl Mode {
    pub fn hostnic(bed: &CloudBed, node: usize, vxnet: &str) -> Mode {
        let mut conf = bed.netconf(node, "1.0.0", json!([]));
        conf["vxnets"] = json!([vxnet]);
        Mode {
            name: format!("hostnic {vxnet} node {node}"),
            cni: bed.hostnic(node),
            conf,
        }
    }

    /// `ptp` + `host-local` exec'd in the same node namespace as hostnic,
    /// addressing its pods from the node's own subnet.
    pub fn ptp(bed: &CloudBed, node: usize, plugins: &std::path::Path) -> Mode {
        let conf = json!({
            "cniVersion": "1.0.0", "name": "ptp-bench", "type": "ptp", "mtu": 1500,
            "ipam": {"type": "host-local", "subnet": PTP_SUBNETS[node],
                     "dataDir": bed.dir.path().join(format!("host-local{node}")),
                     "routes": [{"dst": "0.0.0.0/0"}]}
        });
        Mode {
            name: format!("ptp node {node}"),
            cni: bed.hostnic(node).with_bin(plugins.join("ptp")),
            conf,
        }
    }
}

/// A pod that stays: its namespace, container id and ADD result; deleted
/// through its plugin by [`Pod::del`].
pub struct Pod<'a> {
    mode: &'a Mode,
    pub ns: Ns,
    cid: String,
    pub result: Value,
    /// How long its ADD took (the exec, and its retries if any).
    pub took: Duration,
}

impl<'a> Pod<'a> {
    /// ADD, retried while the answer is "try again later" (the first
    /// shared ADD on a node waits for its NIC in the vxnet).
    pub fn add(mode: &'a Mode, cid: &str) -> anyhow::Result<Pod<'a>> {
        let ns = Ns::new("sbp")?;
        let path = ns.path().display().to_string();
        let t = Instant::now();
        let result = mode
            .cni
            .add_retrying(&mode.conf, &env(cid, &path))
            .map_err(|e| anyhow::anyhow!("{}: ADD of {cid}: {e}", mode.name))?;
        Ok(Pod {
            mode,
            ns,
            cid: cid.to_string(),
            result,
            took: t.elapsed(),
        })
    }

    pub fn ip(&self) -> anyhow::Result<String> {
        address_of(&self.result)
    }

    /// DEL, then the pod's namespace goes; returns how long the DEL took.
    pub fn del(self) -> anyhow::Result<Duration> {
        let mut c = self.mode.conf.clone();
        c["prevResult"] = self.result.clone();
        let path = self.ns.path().display().to_string();
        let t = Instant::now();
        expect_ok(self.mode.cni.call("DEL", &c, &env(&self.cid, &path)))
            .with_context(|| format!("{}: DEL of {}", self.mode.name, self.cid))?;
        Ok(t.elapsed())
    }
}

/// The first address of an ADD result, without its prefix length.
pub fn address_of(result: &Value) -> anyhow::Result<String> {
    let a = result["ips"][0]["address"]
        .as_str()
        .with_context(|| format!("no address in {result}"))?;
    Ok(a.split('/').next().unwrap_or(a).to_string())
}

pub fn env<'a>(cid: &'a str, netns: &'a str) -> CallEnv<'a> {
    CallEnv {
        container_id: cid,
        netns,
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p",
    }
}

pub fn expect_ok(
    r: anyhow::Result<Result<Value, hostnic_testbed::PluginError>>,
) -> anyhow::Result<Value> {
    match r? {
        Ok(v) => Ok(v),
        Err(e) => bail!("{e}"),
    }
}
