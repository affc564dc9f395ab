//! The node's NICs and the state of each: the in-memory view consulted
//! under a short lock. Which attachment holds a NIC is the attachment
//! table's to say (`attachments.rs`); the pool knows whether a NIC can be
//! handed out. It is rebuilt from the records and the kernel at start
//! (`wiring/exclusive/restore.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hostnic_netlink::Mac;

use crate::config::NicSpec;
use crate::record::Key;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Parked in the node namespace, ready for a pod.
    Free,
    /// An ADD is wiring it into a pod.
    Reserved(Key),
    /// A pod has it (the ADD committed).
    Held(Key),
    /// DEL answered; the NIC is on its way back from the pod. Not handed
    /// out until it is parked again.
    Releasing,
    /// Not found in the node namespace; not handed out until it reappears.
    Missing,
    /// Created and being attached by the cloud; free once its link appears.
    Attaching,
    /// The node's own NIC in its vxnet, configured in the node namespace
    /// as the next hop for `gw 0.0.0.0` route templates. Never given to pods.
    Gateway,
    /// A sticky NIC whose pod is gone, on its way off the node: detached
    /// in the cloud and kept there for its identity. Never given to pods.
    Leaving,
}

impl State {
    /// Every state's name, as [`State::name`] spells it.
    pub const NAMES: [&'static str; 8] = [
        "free",
        "reserved",
        "held",
        "releasing",
        "missing",
        "attaching",
        "gateway",
        "leaving",
    ];

    /// The state's name in metrics and `status`.
    pub fn name(&self) -> &'static str {
        match self {
            State::Free => "free",
            State::Reserved(_) => "reserved",
            State::Held(_) => "held",
            State::Releasing => "releasing",
            State::Missing => "missing",
            State::Attaching => "attaching",
            State::Gateway => "gateway",
            State::Leaving => "leaving",
        }
    }
}

#[derive(Debug)]
struct Slot {
    spec: NicSpec,
    state: State,
    /// False for a NIC we only know from a record (it left the config):
    /// it is served until released, then forgotten.
    configured: bool,
    /// When its state last changed: for a free NIC, how long it has idled.
    changed: Instant,
    /// The sticky identity the NIC follows (tagged so in the cloud): it
    /// leaves the node when its pod does, never to the free pool.
    sticky: Option<String>,
    /// The pod that has it has a child of it (`passthru`): the NIC stays
    /// in the node's namespace, up, while it is reserved, held or
    /// releasing. Such a NIC is on the node and yet not free; absent from
    /// the node, it vanished (its pod lost its interface).
    on_node: bool,
}

impl Slot {
    /// Every state change goes through here, so `changed` is never stale
    /// and waiters learn of it (`version`).
    fn set(&mut self, state: State, version: &mut u64) -> State {
        if state != self.state {
            self.changed = Instant::now();
            *version += 1;
        }
        std::mem::replace(&mut self.state, state)
    }
}

#[derive(Debug, Default)]
pub struct Pool {
    slots: BTreeMap<Mac, Slot>,
    /// Bumped by every change, so a waiter knows to look again.
    version: u64,
}

