//! The node's share of the account's API rate.
//!
//! The cloud limits requests per account, and every node of a cluster
//! calls with the same account. Per-action buckets ([`crate::budget`])
//! guard against a runaway loop but do not add up to the account's limit:
//! fifty nodes starting together each burst at their own budget, most of
//! their requests are refused (ret_code 5100), and the retries make it
//! worse. So every request, whatever its action, also waits for one of
//! the node's slots in a schedule the nodes share without talking
//! ([`Share`]): the account's rate is a grid of slots on the wall clock,
//! dealt out in turn — node `i` of `n` owns the slots `i, i + n, i + 2n,
//! …`. Nodes that agree on the count and their places (the Node list, in
//! Kubernetes) never send in the same slot, so together they send at most
//! the account's rate in any second, however their starts and bursts
//! fall. The slots fill [`FILL`] of the rate, `1 / (FILL · rate)` apart:
//! a request leaves up to half a slot late and takes its time to reach
//! the cloud, and a limiter counting arrivals in a second that begins
//! with a late one would otherwise find the next second's first request
//! in it too. Nodes' clocks are synchronised far closer than a slot
//! (56 ms at 20 requests a second).
//!
//! A 5100 means the account's rate was exceeded all the same (another
//! user of the account, a node that counted differently): the node then
//! uses fewer of its slots — half as many, down to a sixteenth — and
//! climbs back linearly, from half of them to all in [`RECOVERY`].

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a node takes to climb from half its slots back to all of them.
pub const RECOVERY: Duration = Duration::from_secs(20);

/// The least part of its slots a run of refusals leaves a node.
const FLOOR: f64 = 1.0 / 16.0;

/// The part of the account's rate the slots fill: the rest is room for
/// requests that leave late or arrive late, up to a tenth of a second in
/// every second. Measured by `hostnic-scale-bench` (50 nodes, 20
/// requests a second): with the slots at the full rate, 7 requests of 611
/// were refused.
const FILL: f64 = 0.9;

/// How late in its slot, as a part of a slot, a request may still leave:
/// a waiter woken a little after its slot began (timers, a busy CPU) still
/// has it; one woken later would send in the next node's slot, so it waits
/// for its own next one.
const LATE: f64 = 0.5;

/// The account's rate and this node's place among those sharing it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Share {
    /// Requests per second the cloud allows the account, every node's
    /// together.
    pub account_rate: f64,
    /// How many nodes share it.
    pub nodes: usize,
    /// This node's place among them, `0..nodes`.
    pub node: usize,
}

impl Share {
    /// One node alone with the account.
    pub fn alone(account_rate: f64) -> Share {
        Share {
            account_rate,
            nodes: 1,
            node: 0,
        }
    }

    /// This node's requests per second.
    pub fn per_second(&self) -> f64 {
        self.account_rate / self.nodes.max(1) as f64
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(self.account_rate.is_finite() && self.account_rate > 0.0) {
            return Err(format!(
                "an account rate of {} requests per second lets none through",
                self.account_rate
            ));
        }
        if self.nodes == 0 || self.node >= self.nodes {
            return Err(format!(
                "this node's place {} is outside 0..{} of the nodes sharing the account's rate",
                self.node, self.nodes
            ));
        }
        Ok(())
    }
}

pub(crate) struct Pace {
    state: Mutex<Option<State>>,
}

struct State {
    share: Share,
    /// The part of its slots the node uses: 1, or less after a refusal.
    part: f64,
    /// When `part` was last brought up to date (wall clock, seconds).
    updated: f64,
    /// The earliest time the node's next request may go (wall clock,
    /// seconds): one interval after the last slot it took.
    next: f64,
}

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl State {
    /// Seconds between two slots of the grid (any node's).
    fn slot(&self) -> f64 {
        1.0 / (self.share.account_rate * FILL)
    }

    fn climb(&mut self, now: f64) {
        let elapsed = (now - self.updated).max(0.0);
        self.part = (self.part + 0.5 * elapsed / RECOVERY.as_secs_f64()).min(1.0);
        self.updated = now;
    }

    /// The node's slot a request asked for at `now` would get.
    fn peek(&mut self, now: f64) -> f64 {
        self.climb(now);
        let slot = self.slot();
        let cycle = slot * self.share.nodes as f64;
        let offset = slot * self.share.node as f64;
        // A slot that began less than `LATE` of a slot ago is still good.
        let earliest = (now - slot * LATE).max(self.next);
        // The first of the node's slots (offset + k·cycle) at or after
        // `earliest`. `earliest` is often a slot itself (`next`, one cycle
        // after the last), which rounding may put a hair past it: that
        // slot, not the next cycle's.
        let k = ((earliest - offset) / cycle - 1e-9).ceil();
        offset + k * cycle
    }

    /// The node's slot taken for a request asked for at `now`.
    fn take(&mut self, now: f64) -> f64 {
        let at = self.peek(now);
        // After a refusal the node skips slots: its next request waits
        // a cycle divided by the part of its slots it uses.
        let cycle = self.slot() * self.share.nodes as f64;
        self.next = at + cycle / self.part;
        at
    }
}

