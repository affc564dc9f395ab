//! `hostnic-netpol-scale-bench`: NetworkPolicy at scale (issue 25's
//! benchmark): 1,000 pods over 10 simulated VMs, 200 policies, a real API
//! server, one agent per VM enforcing in every pod's own namespace.
//!
//! The pods (shared-NIC mode: a VM takes at most 64 NICs) are spread over
//! 10 namespaces and the VMs, each labelled `app=a<i mod 10>`; every
//! namespace has the same share of the policies, half admitting a pod
//! label of their own namespace, half a pod label of the next namespace.
//! Every pod is selected by some.
//!
//! What is timed is when each pod's table changed in the kernel: the bench
//! listens in every pod's namespace for nf_tables' own notifications of a
//! committed change (the group `nft monitor` listens to), so the time is
//! the moment the rules hold, on whichever VM the pod lives.
//!
//! 1. A policy created (selecting every pod of a namespace, on every VM) →
//!    each of those pods' tables, and the last of them; the same for its
//!    deletion.
//! 2. A new peer pod: ADD (timed), then its address reported as kubelet
//!    reports it → each table whose policies admit it, and the last.
//! 3. The agents' resident memory and CPU time over both.
//!
//! Usage: hostnic-netpol-scale-bench [NODES] [PODS] [POLICIES] [TRIALS]
//! (default 10 1000 200 20).

use std::collections::BTreeSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::controlplane::ControlPlane;
use hostnic_testbed::netns::in_netns;
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::stats::{ms, pct};
use hostnic_testbed::{Agent, CallEnv, Ns, kubebed, result_address};
use serde_json::{Value, json};

