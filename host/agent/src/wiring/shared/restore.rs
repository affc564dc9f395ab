//! The start of `shared`: the records read back and the kernel made to
//! match them (`docs/shared-nic.md`, "CHECK, GC, DEL and restart"). A
//! reservation whose ADD never answered is rolled back; a committed
//! attachment whose pod is gone is released; one whose pod lives gets any
//! missing piece back; and every route, rule, proxy entry or veth of
//! hostnic's that no record explains is removed. An address whose record
//! could not be read stays taken: who has it cannot be told.

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::{SharedVeth, hold_of};
use crate::record::{Key, Phase, Record, Resource, SharedHold};
use crate::shared::wiring::{self, PROTO};
use crate::wiring::Driver;

/// What the start found and did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
struct Restored {
    kept: usize,
    repaired: usize,
    released: usize,
    swept: usize,
}

pub(super) async fn restore(
    driver: &SharedVeth,
    records: Vec<Record>,
    unreadable: &[Resource],
) -> anyhow::Result<Vec<Record>> {
    let shared = &driver.shared;
    for r in unreadable {
        if let Resource::Address(a) = r {
            shared.hold(*a);
        }
    }
    let plumber = &driver.nics.plumber;
    let mut done = Restored::default();
    let mut live = Vec::new();
    for record in records {
        let hold = hold_of(&record)?.clone();
        shared.hold(hold.address);
        let ns = (record.phase == Phase::Committed)
            .then(|| {
                record
                    .netns
                    .as_deref()
                    .and_then(|p| plumber.reopen(p, record.netns_id))
            })
            .flatten();
        let Some(ns) = ns else {
            // A reservation never answered, a DEL not finished, or a pod
            // gone with its netns.
            match driver.release(&record, None).await {
                Ok(freed) => {
                    drop(freed);
                    done.released += 1;
                }
                Err(e) => {
                    warn!(address = %hold.address, error = %e.msg, "releasing a shared attachment at start")
                }
            }
            continue;
        };
        match repair(driver, &record.key, &hold, &ns).await {
            Ok(true) => done.repaired += 1,
            Ok(false) => done.kept += 1,
            Err(e) => {
                warn!(address = %hold.address, error = %format!("{e:#}"), "putting back a shared attachment's wiring")
            }
        }
        live.push(record);
    }
    done.swept = sweep(driver, &live).await?;
    if done != Restored::default() {
        info!(?done, "shared attachments reconciled");
    }
    Ok(live)
}

/// Puts back whatever of a live attachment is missing; whether anything
/// was.
async fn repair(
    driver: &SharedVeth,
    key: &Key,
    r: &SharedHold,
    ns: &hostnic_netlink::Netns,
) -> anyhow::Result<bool> {
    let Some(net) = driver.shared.net(&r.vxnet).cloned() else {
        anyhow::bail!("its vxnet {} is no longer shared in the config", r.vxnet);
    };
    let (nic, _) = driver
        .shared_nic(&net)
        .await
        .map_err(|e| anyhow::anyhow!(e.msg))?;
    let node = driver.nics.plumber.node();
    let ifname = key.ifname.as_str();
    if let Ok(Ok(())) = wiring::verify(node, ns, ifname, r, nic).await {
        return Ok(false);
    }
    match node.link_by_name(&r.veth).await? {
        Some(hs) => wiring::configure_node(node, r, hs.index, nic).await?,
        None => {
            // The pod's end went with the node's: both made again.
            let mac = wiring::veth_mac(key);
            wiring::create_veth(node, ns, (ifname, mac), r).await?;
            wiring::configure(node, ns, ifname, r, nic).await?;
        }
    }
    info!(address = %r.address, veth = %r.veth, "shared attachment's wiring put back");
    Ok(true)
}

/// Removes hostnic's routes, rules, proxy entries and veths that no
/// attachment explains (an agent killed mid-ADD or mid-DEL, a record
/// lost). Returns how many.
async fn sweep(driver: &SharedVeth, live: &[Record]) -> anyhow::Result<usize> {
    let node = driver.nics.plumber.node();
    let holds: Vec<&SharedHold> = live.iter().filter_map(|r| hold_of(r).ok()).collect();
    let addresses: BTreeSet<_> = holds.iter().map(|h| h.address).collect();
    let veths: BTreeSet<_> = holds.iter().map(|h| h.veth.as_str()).collect();
    let nets = driver.shared.nets();
    let tables: BTreeSet<_> = nets.iter().map(|n| n.table).collect();
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
        let in_range = nets.iter().any(|n| n.range.contains(&ip));
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

/// A node-side veth name hostnic makes: `hs` and 12 hex digits.
fn is_ours(name: &str) -> bool {
    name.len() == 14
        && name.starts_with("hs")
        && name[2..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}
