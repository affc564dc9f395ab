//! Keeping the pool true: the node's check on every kernel notification
//! and timer (the default route, NICs that left or came back, the warm
//! targets), and the slow cloud poll that reconciles the cloud, the kernel
//! and the pool and deletes leaked NICs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use hostnic_iaas::{NicFilter, NicStatus};
use hostnic_netlink::{Mac, RouteEntry};
use tracing::{info, warn};

use super::lifecycle::{configure_gateway, wait_for_link};
use super::{CloudPool, tagger};
use crate::config::{LeakSweep, NicSpec};
use crate::metrics::{Reconciled, metrics};
use crate::nics::Nics;
use crate::pool::State;
use crate::publish::{self, NodeEvent};

impl CloudPool {
    /// Remembers the node's default route; later ticks put it back if it
    /// moves (a hot-plugged NIC's DHCP client takes it on some images).
    pub async fn remember_default_route(&self, nics: &Nics, iface: &str) -> anyhow::Result<()> {
        let node = nics.plumber.node();
        let link = node
            .link_by_name(iface)
            .await?
            .with_context(|| format!("iface {iface} not found"))?;
        let route = node
            .routes()
            .await?
            .into_iter()
            .find(|r| r.dst.prefix_len() == 0 && r.oif == Some(link.index) && r.gw.is_some());
        match &route {
            Some(r) => info!(via = ?r.gw, dev = iface, "guarding the node's default route"),
            None => warn!(
                dev = iface,
                "the node has no default route via its primary interface to guard"
            ),
        }
        *self.default_route.lock().unwrap_or_else(|p| p.into_inner()) = route;
        Ok(())
    }

    /// One reconciliation pass of the three truths, then the warm targets.
    /// The node's periodic check: the kernel and the pool, then the warm
    /// pool's targets. No cloud call unless something needs one: a NIC gone
    /// from the node (only the cloud can say whether it was detached or
    /// vanished), the warm pool below `warm_min`, idle NICs above
    /// `warm_max`.
    pub async fn tick(&self, nics: &Nics) {
        self.check_node(nics).await;
        self.top_up(nics).await;
        self.trim(nics).await;
        if self.quiet(nics) && self.tagger.due() {
            self.tag(nics).await;
        }
    }

    /// No cold ADD waits, no batch is being made or attached, no pod
    /// bound here is about to ask for a NIC: the node's slots of the
    /// account's rate are free for what can wait. (A node that tagged and
    /// counted while its first pods were on their way made their batch
    /// wait behind those calls, a cycle of its slots each.)
    pub(super) fn quiet(&self, nics: &Nics) -> bool {
        let attaching = {
            let pool = nics.pool();
            self.vxnets
                .iter()
                .any(|(v, _)| pool.count_in(v, &[State::Attaching]) > 0)
        };
        self.provisioner.idle() && !attaching && !self.provisioner.expecting(self, nics)
    }