const NAMESPACES: usize = 10;
const APPS: usize = 10;
const PORT: u16 = 8080;
const CLOUD: &str = "warm_min = 0\nwarm_max = 0\nreconcile_seconds = 5\n";
const SHARED: &str = "[[shared]]\nvxnet = \"vxnet-pods\"\nrange = \"10.100.64.0/18\"\n";
/// How long a trial waits for every table it expects.
const DEADLINE: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-netpol-scale-bench needs root: it creates network namespaces");
    }
    let mut args = std::env::args().skip(1);
    let mut next = |default: usize| -> anyhow::Result<usize> {
        Ok(args.next().map_or(Ok(default), |a| a.parse())?)
    };
    let (nodes, pods, policies, trials) = (next(10)?, next(1000)?, next(200)?, next(20)?);
    if pods % NAMESPACES != 0 || policies % (2 * NAMESPACES) != 0 {
        bail!(
            "PODS must be a multiple of {NAMESPACES}, POLICIES of {}",
            2 * NAMESPACES
        );
    }
    let model = Model {
        per_ns: pods / NAMESPACES,
        policies_per_ns: policies / NAMESPACES,
        nodes,
    };
    println!(
        "hostnic-netpol-scale-bench: {pods} pods on {nodes} VMs in {NAMESPACES} namespaces, {policies} policies, {trials} trials\n"
    );
    let bed = CloudBed::new(SimConfig {
        nodes,
        vxnets: vec![("vxnet-pods".into(), "10.100.0.0/16".parse()?)],
        ..SimConfig::default()
    })?;
    let cp = kubebed::control_plane(&bed, None)?;
    let agents: Vec<Agent> = (0..nodes)
        .map(|i| kubebed::agent(&bed, &cp, i, (CLOUD, "network_policy = true\n"), SHARED))
        .collect::<anyhow::Result<_>>()?;

    // The pods: objects first (an ADD waits for its pod in the view), then
    // ADDs one VM beside the other, then their addresses as kubelet reports
    // them; the policies last, so filling costs no rewrites.
    let started = Instant::now();
    for n in 0..NAMESPACES {
        cp.apply(&model.namespace(n).to_string())?;
        cp.apply(&model.pods(n).to_string())?;
    }
    let (netns, addrs) = model.fill(&bed)?;
    report_all(&cp, &model, &addrs)?;
    for n in 0..NAMESPACES {
        cp.apply(&model.policies(n).to_string())?;
    }
    let monitor = Monitor::start(&netns)?;
    monitor.quiet(Duration::from_secs(2), Duration::from_secs(120))?;
    println!(
        "set up: {pods} pods wired and {policies} policies enforced in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let cpu_before: Vec<Duration> = agents.iter().map(cpu).collect();
    let measured = Instant::now();

    // 1. A policy created and deleted, trial after trial.
    let (mut created, mut deleted) = (Timed::default(), Timed::default());
    for t in 0..trials {
        let n = t % NAMESPACES;
        let expect: BTreeSet<usize> = model.in_namespace(n).collect();
        let policy = model.extra_policy(n, t);
        created.push(monitor.time(&expect, || cp.apply(&policy.to_string()).map(drop))?);
        deleted.push(monitor.time(&expect, || {
            cp.kubectl(&[
                "delete",
                "networkpolicy",
                &format!("extra-{t}"),
                "-n",
                &format!("ns{n}"),
            ])
            .map(drop)
        })?);
    }

    // 2. A new peer pod, its address reported.
    let (mut peer, mut adds) = (Timed::default(), Vec::new());
    for t in 0..trials {
        let (n, app, node) = (t % NAMESPACES, (3 * t + 1) % APPS, t % nodes);
        let name = format!("peer-{t}");
        cp.apply(&model.pod(n, &name, app, node).to_string())?;
        let ns = Ns::new(&format!("nsb-{name}"))?;
        let begun = Instant::now();
        let result = add(&bed, node, n, &name, &ns)?;
        adds.push(begun.elapsed());
        let ip = result_address(&result)?;
        monitor.quiet(Duration::from_millis(500), Duration::from_secs(30))?;
        let expect = model.admitting(n, app);
        if expect.is_empty() {
            bail!("the model has no policy admitting a{app} of ns{n}");
        }
        peer.push(
            monitor
                .time(&expect, || report(&cp, n, &name, ip))
                .with_context(|| format!("peer a{app} of ns{n} at {ip} on node-{node}"))?,
        );
        del(&bed, node, n, &name, &ns, result)?;
        // Gone at once, as kubelet confirms a pod it stopped (else its
        // object would keep the address the next pod on this VM gets).
        cp.kubectl(&[
            "delete",
            "pod",
            &name,
            "-n",
            &format!("ns{n}"),
            "--grace-period=0",
            "--force",
        ])?;
        monitor.quiet(Duration::from_millis(500), Duration::from_secs(30))?;
    }
    let busy = measured.elapsed();
    let cpu_used: Vec<Duration> = agents
        .iter()
        .zip(&cpu_before)
        .map(|(a, before)| cpu(a).saturating_sub(*before))
        .collect();
    let rss: Vec<u64> = agents.iter().filter_map(Agent::rss_kib).collect();

    println!("\n| from | to | each table p50 | p99 | the last table p50 | p99 | tables |");
    println!("|---|---|---|---|---|---|---|");
    for (from, to, t) in [
        ("a policy created", "each pod of its namespace", &created),
        ("its deletion", "the same pods", &deleted),
        ("a peer's address reported", "each pod admitting it", &peer),
    ] {
        println!(
            "| {from} | {to} | {} | {} | {} | {} | {} |",
            ms(pct(&t.each, 50)),
            ms(pct(&t.each, 99)),
            ms(pct(&t.last, 50)),
            ms(pct(&t.last, 99)),
            t.each.len()
        );
    }
    let strays = created.strays + deleted.strays + peer.strays;
    println!(
        "\ntables written that no trial changed: {strays}\nADD of a new pod with {policies} policies in the cluster: p50 {} p99 {} ({} ADDs)",
        ms(pct(&adds, 50)),
        ms(pct(&adds, 99)),
        adds.len()
    );
    let total_cpu: Duration = cpu_used.iter().sum();
    println!(
        "agents: RSS {} MiB max, {} MiB mean; CPU {:.1} s over {:.1} s of trials ({:.1} % of one core per agent)",
        rss.iter().max().copied().unwrap_or_default() / 1024,
        rss.iter().sum::<u64>() / rss.len().max(1) as u64 / 1024,
        total_cpu.as_secs_f64(),
        busy.as_secs_f64(),
        total_cpu.as_secs_f64() / busy.as_secs_f64() / nodes as f64 * 100.0
    );

    // The VMs' namespaces, and with them every pod's other end, go with
    // the bed.
    monitor.stop();
    drop(agents);
    Ok(())
}

