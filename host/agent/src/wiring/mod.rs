//! Wiring drivers: how an attachment's interface comes to be. One small
//! trait, [`Driver`], with one implementation per way of wiring, chosen
//! once per vxnet ([`Drivers`]); the verbs call it and never ask which
//! they hold.
//!
//! - `exclusive/`: [`exclusive::ExclusiveNic`] — the pod gets a NIC of
//!   its own, one driver per way of wiring it (`move`: the NIC moved into
//!   its namespace), all acquiring NICs the same way;
//! - `shared/`: [`shared::SharedVeth`] — the pod gets an address of the
//!   vxnet's shared range and a veth behind the node's NIC there.
//!
//! A driver reserves what an attachment needs ([`Reservation`]: a value
//! that gives the NIC or address back when dropped uncommitted), wires the
//! pod's interface from it, verifies it, releases it, and at start makes
//! the kernel match the records it wired.

pub mod exclusive;
pub mod shared;

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use hostnic_netlink::{Netns, NsId};
use hostnic_proto::rpc;

use crate::config::NicSpec;
use crate::error::Result;
use crate::plan::{Plan, Routes};
use crate::plumb::Wiring;
use crate::record::{Holds, Key, Record, Resource};

/// What a driver is told of one ADD.
#[derive(Debug)]
pub struct Adding<'a> {
    pub key: &'a Key,
    pub plan: &'a Plan,
    /// The pod as the runtime sent it.
    pub pod: &'a rpc::Pod,
    pub mtu: u32,
    pub netns: &'a Netns,
    pub netns_id: NsId,
}

/// What [`Driver::wire`] made: the pod's interface as the result reports
/// it, the gateway the result names, and the kernel's share of the time.
#[derive(Debug)]
pub struct Wired {
    pub interface: Wiring,
    pub gateway: Ipv4Addr,
    pub kernel: Duration,
}

/// How a reservation ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The attachment committed: the resource is the pod's.
    Committed,
    /// Nothing is wired for it: the resource is free again.
    GivenBack,
    /// Nothing is wired for it, but the resource is not where it should
    /// be (a NIC gone from the node): out of use until it turns up.
    Missing,
    /// What was wired for it could not all be undone: the resource stays
    /// out of use (its record stays on disk) until the next start.
    Lost,
    /// Its release was handed to [`Driver::release`], which gives it back.
    HandedOver,
}

/// What an ADD reserved: the resource, the interface the guests see, and
/// how it ends. Dropped without [`Reservation::commit`] it is given back
/// (or kept out of use, see [`Reservation::lose`] and
/// [`Reservation::missing`]): a failed ADD needs no undo of its own.
pub struct Reservation {
    /// The pod's interface as the routes guest sees it: its MAC, address
    /// (with the vxnet's prefix) and gateway.
    pub interface: NicSpec,
    /// What the record holds; a driver may complete it while wiring.
    pub holds: Holds,
    /// The sticky identity the resource follows itself (a sticky NIC, a
    /// pinned address): the pod's address needs no remembering.
    pub sticky: Option<String>,
    /// How it was come by, for the decision audit.
    pub how: &'static str,
    /// The node's link the interface hangs on, when the driver found it
    /// while reserving (shared: the node's NIC in the vxnet).
    pub node_link: Option<u32>,
    fate: Outcome,
    end: Option<Box<dyn FnOnce(Outcome) + Send>>,
}

impl Reservation {
    pub fn new(
        interface: NicSpec,
        holds: Holds,
        how: &'static str,
        end: impl FnOnce(Outcome) + Send + 'static,
    ) -> Reservation {
        Reservation {
            interface,
            holds,
            sticky: None,
            how,
            node_link: None,
            fate: Outcome::GivenBack,
            end: Some(Box::new(end)),
        }
    }

    pub fn resource(&self) -> Resource {
        self.holds.resource()
    }

    /// What was wired could not be undone: keep the resource out of use,
    /// and its record for the next start to finish.
    pub fn lose(&mut self) {
        self.fate = Outcome::Lost;
    }

    /// The resource turned out not to be there: nothing was wired, and it
    /// is out of use until it turns up.
    pub fn missing(&mut self) {
        self.fate = Outcome::Missing;
    }

    /// Whether its record must stay when it is dropped.
    pub fn is_lost(&self) -> bool {
        self.fate == Outcome::Lost
    }

    fn end(&mut self, outcome: Outcome) {
        if let Some(end) = self.end.take() {
            end(outcome);
        }
    }

    /// The attachment is committed.
    pub fn commit(mut self) {
        self.end(Outcome::Committed);
    }

    /// The driver's release takes over (an ADD whose commit could not be
    /// recorded is released like any attachment).
    pub fn hand_over(mut self) {
        self.end(Outcome::HandedOver);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.end(self.fate);
    }
}

/// What a release gives back once the caller has forgotten the record:
/// dropped, the resource is free again. (Freed before its record is gone,
/// an ADD could take it, write its own record under the same name, and
/// lose it to the release's removal.)
#[must_use = "dropping it frees the resource: forget the record first"]
pub struct Handback(Option<Box<dyn FnOnce() + Send>>);

impl Handback {
    pub fn new(free: impl FnOnce() + Send + 'static) -> Handback {
        Handback(Some(Box::new(free)))
    }
}

