//! The simulated load balancers' data path. A load balancer is a network
//! namespace with a port on its vxnet's bridge and its own address, and a
//! TCP proxy (as QingCloud's, HAProxy underneath, is) running on a thread
//! that entered that namespace, so every socket it makes — listening,
//! health-checking, connecting to backends — is the load balancer's.
//!
//! What it forwards is the [`Plan`] the last UpdateLoadBalancers applied.
//! Per listener:
//! - each backend is checked as `healthy_check_method`/`_option` say (a
//!   TCP connect, or an HTTP GET answered 2xx/3xx): first at once when it
//!   is applied (it gets no traffic before that first check passes), then
//!   every interval; `fall` failures in a row take it out, `rise`
//!   successes put it back;
//! - a connection goes to a healthy, enabled backend of non-zero weight by
//!   the balance mode (weighted round robin, least connections, or a hash
//!   of the client's address); if the backend refuses, up to two others
//!   are tried, as HAProxy's `retries` with `redispatch` do;
//! - connections already made outlive a change of plan: a removed backend
//!   drains, it is not cut.
//!
//! HTTP listeners are proxied as TCP (no `X-Forwarded-For`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::balancer::{Backend, Balancer, Listener, Plan};
use super::sdn::Sdn;
use crate::netns::Ns;

/// Backend id → `up` or `abnormal`, as the checks last said.
#[derive(Clone, Debug, Default)]
pub struct HealthBoard(Arc<Mutex<BTreeMap<String, &'static str>>>);

impl HealthBoard {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, &'static str>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `up`, `abnormal`, or `down` for a backend no proxy checks.
    pub fn status(&self, backend: &str) -> &'static str {
        self.lock().get(backend).copied().unwrap_or("down")
    }
}

/// Every load balancer's running data path.
#[derive(Debug, Default)]
pub struct Dataplanes {
    planes: Mutex<BTreeMap<String, Dataplane>>,
    pub health: HealthBoard,
}

#[derive(Debug)]
struct Dataplane {
    mac: String,
    plan: watch::Sender<Plan>,
    proxy: Option<std::thread::JoinHandle<()>>,
    /// Dropped (deleted) last, after the proxy thread ended.
    ns: Ns,
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        // Closing the channel ends the proxy's loop and its runtime.
        let (closed, _) = watch::channel(Plan::default());
        drop(std::mem::replace(&mut self.plan, closed));
        if let Some(t) = self.proxy.take() {
            let _ = t.join();
        }
    }
}

impl Dataplanes {
    fn planes(&self) -> MutexGuard<'_, BTreeMap<String, Dataplane>> {
        self.planes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings a load balancer up on its vxnet: a namespace, its port on
    /// the bridge, its address and default route, and an idle proxy.
    pub fn create(
        &self,
        lb: &Balancer,
        sdn: &Sdn,
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> anyhow::Result<()> {
        let ns = Ns::new("lb")?;
        let dev = sdn.plug(&lb.mac, &lb.vxnet, &ns.path())?;
        let up = ns.ip_batch(&[
            format!("addr add {}/{prefix} dev {dev}", lb.ip),
            format!("link set {dev} up"),
            format!("route add default via {gateway} dev {dev}"),
        ]);
        if let Err(e) = up {
            let _ = sdn.unplug(&lb.mac);
            return Err(e);
        }
        let (tx, rx) = watch::channel(Plan::default());
        let file = std::fs::File::open(ns.path())?;
        let board = self.health.clone();
        let id = lb.id.clone();
        let proxy = std::thread::Builder::new()
            .name(format!("lb-{}", lb.id))
            .spawn(move || {
                if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
                    eprintln!("iaas-sim: {id}: entering its namespace: {e}");
                    return;
                }
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(serve(id, rx, board)),
                    Err(e) => eprintln!("iaas-sim: {id}: runtime: {e}"),
                }
            })
            .context("starting a load balancer's proxy thread")?;
        self.planes().insert(
            lb.id.clone(),
            Dataplane {
                mac: lb.mac.clone(),
                plan: tx,
                proxy: Some(proxy),
                ns,
            },
        );
        Ok(())
    }

    /// Makes the load balancer forward `plan`.
    pub fn apply(&self, lb: &str, plan: Plan) -> anyhow::Result<()> {
        let planes = self.planes();
        let plane = planes
            .get(lb)
            .with_context(|| format!("{lb} has no data path"))?;
        plane.plan.send_replace(plan);
        Ok(())
    }

    /// Tears a load balancer down; already gone is fine.
    pub fn delete(&self, lb: &str, sdn: &Sdn) -> anyhow::Result<()> {
        let Some(plane) = self.planes().remove(lb) else {
            return Ok(());
        };
        let mac = plane.mac.clone();
        drop(plane);
        sdn.unplug(&mac)
    }

    /// The namespace of a load balancer's data path, for tests.
    pub fn netns(&self, lb: &str) -> Option<String> {
        self.planes().get(lb).map(|p| p.ns.name().to_string())
    }

    /// How many data paths run.
    pub fn running(&self) -> usize {
        self.planes().len()
    }
}