/// The bench's cluster: which pod lives where with which label, and which
/// policies say what.
struct Model {
    per_ns: usize,
    policies_per_ns: usize,
    nodes: usize,
}

impl Model {
    /// Pod `k` of namespace `n`: index `n * per_ns + k`.
    fn node_of(&self, index: usize) -> usize {
        index % self.nodes
    }

    fn app_of(&self, index: usize) -> usize {
        (index % self.per_ns) % APPS
    }

    fn in_namespace(&self, n: usize) -> impl Iterator<Item = usize> {
        n * self.per_ns..(n + 1) * self.per_ns
    }

    /// Namespace `n` (labelled `team=t<n>`) and its ServiceAccount (no
    /// controller manager makes it here).
    fn namespace(&self, n: usize) -> Value {
        json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": format!("ns{n}"), "labels": {"team": format!("t{n}")}}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": "default", "namespace": format!("ns{n}")}},
        ]})
    }

    /// Every pod of namespace `n`, bound to its VM.
    fn pods(&self, n: usize) -> Value {
        let items: Vec<Value> = self
            .in_namespace(n)
            .map(|i| {
                self.pod(
                    n,
                    &format!("p{}", i % self.per_ns),
                    self.app_of(i),
                    self.node_of(i),
                )
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "List", "items": items})
    }

    fn pod(&self, n: usize, name: &str, app: usize, node: usize) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": format!("ns{n}"),
                         "labels": {"app": format!("a{app}")}},
            "spec": {"nodeName": format!("node-{node}"), "automountServiceAccountToken": false,
                     "containers": [{"name": "c", "image": "busybox",
                                     "ports": [{"name": "http", "containerPort": PORT}]}]},
        })
    }

    /// Policy `k` of namespace `n` selects `a<k mod APPS>`; the first half
    /// admit `a<k+1>` of `n`, the second half `a<k+2>` of namespace `n+1`.
    fn rule(&self, n: usize, k: usize) -> (usize, usize, usize) {
        let target = k % APPS;
        if k < self.policies_per_ns / 2 {
            (target, n, (target + 1) % APPS)
        } else {
            (target, (n + 1) % NAMESPACES, (target + 2) % APPS)
        }
    }

    fn policies(&self, n: usize) -> Value {
        let items: Vec<Value> = (0..self.policies_per_ns)
            .map(|k| {
                let (target, from_ns, from_app) = self.rule(n, k);
                let mut peer =
                    json!({"podSelector": {"matchLabels": {"app": format!("a{from_app}")}}});
                if from_ns != n {
                    peer["namespaceSelector"] =
                        json!({"matchLabels": {"team": format!("t{from_ns}")}});
                }
                json!({
                    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": format!("np{k}"), "namespace": format!("ns{n}")},
                    "spec": {"podSelector": {"matchLabels": {"app": format!("a{target}")}},
                             "ingress": [{"from": [peer], "ports": [{"port": "http"}]}]},
                })
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "List", "items": items})
    }

    /// A policy selecting every pod of namespace `n`.
    fn extra_policy(&self, n: usize, t: usize) -> Value {
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("extra-{t}"), "namespace": format!("ns{n}")},
            "spec": {"podSelector": {},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("a{}", t % APPS)}}}],
                                  "ports": [{"port": PORT + 1}]}]},
        })
    }

    /// The pods some policy makes admit a new pod `a<app>` of namespace
    /// `from`.
    fn admitting(&self, from: usize, app: usize) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        for n in 0..NAMESPACES {
            for k in 0..self.policies_per_ns {
                let (target, from_ns, from_app) = self.rule(n, k);
                if (from_ns, from_app) == (from, app) {
                    out.extend(self.in_namespace(n).filter(|&i| self.app_of(i) == target));
                }
            }
        }
        out
    }

    /// Every pod's namespace, ADDed through the executable, one VM beside
    /// the other; with the VM each lives on and its address.
    #[allow(clippy::type_complexity)]
    fn fill(&self, bed: &CloudBed) -> anyhow::Result<(Vec<(Ns, usize)>, Vec<Ipv4Addr>)> {
        let total = NAMESPACES * self.per_ns;
        let netns: Vec<(Ns, usize)> = (0..total)
            .map(|i| Ok((Ns::new(&format!("nsb{i}"))?, self.node_of(i))))
            .collect::<anyhow::Result<_>>()?;
        let addrs = Mutex::new(vec![Ipv4Addr::UNSPECIFIED; total]);
        std::thread::scope(|s| -> anyhow::Result<()> {
            let workers: Vec<_> = (0..self.nodes)
                .map(|node| {
                    let (netns, addrs) = (&netns, &addrs);
                    s.spawn(move || -> anyhow::Result<()> {
                        for i in (0..total).filter(|i| self.node_of(*i) == node) {
                            let (n, k) = (i / self.per_ns, i % self.per_ns);
                            let r = add(bed, node, n, &format!("p{k}"), &netns[i].0)?;
                            addrs.lock().unwrap()[i] = result_address(&r)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for w in workers {
                w.join()
                    .map_err(|_| anyhow::anyhow!("an ADD worker panicked"))??;
            }
            Ok(())
        })?;
        Ok((netns, addrs.into_inner().unwrap()))
    }
}

/// Reports every pod's address as kubelet would, several at once.
fn report_all(cp: &ControlPlane, model: &Model, addrs: &[Ipv4Addr]) -> anyhow::Result<()> {
    const AT_ONCE: usize = 8;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..AT_ONCE)
            .map(|w| {
                s.spawn(move || -> anyhow::Result<()> {
                    for (i, ip) in addrs.iter().enumerate().skip(w).step_by(AT_ONCE) {
                        let (n, k) = (i / model.per_ns, i % model.per_ns);
                        report(cp, n, &format!("p{k}"), *ip)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a reporting worker panicked"))??;
        }
        Ok(())
    })
}

fn report(cp: &ControlPlane, n: usize, name: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    kubebed::report_pod_ip_in(cp, &format!("ns{n}"), name, ip)
}

fn call(
    bed: &CloudBed,
    verb: &str,
    node: usize,
    n: usize,
    name: &str,
    ns: &Ns,
    prev: Option<Value>,
) -> anyhow::Result<Value> {
    let path = ns.path().display().to_string();
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns{n};K8S_POD_NAME={name}");
    let cid = format!("nsb-{n}-{name}");
    let env = CallEnv {
        container_id: &cid,
        netns: &path,
        ifname: "eth0",
        args: &args,
    };
    let mut conf = bed.netconf(node, "1.1.0", json!([]));
    let hostnic = bed.hostnic(node);
    match prev {
        None => hostnic
            .add_retrying(&conf, &env)
            .map_err(|e| anyhow::anyhow!("ADD ns{n}/{name}: {e}")),
        Some(prev) => {
            conf["prevResult"] = prev;
            match hostnic.call(verb, &conf, &env)? {
                Ok(r) => Ok(r),
                Err(e) => bail!("{verb} ns{n}/{name}: {e}"),
            }
        }
    }
}

fn add(bed: &CloudBed, node: usize, n: usize, name: &str, ns: &Ns) -> anyhow::Result<Value> {
    call(bed, "ADD", node, n, name, ns, None)
}

fn del(
    bed: &CloudBed,
    node: usize,
    n: usize,
    name: &str,
    ns: &Ns,
    prev: Value,
) -> anyhow::Result<()> {
    call(bed, "DEL", node, n, name, ns, Some(prev)).map(drop)
}

/// The agent's CPU time so far, user and system, with that of the
/// processes it ran and waited for (`nft -f` for a rewrite).
fn cpu(agent: &Agent) -> Duration {
    let read = || -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", agent.pid()?)).ok()?;
        // utime, stime, cutime, cstime: proc(5)'s fields 14 to 17.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields
            .get(11..15)?
            .iter()
            .map(|f| f.parse::<u64>().ok())
            .sum::<Option<u64>>()?;
        // SAFETY: sysconf reads a constant of the system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(Duration::from_millis(ticks * 1000 / hz))
    };
    read().unwrap_or_default()
}

/// What one trial saw: each expected table's time, the last one's, and
/// how many tables outside the expected changed.
struct Trial {
    each: Vec<Duration>,
    last: Duration,
    strays: usize,
}

/// The trials of one kind.
#[derive(Default)]
struct Timed {
    each: Vec<Duration>,
    last: Vec<Duration>,
    strays: usize,
}

impl Timed {
    fn push(&mut self, t: Trial) {
        self.each.extend(t.each);
        self.last.push(t.last);
        self.strays += t.strays;
    }
}

/// nf_tables' change notifications from every pod's namespace: when each
/// pod's table last changed.
struct Monitor {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct Seen {
    /// Per pod, its first change since [`Monitor::time`] began.
    first: Vec<Option<Instant>>,
    /// The latest change in any pod.
    latest: Option<Instant>,
}

/// nf_tables' multicast group (`NFNLGRP_NFTABLES`).
const NFNLGRP_NFTABLES: u32 = 7;

impl Monitor {
    fn start(netns: &[(Ns, usize)]) -> anyhow::Result<Monitor> {
        let mut sockets = Vec::with_capacity(netns.len());
        for (ns, _) in netns {
            let file = File::open(ns.path())?;
            let fd = in_netns(&file, subscribe)??;
            sockets.push(fd);
        }
        let seen = Arc::new(Mutex::new(Seen {
            first: vec![None; sockets.len()],
            latest: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || listen(sockets, s, st));
        Ok(Monitor { seen, stop })
    }

    /// Runs `act`, then waits until every pod of `expect` has a change
    /// after it began: each one's time, the last one's, and how many pods
    /// outside `expect` changed meanwhile.
    fn time(
        &self,
        expect: &BTreeSet<usize>,
        act: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<Trial> {
        self.quiet(Duration::from_millis(500), Duration::from_secs(30))?;
        self.seen().first.fill(None);
        let begun = Instant::now();
        act()?;
        loop {
            {
                let seen = self.seen();
                let times: Vec<Duration> = expect
                    .iter()
                    .filter_map(|&i| seen.first[i].map(|t| t.saturating_duration_since(begun)))
                    .collect();
                if times.len() == expect.len() {
                    drop(seen);
                    // Pods outside `expect` that change after it are
                    // strays; wait for the rest of the pass to land.
                    self.quiet(Duration::from_millis(500), Duration::from_secs(30))?;
                    let seen = self.seen();
                    let strays = (0..seen.first.len())
                        .filter(|i| !expect.contains(i) && seen.first[*i].is_some())
                        .count();
                    let last = times.iter().max().copied().unwrap_or_default();
                    return Ok(Trial {
                        each: times,
                        last,
                        strays,
                    });
                }
                if begun.elapsed() > DEADLINE {
                    bail!(
                        "{} of {} tables did not change in {DEADLINE:?}",
                        expect.len() - times.len(),
                        expect.len()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until no table has changed for `calm`, for up to `limit`.
    fn quiet(&self, calm: Duration, limit: Duration) -> anyhow::Result<()> {
        let begun = Instant::now();
        loop {
            let latest = self.seen().latest;
            if latest.is_none_or(|t| t.elapsed() >= calm) && begun.elapsed() >= calm {
                return Ok(());
            }
            if begun.elapsed() > limit {
                bail!("the pods' tables kept changing for {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A netlink socket of the calling thread's namespace, in nf_tables'
/// notification group.
fn subscribe() -> anyhow::Result<OwnedFd> {
    use nix::sys::socket::{
        AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, socket,
    };
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    bind(
        fd.as_raw_fd(),
        &NetlinkAddr::new(0, 1 << (NFNLGRP_NFTABLES - 1)),
    )?;
    Ok(fd)
}

/// Marks a pod changed whenever its socket has a notification.
fn listen(sockets: Vec<OwnedFd>, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if ready <= 0 {
            continue;
        }
        let now = Instant::now();
        for (i, p) in fds.iter_mut().enumerate() {
            if p.revents == 0 {
                continue;
            }
            p.revents = 0;
            // Drain it: what was said does not matter, only when.
            // SAFETY: `buf` is writable for its length.
            while unsafe {
                libc::recv(p.fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
            } > 0
            {}
            let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
            s.first[i].get_or_insert(now);
            s.latest = Some(now);
        }
    }
}
