//! Start-up for shared mode: the records are read back and the kernel is
//! made to match them (`docs/shared-nic.md`, "CHECK, GC, DEL and
//! restart"). A reservation whose ADD never answered is rolled back; a
//! committed attachment whose pod is gone is released; one whose pod lives
//! gets any missing piece back; and every route, rule, proxy entry or veth
//! of hostnic's that no record explains is removed.

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::Service;
use crate::shared::SharedRecord;
use crate::shared::wiring::{self, PROTO};
use crate::store::Phase;

/// What the start found and did, for the log and the tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub kept: usize,
    pub repaired: usize,
    pub released: usize,
    pub swept: usize,
}

impl Service {
    pub async fn restore_shared(&self) -> anyhow::Result<Restored> {
        let (records, stuck) = self.shared.records.load()?;
        self.shared.hold_stuck(stuck);
        let mut done = Restored::default();
        for record in records {
            let ns = (record.phase == Phase::Committed)
                .then(|| {
                    record
                        .netns
                        .as_deref()
                        .and_then(|p| self.nics.plumber.reopen(p, record.netns_id))
                })
                .flatten();
            let Some(ns) = ns else {
                // A reservation never answered, or a pod gone with its netns.
                self.shared.restore(record.clone());
                match self.release_shared(&record).await {
                    Ok(()) => done.released += 1,
                    Err(e) => {
                        warn!(address = %record.address, error = %e.msg, "releasing a shared attachment at start")
                    }
                }
                continue;
            };
            self.shared.restore(record.clone());
            match self.repair(&record, &ns).await {
                Ok(true) => done.repaired += 1,
                Ok(false) => done.kept += 1,
                Err(e) => {
                    warn!(address = %record.address, error = %e, "putting back a shared attachment's wiring")
                }
            }
        }
        done.swept = self.sweep().await?;
        if done != Restored::default() {
            info!(?done, "shared attachments reconciled");
        }
        Ok(done)
    }

    /// Puts back whatever of a live attachment is missing; whether
    /// anything was.
    async fn repair(&self, r: &SharedRecord, ns: &hostnic_netlink::Netns) -> anyhow::Result<bool> {
        let Some(net) = self.shared.net(&r.vxnet).cloned() else {
            anyhow::bail!("its vxnet {} is no longer shared in the config", r.vxnet);
        };
        let (nic, _) = self
            .shared_nic(&net)
            .await
            .map_err(|e| anyhow::anyhow!(e.msg))?;
        if let Ok(Ok(())) = wiring::verify(self.nics.plumber.node(), ns, r, nic).await {
            return Ok(false);
        }
        let node = self.nics.plumber.node();
        match node.link_by_name(&r.veth).await? {
            Some(hs) => wiring::configure_node(node, r, hs.index, nic).await?,
            None => {
                wiring::create_veth(node, ns, r).await?;
                wiring::configure(node, ns, r, nic).await?;
            }
        }
        info!(address = %r.address, veth = %r.veth, "shared attachment's wiring put back");
        Ok(true)
    }

    /// Removes hostnic's routes, rules, proxy entries and veths that no
    /// attachment explains (an agent killed mid-ADD or mid-DEL, a record
    /// lost). Returns how many.
    async fn sweep(&self) -> anyhow::Result<usize> {
        let node = self.nics.plumber.node();
        let records = self.shared.all();
        let addresses: BTreeSet<_> = records.iter().map(|r| r.address).collect();
        let veths: BTreeSet<_> = records.iter().map(|r| r.veth.as_str()).collect();
        let tables: BTreeSet<_> = self.shared.nets().iter().map(|n| n.table).collect();
        let mut swept = 0;
        for rule in node.rules(PROTO).await? {
            let addr = rule.from.or(rule.to).map(|n| n.addr());
            if !addr.is_some_and(|a| addresses.contains(&a)) {
                node.del_rule(&rule).await?;
                swept += 1;
            }
        }
        for route in node.table_routes(PROTO).await? {
            let host = route.dst.prefix_len() == 32 && addresses.contains(&route.dst.addr());
            if !host && !tables.contains(&route.table) {
                node.del_table_route(&route).await?;
                swept += 1;
            }
        }
        for (index, ip) in node.proxy_neighbours().await? {
            let in_range = self.shared.nets().iter().any(|n| n.range.contains(&ip));
            if in_range && !addresses.contains(&ip) {
                node.del_proxy_neighbour(index, ip).await?;
                swept += 1;
            }
        }
        for link in node.links().await? {
            if is_ours(&link.name) && !veths.contains(link.name.as_str()) {
                node.del_link(link.index).await?;
                swept += 1;
            }
        }
        Ok(swept)
    }
}

/// A node-side veth name hostnic makes: `hs` and 12 hex digits.
fn is_ours(name: &str) -> bool {
    name.len() == 14
        && name.starts_with("hs")
        && name[2..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}
