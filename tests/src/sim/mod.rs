//! The IaaS simulator: the QingCloud API subset over HTTP, backed by a
//! cloud model ([`cloud`]) and real networking ([`sdn`]), with fault
//! injection ([`faults`]) and an inspection endpoint, so tests can assert
//! "nothing leaked".
//!
//! Endpoints (the same app on two listeners: 127.0.0.1 in the caller's
//! namespace for tests, and the management gateway inside the SDN namespace
//! for agents in node namespaces):
//!
//! - `GET /iaas/?…` — the API, signed requests only: NICs, vxnets,
//!   instances, jobs and tags ([`api`]), and load balancers with their
//!   listeners and backends ([`lb_api`], [`balancer`]), each a namespace on
//!   its vxnet proxying to its healthy backends ([`lb_proxy`]).
//! - `GET /inspect` — every NIC, job, instance and load balancer, and calls
//!   per action.
//! - `POST /control/faults` — replace the fault settings ([`Faults`] as JSON).
//! - `POST /control/vanish` `{"nic": MAC}` — the NIC's link disappears from
//!   its node; the cloud still says it is attached.
//! - `POST /control/move-default-route` `{"instance": ID}` — a secondary NIC
//!   on the node gets configured and takes the node's default route, as a
//!   rebooted multi-NIC VM's DHCP client does.

pub mod api;
pub mod balancer;
pub mod cloud;
pub mod faults;
pub mod lb_api;
pub mod lb_proxy;
pub mod sdn;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use axum::extract::{Json, State};
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use ipnet::Ipv4Net;
use serde_json::{Value, json};

pub use cloud::{Cloud, Limits};
pub use faults::Faults;

use crate::netns::Ns;
use faults::Injector;
use sdn::Sdn;

pub const MGMT_VXNET: &str = "vxnet-mgmt";
/// The simulated internet ([`balancer::INTERNET`]): EIPs, public load
/// balancers, and VMs standing for clients on the internet.
pub const INTERNET_CIDR: &str = "198.51.100.0/24";

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub zone: String,
    pub access_key_id: String,
    pub secret: String,
    /// The vxnets pods get NICs from.
    pub vxnets: Vec<(String, Ipv4Net)>,
    /// The nodes' primary network.
    pub mgmt: Ipv4Net,
    pub nodes: usize,
    pub limits: Limits,
    pub faults: Faults,
    pub seed: u64,
    /// How many EIPs the account has ([`Sim::eips`]).
    pub eips: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            zone: "sim1a".into(),
            access_key_id: "SIMACCESSKEYID".into(),
            secret: "sim-secret-not-for-production".into(),
            vxnets: vec![("vxnet-pods".into(), "10.100.0.0/24".parse().expect("cidr"))],
            mgmt: "192.168.100.0/24".parse().expect("cidr"),
            nodes: 2,
            limits: Limits::default(),
            faults: Faults::default(),
            seed: 42,
            eips: 4,
        }
    }
}

impl SimConfig {
    /// The default zone with these vxnets (id, CIDR), in this order.
    pub fn with_vxnets(vxnets: &[(&str, &str)]) -> anyhow::Result<SimConfig> {
        Ok(SimConfig {
            vxnets: vxnets
                .iter()
                .map(|(id, cidr)| Ok((id.to_string(), cidr.parse()?)))
                .collect::<anyhow::Result<_>>()?,
            ..SimConfig::default()
        })
    }
}

/// A simulated VM: its namespace, instance id and primary address.
#[derive(Debug)]
pub struct Node {
    pub instance: String,
    pub ns: Ns,
    pub ip: Ipv4Addr,
}

struct Inner {
    cfg: SimConfig,
    secret: hostnic_iaas::SecretKey,
    cloud: Mutex<Cloud>,
    injector: Mutex<Injector>,
    sdn: Sdn,
    lbs: lb_proxy::Dataplanes,
    calls: Mutex<BTreeMap<String, u64>>,
    started: (SystemTime, Instant),
}