impl Pace {
    /// A node paced by `share` (`None`: unpaced).
    pub(crate) fn new(share: Option<Share>) -> Pace {
        let now = wall();
        Pace {
            state: Mutex::new(share.map(|share| State {
                share,
                part: 1.0,
                updated: now,
                next: 0.0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<State>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new share (nodes joined or left): the node moves to its new
    /// slots at once, keeping what a refusal took off.
    pub(crate) fn set(&self, share: Share) {
        let mut s = self.lock();
        match &mut *s {
            Some(state) => state.share = share,
            None => {
                *s = Some(State {
                    share,
                    part: 1.0,
                    updated: wall(),
                    next: 0.0,
                })
            }
        }
    }

    /// The node's requests per second now (lower than its share for a
    /// while after a refusal), and its share. Unpaced: infinite.
    /// The share the node paces to; `None` when unpaced.
    pub(crate) fn share(&self) -> Option<Share> {
        self.lock().as_ref().map(|s| s.share)
    }

    pub(crate) fn rate(&self) -> (f64, f64) {
        let mut s = self.lock();
        match &mut *s {
            None => (f64::INFINITY, f64::INFINITY),
            Some(state) => {
                state.climb(wall());
                let per_second = state.share.per_second();
                (per_second * state.part, per_second)
            }
        }
    }

    /// Waits for the node's next slot; returns the wait. Woken too late
    /// for it (more than `LATE` of a slot after it began), the request
    /// waits for the node's next slot instead of sending in another's.
    pub(crate) async fn acquire(&self) -> Duration {
        let started = wall();
        loop {
            let (at, slot) = {
                let mut s = self.lock();
                let Some(state) = &mut *s else {
                    return Duration::ZERO;
                };
                (state.take(wall()), state.slot())
            };
            let wait = at - wall();
            if wait > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            }
            if wall() - at <= slot * LATE {
                return Duration::from_secs_f64((wall() - started).max(0.0));
            }
            tracing::debug!(
                late_ms = ((wall() - at) * 1000.0) as u64,
                "woke too late for this node's slot; waiting for its next one"
            );
        }
    }

    /// Waits until a request would go at once, without taking the slot:
    /// a caller that decides what to ask for (how many NICs to create)
    /// decides when the request can leave, with the demand of that moment.
    pub(crate) async fn ready(&self) {
        let wait = {
            let mut s = self.lock();
            let Some(state) = &mut *s else {
                return;
            };
            let now = wall();
            (state.peek(now) - now).max(0.0)
        };
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }

    /// The cloud refused a request for the account's rate (5100): the
    /// node uses half as many of its slots from now on.
    pub(crate) fn throttled(&self) {
        let mut s = self.lock();
        let Some(state) = &mut *s else {
            return;
        };
        let now = wall();
        state.climb(now);
        state.part = (state.part / 2.0).max(FLOOR);
        tracing::debug!(
            part = state.part,
            per_second = state.share.per_second() * state.part,
            "the account's API rate was exceeded; this node uses fewer of its slots"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(account_rate: f64, nodes: usize, node: usize) -> State {
        State {
            share: Share {
                account_rate,
                nodes,
                node,
            },
            part: 1.0,
            updated: 1000.0,
            next: 0.0,
        }
    }

    #[test]
    fn nodes_never_share_a_slot_and_together_keep_the_account_rate() {
        // 50 nodes at 20/s, each asking for 6 requests at once at the same
        // instant: every request gets a slot of its own, 1/18 s apart, so
        // no second holds more than 18, and none more than 20 even with
        // every request in it late by up to 100 ms.
        let mut nodes: Vec<State> = (0..50).map(|i| state(20.0, 50, i)).collect();
        let mut slots: Vec<f64> = Vec::new();
        for node in &mut nodes {
            for _ in 0..6 {
                slots.push(node.take(1000.0));
            }
        }
        slots.sort_by(f64::total_cmp);
        for pair in slots.windows(2) {
            assert!(pair[1] - pair[0] > 0.055, "{pair:?}");
        }
        let span = slots.last().unwrap() - slots.first().unwrap();
        // 300 requests at 18/s: 299 slots of 1/18 s.
        assert!((span - 299.0 / 18.0).abs() < 1e-6, "{span}");
        for start in slots.iter() {
            let in_second = |late: f64| {
                slots
                    .iter()
                    .filter(|t| **t >= *start && **t < start + 1.0 + late - 1e-6)
                    .count()
            };
            assert!(in_second(0.0) <= 18, "{} from {start}", in_second(0.0));
            assert!(in_second(0.1) <= 20, "{} from {start}", in_second(0.1));
        }
    }

    #[test]
    fn a_peek_takes_no_slot() {
        let mut s = state(20.0, 4, 1);
        let seen = s.peek(1000.0);
        assert_eq!(s.peek(1000.0), seen);
        assert_eq!(s.take(1000.0), seen);
        // One cycle of 4 slots later.
        assert!((s.peek(1000.0) - seen - 4.0 / 18.0).abs() < 1e-9);
    }

    #[test]
    fn a_slot_just_begun_is_still_good_a_later_one_is_not() {
        // Node 1 of 4 at 20/s: slots of 1/18 s, its own are 1/18 s +
        // k × 4/18 s; 1000 s is a multiple of the cycle.
        let mut s = state(20.0, 4, 1);
        let (slot, cycle) = (1.0 / 18.0, 4.0 / 18.0);
        let own = 1000.0 + slot;
        // Asked 10 ms into its slot (a waiter woken a little late, or a
        // request sized the moment `ready` returned): that slot.
        assert!((s.peek(own + 0.01) - own).abs() < 1e-9);
        // Asked 30 ms into it, more than half a slot: the next node's slot
        // has begun, so its own next one.
        assert!((s.peek(own + 0.03) - (own + cycle)).abs() < 1e-9);
    }

    #[test]
    fn a_node_alone_has_every_slot() {
        let mut s = state(20.0, 1, 0);
        let first = s.take(1000.0);
        let tenth = (0..9).map(|_| s.take(1000.0)).last().unwrap();
        assert!((0.0..0.056).contains(&(first - 1000.0)));
        assert!(((tenth - first) - 0.5).abs() < 1e-6, "{}", tenth - first);
        // After a pause the next request is not held back by the old ones.
        let later = s.take(2000.0);
        assert!((later - 2000.0) < 0.056, "{later}");
    }

    #[test]
    fn a_refusal_skips_slots_until_the_node_climbs_back() {
        let mut s = state(20.0, 10, 3);
        let cycle = 10.0 / 18.0;
        s.take(1000.0);
        s.part = 0.5;
        let a = s.take(1000.0);
        let b = s.take(1000.0);
        // Every other of its slots.
        assert!(((b - a) - 2.0 * cycle).abs() < 1e-6, "{}", b - a);
        // Slots stay on the node's own grid: offset 3 slots.
        let phase = (b - 3.0 / 18.0).rem_euclid(cycle);
        assert!(phase < 1e-6 || cycle - phase < 1e-6, "{phase}");
        // Half of RECOVERY later it uses three quarters of them; after
        // RECOVERY all.
        s.climb(s.updated + RECOVERY.as_secs_f64() / 2.0);
        assert!((s.part - 0.75).abs() < 1e-9, "{}", s.part);
        s.climb(s.updated + RECOVERY.as_secs_f64() / 2.0);
        assert_eq!(s.part, 1.0);
    }

    #[tokio::test]
    async fn unpaced_never_waits_and_shares_are_checked() {
        let p = Pace::new(None);
        for _ in 0..1000 {
            assert_eq!(p.acquire().await, Duration::ZERO);
        }
        p.throttled();
        assert_eq!(p.rate().0, f64::INFINITY);
        assert!(Share::alone(0.0).validate().is_err());
        assert!(Share::alone(f64::NAN).validate().is_err());
        let bad = Share {
            account_rate: 20.0,
            nodes: 3,
            node: 3,
        };
        assert!(bad.validate().is_err());
        p.set(Share::alone(10.0));
        assert_eq!(p.rate(), (10.0, 10.0));
        p.throttled();
        let (now, share) = p.rate();
        assert!((5.0..5.1).contains(&now) && share == 10.0, "{now}");
    }
}
