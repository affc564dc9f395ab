//! The same pods through a conflist as libcni runs one: the plugin, then
//! `portmap` (a host port per pod: iptables rules on the node) and
//! `tuning` (a sysctl in the pod), each ADD threading the previous result,
//! each DEL in reverse with the cached result. What a pod costs a runtime
//! whose conflist chains both, as many do.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use hostnic_testbed::plugin::Chain;
use hostnic_testbed::{CallEnv, CniCall, Ns};
use serde_json::{Value, json};

use crate::{Row, expect_ok};

/// ADD `pods` pods one after another through `first` + portmap + tuning,
/// then DEL them, timing each whole chain.
pub fn chained(
    name: &'static str,
    runner: &CniCall,
    first: (PathBuf, Value),
    plugins: &Path,
    pods: usize,
) -> anyhow::Result<Row> {
    let chain = |i: usize| Chain {
        runner,
        name: "bench-chain",
        version: "1.0.0",
        plugins: vec![
            first.clone(),
            (
                plugins.join("portmap"),
                json!({"type": "portmap", "capabilities": {"portMappings": true},
                       "runtimeConfig": {"portMappings": [
                           {"hostPort": 30000 + i, "containerPort": 80, "protocol": "tcp"}]}}),
            ),
            (
                plugins.join("tuning"),
                json!({"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}}),
            ),
        ],
    };
    let nss: Vec<Ns> = (0..pods)
        .map(|i| Ns::new(&format!("c{i}")))
        .collect::<Result<_, _>>()?;
    let paths: Vec<String> = nss.iter().map(|n| n.path().display().to_string()).collect();
    let ids: Vec<String> = (0..pods).map(|i| format!("chain{i}")).collect();
    let env = |i: usize| CallEnv {
        container_id: &ids[i],
        netns: &paths[i],
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p",
    };
    let mut add = Vec::with_capacity(pods);
    let mut results = Vec::with_capacity(pods);
    for i in 0..pods {
        let t = Instant::now();
        let r = expect_ok(chain(i).add(&env(i)))
            .with_context(|| format!("{name}: chained ADD of pod {i}"))?;
        add.push(t.elapsed());
        results.push(r);
    }
    let mut del = Vec::with_capacity(pods);
    for (i, cached) in results.iter().enumerate() {
        let t = Instant::now();
        expect_ok(chain(i).del(&env(i), Some(cached)))
            .with_context(|| format!("{name}: chained DEL of pod {i}"))?;
        del.push(t.elapsed());
    }
    drop(nss);
    Ok(Row { name, add, del })
}
