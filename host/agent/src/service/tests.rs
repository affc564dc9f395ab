//! The verbs without root: every error path of ADD, DEL, CHECK and GC
//! against a driver that does what the test says (`FakeDriver`), a store
//! that fails when told (`Flaky`), and namespaces that are whatever the
//! test says (`AnyPod`). The built-in policy guests decide, for real. The
//! kernel's part is the drivers' and the end-to-end tests' (tests/).

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::path::Path;
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
/// them is the slow part of a policy runtime's start).
fn policy_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_records_commits_and_answers_a_retry_the_same() {
    let b = bed(2).await;
    let Reply::Added(first) = b.add("c1").await.unwrap() else {
        panic!()
    };
    assert_eq!(b.on_disk(), [Phase::Committed]);
    assert_eq!(b.free(), 1);
    // A retried ADD answers as before, without a second NIC.
    let Reply::Added(again) = b.add("c1").await.unwrap() else {
        panic!()
    };
    assert_eq!(again, first);
    let reserves = b.driver.script().reserves;
    assert_eq!((reserves, b.free()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_anything_is_reserved() {
    let b = bed(1).await;
    let mut req = add_req("c1");
    req.mtu = Some(10);
    assert_eq!(
        code_of(b.svc.add(req, Some(pod_ns())).await),
        code::INVALID_CONFIG
    );
    let mut req = add_req("c1");
    req.target.ifname = "a/b".into();
    assert_ne!(code_of(b.svc.add(req, Some(pod_ns())).await), 0);
    assert_eq!(
        code_of(b.svc.add(add_req("c1"), None).await),
        code::INVALID_ENV
    );
    let mut req = add_req("c1");
    req.mac = Some("not-a-mac".into());
    assert_eq!(
        code_of(b.svc.add(req, Some(pod_ns())).await),
        code::INVALID_CONFIG
    );
    assert_eq!(b.driver.script().reserves, 0);
    assert!(b.on_disk().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_own_namespace_is_refused_with_code_4() {
    let mut b = bed(1).await;
    let svc = Arc::get_mut(&mut b.svc).unwrap();
    svc.namespaces = Arc::new(AnyPod {
        node: Some(pod_ns().id().unwrap()),
    });
    let e = b.add("c1").await.unwrap_err();
    assert_eq!(e.code(), code::INVALID_ENV, "{e}");
    assert!(e.msg.contains("refusing"), "{e}");
    assert_eq!(b.driver.script().reserves, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_to_reserve_leaves_nothing() {
    let b = bed(0).await;
    assert_eq!(code_of(b.add("c1").await), code::NO_FREE_NIC);
    assert!(b.on_disk().is_empty());
    assert!(b.svc.attachments.all().is_empty());
    // The key is free again: the next ADD is not told "in progress".
    assert_eq!(code_of(b.add("c1").await), code::NO_FREE_NIC);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wire_gives_the_nic_back_and_its_record_goes() {
    let b = bed(1).await;
    b.driver
        .script()
        .wire_errors
        .push_back((Kind::Internal, false));
    assert_eq!(code_of(b.add("c1").await), code::INTERNAL);
    assert_eq!(b.free(), 1);
    assert!(b.on_disk().is_empty());
    assert!(b.svc.attachments.all().is_empty());
    // And the retry succeeds with it.
    b.add("c1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wire_that_cannot_be_undone_keeps_the_nic_and_its_record_for_the_next_start() {
    let b = bed(2).await;
    b.driver
        .script()
        .wire_errors
        .push_back((Kind::Internal, true));
    assert_eq!(code_of(b.add("c1").await), code::INTERNAL);
    assert_eq!(b.driver.script().lost, [mac(1)].into());
    assert_eq!(b.on_disk(), [Phase::Reserved]);
    // The attachment is not the table's: a retry goes on with another.
    b.add("c1").await.unwrap();
    assert_eq!(b.on_disk(), [Phase::Committed, Phase::Reserved]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nic_found_gone_is_marked_and_another_tried() {
    let b = bed(2).await;
    b.driver.script().wire_errors.push_back((Kind::Gone, false));
    b.add("c1").await.unwrap();
    let s = b.driver.script();
    assert_eq!((s.reserves, s.lost.len(), s.free.len()), (2, 1, 0));
    drop(s);
    assert_eq!(b.on_disk(), [Phase::Committed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_that_cannot_be_recorded_is_given_back() {
    let b = bed(1).await;
    b.store.fail.lock().unwrap().push(Phase::Reserved);
    let e = b.add("c1").await.unwrap_err();
    assert_eq!(e.code(), code::INTERNAL);
    assert!(e.msg.contains("recording the reservation"), "{e}");
    assert_eq!(b.free(), 1);
    assert_eq!(b.driver.script().releases, 0, "nothing was wired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_cannot_be_recorded_is_taken_apart_again() {
    let b = bed(1).await;
    b.store.fail.lock().unwrap().push(Phase::Committed);
    let e = b.add("c1").await.unwrap_err();
    assert!(e.msg.contains("recording the allocation"), "{e}");
    let s = b.driver.script();
    assert_eq!((s.releases, s.free.len()), (1, 1));
    drop(s);
    assert!(b.on_disk().is_empty());
    assert!(b.svc.attachments.all().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_add_of_a_key_under_way_is_told_to_come_back() {
    let b = bed(2).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    *b.driver.wire_gate.lock().unwrap() = Some(gate.clone());
    let first = {
        let svc = b.svc.clone();
        tokio::spawn(async move { svc.add(add_req("c1"), Some(pod_ns())).await })
    };
    while b.driver.script().reserves == 0 {
        tokio::task::yield_now().await;
    }
    let e = b.add("c1").await.unwrap_err();
    assert_eq!(e.code(), code::TRY_AGAIN_LATER, "{e}");
    assert!(e.msg.contains("still in progress"), "{e}");
    // A CHECK meanwhile: in progress too.
    assert_eq!(code_of(b.check("c1").await), code::TRY_AGAIN_LATER);
    gate.notify_one();
    first.await.unwrap().unwrap();
    assert_eq!(b.driver.script().reserves, 1, "one NIC for one key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_answers_before_the_release_and_an_add_into_the_namespace_waits_for_it() {
    let b = bed(1).await;
    b.add("c1").await.unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    *b.driver.release_gate.lock().unwrap() = Some(gate.clone());
    assert!(matches!(b.del("c1").await.unwrap(), Reply::Deleted));
    // Answered: the release is recorded, the NIC not back yet.
    assert_eq!(b.on_disk(), [Phase::Releasing]);
    assert_eq!(b.free(), 0);
    // An ADD into the same namespace waits for the release, then gets the
    // NIC it frees.
    let add = {
        let svc = b.svc.clone();
        tokio::spawn(async move { svc.add(add_req("c2"), Some(pod_ns())).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!add.is_finished(), "the ADD went on before the release");
    gate.notify_one();
    add.await.unwrap().unwrap();
    assert_eq!(b.on_disk(), [Phase::Committed]);
    // DEL of what is not there, or twice: fine.
    b.del("never").await.unwrap();
    b.del("c1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_of_a_key_whose_release_is_under_way_waits_for_it() {
    let b = bed(1).await;
    b.add("c1").await.unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    *b.driver.release_gate.lock().unwrap() = Some(gate.clone());
    b.del("c1").await.unwrap();
    // The same key again from another namespace (a runtime reusing its
    // ids): it waits for the release, then gets the NIC it frees.
    let add = {
        let svc = b.svc.clone();
        tokio::spawn(async move { svc.add(add_req("c1"), Some(other_pod_ns())).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!add.is_finished(), "the ADD did not wait for the release");
    gate.notify_one();
    assert!(matches!(add.await.unwrap().unwrap(), Reply::Added(_)));
    assert_eq!(b.on_disk(), [Phase::Committed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_keeps_failing_is_left_for_the_next_start() {
    let b = bed(1).await;
    b.add("c1").await.unwrap();
    b.driver.script().release_failures = 10;
    b.del("c1").await.unwrap();
    b.settled().await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while b.driver.script().abandoned.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the release was given up");
    let s = b.driver.script();
    assert_eq!((s.releases, s.free.len()), (4, 0), "tried four times");
    drop(s);
    assert_eq!(b.on_disk(), [Phase::Releasing], "for the next start");
    assert!(b.svc.attachments.all().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_cannot_be_recorded_is_done_at_once() {
    let b = bed(1).await;
    b.add("c1").await.unwrap();
    b.store.fail.lock().unwrap().push(Phase::Releasing);
    b.del("c1").await.unwrap();
    // Done before DEL answered: nothing to finish in the background.
    let releases = b.driver.script().releases;
    assert_eq!((releases, b.free()), (1, 1));
    assert!(b.on_disk().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_what_is_wrong() {
    let b = bed(1).await;
    assert_eq!(code_of(b.check("c1").await), code::UNKNOWN_CONTAINER);
    let Reply::Added(result) = b.add("c1").await.unwrap() else {
        panic!()
    };
    b.check("c1").await.unwrap();
    b.driver.script().verify_diff = Some("interface eth0 is down".into());
    let e = b.check("c1").await.unwrap_err();
    assert_eq!(e.code(), code::CHECK_FAILED);
    assert!(e.msg.contains("is down"), "{e}");
    b.driver.script().verify_diff = None;
    // The runtime's cached result must show our address.
    let mut prev = result.encode(hostnic_proto::cni::Version::V1_0_0, None);
    prev["ips"][0]["address"] = "10.9.9.9/24".into();
    let e = b
        .svc
        .check(
            CheckRequest {
                target: target("c1"),
                prev_result: Some(prev),
            },
            Some(pod_ns()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), code::CHECK_FAILED, "{e}");
    assert_eq!(
        code_of(
            b.svc
                .check(
                    CheckRequest {
                        target: target("c1"),
                        prev_result: None
                    },
                    None
                )
                .await
        ),
        code::INVALID_ENV
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_releases_what_the_runtime_no_longer_lists_and_names_what_failed() {
    let b = bed(3).await;
    for c in ["keep", "drop1", "drop2"] {
        b.add(c).await.unwrap();
    }
    let gc = |valid: &[&str]| GcRequest {
        network: "net".into(),
        valid: valid
            .iter()
            .map(|c| AttachmentKey {
                container_id: c.to_string(),
                ifname: "eth0".into(),
            })
            .collect(),
    };
    b.driver.script().release_failures = 1;
    let e = b.svc.gc(gc(&["keep"])).await.unwrap_err();
    assert!(e.msg.contains("released 1 attachments but failed"), "{e}");
    assert_eq!(b.driver.script().abandoned.len(), 1);
    // The one whose release failed waits for the next start; the other
    // went, the listed one stays.
    assert_eq!(
        b.svc
            .attachments
            .all()
            .into_iter()
            .map(|r| r.key.container_id)
            .collect::<Vec<_>>(),
        ["keep"]
    );
    assert!(matches!(
        b.svc.gc(gc(&["keep"])).await.unwrap(),
        Reply::Collected { released: 0 }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_keeps_what_lives_and_drops_the_rest_of_the_records() {
    let b = bed(3).await;
    b.add("c1").await.unwrap();
    // A reservation whose ADD never answered (an agent killed mid-ADD).
    let stale = Record {
        phase: Phase::Reserved,
        wiring: None,
        holds: Holds::Nic { mac: mac(3) },
        key: crate::record::Key {
            network: "net".into(),
            container_id: "killed".into(),
            ifname: "eth0".into(),
        },
        ..b.svc.attachments.all()[0].clone()
    };
    b.store.put(&stale).unwrap();
    let loaded = Store::open(b.dir.path()).unwrap().load().unwrap();
    // A new agent on the same records.
    let again = bed(3).await;
    let store = Store::open(b.dir.path()).unwrap();
    let svc = Service {
        store: Arc::new(store),
        attachments: Arc::new(Attachments::default()),
        ..Arc::try_unwrap(again.svc).unwrap()
    };
    svc.restore(loaded).await.unwrap();
    let live: Vec<String> = svc
        .attachments
        .all()
        .into_iter()
        .map(|r| r.key.container_id)
        .collect();
    assert_eq!(live, ["c1"]);
    assert_eq!(b.on_disk(), [Phase::Committed], "the stale record went");
}
