//! The cloud testbed: the IaaS simulator's node VMs, each with a real
//! `hostnic-agent` whose NICs come from the simulated cloud.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::sim::{Sim, SimConfig};
use crate::{Agent, CniCall, bin};

#[derive(Debug)]
pub struct CloudBed {
    pub dir: tempfile::TempDir,
    pub sim: Sim,
    /// The agent-wide `wiring` its agents get (see [`crate::test_wiring`]).
    pub wiring: Option<String>,
}

impl CloudBed {
    pub fn new(cfg: SimConfig) -> anyhow::Result<CloudBed> {
        let dir = tempfile::tempdir()?;
        let sim = Sim::start(cfg)?;
        std::fs::write(dir.path().join("qcsecret.yaml"), sim.credentials_yaml())?;
        Ok(CloudBed {
            dir,
            sim,
            wiring: crate::test_wiring(),
        })
    }

    fn node_dir(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("node{node}"))
    }

    pub fn socket(&self, node: usize) -> PathBuf {
        self.node_dir(node).join("agent.sock")
    }

    pub fn state_dir(&self, node: usize) -> PathBuf {
        self.node_dir(node).join("state")
    }

    /// The agent config for `node`; `cloud` adds keys to its `[cloud]`
    /// table (warm targets, timers).
    pub fn agent_config(&self, node: usize, cloud: &str) -> String {
        self.agent_config_in(node, &self.vxnet_ids(), cloud)
    }

    /// Every simulated vxnet's id, in order.
    pub fn vxnet_ids(&self) -> Vec<String> {
        self.sim
            .config()
            .vxnets
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The same, with the agent's `vxnets` (in order) chosen.
    pub fn agent_config_in(&self, node: usize, vxnets: &[String], cloud: &str) -> String {
        let vxnets: Vec<String> = vxnets.iter().map(|id| format!("{id:?}")).collect();
        format!(
            "{}socket = {:?}\nstate_dir = {:?}\niface = \"eth0\"\nvxnets = [{}]\npolicy = \"FailRotate\"\n\
             iaas_credentials = {:?}\n[log]\nlevel = \"debug\"\n[inventory]\nsource = \"cloud\"\n\
             [cloud]\ninstance_id = {:?}\ncluster = \"test\"\n{cloud}\n",
            crate::wiring_line(self.wiring.as_deref()),
            self.socket(node),
            self.state_dir(node),
            vxnets.join(", "),
            self.dir.path().join("qcsecret.yaml"),
            self.sim.nodes[node].instance,
        )
    }

    /// Waits until node's agent has brought back every NIC it answered a
    /// DEL for.
    pub fn settle(&self, node: usize) {
        crate::wait_for_releases(&self.state_dir(node)).expect("releases to finish");
    }

    pub fn start_agent(&self, node: usize, cloud: &str) -> anyhow::Result<Agent> {
        self.start_agent_within(node, cloud, Duration::from_secs(20))
    }

    /// The same, waiting up to `limit` for the agent to serve.
    pub fn start_agent_within(
        &self,
        node: usize,
        cloud: &str,
        limit: Duration,
    ) -> anyhow::Result<Agent> {
        self.spawn_agent(node, &self.agent_config(node, cloud), limit)
    }

    /// An agent on `node` whose pods take NICs in `vxnets` (in order),
    /// waiting up to `limit` for it to serve.
    pub fn start_agent_in(
        &self,
        node: usize,
        vxnets: &[String],
        cloud: &str,
        limit: Duration,
    ) -> anyhow::Result<Agent> {
        self.spawn_agent(node, &self.agent_config_in(node, vxnets, cloud), limit)
    }

    pub fn spawn_agent(&self, node: usize, config: &str, limit: Duration) -> anyhow::Result<Agent> {
        std::fs::create_dir_all(self.node_dir(node))?;
        Agent::spawn_within(
            &self.sim.nodes[node].ns,
            &self.node_dir(node),
            config,
            self.socket(node),
            limit,
        )
    }

    pub fn netconf(&self, node: usize, version: &str, routes: Value) -> Value {
        json!({
            "cniVersion": version,
            "name": "hostnic-cloud",
            "type": "hostnic",
            "socket": self.socket(node),
            "ipam": { "routes": routes },
        })
    }

    /// The real `hostnic`, run in `node`'s namespace as its runtime would.
    pub fn hostnic(&self, node: usize) -> CniCall {
        CniCall::new(bin("hostnic"), Some(self.sim.nodes[node].ns.path()))
    }

    /// A POST to the simulator's API (`/control/...` drives it: a NIC
    /// vanishing, ...): its JSON answer.
    pub fn post(&self, path: &str, body: Value) -> Value {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-XPOST",
                "-H",
                "content-type: application/json",
                "-d",
                &body.to_string(),
            ])
            .arg(format!("http://{}{path}", self.sim.local_addr))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&out.stderr)))
    }

    /// A Service as kube-proxy makes one on `node`: ICMP to `service_ip`
    /// DNATed to the node's own address.
    pub fn service_on_node(&self, node: usize, service_ip: &str) -> anyhow::Result<()> {
        let n = &self.sim.nodes[node];
        let node_ip = n.ip.to_string();
        n.ns.exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                service_ip,
                "-p",
                "icmp",
                "-j",
                "DNAT",
                "--to-destination",
                &node_ip,
            ],
        )?;
        Ok(())
    }

    /// `hostnic-agent status --json` of `node`'s agent.
    pub fn status(&self, node: usize) -> anyhow::Result<Value> {
        crate::agent_status(&self.socket(node))
    }

    /// `hostnic-agent policy decisions` of `node`'s agent: its latest hook
    /// calls, each with the facts the guest was given.
    pub fn decisions(&self, node: usize) -> anyhow::Result<Vec<Value>> {
        let out = std::process::Command::new(bin("hostnic-agent"))
            .args(["policy", "decisions", "--socket"])
            .arg(self.socket(node))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "hostnic-agent policy decisions: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| Ok(serde_json::from_str(l)?))
            .collect()
    }

    /// Waits (up to 90 s) until `node` has `n` free NICs in `vxnet`, so
    /// every ADD is warm.
    pub fn wait_warm(&self, node: usize, vxnet: &str, n: usize) -> anyhow::Result<()> {
        crate::wait_for(
            &format!("{n} free NICs in {vxnet} on node {node}"),
            Duration::from_secs(90),
            || {
                self.status(node).is_ok_and(|v| {
                    v["nics"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|x| x["state"] == "free" && x["vxnet"] == vxnet)
                        .count()
                        >= n
                })
            },
        )
    }

    /// NICs the cloud knows that are neither attached to a VM nor on their
    /// way to one: what a leak looks like.
    pub fn leaked_nics(&self) -> Vec<Value> {
        let inspect = self.sim.inspect();
        inspect["nics"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["state"] == "available")
            .cloned()
            .collect()
    }
}