/// A task that ends when this handle is dropped.
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One backend as a listener's pool holds it.
struct Member {
    backend: Backend,
    healthy: bool,
    active: usize,
    _checker: Owned,
}

#[derive(Default)]
struct Pool {
    members: BTreeMap<String, Member>,
    turn: u64,
}

type SharedPool = Arc<Mutex<Pool>>;

fn lock(pool: &SharedPool) -> MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|p| p.into_inner())
}

struct Running {
    listener: Listener,
    pool: SharedPool,
    _accept: Owned,
}

async fn serve(lb: String, mut plans: watch::Receiver<Plan>, board: HealthBoard) {
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    loop {
        let plan = plans.borrow_and_update().clone();
        reconcile(&lb, &mut running, &plan, &board).await;
        if plans.changed().await.is_err() {
            break;
        }
    }
    for r in running.values() {
        forget(&r.pool, &board);
    }
}

/// Takes a pool's backends off the board (pool lock first, as the checks
/// take them).
fn forget(pool: &SharedPool, board: &HealthBoard) {
    let pool = lock(pool);
    let mut b = board.lock();
    for id in pool.members.keys() {
        b.remove(id);
    }
}

/// Brings the running listeners and pools to `plan`, keeping what did not
/// change (a backend's health history among it).
async fn reconcile(
    lb: &str,
    running: &mut BTreeMap<String, Running>,
    plan: &Plan,
    board: &HealthBoard,
) {
    let wanted: BTreeMap<&String, &(Listener, Vec<Backend>)> =
        plan.listeners.iter().map(|e| (&e.0.id, e)).collect();
    running.retain(|id, r| {
        let keep = wanted.get(id).is_some_and(|(l, _)| *l == r.listener);
        if !keep {
            forget(&r.pool, board);
        }
        keep
    });
    // Let the aborted accept loops end, closing their sockets, before a
    // new listener binds the port one of them held.
    tokio::task::yield_now().await;
    for (id, (listener, backends)) in wanted {
        if !running.contains_key(id) {
            match start_listener(listener) {
                Ok(r) => {
                    running.insert(id.clone(), r);
                }
                Err(e) => {
                    eprintln!("iaas-sim: {lb}: listener {id}: {e:#}");
                    continue;
                }
            }
        }
        let r = &running[id];
        let mut pool = lock(&r.pool);
        let keep: BTreeMap<&String, &Backend> = backends.iter().map(|b| (&b.id, b)).collect();
        pool.members.retain(|bid, m| {
            let same = keep
                .get(bid)
                .is_some_and(|b| b.address == m.backend.address && b.port == m.backend.port);
            if !same {
                board.lock().remove(bid);
            }
            same
        });
        for (bid, b) in keep {
            match pool.members.get_mut(bid) {
                Some(m) => m.backend = b.clone(),
                None => {
                    let checker = Owned(tokio::spawn(check_loop(
                        r.pool.clone(),
                        b.clone(),
                        listener.clone(),
                        board.clone(),
                    )));
                    pool.members.insert(
                        bid.clone(),
                        Member {
                            backend: b.clone(),
                            healthy: false,
                            active: 0,
                            _checker: checker,
                        },
                    );
                }
            }
        }
    }
}

fn start_listener(listener: &Listener) -> anyhow::Result<Running> {
    let std = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, listener.port)))
        .with_context(|| format!("binding port {}", listener.port))?;
    std.set_nonblocking(true)?;
    let socket = TcpListener::from_std(std)?;
    let pool = SharedPool::default();
    let accept = Owned(tokio::spawn(accept_loop(
        socket,
        pool.clone(),
        listener.balance_mode.clone(),
    )));
    Ok(Running {
        listener: listener.clone(),
        pool,
        _accept: accept,
    })
}

