//! The NIC bank: created, unattached NICs kept for the whole cluster, so a
//! node's cold ADDs need only an AttachNics, not a CreateNics first.
//!
//! - The Lease holder keeps the bank (`keep_bank`): per vxnet, twice the
//!   NICs nodes claimed from it in the last minute, within
//!   `bank_min..=bank_max`; made with one CreateNics of a count, named
//!   `hostnic-<cluster>-bank`, and those above `bank_min` released once no
//!   claim came for `idle_seconds`. It looks every few seconds while the
//!   bank moves, backing off to `cloud_poll_seconds` at rest, and at once
//!   when a Node joins. A holder killed at any instant leaks nothing: the
//!   next one finds the bank by its name, whatever was published.
//! - It publishes the bank's list on its Lease (`apiserver::lease`), which
//!   every node reads with its election rounds anyway.
//! - A node short of NICs claims up to five listed NICs with one
//!   AttachNics (`claim`). The cloud refuses the attach of a NIC no longer
//!   available, so it is the only lock: of two nodes claiming the same NIC
//!   one gets it, the other creates its own. Each node picks first from its
//!   own stripe of the list (every n-th NIC from its place among the n
//!   nodes sharing the account's rate), so nodes reading the same list do
//!   not meet until their stripes run out.
//! - A claimed NIC keeps the bank's name; the node finds it by its
//!   instance (`CloudPool::own_filter`), and the leak sweep leaves the
//!   bank's detached NICs to the keeper.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hostnic_iaas::{JobId, NicFilter};
use hostnic_netlink::Mac;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::CloudPool;
use crate::apiserver::lease::notes;
use crate::config::NicSpec;
use crate::nics::Nics;

/// The bank's NICs per vxnet, as the holder publishes them.
pub type Listing = BTreeMap<String, Vec<Banked>>;

/// One NIC in the bank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Banked {
    pub nic: Mac,
    pub ip: Ipv4Addr,
}

/// How often the holder looks at the bank while it moves.
const ACTIVE: Duration = Duration::from_secs(3);
/// How far back the claims that size the bank are counted.
const DEMAND_WINDOW: Duration = Duration::from_secs(60);
/// How long a node leaves alone a bank NIC it tried to claim: the list it
/// reads may still name it after another node took it.
const TRIED_FOR: Duration = Duration::from_secs(120);
/// How long a node keeps to its stripe after a claim past it was refused.
const CROWDED_FOR: Duration = Duration::from_secs(60);

/// The NICs to keep in a vxnet's bank after `claimed` claims in the last
/// [`DEMAND_WINDOW`]: twice that (the bank is looked at a few times a
/// minute and should not run dry in between), within `min..=max`.
pub fn target(claimed: usize, min: usize, max: usize) -> usize {
    (2 * claimed).clamp(min, max)
}

/// The holder's view of the bank, from its first look after taking the
/// Lease.
#[derive(Debug)]
struct Keeper {
    /// The bank per vxnet at the last look, with what was made since.
    held: Listing,
    /// NICs that left the bank: when, in which vxnet, how many.
    claims: VecDeque<(Instant, String, usize)>,
    /// The last claim per vxnet (the holding's start before any).
    last_claim: BTreeMap<String, Instant>,
    /// When this holding began: idle is counted from then.
    since: Instant,
}

impl Keeper {
    fn new() -> Keeper {
        Keeper {
            held: Listing::new(),
            claims: VecDeque::new(),
            last_claim: BTreeMap::new(),
            since: Instant::now(),
        }
    }

    /// Counts the NICs of `held` missing from `now` as claimed.
    fn claimed(&mut self, now: &Listing, at: Instant) {
        for (vxnet, before) in &self.held {
            let still = now.get(vxnet);
            let gone = before
                .iter()
                .filter(|b| still.is_none_or(|s| !s.contains(b)))
                .count();
            if gone > 0 {
                self.claims.push_back((at, vxnet.clone(), gone));
                self.last_claim.insert(vxnet.clone(), at);
            }
        }
        while self
            .claims
            .front()
            .is_some_and(|(t, ..)| at.duration_since(*t) > DEMAND_WINDOW)
        {
            self.claims.pop_front();
        }
    }

    fn recent_claims(&self, vxnet: &str) -> usize {
        self.claims
            .iter()
            .filter(|(_, v, _)| v == vxnet)
            .map(|(.., n)| n)
            .sum()
    }

    /// Whether no claim came in `vxnet` for `idle`.
    fn idle(&self, vxnet: &str, idle: Duration) -> bool {
        self.last_claim.get(vxnet).unwrap_or(&self.since).elapsed() >= idle
    }
}

