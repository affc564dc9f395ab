//! The verbs without root: every error path of ADD, DEL, CHECK and GC
//! against a driver that does what the test says (`FakeDriver`), a store
//! that fails when told (`Flaky`), and namespaces that are whatever the
//! test says (`AnyPod`). The built-in policy guests decide, for real. The
//! kernel's part is the drivers' and the end-to-end tests' (tests/).
//!
//! This file is the harness; the tests are by verb: `add.rs` (ADD and
//! its error paths), `release.rs` (DEL, the background release and the
//! ADDs that wait for one), `check_gc_restore.rs`.

mod add;
mod check_gc_restore;
mod release;

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hostnic_netlink::{Mac, Netns, NsId};
use hostnic_proto::cni::{AttachmentKey, code};
use hostnic_proto::rpc::{AddRequest, CheckRequest, DelRequest, GcRequest, Pod, Reply, Target};
use ipnet::Ipv4Net;

use super::{Parts, Service};
use crate::attachments::Attachments;
use crate::config::{Config, NicSpec};
use crate::error::{Error, Kind, Result};
use crate::nics::Nics;
use crate::plumb::{Namespaces, PlumbError, Wiring};
use crate::pool::Pool;
use crate::record::{Holds, Phase, Record, Resource};
use crate::source::{Acquired, NicSource, VxnetAddr};
use crate::store::{Records, Store};
use crate::wiring::{Adding, Driver, Drivers, Handback, Outcome, Reservation, Wired};

/// What the fake driver is told to do, and what it saw.
#[derive(Debug, Default)]
struct Script {
    free: BTreeSet<Mac>,
    lost: BTreeSet<Mac>,
    abandoned: Vec<Mac>,
    /// Errors of the next `wire` calls, and whether each could not undo.
    wire_errors: VecDeque<(Kind, bool)>,
    /// `release` fails this many more times.
    release_failures: usize,
    verify_diff: Option<String>,
    reserves: usize,
    releases: usize,
}

#[derive(Debug, Default)]
struct FakeDriver {
    script: Arc<Mutex<Script>>,
    /// `wire` waits for this to be told (an ADD held under way).
    wire_gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
    /// `release` waits for this (a DEL's background release held).
    release_gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
}

fn mac(n: u8) -> Mac {
    Mac([0x52, 0x54, 0, 0, 0, n])
}

impl FakeDriver {
    fn with_nics(n: u8) -> Arc<FakeDriver> {
        let d = FakeDriver::default();
        d.script().free = (1..=n).map(mac).collect();
        Arc::new(d)
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap()
    }
}