async fn accept_loop(socket: TcpListener, pool: SharedPool, mode: String) {
    loop {
        let Ok((client, peer)) = socket.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(forward(client, peer.ip(), pool.clone(), mode.clone()));
    }
}

/// Counts a connection against its backend while it lives.
struct Active {
    pool: SharedPool,
    id: String,
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(m) = lock(&self.pool).members.get_mut(&self.id) {
            m.active = m.active.saturating_sub(1);
        }
    }
}

async fn forward(mut client: TcpStream, peer: IpAddr, pool: SharedPool, mode: String) {
    let mut tried = Vec::new();
    for _ in 0..3 {
        let Some((id, addr)) = pick(&mut lock(&pool), &mode, peer, &tried) else {
            break;
        };
        tried.push(id.clone());
        let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await;
        if let Ok(Ok(mut upstream)) = connect {
            if let Some(m) = lock(&pool).members.get_mut(&id) {
                m.active += 1;
            }
            let _active = Active {
                pool: pool.clone(),
                id,
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            return;
        }
    }
    // No backend: the client sees its connection closed, as HAProxy's
    // "no server available" does for TCP.
    let _ = client.shutdown().await;
}

/// The backend for a new connection by the balance mode, among healthy,
/// enabled, weighted members not tried yet.
fn pick(
    pool: &mut Pool,
    mode: &str,
    peer: IpAddr,
    tried: &[String],
) -> Option<(String, SocketAddr)> {
    let eligible: Vec<&Member> = pool
        .members
        .values()
        .filter(|m| m.healthy && !m.backend.disabled && m.backend.weight > 0)
        .filter(|m| !tried.contains(&m.backend.id))
        .collect();
    let total: u64 = eligible.iter().map(|m| u64::from(m.backend.weight)).sum();
    if total == 0 {
        return None;
    }
    let chosen = match mode {
        "leastconn" => *eligible
            .iter()
            .min_by_key(|m| (m.active * 100) / usize::from(m.backend.weight))?,
        _ => {
            let mut slot = if mode == "source" {
                let IpAddr::V4(ip) = peer else { return None };
                u64::from(u32::from(ip)).wrapping_mul(2_654_435_761) % total
            } else {
                pool.turn % total
            };
            let mut found = eligible[0];
            for m in &eligible {
                if slot < u64::from(m.backend.weight) {
                    found = m;
                    break;
                }
                slot -= u64::from(m.backend.weight);
            }
            found
        }
    };
    let out = (
        chosen.backend.id.clone(),
        SocketAddr::from((chosen.backend.address, chosen.backend.port)),
    );
    pool.turn = pool.turn.wrapping_add(1);
    Some(out)
}

async fn check_loop(pool: SharedPool, backend: Backend, listener: Listener, board: HealthBoard) {
    let c = listener.check;
    let addr = SocketAddr::from((backend.address, backend.port));
    let (mut good, mut bad) = (0u32, 0u32);
    let mut first = true;
    loop {
        let ok = tokio::time::timeout(
            Duration::from_secs(c.timeout_s.into()),
            probe(addr, &listener.check_method),
        )
        .await
        .unwrap_or(false);
        if ok {
            (good, bad) = (good + 1, 0);
        } else {
            (good, bad) = (0, bad + 1);
        }
        {
            let mut p = lock(&pool);
            let Some(m) = p.members.get_mut(&backend.id) else {
                return;
            };
            if first {
                m.healthy = ok;
            } else if m.healthy && bad >= c.fall {
                m.healthy = false;
            } else if !m.healthy && good >= c.rise {
                m.healthy = true;
            }
            board.lock().insert(
                backend.id.clone(),
                if m.healthy { "up" } else { "abnormal" },
            );
        }
        first = false;
        tokio::time::sleep(Duration::from_secs(c.interval_s.into())).await;
    }
}

/// One check: a TCP connect, or `http|/path[|host]`: a GET answered with a
/// 2xx or 3xx status line.
async fn probe(addr: SocketAddr, method: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let Some(rest) = method.strip_prefix("http|") else {
        return true;
    };
    let mut parts = rest.split('|');
    let path = parts.next().unwrap_or("/");
    let host = parts.next().unwrap_or("localhost");
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: iaas-sim-check\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if s.read_exact(&mut head).await.is_err() {
        return false;
    }
    // "HTTP/1.x 2xx" or 3xx
    head.starts_with(b"HTTP/1.") && matches!(head[9], b'2' | b'3')
}