/// A node's claims: the bank NICs it tried lately, and when a claim past
/// its stripe last met another node's.
#[derive(Debug, Default)]
pub struct Claims {
    tried: Mutex<HashMap<Mac, Instant>>,
    crowded: Mutex<Option<Instant>>,
}

/// Whether `mac` is in the stripe of node `place` of `nodes`: a NIC's
/// stripe follows from its id alone, so nodes reading different versions
/// of the list still pick apart.
fn in_stripe(mac: Mac, (place, nodes): (usize, usize)) -> bool {
    let id = mac.0.iter().fold(0u64, |a, b| a << 8 | u64::from(*b));
    id % nodes.max(1) as u64 == (place % nodes.max(1)) as u64
}

impl Claims {
    /// Up to `n` of `offered` this node has not tried lately and `known`
    /// does not hold: first those in its stripe, then (unless a claim
    /// past it met another node's within [`CROWDED_FOR`]) the others, in
    /// a random order. Marks them tried.
    pub fn pick(
        &self,
        offered: &[Banked],
        n: usize,
        place: (usize, usize),
        known: impl Fn(Mac) -> bool,
    ) -> Vec<Banked> {
        if offered.is_empty() || n == 0 {
            return Vec::new();
        }
        let crowded = lock(&self.crowded).is_some_and(|at| at.elapsed() < CROWDED_FOR);
        let mut tried = lock(&self.tried);
        tried.retain(|_, at| at.elapsed() < TRIED_FOR);
        let (stripe, mut rest): (Vec<Banked>, Vec<Banked>) = offered
            .iter()
            .filter(|b| !tried.contains_key(&b.nic) && !known(b.nic))
            .partition(|b| in_stripe(b.nic, place));
        // One claim never mixes the two: a NIC past the stripe another
        // node takes first costs the whole AttachNics, and the stripe's
        // with it. Past the stripe nodes meet, so each picks in an order
        // of its own.
        let picked: Vec<Banked> = match (stripe.is_empty(), crowded) {
            (false, _) => stripe.into_iter().take(n).collect(),
            (true, false) => {
                fastrand::shuffle(&mut rest);
                rest.into_iter().take(n).collect()
            }
            (true, true) => Vec::new(),
        };
        let now = Instant::now();
        for b in &picked {
            tried.insert(b.nic, now);
        }
        picked
    }

    /// A claim of `picked` was refused: if it reached past the stripe,
    /// other nodes claim too, and this one keeps to its stripe a while.
    pub fn refused(&self, picked: &[NicSpec], place: (usize, usize)) {
        if picked.iter().any(|s| !in_stripe(s.mac, place)) {
            *lock(&self.crowded) = Some(Instant::now());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CloudPool {
    /// Whether this cluster keeps a NIC bank.
    pub(super) fn banking(&self) -> bool {
        self.cfg.bank_max > 0 && self.duties.is_some()
    }

    /// The name of the bank's NICs: `hostnic-<cluster>-bank`.
    pub(super) fn bank_name(&self) -> String {
        format!("hostnic-{}-bank", self.cfg.cluster)
    }

    /// Claims up to five bank NICs of `vxnet` (at most `want`) with one
    /// AttachNics, and puts them in the pool as attaching. `None` when the
    /// bank has none for this node or the cloud refused the attach
    /// (another node was first): the caller creates NICs instead.
    pub(super) async fn claim(
        &self,
        nics: &Nics,
        vxnet: &str,
        want: usize,
    ) -> Option<(Vec<NicSpec>, JobId)> {
        if !self.banking() {
            return None;
        }
        let duties = self.duties.as_ref()?;
        let published = duties.elector.published(notes::BANK)?;
        let listing: Listing = match serde_json::from_str(&published) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "the NIC bank's list on the Lease does not parse; creating NICs");
                return None;
            }
        };
        let room = self.cfg.max_nics.saturating_sub(nics.pool().len() + 1);
        let n = want.min(hostnic_iaas::MAX_NICS_PER_ATTACH).min(room);
        let place = self.client.share().map_or((0, 1), |s| (s.node, s.nodes));
        let offered = listing.get(vxnet).map_or(&[][..], Vec::as_slice);
        let picked = self
            .bank
            .pick(offered, n, place, |m| nics.pool().state(m).is_some());
        let specs: Vec<NicSpec> = picked
            .iter()
            .filter_map(|b| self.spec(b.nic, vxnet, b.ip))
            .collect();
        if specs.is_empty() {
            // The holder may have refilled the bank since the last read.
            duties.elector.refresh();
            return None;
        }
        let ids: Vec<String> = specs.iter().map(|s| s.mac.to_string()).collect();
        match self.client.attach_nics(&ids, &self.cfg.instance_id).await {
            Ok(job) => {
                self.on_their_way(nics, &specs);
                info!(vxnet, nics = ?ids, "claimed NICs from the bank");
                Some((specs, job))
            }
            Err(e) => {
                info!(vxnet, nics = ?ids, error = %e, "claiming NICs from the bank failed (another node may have been first); creating NICs instead");
                self.bank.refused(&specs, place);
                None
            }
        }
    }