#[async_trait::async_trait]
impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "move"
    }

    fn ready(&self) -> bool {
        !self.script().free.is_empty()
    }

    async fn reserve(&self, _add: &Adding<'_>) -> Result<Reservation> {
        let mut s = self.script();
        s.reserves += 1;
        let m = *s
            .free
            .iter()
            .next()
            .ok_or_else(|| Error::exhausted("no free NIC"))?;
        s.free.remove(&m);
        let script = self.script.clone();
        let nic = NicSpec {
            mac: m,
            address: Ipv4Net::new([10, 0, 0, 10 + m.0[5]].into(), 24).unwrap(),
            gateway: [10, 0, 0, 1].into(),
            vxnet: None,
        };
        Ok(Reservation::new(
            nic,
            Holds::Nic { mac: m },
            "fake",
            move |o| {
                let mut s = script.lock().unwrap();
                match o {
                    Outcome::Committed | Outcome::HandedOver => {}
                    Outcome::GivenBack => {
                        s.free.insert(m);
                    }
                    Outcome::Lost | Outcome::Missing => {
                        s.lost.insert(m);
                    }
                }
            },
        ))
    }

    async fn wire(
        &self,
        add: &Adding<'_>,
        res: &mut Reservation,
        routes: crate::plan::Routes,
    ) -> Result<Wired> {
        let gate = self.wire_gate.lock().unwrap().clone();
        if let Some(g) = gate {
            g.notified().await;
        }
        if let Some((kind, lose)) = self.script().wire_errors.pop_front() {
            if lose {
                res.lose();
            } else if kind == Kind::Gone {
                res.missing();
            }
            return Err(Error::new(kind, "the fake driver was told to fail"));
        }
        Ok(Wired {
            interface: Wiring {
                mac: res.interface.mac,
                ifname: add.key.ifname.clone(),
                address: res.interface.address,
                mtu: add.mtu,
                routes,
            },
            gateway: res.interface.gateway,
            kernel: Duration::ZERO,
        })
    }

    async fn verify(&self, _record: &Record, _netns: &Netns) -> Result<()> {
        match self.script().verify_diff.clone() {
            Some(d) => Err(Error::new(Kind::CheckFailed, d)),
            None => Ok(()),
        }
    }

    async fn release(&self, record: &Record, _netns: Option<&Netns>) -> Result<Handback> {
        let gate = self.release_gate.lock().unwrap().clone();
        if let Some(g) = gate {
            g.notified().await;
        }
        let mut s = self.script();
        s.releases += 1;
        if s.release_failures > 0 {
            s.release_failures -= 1;
            return Err(Error::internal("the fake driver was told not to release"));
        }
        let (script, m) = (self.script.clone(), record.mac().unwrap());
        Ok(Handback::new(move || {
            script.lock().unwrap().free.insert(m);
        }))
    }

    fn abandon(&self, record: &Record) {
        self.script().abandoned.extend(record.mac());
    }

    async fn restore(
        &self,
        records: Vec<Record>,
        _unreadable: &[Resource],
    ) -> anyhow::Result<Vec<Record>> {
        let mut s = self.script();
        for r in &records {
            s.free.remove(&r.mac().unwrap());
        }
        Ok(records
            .into_iter()
            .filter(|r| r.phase == Phase::Committed)
            .collect())
    }
}

/// Namespaces as the test says: every one is a pod's but the one whose
/// identity is `node`.
#[derive(Debug)]
struct AnyPod {
    node: Option<NsId>,
}

#[async_trait::async_trait]
impl Namespaces for AnyPod {
    fn pod_ns_id(&self, ns: &Netns) -> Result<NsId, PlumbError> {
        let mut id = ns.id()?;
        // `other_pod_ns()`: another pod's namespace, as far as the
        // service can tell.
        if ns.label() == OTHER_POD {
            id.ino += 1;
        }
        if Some(id) == self.node {
            return Err(PlumbError::NotAPod(crate::plumb::NotAPod {
                label: ns.label().to_string(),
                which: "the node's network namespace",
            }));
        }
        Ok(id)
    }

    fn reopen(&self, _path: &str, _recorded: Option<NsId>) -> Option<Netns> {
        Netns::current().ok()
    }

    async fn has_default_route(&self, _pod_ns: &Netns) -> Result<bool, PlumbError> {
        Ok(false)
    }
}

/// A store on disk that fails the writes of the phases it is told to.
#[derive(Debug)]
struct Flaky {
    store: Store,
    fail: Mutex<Vec<Phase>>,
}

impl Records for Flaky {
    fn put(&self, r: &Record) -> io::Result<()> {
        if self.fail.lock().unwrap().contains(&r.phase) {
            return Err(io::Error::other("the disk is full (told to fail)"));
        }
        self.store.put(r)
    }

    fn remove(&self, resource: Resource) -> io::Result<()> {
        self.store.remove(resource)
    }

    fn writable(&self) -> io::Result<()> {
        self.store.writable()
    }
}

/// No vxnets: a static inventory's node, whose NICs are the driver's.
#[derive(Debug)]
struct NoVxnets;

#[async_trait::async_trait]
impl NicSource for NoVxnets {
    fn vxnets(&self) -> Vec<VxnetAddr> {
        Vec::new()
    }

    fn facts(&self, _pool: &Pool) -> (Vec<hostnic_policy::Vxnet>, hostnic_policy::Node) {
        (Vec::new(), crate::policy::node("", 0, 64))
    }

    async fn acquire(&self, _key: &crate::record::Key, _o: Option<&[String]>) -> Result<Acquired> {
        unreachable!("the fake driver acquires")
    }