impl Pool {
    /// Changes so far: a waiter looks again when this moved.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn insert(&mut self, spec: NicSpec, state: State, configured: bool) {
        self.version += 1;
        self.slots.insert(
            spec.mac,
            Slot {
                spec,
                state,
                configured,
                changed: Instant::now(),
                sticky: None,
                on_node: false,
            },
        );
    }

    /// Adds a NIC the pool does not know yet; false if it knows it (an ADD
    /// or a provision got there first).
    pub fn insert_new(&mut self, spec: NicSpec, state: State) -> bool {
        if self.slots.contains_key(&spec.mac) {
            return false;
        }
        self.insert(spec, state, true);
        true
    }

    /// Forgets a NIC if it is in one of the states `from` and has been
    /// since `since` (the moment the caller's view of the cloud or the
    /// kernel was taken); `None`, and nothing changes, otherwise.
    pub fn remove_if(&mut self, mac: Mac, from: &[State], since: Instant) -> Option<NicSpec> {
        let s = self.slots.get(&mac)?;
        if !from.contains(&s.state) || s.changed > since {
            return None;
        }
        self.version += 1;
        self.slots.remove(&mac).map(|s| s.spec)
    }

    /// Moves a NIC from one of the states `from` to `to`, returning the
    /// state it left. `None`, and nothing changes, if it is in none of them:
    /// someone acted on it since the caller looked. Work outside the
    /// attachment life cycle (reconcile, adoption, trim, the gateway NIC)
    /// changes a NIC's state only through this, so a stale look never
    /// overrides an ADD that reserved the NIC in the meantime.
    pub fn transition(&mut self, mac: Mac, from: &[State], to: State) -> Option<State> {
        debug_assert!(
            !matches!(to, State::Reserved(_) | State::Held(_)),
            "attachments begin with reserve and end with release"
        );
        let s = self.slots.get_mut(&mac)?;
        if !from.contains(&s.state) {
            return None;
        }
        Some(s.set(to, &mut self.version))
    }

    /// Reserves NIC `mac` for `key` if it is in one of the states `from`
    /// (a sticky NIC as its attach here completes).
    pub fn claim(&mut self, mac: Mac, key: &Key, from: &[State]) -> Option<NicSpec> {
        let slot = self.slots.get_mut(&mac)?;
        if !from.contains(&slot.state) {
            return None;
        }
        slot.set(State::Reserved(key.clone()), &mut self.version);
        Some(slot.spec.clone())
    }

    /// Marks NIC `mac` as following sticky `identity`.
    pub fn set_sticky(&mut self, mac: Mac, identity: &str) {
        if let Some(s) = self.slots.get_mut(&mac) {
            s.sticky = Some(identity.to_string());
        }
    }

    /// The attachment that reserved NIC `mac` keeps it on the node (a
    /// passthru child of it in the pod): until its release, the NIC is
    /// held on the node.
    pub fn set_on_node(&mut self, mac: Mac) {
        if let Some(s) = self.slots.get_mut(&mac) {
            s.on_node = true;
        }
    }

    /// The NICs a pod has through a child while they stay on the node
    /// (reserved, held or releasing): up in the node's namespace, never to
    /// be parked or configured there.
    pub fn held_on_node(&self) -> Vec<Mac> {
        self.slots
            .iter()
            .filter(|(_, s)| {
                s.on_node
                    && matches!(
                        s.state,
                        State::Reserved(_) | State::Held(_) | State::Releasing
                    )
            })
            .map(|(m, _)| *m)
            .collect()
    }

    /// The sticky identity NIC `mac` follows, if any.
    pub fn sticky_of(&self, mac: Mac) -> Option<String> {
        self.slots.get(&mac)?.sticky.clone()
    }

    /// The attachment holding a sticky NIC is over: it is
    /// [`State::Leaving`] until the cloud detached it.
    pub fn leave(&mut self, mac: Mac) {
        if let Some(s) = self.slots.get_mut(&mac) {
            s.on_node = false;
            s.set(State::Leaving, &mut self.version);
        }
    }

    /// Reserves for `key` the first free NIC `pick` finds.
    fn reserve_first(&mut self, key: &Key, mac: Option<Mac>) -> Option<NicSpec> {
        let slot = self.slots.get_mut(&mac?)?;
        slot.set(State::Reserved(key.clone()), &mut self.version);
        Some(slot.spec.clone())
    }

    /// Reserves a free NIC in the first vxnet of `order` that has one.
    pub fn reserve_in(&mut self, order: &[String], key: &Key) -> Option<NicSpec> {
        let mac = order.iter().find_map(|v| {
            self.slots
                .values()
                .find(|s| s.state == State::Free && s.spec.vxnet.as_ref() == Some(v))
                .map(|s| s.spec.mac)
        });
        self.reserve_first(key, mac)
    }

    /// Reserves a free NIC that `pred` accepts (the ip policy's address).
    pub fn reserve_where(&mut self, key: &Key, pred: impl Fn(&NicSpec) -> bool) -> Option<NicSpec> {
        let mac = self
            .slots
            .values()
            .find(|s| s.state == State::Free && pred(&s.spec))
            .map(|s| s.spec.mac);
        self.reserve_first(key, mac)
    }

    /// Reserves a free NIC for `key`: the lowest MAC, so runs are
    /// reproducible.
    pub fn reserve(&mut self, key: &Key) -> Option<NicSpec> {
        self.reserve_where(key, |_| true)
    }

    /// The free NIC `reserve` would take first.
    pub fn first_free(&self) -> Option<NicSpec> {
        self.slots
            .values()
            .find(|s| s.state == State::Free)
            .map(|s| s.spec.clone())
    }

    /// NICs of `vxnet` that pods hold or are being given.
    pub fn count_held_in(&self, vxnet: &str) -> usize {
        self.count_held_where(|v| v == Some(vxnet))
    }

    /// NICs, in any vxnet, that pods hold or are being given.
    pub fn count_held(&self) -> usize {
        self.count_held_where(|_| true)
    }

    fn count_held_where(&self, vxnet: impl Fn(Option<&str>) -> bool) -> usize {
        self.slots
            .values()
            .filter(|s| {
                vxnet(s.spec.vxnet.as_deref())
                    && matches!(s.state, State::Held(_) | State::Reserved(_))
            })
            .count()
    }

    pub fn state(&self, mac: Mac) -> Option<State> {
        self.slots.get(&mac).map(|s| s.state.clone())
    }

    pub fn spec(&self, mac: Mac) -> Option<NicSpec> {
        self.slots.get(&mac).map(|s| s.spec.clone())
    }

    /// How many NICs of `vxnet` are in each of these states.
    pub fn count_in(&self, vxnet: &str, states: &[State]) -> usize {
        self.slots
            .values()
            .filter(|s| s.spec.vxnet.as_deref() == Some(vxnet) && states.contains(&s.state))
            .count()
    }

    /// How many NICs, in any vxnet, are in each of these states.
    pub fn count_all(&self, states: &[State]) -> usize {
        self.slots
            .values()
            .filter(|s| states.contains(&s.state))
            .count()
    }

    /// Every NIC the pool knows, in any state.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Free NICs of `vxnet` idle for at least `idle`, longest idle first.
    pub fn idle_in(&self, vxnet: &str, idle: Duration) -> Vec<Mac> {
        let mut v: Vec<(Instant, Mac)> = self
            .slots
            .values()
            .filter(|s| {
                s.state == State::Free
                    && s.spec.vxnet.as_deref() == Some(vxnet)
                    && s.changed.elapsed() >= idle
            })
            .map(|s| (s.changed, s.spec.mac))
            .collect();
        v.sort();
        v.into_iter().map(|(_, m)| m).collect()
    }

    /// The node's gateway NICs, one per vxnet that has one.
    pub fn gateways(&self) -> Vec<NicSpec> {
        self.slots
            .values()
            .filter(|s| s.state == State::Gateway)
            .map(|s| s.spec.clone())
            .collect()
    }

    /// The node's gateway NIC in `vxnet`.
    pub fn gateway_in(&self, vxnet: &str) -> Option<NicSpec> {
        self.slots
            .values()
            .find(|s| s.state == State::Gateway && s.spec.vxnet.as_deref() == Some(vxnet))
            .map(|s| s.spec.clone())
    }

    /// The attachment reserved the NIC for committed.
    pub fn commit(&mut self, mac: Mac) {
        if let Some(s) = self.slots.get_mut(&mac)
            && let State::Reserved(k) = &s.state
        {
            let held = State::Held(k.clone());
            s.set(held, &mut self.version);
        }
    }

    /// The attachment holding the NIC is going (DEL answered): the NIC is
    /// not free until [`Pool::release`].
    pub fn start_release(&mut self, mac: Mac) {
        if let Some(s) = self.slots.get_mut(&mac) {
            s.set(State::Releasing, &mut self.version);
        }
    }

    /// Ends whatever holds the NIC; it becomes free if it is back in the node
    /// namespace, missing otherwise. A NIC no longer configured is dropped.
    pub fn release(&mut self, mac: Mac, present: bool) {
        let Some(s) = self.slots.get_mut(&mac) else {
            return;
        };
        if !s.configured {
            self.version += 1;
            self.slots.remove(&mac);
            return;
        }
        s.on_node = false;
        s.set(
            if present { State::Free } else { State::Missing },
            &mut self.version,
        );
    }

    pub fn free_count(&self) -> usize {
        self.slots
            .values()
            .filter(|s| s.state == State::Free)
            .count()
    }

    pub fn missing(&self) -> Vec<Mac> {
        self.slots
            .iter()
            .filter(|(_, s)| s.state == State::Missing)
            .map(|(m, _)| *m)
            .collect()
    }

    pub fn mark_found(&mut self, mac: Mac) {
        if let Some(s) = self.slots.get_mut(&mac)
            && s.state == State::Missing
        {
            s.set(State::Free, &mut self.version);
        }
    }

    /// Every NIC with its state and how long it has been in it.
    pub fn rows(&self) -> Vec<(NicSpec, State, Duration)> {
        self.slots
            .values()
            .map(|s| (s.spec.clone(), s.state.clone(), s.changed.elapsed()))
            .collect()
    }

    /// NICs per (vxnet, state), every state listed for every vxnet the
    /// pool has (a static NIC without a vxnet counts under ""), for the
    /// metrics.
    pub fn counts(&self) -> BTreeMap<(String, &'static str), usize> {
        let mut out = BTreeMap::new();
        for slot in self.slots.values() {
            let vxnet = slot.spec.vxnet.clone().unwrap_or_default();
            for state in State::NAMES {
                out.entry((vxnet.clone(), state)).or_insert(0);
            }
            *out.entry((vxnet, slot.state.name())).or_default() += 1;
        }
        out
    }

    pub fn snapshot(&self) -> Vec<(Mac, State)> {
        self.slots
            .iter()
            .map(|(m, s)| (*m, s.state.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(last: u8) -> NicSpec {
        NicSpec {
            mac: Mac([0x52, 0x54, 0, 0, 0, last]),
            address: format!("10.0.0.{}/24", 10 + last).parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            vxnet: None,
        }
    }

    fn key(c: &str) -> Key {
        Key {
            network: "n".into(),
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn a_nic_goes_to_one_key_at_a_time() {
        let mut p = Pool::default();
        p.insert(spec(2), State::Free, true);
        p.insert(spec(1), State::Free, true);
        let a = p.reserve(&key("a")).unwrap();
        assert_eq!(a.mac, spec(1).mac, "lowest MAC first");
        let b = p.reserve(&key("b")).unwrap();
        assert_ne!(a.mac, b.mac);
        assert!(p.reserve(&key("c")).is_none());
        let before = p.version();
        p.commit(a.mac);
        assert_eq!(p.state(a.mac), Some(State::Held(key("a"))));
        assert!(p.version() > before, "a change is seen by waiters");
        p.release(a.mac, true);
        assert_eq!(p.free_count(), 1);
        p.release(b.mac, false);
        assert_eq!(p.missing(), vec![b.mac]);
        p.mark_found(b.mac);
        assert_eq!(p.free_count(), 2);
    }

    #[test]
    fn reservation_follows_the_vxnet_order_and_skips_attaching_nics() {
        let mut p = Pool::default();
        let mut a = spec(1);
        a.vxnet = Some("vxnet-a".into());
        let mut b = spec(2);
        b.vxnet = Some("vxnet-b".into());
        let mut c = spec(3);
        c.vxnet = Some("vxnet-b".into());
        p.insert(a.clone(), State::Free, true);
        p.insert(b.clone(), State::Attaching, true);
        p.insert(c.clone(), State::Free, true);
        let order = ["vxnet-b".to_string(), "vxnet-a".to_string()];
        assert_eq!(p.reserve_in(&order, &key("x")).unwrap().mac, c.mac);
        assert_eq!(
            p.reserve_in(&order, &key("y")).unwrap().mac,
            a.mac,
            "vxnet-b has none free left"
        );
        assert!(
            p.reserve_in(&order, &key("z")).is_none(),
            "an attaching NIC is not free"
        );
        p.transition(b.mac, &[State::Attaching], State::Free)
            .unwrap();
        assert_eq!(p.count_in("vxnet-b", &[State::Free]), 1);
        assert_eq!(p.idle_in("vxnet-b", Duration::ZERO), vec![b.mac]);
        assert!(p.idle_in("vxnet-b", Duration::from_secs(3600)).is_empty());
        p.transition(b.mac, &[State::Free], State::Gateway).unwrap();
        assert_eq!(p.gateway_in("vxnet-b").unwrap().mac, b.mac);
        assert!(
            p.remove_if(b.mac, &[State::Gateway], Instant::now())
                .is_some()
        );
        assert_eq!(p.len(), 2);
    }

    /// The background loop decides from a look taken earlier; an ADD that
    /// reserved the NIC since must win. (A trim or a re-attach that went
    /// ahead detached a NIC out of a running pod.)
    #[test]
    fn a_stale_look_never_overrides_a_reservation() {
        let mut p = Pool::default();
        p.insert(spec(1), State::Free, true);
        let looked = Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        let mac = p.reserve(&key("a")).unwrap().mac;
        assert_eq!(p.transition(mac, &[State::Free], State::Attaching), None);
        assert_eq!(p.remove_if(mac, &[State::Free], Instant::now()), None);
        assert_eq!(p.state(mac), Some(State::Reserved(key("a"))));

        // Freed again after the look: still not the NIC the look saw.
        p.release(mac, true);
        assert_eq!(p.remove_if(mac, &[State::Free], looked), None);
        assert!(p.remove_if(mac, &[State::Free], Instant::now()).is_some());

        p.insert(spec(2), State::Missing, true);
        let m2 = spec(2).mac;
        assert_eq!(
            p.transition(m2, &[State::Free, State::Missing], State::Attaching),
            Some(State::Missing)
        );
        assert!(
            !p.insert_new(spec(2), State::Free),
            "known NICs stay as they are"
        );
        assert_eq!(p.state(m2), Some(State::Attaching));
    }

    /// A NIC a pod has through a passthru child stays on the node and is
    /// listed as held there until its release, whatever else happens.
    #[test]
    fn a_nic_held_on_the_node_is_known_as_such_until_released() {
        let mut p = Pool::default();
        p.insert(spec(1), State::Free, true);
        p.insert(spec(2), State::Free, true);
        let a = p.reserve(&key("a")).unwrap().mac;
        p.set_on_node(a);
        assert_eq!(p.held_on_node(), vec![a]);
        p.commit(a);
        p.start_release(a);
        assert_eq!(p.held_on_node(), vec![a], "releasing: still the pod's");
        p.release(a, true);
        assert!(p.held_on_node().is_empty());
        let b = p.reserve(&key("b")).unwrap().mac;
        assert_eq!(b, a, "free again, and a plain reservation now");
        assert!(p.held_on_node().is_empty());
    }

    #[test]
    fn an_unconfigured_nic_is_forgotten_on_release() {
        let mut p = Pool::default();
        p.insert(spec(1), State::Held(key("a")), false);
        p.release(spec(1).mac, true);
        assert!(p.snapshot().is_empty());
        assert!(p.reserve(&key("b")).is_none());
    }
}