    /// The holder's loop: keeps the bank while this node holds the Lease,
    /// from a fresh look at the cloud each time it takes it.
    pub async fn keep_bank(&self) {
        let Some(duties) = self.duties.as_ref().filter(|_| self.banking()) else {
            return;
        };
        let longest = Duration::from_secs(self.cfg.cloud_poll_seconds).max(ACTIVE);
        let mut nodes = self.nodes.clone();
        let mut known_nodes = 0;
        let mut keeper: Option<Keeper> = None;
        let mut rest = ACTIVE;
        loop {
            let joined = async {
                match nodes.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(rest.mul_f64(0.8 + 0.4 * fastrand::f64())) => {}
                _ = joined => {
                    // A Node joining is demand on its way: look often
                    // again. Other changes of the list change nothing.
                    let count = nodes
                        .as_ref()
                        .and_then(|rx| rx.borrow().as_ref().map(|n| n.names.len()))
                        .unwrap_or(0);
                    let grew = count > known_nodes;
                    known_nodes = count;
                    if !grew {
                        continue;
                    }
                    rest = ACTIVE;
                }
            }
            if !duties.elector.holds() {
                keeper = None;
                rest = ACTIVE;
                continue;
            }
            let k = keeper.get_or_insert_with(Keeper::new);
            match self.bank_round(k).await {
                Ok(moved) => {
                    rest = match moved {
                        true => ACTIVE,
                        false => (rest * 2).min(longest),
                    };
                    // Only what was looked at: a holding whose first look
                    // failed leaves the last holder's list standing.
                    if let Ok(list) = serde_json::to_string(&k.held) {
                        duties.elector.publish(notes::BANK, list);
                    }
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "looking at the NIC bank; trying again");
                    rest = rest.max(ACTIVE * 4).min(longest);
                }
            }
        }
    }

    /// One look at the bank: what nodes claimed since the last, the bank
    /// brought to its target (one CreateNics per vxnet short of it) or
    /// released down to it when idle (one DeleteNics). Whether the bank
    /// moved (claimed, made or released).
    async fn bank_round(&self, k: &mut Keeper) -> anyhow::Result<bool> {
        let name = self.bank_name();
        let vxnets: Vec<String> = self
            .vxnets
            .iter()
            .map(|(id, _)| id.clone())
            .filter(|v| !self.shared.contains(v))
            .collect();
        let found = self
            .client
            .describe_nics(&NicFilter {
                nic_name: Some(name.clone()),
                vxnets: vxnets.clone(),
                ..NicFilter::default()
            })
            .await?;
        let mut now: Listing = vxnets.iter().map(|v| (v.clone(), Vec::new())).collect();
        for n in found
            .iter()
            .filter(|n| n.nic_name == name && n.instance_id.is_empty() && !n.is_primary())
        {
            if let (Ok(nic), Some(ip), Some(list)) =
                (n.nic_id.parse(), n.private_ip, now.get_mut(&n.vxnet_id))
            {
                list.push(Banked { nic, ip });
            }
        }
        k.claimed(&now, Instant::now());
        let mut moved = k.claims.back().is_some_and(|(t, ..)| t.elapsed() < ACTIVE);
        let idle_after = Duration::from_secs(self.cfg.idle_seconds);
        for (vxnet, list) in now.iter_mut() {
            // Idle: no claim for idle_seconds, whatever the last minute saw
            // before that. The bank goes back to its minimum.
            let idle = k.idle(vxnet, idle_after);
            let want = match idle {
                true => self.cfg.bank_min,
                false => target(k.recent_claims(vxnet), self.cfg.bank_min, self.cfg.bank_max),
            };
            if list.len() < want {
                let count = (want - list.len()) as u32;
                match self.client.create_nics(vxnet, &name, count, &[]).await {
                    Ok(made) => {
                        list.extend(made.iter().filter_map(|c| {
                            Some(Banked {
                                nic: c.nic_id.parse().ok()?,
                                ip: c.private_ip?,
                            })
                        }));
                        info!(vxnet, count, banked = list.len(), "NICs made for the bank");
                        moved = true;
                    }
                    Err(e) => warn!(vxnet, count, error = %e, "making NICs for the bank"),
                }
            } else if list.len() > want && idle {
                let surplus: Vec<String> = list[want..].iter().map(|b| b.nic.to_string()).collect();
                match self.client.delete_nics(&surplus).await {
                    Ok(()) => {
                        list.truncate(want);
                        info!(vxnet, count = surplus.len(), "idle bank NICs released");
                        moved = true;
                    }
                    Err(e) => warn!(vxnet, error = %e, "releasing idle bank NICs"),
                }
            }
        }
        k.held = now;
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn banked(i: u8) -> Banked {
        Banked {
            nic: format!("52:54:00:00:00:{i:02x}").parse().unwrap(),
            ip: Ipv4Addr::new(10, 0, 0, i),
        }
    }

    #[test]
    fn the_bank_holds_twice_the_last_minutes_claims_within_its_bounds() {
        assert_eq!(target(0, 2, 40), 2);
        assert_eq!(target(5, 2, 40), 10);
        assert_eq!(target(100, 2, 40), 40);
        assert_eq!(target(0, 0, 0), 0);
    }

    #[test]
    fn nics_gone_from_the_bank_count_as_claims_for_a_minute() {
        let mut k = Keeper::new();
        let t0 = Instant::now();
        k.held = Listing::from([("v".into(), vec![banked(1), banked(2), banked(3)])]);
        let now = Listing::from([("v".into(), vec![banked(2)])]);
        k.claimed(&now, t0);
        assert_eq!(k.recent_claims("v"), 2);
        assert_eq!(k.recent_claims("w"), 0);
        assert!(!k.idle("v", Duration::from_secs(1)));
        k.held = now.clone();
        // Nothing more gone: no new claim, the old ones age out.
        k.claimed(&now, t0 + DEMAND_WINDOW + Duration::from_secs(1));
        assert_eq!(k.recent_claims("v"), 0);
    }

    #[test]
    fn a_node_picks_its_stripe_first_then_the_rest_and_never_twice() {
        let offered: Vec<Banked> = (1..=10).map(banked).collect();
        let claims = Claims::default();
        // Node 1 of 3: its stripe is the NICs whose id is 1 modulo 3
        // (52:54:00:00:00:00 is 1 modulo 3 itself), and a claim takes
        // only those while there are any.
        let first = claims.pick(&offered, 5, (1, 3), |_| false);
        assert_eq!(first, vec![banked(3), banked(6), banked(9)]);
        let again = claims.pick(&offered, 10, (1, 3), |_| false);
        assert_eq!(again.len(), 7, "then the rest, the tried ones left out");
        assert!(again.iter().all(|b| !first.contains(b)));
        assert!(claims.pick(&offered, 5, (1, 3), |_| false).is_empty());
        // Three nodes pick apart while their stripes last, whatever the
        // order of the list each read.
        let mut reversed = offered.clone();
        reversed.reverse();
        let picks: Vec<Vec<Banked>> = (0..3)
            .map(|p| {
                let list = if p == 1 { &reversed } else { &offered };
                Claims::default().pick(list, 3, (p, 3), |_| false)
            })
            .collect();
        let all: std::collections::BTreeSet<Mac> = picks.iter().flatten().map(|b| b.nic).collect();
        assert_eq!(all.len(), 9, "{picks:?}");
        // Known to the pool already: not offered again.
        let known = offered[0].nic;
        let picked = Claims::default().pick(&offered, 10, (0, 1), |m| m == known);
        assert_eq!(picked.len(), 9);
        // More nodes than NICs: a node whose stripe is empty still finds
        // some, until a claim past its stripe is refused.
        let lone = Claims::default();
        let past: Vec<Banked> = lone.pick(&offered, 2, (12, 20), |_| false);
        assert_eq!(past.len(), 2);
        let specs: Vec<NicSpec> = past
            .iter()
            .map(|b| NicSpec {
                mac: b.nic,
                address: ipnet::Ipv4Net::new(b.ip, 24).unwrap(),
                gateway: Ipv4Addr::new(10, 0, 0, 254),
                vxnet: None,
            })
            .collect();
        lone.refused(&specs, (12, 20));
        assert!(lone.pick(&offered, 2, (12, 20), |_| false).is_empty());
    }
}
