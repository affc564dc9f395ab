//! The node's NICs and who holds each: the in-memory view the handlers
//! consult under a short lock. The durable truth is the [`Store`]; the pool
//! is rebuilt from it (and the kernel) at start.
//!
//! [`Store`]: crate::store::Store

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hostnic_netlink::Mac;

use crate::config::NicSpec;
use crate::store::Key;

/// Held across the netlink work on one NIC, so operations on the same NIC
/// run one at a time while different NICs proceed in parallel.
pub type NicLock = Arc<tokio::sync::Mutex<()>>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Parked in the node namespace, ready for a pod.
    Free,
    /// An ADD is wiring it into a pod.
    Reserved(Key),
    /// A pod has it (the ADD committed).
    Held(Key),
    /// Not found in the node namespace; not handed out until it reappears.
    Missing,
}

#[derive(Debug)]
struct Slot {
    spec: NicSpec,
    state: State,
    lock: NicLock,
    /// False for a NIC we only know from a record (it left the config):
    /// it is served until released, then forgotten.
    configured: bool,
}

/// A NIC handed out for one operation.
#[derive(Clone, Debug)]
pub struct Lease {
    pub spec: NicSpec,
    pub lock: NicLock,
}

#[derive(Debug, Default)]
pub struct Pool {
    slots: BTreeMap<Mac, Slot>,
    by_key: HashMap<Key, Mac>,
}

impl Pool {
    pub fn insert(&mut self, spec: NicSpec, state: State, configured: bool) {
        if let State::Reserved(k) | State::Held(k) = &state {
            self.by_key.insert(k.clone(), spec.mac);
        }
        self.slots.insert(
            spec.mac,
            Slot {
                spec,
                state,
                lock: NicLock::default(),
                configured,
            },
        );
    }

    /// Reserves a free NIC for `key`: the lowest MAC, so runs are
    /// reproducible.
    pub fn reserve(&mut self, key: &Key) -> Option<Lease> {
        let slot = self.slots.values_mut().find(|s| s.state == State::Free)?;
        slot.state = State::Reserved(key.clone());
        self.by_key.insert(key.clone(), slot.spec.mac);
        Some(Lease {
            spec: slot.spec.clone(),
            lock: slot.lock.clone(),
        })
    }

    pub fn commit(&mut self, mac: Mac) {
        if let Some(s) = self.slots.get_mut(&mac)
            && let State::Reserved(k) = &s.state
        {
            s.state = State::Held(k.clone());
        }
    }

    /// Ends whatever holds the NIC; it becomes free if it is back in the node
    /// namespace, missing otherwise. A NIC no longer configured is dropped.
    pub fn release(&mut self, mac: Mac, present: bool) {
        let Some(s) = self.slots.get_mut(&mac) else {
            return;
        };
        if let State::Reserved(k) | State::Held(k) = &s.state {
            self.by_key.remove(k);
        }
        if !s.configured {
            self.slots.remove(&mac);
            return;
        }
        s.state = if present { State::Free } else { State::Missing };
    }

    /// The NIC an attachment holds, with its state.
    pub fn lookup(&self, key: &Key) -> Option<(Lease, State)> {
        let s = self.slots.get(self.by_key.get(key)?)?;
        Some((
            Lease {
                spec: s.spec.clone(),
                lock: s.lock.clone(),
            },
            s.state.clone(),
        ))
    }

    pub fn lease(&self, mac: Mac) -> Option<Lease> {
        self.slots.get(&mac).map(|s| Lease {
            spec: s.spec.clone(),
            lock: s.lock.clone(),
        })
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
            s.state = State::Free;
        }
    }

    /// Every committed attachment of `network`.
    pub fn held_in(&self, network: &str) -> Vec<(Key, Mac)> {
        self.slots
            .iter()
            .filter_map(|(m, s)| match &s.state {
                State::Held(k) if k.network == network => Some((k.clone(), *m)),
                _ => None,
            })
            .collect()
    }

    /// (mac, state) of every NIC, for logs and tests.
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
        assert_eq!(a.spec.mac, spec(1).mac, "lowest MAC first");
        let b = p.reserve(&key("b")).unwrap();
        assert_ne!(a.spec.mac, b.spec.mac);
        assert!(p.reserve(&key("c")).is_none());
        p.commit(a.spec.mac);
        assert_eq!(p.lookup(&key("a")).unwrap().1, State::Held(key("a")));
        assert_eq!(p.held_in("n").len(), 1);
        p.release(a.spec.mac, true);
        assert!(p.lookup(&key("a")).is_none());
        assert_eq!(p.free_count(), 1);
        p.release(b.spec.mac, false);
        assert_eq!(p.missing(), vec![b.spec.mac]);
        p.mark_found(b.spec.mac);
        assert_eq!(p.free_count(), 2);
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