impl Drop for Handback {
    fn drop(&mut self) {
        if let Some(free) = self.0.take() {
            free();
        }
    }
}

impl fmt::Debug for Handback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handback")
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("interface", &self.interface)
            .field("holds", &self.holds)
            .field("sticky", &self.sticky)
            .field("how", &self.how)
            .field("fate", &self.fate)
            .finish()
    }
}

#[async_trait::async_trait]
pub trait Driver: Send + Sync + fmt::Debug {
    /// The wiring's name (`move`, `shared`), for logs and `status`.
    fn name(&self) -> &'static str;

    /// `vxnet` as the guests see it under this wiring.
    fn for_guests(&self, vxnet: hostnic_policy::Vxnet) -> hostnic_policy::Vxnet {
        vxnet
    }

    /// Whether the pod's interface sits on the vxnet itself (its frames go
    /// straight onto it), so that its Service answers must be sent back
    /// through the node that translated them (`return_path.rs`); an
    /// interface behind the node answers through the node anyway.
    fn on_the_vxnet(&self) -> bool {
        true
    }

    /// Whether an ADD this wiring serves could succeed now (STATUS: kept
    /// cheap, no syscalls).
    fn ready(&self) -> bool;

    /// Whether this driver restores `record` at start. A record goes to
    /// the first driver, in restore order, that takes it: by default each
    /// takes those its wiring made; drivers that share what records hold
    /// (the NIC wirings: one pool of the node's NICs) take them together.
    fn restores(&self, record: &Record) -> bool {
        record.wiring() == self.name()
    }

    /// Takes what the attachment needs, as the plan says.
    async fn reserve(&self, add: &Adding<'_>) -> Result<Reservation>;

    /// Creates the pod's interface from `res` and configures it with
    /// `routes` (the routes guest's, through `res.interface`). On failure
    /// it undoes what it made, or calls `res.lose()` if it could not; an
    /// error of kind `Gone` says the resource vanished (try another).
    async fn wire(&self, add: &Adding<'_>, res: &mut Reservation, routes: Routes) -> Result<Wired>;

    /// Whether the pod (and the node) still have what `record` says; an
    /// error of kind `CheckFailed` names the first difference.
    async fn verify(&self, record: &Record, netns: &Netns) -> Result<()>;

    /// DEL answered for `record`: its resource is on its way back (not
    /// handed out; an ADD may wait for it). The release follows.
    fn releasing(&self, _record: &Record) {}

    /// Takes the attachment apart (from `netns`, when it can be reached);
    /// the resource is free once the [`Handback`] is dropped. Idempotent:
    /// what is gone already is done. On failure the resource is not handed
    /// out meanwhile.
    async fn release(&self, record: &Record, netns: Option<&Netns>) -> Result<Handback>;

    /// A release that will not succeed: the resource stays out of use
    /// until the next start (which finds the record and finishes it).
    fn abandon(&self, record: &Record);

    /// At start: makes the kernel match `records` (all this driver's),
    /// finishing or rolling back what a stopped agent left, and returns
    /// the attachments that live on. `unreadable`: resources whose
    /// records could not be read.
    async fn restore(
        &self,
        records: Vec<Record>,
        unreadable: &[Resource],
    ) -> anyhow::Result<Vec<Record>>;
}

/// The drivers of this node, and which serves which vxnet.
#[derive(Debug)]
pub struct Drivers {
    /// Every driver, in the order they restore: NICs first (a shared
    /// vxnet's wiring hangs on the node's NIC there).
    all: Vec<Arc<dyn Driver>>,
    /// The vxnets a driver other than the first serves.
    by_vxnet: Vec<(String, usize)>,
}

impl Drivers {
    /// `default` serves every vxnet the `others` do not name (and the
    /// static inventory without vxnets); each of `others` serves its
    /// vxnets.
    pub fn new(default: Arc<dyn Driver>, others: Vec<(Arc<dyn Driver>, Vec<String>)>) -> Drivers {
        let mut all = vec![default];
        let mut by_vxnet = Vec::new();
        for (driver, vxnets) in others {
            all.push(driver);
            by_vxnet.extend(vxnets.into_iter().map(|v| (v, all.len() - 1)));
        }
        Drivers { all, by_vxnet }
    }

    /// The driver of an ADD whose first choice is `vxnet` (`None`: the
    /// static inventory without vxnets).
    pub fn for_vxnet(&self, vxnet: Option<&str>) -> Arc<dyn Driver> {
        let i = vxnet
            .and_then(|v| self.by_vxnet.iter().find(|(id, _)| id == v))
            .map_or(0, |(_, i)| *i);
        self.all[i].clone()
    }

    /// The driver that wired `record` (by the wiring its record names).
    pub fn for_record(&self, record: &Record) -> Arc<dyn Driver> {
        let name = record.wiring();
        self.all
            .iter()
            .find(|d| d.name() == name)
            .unwrap_or(&self.all[0])
            .clone()
    }

    /// Every driver, in restore order.
    pub fn all(&self) -> &[Arc<dyn Driver>] {
        &self.all
    }

    /// `vxnet` as the guests see it, under the wiring that serves it.
    pub fn for_guests(&self, vxnet: hostnic_policy::Vxnet) -> hostnic_policy::Vxnet {
        self.for_vxnet(Some(&vxnet.id.clone())).for_guests(vxnet)
    }
}