    /// Tags the new NICs once the node is quiet (no cold ADD waiting, no
    /// NIC on its way) after [`tagger::QUIET`]: one such task at a time.
    pub fn tag_when_quiet(self: &Arc<Self>, nics: &Arc<Nics>) {
        if self.tagging.swap(true, Ordering::SeqCst) {
            return;
        }
        let (cloud, nics) = (self.clone(), nics.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tagger::QUIET).await;
                if cloud.quiet(&nics) {
                    break;
                }
            }
            cloud.tagging.store(false, Ordering::SeqCst);
            if cloud.tagger.due() {
                cloud.tag(&nics).await;
            }
        });
    }

    /// Tags the queued NICs the pool still has; those that fail stay
    /// queued, tried again once due ([`tagger::Tagger::due`]).
    async fn tag(&self, nics: &Nics) {
        let exists = |m| nics.pool().state(m).is_some();
        if let Err(e) = self.tagger.flush(&self.client, exists).await {
            warn!(error = %format!("{e:#}"), "tagging new NICs; tried again in ten minutes");
        }
    }

    /// What the kernel alone can tell: the default route, NICs that left or
    /// came back. Runs on every netlink notification too.
    async fn check_node(&self, nics: &Nics) {
        if let Err(e) = self.guard_default_route(nics).await {
            warn!(error = %e, "checking the node's default route");
        }
        match self.check_links(nics).await {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = self.poll(nics).await {
                    warn!(error = %e, "asking the cloud about a NIC gone from the node");
                }
            }
            Err(e) => warn!(error = %e, "checking the node's NICs"),
        }
    }

    /// Parks and frees missing NICs that are back on the node; returns
    /// whether a NIC the pool has on the node (free, or the gateway NIC) is
    /// gone from it.
    async fn check_links(&self, nics: &Nics) -> anyhow::Result<bool> {
        let links = nics.plumber.node().links().await?;
        let on_node = |m: Mac| links.iter().find(|l| l.mac == Some(m));
        // A NIC a pod has through a passthru child stays on the node:
        // gone from it, it vanished, and its pod lost its interface.
        let mut vanished = nics
            .pool()
            .held_on_node()
            .into_iter()
            .any(|m| on_node(m).is_none());
        let snapshot = nics.pool().snapshot();
        for (mac, state) in snapshot {
            match state {
                State::Free | State::Gateway => vanished |= on_node(mac).is_none(),
                State::Missing => {
                    if let Some(link) = on_node(mac) {
                        // Refused while a child of it still holds it.
                        if nics.plumber.park(link).await.is_err() {
                            continue;
                        }
                        if nics
                            .pool()
                            .transition(mac, &[State::Missing], State::Free)
                            .is_some()
                        {
                            metrics().reconciled(Reconciled::MissingFound, 1);
                            info!(nic = %mac, "missing NIC is back on the node");
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(vanished)
    }

    /// The slow cloud poll: one DescribeNics of the NICs named for this
    /// node (or, with the bank, attached to it), which is both what is
    /// attached here (reconciled with the pool and the kernel) and what
    /// this node created and lost (its leaks).
    pub async fn poll(&self, nics: &Nics) -> anyhow::Result<()> {
        let described = Instant::now();
        let named: Vec<hostnic_iaas::Nic> = self
            .client
            .describe_nics(&self.own_filter())
            .await
            .context("describing this node's NICs")?
            .into_iter()
            .filter(|n| self.is_own(n))
            .collect();
        // Tags lost with an agent that stopped before tagging its NICs.
        self.tagger.queue(
            named
                .iter()
                .filter(|n| n.instance_id == self.cfg.instance_id && self.tagger.lacks_tags(n))
                .filter_map(|n| n.nic_id.parse().ok()),
        );
        let (sticky, attached): (Vec<_>, Vec<_>) = named
            .iter()
            .filter(|n| n.instance_id == self.cfg.instance_id)
            .partition(|n| self.sticky_identity(n).is_some());
        let attached: Vec<NicSpec> = attached
            .into_iter()
            .filter_map(|n| self.spec(n.nic_id.parse().ok()?, &n.vxnet_id, n.private_ip?))
            .collect();
        self.keep_unknown_sticky(nics, &sticky).await;
        self.reconcile(nics, &attached, described).await?;
        // The cluster-wide duties are one node's: the Lease holder's in
        // Kubernetes; the others delete their own leaks only. Without
        // Kubernetes each node releases its own kept sticky NICs.
        let holder = self.duties.as_ref().map(|d| d.elector.holds());
        let cluster = match holder {
            Some(true) => Some(self.describe_detached().await?),
            _ => None,
        };
        let grace = Duration::from_secs(self.cfg.leak_grace_seconds);
        let deleted = match (&cluster, self.cfg.leak_sweep) {
            (Some(all), LeakSweep::Cluster) => self.delete_leaks(nics, all, grace).await?,
            (None, LeakSweep::Cluster) if holder.is_none() => {
                let all = self.describe_detached().await?;
                self.delete_leaks(nics, &all, grace).await?
            }
            _ => self.delete_leaks(nics, &named, grace).await?,
        };
        report_leaks_deleted(deleted);
        match (&cluster, holder) {
            (Some(all), _) => self.release_sticky(nics, all).await,
            (None, None) => self.release_sticky(nics, &named).await,
            (None, Some(_)) => {}
        }
        Ok(())
    }

    /// Sticky NICs attached here that the pool does not know (their keep
    /// was lost, or the answer is older than a keep that just finished):
    /// detached, never adopted into the free pool.
    async fn keep_unknown_sticky(&self, nics: &Nics, sticky: &[&hostnic_iaas::Nic]) {
        for n in sticky {
            let Ok(mac) = n.nic_id.parse::<Mac>() else {
                continue;
            };
            if nics.pool().state(mac).is_some() {
                continue;
            }
            info!(nic = %mac, "a sticky NIC no pod here holds is attached to this node; detaching it, kept for its identity");
            if let Err(e) = self.detach_kept(nics, mac).await {
                warn!(nic = %mac, error = %e, "detaching a sticky NIC; the next poll retries");
            }
        }
    }

    /// At start: deletes the NICs named for this node and attached nowhere
    /// that the pool does not know. The agent before this one made them
    /// and died before attaching them (or after detaching them); this one
    /// has created nothing yet, so none is on its way to an attach and the
    /// grace period that covers such creates does not apply.
    pub async fn delete_stranded(&self, nics: &Nics, stranded: Vec<hostnic_iaas::Nic>) {
        match self.delete_leaks(nics, &stranded, Duration::ZERO).await {
            Ok(deleted) => report_leaks_deleted(deleted),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "deleting NICs a previous agent left detached; the leak sweep retries")
            }
        }
    }

    async fn guard_default_route(&self, nics: &Nics) -> anyhow::Result<()> {
        let Some(want) = self
            .default_route
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(());
        };
        let node = nics.plumber.node();
        let defaults: Vec<RouteEntry> = node
            .routes()
            .await?
            .into_iter()
            .filter(|r| r.dst.prefix_len() == 0)
            .collect();
        if defaults == [want.clone()] {
            return Ok(());
        }
        warn!(found = ?defaults, "the node's default route moved; putting it back on the primary interface");
        let (Some(gw), Some(oif)) = (want.gw, want.oif) else {
            return Ok(());
        };
        node.replace_default_route(gw, oif).await?;
        metrics().reconciled(Reconciled::DefaultRouteRestored, 1);
        publish::node_event(
            NodeEvent::DefaultRouteRestored,
            format!(
                "the default route had moved ({defaults:?}); put back via {gw} on the primary interface"
            ),
        );
        // Whatever took it was a NIC of ours configured behind our back:
        // park every free one again (down, no address). One a pod has
        // through a passthru child stays up (its pod's link), without the
        // addresses it was given.
        let held_on_node = nics.pool().held_on_node();
        for link in node.links().await? {
            let Some(mac) = link.mac else { continue };
            if held_on_node.contains(&mac) {
                if !node.addresses(link.index).await?.is_empty() {
                    node.flush_addresses(link.index).await?;
                }
            } else if nics.pool().state(mac) == Some(State::Free)
                && (link.up || !node.addresses(link.index).await?.is_empty())
            {
                nics.plumber.park(&link).await?;
            }
        }
        Ok(())
    }

    /// Cloud vs kernel vs pool. Adopts attached NICs of ours the pool does
    /// not know, forgets NICs detached behind our back, and re-attaches
    /// attached NICs whose link vanished from the node.
    /// `described` is when the cloud was asked: a NIC freed since then
    /// (a new one, or one a DEL returned) may be missing from its answer.
    async fn reconcile(
        &self,
        nics: &Nics,
        attached: &[NicSpec],
        described: Instant,
    ) -> anyhow::Result<()> {
        let links = nics.plumber.node().links().await?;
        let on_node = |m: Mac| links.iter().find(|l| l.mac == Some(m));
        let held_on_node = nics.pool().held_on_node();
        for spec in attached {
            let state = nics.pool().state(spec.mac);
            match state {
                Some(State::Reserved(_) | State::Held(_) | State::Releasing)
                    if held_on_node.contains(&spec.mac) && on_node(spec.mac).is_none() =>
                {
                    self.reattach_held(nics, spec.mac).await;
                }
                None => {
                    if let Some(link) = on_node(spec.mac) {
                        // (Refused while a child of it holds it.)
                        if nics.plumber.park(link).await.is_err() {
                            continue;
                        }
                        if nics.pool().insert_new(spec.clone(), State::Free) {
                            metrics().reconciled(Reconciled::Adopted, 1);
                            info!(nic = %spec.mac, "adopted an attached NIC of ours");
                        }
                    }
                }
                Some(State::Free | State::Gateway | State::Missing)
                    if on_node(spec.mac).is_none() =>
                {
                    self.reattach(nics, spec.mac).await;
                }
                Some(State::Missing) => {
                    if let Some(link) = on_node(spec.mac)
                        && nics.plumber.park(link).await.is_ok()
                    {
                        nics.pool()
                            .transition(spec.mac, &[State::Missing], State::Free);
                    }
                }
                _ => {}
            }
        }
        let gone: Vec<Mac> = {
            let pool = nics.pool();
            pool.snapshot()
                .into_iter()
                .filter(|(m, s)| {
                    matches!(s, State::Free | State::Missing)
                        && !attached.iter().any(|a| a.mac == *m)
                })
                .map(|(m, _)| m)
                .collect()
        };
        for mac in gone {
            let forgotten = nics
                .pool()
                .remove_if(mac, &[State::Free, State::Missing], described);
            if forgotten.is_some() {
                metrics().reconciled(Reconciled::Forgotten, 1);
                warn!(nic = %mac, "NIC is no longer attached to this node in the cloud; forgetting it");
            }
        }
        Ok(())
    }

    /// The original plugin's known reboot problem: the cloud says attached,
    /// the node has no such link. Detach and attach it again.
    async fn reattach(&self, nics: &Nics, mac: Mac) {
        let reattachable = [State::Free, State::Gateway, State::Missing];
        let Some(was) = nics.pool().transition(mac, &reattachable, State::Attaching) else {
            return; // an ADD took it since the look
        };
        // The look at the node is older than the claim: a DEL may have
        // brought the NIC back since. Only a NIC absent now has vanished.
        if let Ok(Some(_)) = nics.plumber.node().link_by_mac(mac, None).await {
            nics.pool().transition(mac, &[State::Attaching], was);
            return;
        }
        warn!(nic = %mac, "NIC vanished from the node; re-attaching it");
        let result = self.attach_again(nics, mac).await;
        // A gateway NIC comes back as the gateway, never free for a moment.
        let then = match was {
            State::Gateway => State::Gateway,
            _ => State::Free,
        };
        let ok = result.is_ok() && self.adopt_link(nics, mac, then.clone()).await;
        if ok {
            if then == State::Gateway {
                let spec = nics.pool().spec(mac);
                if let Some(spec) = spec
                    && let Err(e) = configure_gateway(nics, &spec).await
                {
                    warn!(nic = %mac, error = %e, "reconfiguring the gateway NIC");
                }
            }
            metrics().reconciled(Reconciled::Reattached, 1);
            publish::node_event(
                NodeEvent::NicReattached,
                format!("NIC {mac} had vanished from the node; re-attached"),
            );
            info!(nic = %mac, "re-attached");
        } else {
            metrics().reconciled(Reconciled::ReattachFailed, 1);
            warn!(nic = %mac, error = ?result.err(), "re-attaching failed; will retry");
            nics.pool()
                .transition(mac, &[State::Attaching], State::Missing);
        }
    }

    /// Detaches NIC `mac` and attaches it here again, until its link is
    /// on the node.
    async fn attach_again(&self, nics: &Nics, mac: Mac) -> Result<(), hostnic_iaas::Error> {
        let id = [mac.to_string()];
        for job in self.client.detach_nics(&id).await? {
            self.client.wait_job(&job, std::future::pending()).await?;
        }
        let job = self.client.attach_nics(&id, &self.cfg.instance_id).await?;
        self.client.wait_job(&job, wait_for_link(nics, mac)).await?;
        Ok(())
    }

    /// A NIC a pod has through a passthru child vanished from the node:
    /// the kernel deleted the child with it, so the pod lost its
    /// interface (as a moved NIC's pod would). Said so, and re-attached;
    /// the pod's attachment keeps it until its DEL, which finds the child
    /// gone and frees the NIC, parked. Its state is the attachment's, not
    /// the upkeep's: it is not touched here.
    async fn reattach_held(&self, nics: &Nics, mac: Mac) {
        warn!(nic = %mac, "a NIC a pod has through a passthru child vanished from the node; the pod lost its interface; re-attaching the NIC");
        publish::node_event(
            NodeEvent::NicReattached,
            format!(
                "NIC {mac}, which a pod had (passthru), vanished from the node: the pod lost its interface until it is deleted; re-attaching the NIC"
            ),
        );
        match self.attach_again(nics, mac).await {
            Ok(()) => {
                // Down and unaddressed until its pod's DEL frees it (a
                // DHCP client would take a new link that is up).
                if let Ok(Some(link)) = nics.plumber.node().link_by_mac(mac, None).await
                    && let Err(e) = nics.plumber.park(&link).await
                {
                    warn!(nic = %mac, error = %e, "parking a re-attached NIC");
                }
                metrics().reconciled(Reconciled::Reattached, 1);
                info!(nic = %mac, "re-attached");
            }
            Err(e) => {
                metrics().reconciled(Reconciled::ReattachFailed, 1);
                warn!(nic = %mac, error = %e, "re-attaching failed; will retry");
            }
        }
    }

    /// The detached NICs of the configured vxnets: for the cluster-wide
    /// sweep (`leak_sweep = "cluster"`: leaked NICs of dead nodes too) and
    /// the sticky release. One node at a time asks, never every node.
    async fn describe_detached(&self) -> anyhow::Result<Vec<hostnic_iaas::Nic>> {
        Ok(self
            .client
            .describe_nics(&NicFilter {
                vxnets: self.vxnets.iter().map(|(id, _)| id.clone()).collect(),
                status: Some(NicStatus::Available),
                ..NicFilter::default()
            })
            .await?)
    }

    /// Deletes those of `found` that are leaks: named for this cluster,
    /// detached, older than `grace` (which covers a create whose attach is
    /// still on its way) and unknown to the pool.
    async fn delete_leaks(
        &self,
        nics: &Nics,
        found: &[hostnic_iaas::Nic],
        grace: Duration,
    ) -> anyhow::Result<usize> {
        let prefix = format!("hostnic-{}-", self.cfg.cluster);
        let now = SystemTime::now();
        let leaked: Vec<String> = found
            .iter()
            .filter(|n| n.nic_name.starts_with(&prefix) && n.instance_id.is_empty())
            .filter(|n| {
                hostnic_iaas::sign::parse_time_stamp(&n.create_time)
                    .is_some_and(|t| now.duration_since(t).unwrap_or_default() >= grace)
            })
            // A kept sticky NIC is no leak: the sticky release decides;
            // nor is a NIC in the bank: its keeper releases it.
            .filter(|n| self.sticky_identity(n).is_none())
            .filter(|n| !(self.banking() && n.nic_name == self.bank_name()))
            .filter(|n| {
                n.nic_id
                    .parse::<Mac>()
                    .is_ok_and(|m| nics.pool().state(m).is_none())
            })
            .map(|n| n.nic_id.clone())
            .collect();
        if !leaked.is_empty() {
            warn!(nics = ?leaked, "deleting leaked NICs");
            self.client.delete_nics(&leaked).await?;
        }
        Ok(leaked.len())
    }

    /// The agent's loop: the node check on every kernel notification
    /// (debounced) and every `reconcile_seconds`, with the warm pool's
    /// targets on the timer; the cloud poll every `cloud_poll_seconds`,
    /// jittered so the nodes of a cluster spread out. (The vxnets' counts
    /// have their own loop: `counts`.)
    pub async fn run(&self, nics: &Nics) {
        let local = Duration::from_secs(self.cfg.reconcile_seconds);
        let poll_every = || {
            Duration::from_secs(self.cfg.cloud_poll_seconds).mul_f64(0.8 + 0.4 * fastrand::f64())
        };
        let mut events = match nics.plumber.node_ns().watch().await {
            Ok(rx) => Some(rx),
            Err(e) => {
                warn!(error = %e, "watching the node's links and routes; checking every reconcile_seconds only");
                None
            }
        };
        let mut next_tick = tokio::time::Instant::now() + local;
        let mut next_poll = tokio::time::Instant::now() + poll_every();
        loop {
            let changed = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next_tick) => {
                    self.tick(nics).await;
                    next_tick = tokio::time::Instant::now() + local;
                }
                _ = tokio::time::sleep_until(next_poll) => {
                    if let Err(e) = self.poll(nics).await {
                        warn!(error = %e, "polling the cloud");
                    }
                    next_poll = tokio::time::Instant::now() + poll_every();
                }
                change = changed => {
                    if change.is_none() {
                        warn!("the node's netlink notifications stopped; checking every reconcile_seconds only");
                        events = None;
                        continue;
                    }
                    // A NIC move or a route change is a burst of messages:
                    // look once they settle.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Some(rx) = events.as_mut() {
                        while rx.try_recv().is_ok() {}
                    }
                    self.check_node(nics).await;
                }
            }
        }
    }
}

fn report_leaks_deleted(deleted: usize) {
    if deleted > 0 {
        metrics().reconciled(Reconciled::LeakedDeleted, deleted as u64);
        publish::node_event(
            NodeEvent::LeakedNicsDeleted,
            format!("deleted {deleted} leaked NICs"),
        );
        info!(deleted, "deleted leaked NICs");
    }
}