    async fn acquire_address(
        &self,
        _key: &crate::record::Key,
        _addrs: &[std::net::Ipv4Addr],
        _vxnet: Option<&str>,
    ) -> Result<Acquired> {
        unreachable!("the fake driver acquires")
    }

    fn can_create(&self, _pool_len: usize) -> bool {
        false
    }
}

/// The built-in guests' compiled modules, shared by the tests (compiling
/// them is the slow part of a policy runtime's start) and kept between
/// runs: a fixed directory, where a temporary one held by a static would
/// never be removed. The cache checks every file, so sharing it is safe.
fn policy_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| std::env::temp_dir().join("hostnic-agent-unit-tests-policy"))
}

struct Bed {
    svc: Arc<Service>,
    driver: Arc<FakeDriver>,
    store: Arc<Flaky>,
    dir: tempfile::TempDir,
}

async fn bed(nics: u8) -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::parse("").unwrap();
    cfg.state_dir = policy_dir().to_path_buf();
    let node = Netns::current().unwrap();
    let netlink = node.connect().await.unwrap();
    let driver = FakeDriver::with_nics(nics);
    let store = Arc::new(Flaky {
        store: Store::open(dir.path()).unwrap(),
        fail: Mutex::default(),
    });
    let svc = Service::new(
        &cfg,
        Parts {
            attachments: Arc::new(Attachments::default()),
            drivers: Drivers::new(driver.clone(), Vec::new()),
            store: store.clone(),
            nics: Arc::new(Nics::new(
                crate::plumb::Plumber::new(node, netlink),
                Pool::default(),
            )),
            namespaces: Arc::new(AnyPod { node: None }),
            source: Arc::new(NoVxnets),
            cloud: None,
            policies: crate::policy::Policies::load(&cfg).unwrap(),
            kube: None,
            return_path: None,
            netpol: None,
        },
    );
    Bed {
        svc: Arc::new(svc),
        driver,
        store,
        dir,
    }
}

fn target(cid: &str) -> Target {
    Target {
        network: "net".into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        netns: Some("/var/run/netns/pod".into()),
    }
}

fn add_req(cid: &str) -> AddRequest {
    AddRequest {
        target: target(cid),
        pod: Pod::default(),
        mtu: None,
        routes: Vec::new(),
        vxnets: None,
        default_route: None,
        ips: Vec::new(),
        mac: None,
        hooks: Default::default(),
        bandwidth: None,
    }
}

fn pod_ns() -> Netns {
    Netns::current().unwrap()
}

const OTHER_POD: &str = "/proc/self/ns/net";

/// A namespace the fake takes for another pod's than [`pod_ns`]'s.
fn other_pod_ns() -> Netns {
    Netns::open(Path::new(OTHER_POD)).unwrap()
}

impl Bed {
    async fn add(&self, cid: &str) -> Result<Reply> {
        self.svc.add(add_req(cid), Some(pod_ns())).await
    }

    async fn del(&self, cid: &str) -> Result<Reply> {
        self.svc
            .del(
                DelRequest {
                    target: target(cid),
                },
                Some(pod_ns()),
            )
            .await
    }

    async fn check(&self, cid: &str) -> Result<Reply> {
        self.svc
            .check(
                CheckRequest {
                    target: target(cid),
                    prev_result: None,
                },
                Some(pod_ns()),
            )
            .await
    }

    /// The records on disk, by phase.
    fn on_disk(&self) -> Vec<Phase> {
        let mut v: Vec<Phase> = Store::open(self.dir.path())
            .unwrap()
            .load()
            .unwrap()
            .records
            .into_iter()
            .map(|r| r.phase)
            .collect();
        v.sort_by_key(|p| p.name());
        v
    }

    fn free(&self) -> usize {
        self.driver.script().free.len()
    }

    /// Waits for the background release of a DEL to end.
    async fn settled(&self) {
        for _ in 0..200 {
            if self
                .svc
                .attachments
                .all()
                .iter()
                .all(|r| r.phase != Phase::Releasing)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("a release never ended");
    }
}

fn code_of<T: std::fmt::Debug>(r: Result<T>) -> u32 {
    r.unwrap_err().code()
}