impl Inner {
    fn cloud(&self) -> MutexGuard<'_, Cloud> {
        self.cloud.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn injector(&self) -> MutexGuard<'_, Injector> {
        self.injector.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn now(&self) -> u64 {
        self.started.1.elapsed().as_secs()
    }
}

/// A running simulator. Dropping it stops the server and removes every
/// namespace it made (the SDN, the nodes, and with them every NIC's veth).
pub struct Sim {
    /// Reachable from the caller's namespace.
    pub local_addr: SocketAddr,
    /// Reachable from the node namespaces.
    pub node_addr: SocketAddr,
    pub nodes: Vec<Node>,
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("local_addr", &self.local_addr)
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl Sim {
    pub fn start(cfg: SimConfig) -> anyhow::Result<Sim> {
        let mut sdn = Sdn::new()?;
        let mut cloud = Cloud::default();
        cloud.limits = cfg.limits.clone();
        let mgmt = cloud.add_vxnet(MGMT_VXNET, cfg.mgmt);
        sdn.add_vxnet(MGMT_VXNET, cfg.mgmt, mgmt.gateway)?;
        for (id, cidr) in &cfg.vxnets {
            let v = cloud.add_vxnet(id, *cidr);
            sdn.add_vxnet(id, *cidr, v.gateway)?;
        }
        let internet: Ipv4Net = INTERNET_CIDR.parse().expect("cidr");
        let inet = cloud.add_vxnet(balancer::INTERNET, internet);
        sdn.add_vxnet(balancer::INTERNET, internet, inet.gateway)?;
        cloud
            .add_eips(cfg.eips)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let mut nodes = Vec::new();
        for i in 0..cfg.nodes {
            let ns = Ns::new(&format!("vm{i}"))?;
            let instance = format!("i-sim{i:04}");
            let primary = cloud
                .add_instance(&instance, ns.path(), MGMT_VXNET, 0)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            // The VM boots: its primary NIC is eth0, addressed, with the
            // default route.
            let name = sdn.plug(&primary.id, MGMT_VXNET, &ns.path())?;
            ns.ip_batch(&[
                format!("link set {name} name eth0"),
                format!("addr add {}/{} dev eth0", primary.ip, cfg.mgmt.prefix_len()),
                "link set eth0 up".into(),
                format!("route add default via {} dev eth0", mgmt.gateway),
            ])?;
            nodes.push(Node {
                instance,
                ns,
                ip: primary.ip,
            });
        }

        // The cloud's API does not share the VMs' CPUs: its threads go
        // before the agents' and the pods' work on this machine, so that
        // its rate limit counts requests when they come, not when a busy
        // machine gets to them. (Its hot-plugs stand for the hosts' work,
        // and run as the rest: `host_work`.)
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .on_thread_start(|| nice(-10))
            .enable_all()
            .build()?;
        let mut injector = Injector::new(cfg.seed);
        injector.faults = cfg.faults.clone();
        let inner = Arc::new(Inner {
            secret: hostnic_iaas::SecretKey::new(cfg.secret.clone()),
            cfg: cfg.clone(),
            cloud: Mutex::new(cloud),
            injector: Mutex::new(injector),
            sdn,
            lbs: lb_proxy::Dataplanes::default(),
            calls: Mutex::default(),
            started: (SystemTime::now(), Instant::now()),
        });
        let app = axum::Router::new()
            .route("/iaas/", get(iaas))
            .route("/inspect", get(inspect))
            .route("/control/faults", post(set_faults))
            .route("/control/vanish", post(vanish))
            .route("/control/move-default-route", post(move_default_route))
            .with_state(inner.clone());

        let local = std::net::TcpListener::bind("127.0.0.1:0")?;
        let node_listener = inner.sdn.ns.listen(SocketAddr::from((mgmt.gateway, 80)))?;
        let (local_addr, node_addr) = (local.local_addr()?, node_listener.local_addr()?);
        for l in [local, node_listener] {
            l.set_nonblocking(true)?;
            let app = app.clone();
            runtime.spawn(async move {
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                // Serving ends when the runtime is dropped with the Sim.
                let _ = axum::serve(l, app).await;
            });
        }
        Ok(Sim {
            local_addr,
            node_addr,
            nodes,
            inner,
            runtime: Some(runtime),
        })
    }

    /// The credentials file (the original `qcsecret` format) an agent on a
    /// node uses to reach this simulator.
    pub fn credentials_yaml(&self) -> String {
        self.credentials_for(self.node_addr)
    }

    /// The same, for a client in the caller's namespace (tests).
    pub fn local_credentials_yaml(&self) -> String {
        self.credentials_for(self.local_addr)
    }

    fn credentials_for(&self, addr: SocketAddr) -> String {
        let c = &self.inner.cfg;
        format!(
            "qy_access_key_id: {}\nqy_secret_access_key: {}\nzone: {}\nhost: {}\nport: {}\nprotocol: http\nuri: /iaas/\nconnection_retries: 3\nconnection_timeout: 10\n",
            c.access_key_id,
            c.secret,
            c.zone,
            addr.ip(),
            addr.port()
        )
    }

    /// The SDN namespace (bridges per vxnet), for diagnostics.
    pub fn sdn_ns(&self) -> &Ns {
        &self.inner.sdn.ns
    }

    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// The gateway of a vxnet.
    pub fn gateway(&self, vxnet: &str) -> Option<Ipv4Addr> {
        self.inner.cloud().vxnets.get(vxnet).map(|v| v.gateway)
    }

    /// Everything the inspection endpoint shows, without HTTP.
    pub fn inspect(&self) -> Value {
        inspect_json(&self.inner)
    }

    /// The secondary NICs (not a VM's primary) as [`Self::inspect`] has
    /// them: those hostnic makes.
    pub fn secondary_nics(&self) -> Vec<Value> {
        match inspect_json(&self.inner)["nics"].take() {
            Value::Array(nics) => nics.into_iter().filter(|n| n["role"] == 0).collect(),
            _ => Vec::new(),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        self.inner.injector().faults = faults;
    }

    /// Faults injected so far, by ret_code (0: failed jobs).
    pub fn injected(&self) -> BTreeMap<u32, u64> {
        self.inner.injector().injected.clone()
    }

    /// Calls refused so far by the account's rate limit, per action.
    pub fn throttled(&self) -> BTreeMap<String, u64> {
        self.inner.injector().throttled.clone()
    }

    /// A VM outside the cluster with its primary NIC on `vxnet`: a client
    /// of the cloud's network (of a load balancer, say). Its namespace goes
    /// when the returned node is dropped.
    pub fn add_vm(&self, role: &str, vxnet: &str) -> anyhow::Result<Node> {
        let ns = Ns::new(role)?;
        let (instance, primary, gateway, prefix) = {
            let mut cloud = self.inner.cloud();
            let instance = format!("i-{role}{:04}", cloud.next());
            let primary = cloud
                .add_instance(&instance, ns.path(), vxnet, self.inner.now())
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            let v = &cloud.vxnets[vxnet];
            (instance, primary, v.gateway, v.cidr.prefix_len())
        };
        let name = self.inner.sdn.plug(&primary.id, vxnet, &ns.path())?;
        ns.ip_batch(&[
            format!("link set {name} name eth0"),
            format!("addr add {}/{prefix} dev eth0", primary.ip),
            "link set eth0 up".into(),
            format!("route add default via {gateway} dev eth0"),
        ])?;
        Ok(Node {
            instance,
            ns,
            ip: primary.ip,
        })
    }

    /// What the load balancers forward to, as last applied (not as
    /// configured): every backend's `resource_id`.
    pub fn lb_forwards_to(&self) -> std::collections::BTreeSet<String> {
        self.inner
            .cloud()
            .lbs
            .values()
            .flat_map(|lb| &lb.applied.listeners)
            .flat_map(|(_, backends)| backends)
            .map(|b| b.resource_id.clone())
            .collect()
    }

    /// The account's EIPs: (id, address).
    pub fn eips(&self) -> Vec<(String, Ipv4Addr)> {
        self.inner
            .cloud()
            .eips
            .values()
            .map(|e| (e.id.clone(), e.addr))
            .collect()
    }

    /// The namespace a running load balancer's data path lives in.
    pub fn lb_netns(&self, lb: &str) -> Option<String> {
        self.inner.lbs.netns(lb)
    }

    /// How many load balancers' data paths run.
    pub fn lbs_running(&self) -> usize {
        self.inner.lbs.running()
    }

    /// API calls answered so far, per action.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.inner
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // Not shutdown_timeout: that blocks, and a test may drop the Sim
        // from inside its own runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn reply(action: &str, result: Result<Value, cloud::ApiError>) -> Json<Value> {
    Json(match result {
        Ok(mut v) => {
            v["action"] = json!(format!("{action}Response"));
            v["ret_code"] = json!(0);
            v
        }
        Err(e) => {
            json!({"action": format!("{action}Response"), "ret_code": e.code, "message": e.message})
        }
    })
}

async fn iaas(State(sim): State<Arc<Inner>>, method: Method, uri: Uri) -> Json<Value> {
    let params = match hostnic_iaas::sign::decode_query(uri.query().unwrap_or_default()) {
        Ok(p) => p,
        Err(_) => {
            return reply(
                "",
                Err(cloud::ApiError {
                    code: 1100,
                    message: "InvalidParameter, malformed query string".into(),
                }),
            );
        }
    };
    let c = &sim.cfg;
    let action = match api::authenticate(
        &params,
        method.as_str(),
        uri.path(),
        &c.access_key_id,
        &sim.secret,
        &c.zone,
    ) {
        Ok(a) => a,
        Err(e) => return reply("", Err(e)),
    };
    *sim.calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(action.clone())
        .or_default() += 1;
    if let Some((code, message)) = sim.injector().error_for(&action) {
        return reply(&action, Err(cloud::ApiError { code, message }));
    }
    let (now, start) = (sim.now(), sim.started.0);
    let result = if lb_api::handles(&action) {
        let health = |id: &str| sim.lbs.health.status(id);
        lb_api::dispatch(&mut sim.cloud(), &action, &params, now, start, &health)
    } else {
        api::dispatch(&mut sim.cloud(), &action, &params, now, start)
    };
    if let Ok(v) = &result
        && let Some(job) = v["job_id"].as_str()
    {
        tokio::spawn(run_job(sim.clone(), job.to_string()));
    }
    let late = sim
        .injector()
        .faults
        .answer_latency_ms_by_action
        .get(&action)
        .copied();
    if let Some(ms) = late {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    reply(&action, result)
}

/// Moves a job along: working at once; for an attach the NIC's link appears
/// after the attach latency and the job reports success a poll interval
/// later (the link is the faster signal, as on the real cloud).
async fn run_job(sim: Arc<Inner>, job: String) {
    let (latency, fails) = {
        let mut inj = sim.injector();
        (inj.faults.clone(), inj.job_fails())
    };
    let Some(plumbing) = sim.cloud().start_job(&job) else {
        return;
    };
    let ok = match plumbing {
        cloud::Plumbing::Attach { nics, instance } => {
            let attach_ms = nics
                .iter()
                .map(|(_, vxnet)| {
                    *latency
                        .attach_latency_ms_by_vxnet
                        .get(vxnet)
                        .unwrap_or(&latency.attach_latency_ms)
                })
                .max()
                .unwrap_or(latency.attach_latency_ms);
            tokio::time::sleep(Duration::from_millis(attach_ms)).await;
            let node = sim
                .cloud()
                .instances
                .get(&instance)
                .map(|i| i.netns.clone());
            let mut ok = !fails;
            if let (Some(node), true) = (node, ok) {
                // Hot-plugs exec `ip` and `bridge`: off the async workers,
                // so the API keeps answering (and counting its rate) on
                // time, as a cloud's front end does while hosts plug NICs.
                let inner = sim.clone();
                ok = tokio::task::spawn_blocking(move || {
                    match host_work(|| inner.sdn.plug_all(&nics, &node)) {
                        Ok(_) => true,
                        Err(e) => {
                            eprintln!("iaas-sim: plugging {nics:?}: {e:#}");
                            false
                        }
                    }
                })
                .await
                .unwrap_or(false);
                tokio::time::sleep(Duration::from_millis(20 + attach_ms / 10)).await;
            }
            ok
        }
        cloud::Plumbing::Detach { nics } => {
            tokio::time::sleep(Duration::from_millis(latency.detach_latency_ms)).await;
            let inner = sim.clone();
            let _ = tokio::task::spawn_blocking(move || {
                host_work(|| {
                    for mac in &nics {
                        if let Err(e) = inner.sdn.unplug(mac) {
                            eprintln!("iaas-sim: unplugging {mac}: {e:#}");
                        }
                    }
                })
            })
            .await;
            true
        }
        balancers => {
            tokio::time::sleep(Duration::from_millis(latency.lb_job_latency_ms)).await;
            let fails = sim.injector().lb_job_fails();
            // Namespaces and threads: off the async workers.
            let inner = sim.clone();
            tokio::task::spawn_blocking(move || {
                host_work(|| !fails && plumb_balancers(&inner, balancers))
            })
            .await
            .unwrap_or(false)
        }
    };
    let now = sim.now();
    sim.cloud().finish_job(&job, ok, now);
}

/// A load-balancer job's kernel side; false if any part failed (the
/// job then fails, and the model keeps its state from before).
fn plumb_balancers(sim: &Inner, plumbing: cloud::Plumbing) -> bool {
    let mut ok = true;
    let mut failed = |what: &str, e: anyhow::Error| {
        eprintln!("iaas-sim: {what}: {e:#}");
        ok = false;
    };
    match plumbing {
        cloud::Plumbing::CreateBalancers(lbs) => {
            for lb in lbs {
                let net = sim
                    .cloud()
                    .vxnets
                    .get(&lb.vxnet)
                    .map(|v| (v.gateway, v.cidr.prefix_len()));
                let Some((gateway, prefix)) = net else {
                    failed(&lb.id, anyhow::anyhow!("vxnet {} is gone", lb.vxnet));
                    continue;
                };
                if let Err(e) = sim.lbs.create(&lb, &sim.sdn, gateway, prefix) {
                    failed(&format!("creating {}", lb.id), e);
                }
            }
        }
        cloud::Plumbing::ApplyBalancers(plans) => {
            for (lb, plan) in plans {
                if let Err(e) = sim.lbs.apply(&lb, plan) {
                    failed(&format!("applying {lb}"), e);
                }
            }
        }
        cloud::Plumbing::DeleteBalancers(lbs) => {
            for lb in lbs {
                if let Err(e) = sim.lbs.delete(&lb, &sim.sdn) {
                    failed(&format!("deleting {lb}"), e);
                }
            }
        }
        cloud::Plumbing::Attach { .. } | cloud::Plumbing::Detach { .. } => {}
    }
    ok
}

fn inspect_json(sim: &Inner) -> Value {
    let cloud = sim.cloud();
    let nics: Vec<Value> = cloud
        .nics
        .values()
        .map(|n| {
            let mut v = serde_json::to_value(n).unwrap_or_default();
            v["plugged"] = json!(sim.sdn.plugged(&n.id));
            v["tag_names"] = json!(
                n.tags
                    .iter()
                    .filter_map(|t| cloud.tags.get(t).map(|t| t.name.clone()))
                    .collect::<Vec<_>>()
            );
            v
        })
        .collect();
    json!({
        "nics": nics,
        "jobs": cloud.jobs.values().collect::<Vec<_>>(),
        "instances": cloud.instances.values().collect::<Vec<_>>(),
        "loadbalancers": cloud.lbs.values().map(|lb| {
            let mut v = serde_json::to_value(lb).unwrap_or_default();
            v["running"] = json!(sim.lbs.netns(&lb.id).is_some());
            v
        }).collect::<Vec<_>>(),
        "listeners": cloud.listeners.values().collect::<Vec<_>>(),
        "eips": cloud.eips.values().collect::<Vec<_>>(),
        "backends": cloud.backends.values().map(|b| {
            let mut v = serde_json::to_value(b).unwrap_or_default();
            v["status"] = json!(sim.lbs.health.status(&b.id));
            v
        }).collect::<Vec<_>>(),
        "calls": *sim.calls.lock().unwrap_or_else(|p| p.into_inner()),
    })
}

async fn inspect(State(sim): State<Arc<Inner>>) -> Json<Value> {
    Json(inspect_json(&sim))
}

async fn set_faults(State(sim): State<Arc<Inner>>, Json(faults): Json<Faults>) -> Json<Value> {
    sim.injector().faults = faults;
    Json(json!({"ok": true}))
}

async fn vanish(State(sim): State<Arc<Inner>>, Json(body): Json<Value>) -> Json<Value> {
    let mac = body["nic"].as_str().unwrap_or_default().to_string();
    Json(match sim.sdn.unplug(&mac) {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
    })
}

async fn move_default_route(State(sim): State<Arc<Inner>>, Json(body): Json<Value>) -> Json<Value> {
    let instance = body["instance"].as_str().unwrap_or_default().to_string();
    Json(match steal_default_route(&sim, &instance) {
        Ok(dev) => json!({"ok": true, "device": dev}),
        Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
    })
}

/// What a DHCP client on a rebooted multi-NIC VM does: configure a
/// secondary NIC and point the default route through it.
fn steal_default_route(sim: &Inner, instance: &str) -> anyhow::Result<String> {
    let (netns, candidates) = {
        let cloud = sim.cloud();
        let inst = cloud.instances.get(instance).context("no such instance")?;
        let nics: Vec<(cloud::Nic, Ipv4Addr, u8)> = cloud
            .nics
            .values()
            .filter(|n| {
                n.instance.as_deref() == Some(instance)
                    && n.role == 0
                    && n.state == cloud::NicState::InUse
            })
            .map(|n| {
                (
                    n.clone(),
                    cloud.vxnets[&n.vxnet].gateway,
                    cloud.vxnets[&n.vxnet].cidr.prefix_len(),
                )
            })
            .collect();
        (inst.netns.clone(), nics)
    };
    let ns_name = netns
        .file_name()
        .context("netns path")?
        .to_string_lossy()
        .into_owned();
    let links = crate::netns::run(
        std::process::Command::new("ip").args(["-n", &ns_name, "-o", "link", "show"]),
    )?;
    // A NIC in the node namespace (not one a pod holds).
    let (nic, gw, prefix, dev) = candidates
        .into_iter()
        .find_map(|(nic, gw, prefix)| {
            let line = links.lines().find(|l| l.contains(&nic.id))?;
            let dev = line
                .split(':')
                .nth(1)?
                .trim()
                .split('@')
                .next()?
                .to_string();
            Some((nic, gw, prefix, dev))
        })
        .context("the instance has no secondary NIC in its namespace")?;
    for args in [
        vec!["link", "set", &dev, "up"],
        vec!["addr", "add", &format!("{}/{prefix}", nic.ip), "dev", &dev],
        vec![
            "route",
            "replace",
            "default",
            "via",
            &gw.to_string(),
            "dev",
            &dev,
        ],
    ] {
        crate::netns::run(
            std::process::Command::new("ip")
                .arg("-n")
                .arg(&ns_name)
                .args(&args),
        )?;
    }
    Ok(dev)
}

/// Sets the calling thread's nice value (on Linux `who` 0 is the calling
/// thread). Raising the priority needs root; without it the thread keeps
/// the default.
fn nice(value: i32) {
    // SAFETY: setpriority only changes the scheduler's view of this thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, value);
    }
}

/// Runs `f`, the hosts' work (plugging NICs, load balancers' data planes),
/// at the machine's default priority, not the API's, on a blocking thread.
fn host_work<T>(f: impl FnOnce() -> T) -> T {
    nice(0);
    let out = f();
    nice(-10);
    out
}
