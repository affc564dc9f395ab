//! `hostnic-agent status`: what a running agent holds, asked over its
//! root-only socket (no new network surface) and printed as tables, or as
//! JSON for scripts. [`of`] builds an [`Inspection`] from the agent's
//! parts (not on any CNI path); the rest is its shape and its printing.

use std::collections::BTreeMap;
use std::fmt::Write;

use hostnic_proto::cni::{CniError, code};
use hostnic_proto::rpc::Reply;
use serde::{Deserialize, Serialize};

use crate::audit::{self, Audited};
use crate::metrics::metrics;
use crate::pool::State;
use crate::record::Holds;
use crate::service::Service;

/// What `hostnic-agent status` shows: a look at the pool (the pods' names
/// from their records), the shared attachments, the guests and their
/// counts, the latest decisions, the cloud's calls.
pub async fn of(svc: &Service) -> Result<Reply, CniError> {
    let records = svc.attachments.all();
    let rows = svc.nics.pool().rows();
    let nics = rows
        .into_iter()
        .map(|(spec, state, since)| {
            let key = match &state {
                State::Held(k) | State::Reserved(k) => Some(k.clone()),
                _ => None,
            };
            let record = key
                .as_ref()
                .and_then(|_| records.iter().find(|r| r.mac() == Some(spec.mac)));
            let pod = record.map(|r| r.pod_name()).unwrap_or_default();
            let wiring = record.map(|r| r.wiring().to_string()).unwrap_or_default();
            NicRow {
                mac: spec.mac.to_string(),
                vxnet: spec.vxnet.clone().unwrap_or_default(),
                address: spec.address.to_string(),
                state: state.name().to_string(),
                pod,
                container: key
                    .as_ref()
                    .map(|k| k.container_id.clone())
                    .unwrap_or_default(),
                ifname: key.map(|k| k.ifname).unwrap_or_default(),
                wiring,
                since_s: since.as_secs(),
            }
        })
        .collect();
    let guests = svc
        .policies
        .guests()
        .into_iter()
        .map(|(hook, g)| {
            let count = |result| metrics().guest_calls(hook, &g.sha256, result);
            let (ok, refused, error, fallback) = (
                count("ok"),
                count("refused"),
                count("error"),
                count("fallback"),
            );
            GuestRow {
                hook: hook.to_string(),
                module: g.name.clone(),
                sha256: g.sha256.clone(),
                builtin: g.builtin,
                calls: ok + refused + error + fallback,
                errors: refused + error,
                fallbacks: fallback,
            }
        })
        .collect();
    let cloud = svc.cloud.as_ref().map(|c| {
        let (calls, budget) = c.calls();
        CloudRow { calls, budget }
    });
    let vxnets = svc
        .source
        .facts(&svc.nics.pool())
        .0
        .into_iter()
        // What the guests see: a shared vxnet's range and the node's share
        // of it.
        .map(|v| svc.drivers.for_guests(v))
        .map(|v| VxnetRow {
            shared_range: v.live.shared_range.map(|r| r.to_string()),
            id: v.id,
            cidr: v.cidr.to_string(),
            free_ips: v.free_ips,
            free_ips_age_s: v.live.free_ips_counted_s_ago,
            warm_nics: v.warm_nics,
            used_nics: v.used_nics,
            recent_failures: v.recent_failures,
            recent_failure_codes: v.live.recent_failure_codes,
            attach_latency_ms: v.live.attach_latency_ms,
        })
        .collect();
    let shared = records
        .iter()
        .filter_map(|r| match &r.holds {
            Holds::Address(h) => Some(SharedRow {
                vxnet: h.vxnet.clone(),
                address: h.address.to_string(),
                state: r.phase.name().to_string(),
                pod: r.pod_name(),
                container: r.key.container_id.clone(),
                ifname: r.key.ifname.clone(),
                veth: h.veth.clone(),
                sticky: r.sticky.clone().unwrap_or_default(),
            }),
            Holds::Nic { .. } => None,
        })
        .collect();
    let inspection = Inspection {
        nics,
        vxnets,
        guests,
        decisions: svc.audit.latest(20.min(audit::CAPACITY)),
        cloud,
        shared,
        network_policy: match &svc.netpol {
            Some(n) => n.enforced().await,
            None => Vec::new(),
        },
    };
    let state = serde_json::to_value(&inspection)
        .map_err(|e| CniError::new(code::INTERNAL, format!("encoding the status: {e}")))?;
    Ok(Reply::Inspection { state })
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Inspection {
    pub nics: Vec<NicRow>,
    /// The vxnets as the vxnet guest sees them now.
    #[serde(default)]
    pub vxnets: Vec<VxnetRow>,
    pub guests: Vec<GuestRow>,
    /// The latest ADD decisions, oldest first.
    pub decisions: Vec<Audited>,
    /// Without a cloud (static inventory): none.
    #[serde(default)]
    pub cloud: Option<CloudRow>,
    /// Pods in shared-NIC mode: an address each on the node's NIC.
    #[serde(default)]
    pub shared: Vec<SharedRow>,
    /// With NetworkPolicy enforced: the node's pods and the policies
    /// selecting each (none: not isolated).
    #[serde(default)]
    pub network_policy: Vec<crate::netpol::Enforced>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SharedRow {
    pub vxnet: String,
    /// The pod's address (a /32 in the pod).
    pub address: String,
    /// reserved (ADD under way), committed or releasing (DEL under way).
    pub state: String,
    pub pod: String,
    pub container: String,
    pub ifname: String,
    /// The node's end of its veth.
    pub veth: String,
    /// The sticky identity whose pinned address it is, if any.
    #[serde(default)]
    pub sticky: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NicRow {
    pub mac: String,
    pub vxnet: String,
    pub address: String,
    pub state: String,
    /// namespace/name of the pod holding it (held or reserved).
    pub pod: String,
    pub container: String,
    pub ifname: String,
    /// The wiring that gave it to its pod (`passthru`: the NIC is on the
    /// node, up, its pod has a child of it; `move`: it is in the pod).
    #[serde(default)]
    pub wiring: String,
    /// Seconds in this state.
    pub since_s: u64,
}

/// A candidate vxnet with what the node knows and has measured of it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct VxnetRow {
    pub id: String,
    pub cidr: String,
    /// As the cloud last counted them (0 before any count).
    pub free_ips: u32,
    pub free_ips_age_s: Option<u32>,
    pub warm_nics: u32,
    pub used_nics: u32,
    pub recent_failures: u32,
    pub recent_failure_codes: Vec<u32>,
    pub attach_latency_ms: Option<u32>,
    /// In shared-NIC mode, the range its pods are addressed from (and
    /// `free_ips` is then this node's share of it, as the guests see it).
    #[serde(default)]
    pub shared_range: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct GuestRow {
    pub hook: String,
    pub module: String,
    pub sha256: String,
    pub builtin: bool,
    pub calls: u64,
    pub errors: u64,
    pub fallbacks: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CloudRow {
    /// Requests sent per action, retries included.
    pub calls: BTreeMap<String, u64>,
    pub budget: String,
}

/// Column-aligned rows under a header.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut l = String::new();
        for (c, w) in cells.iter().zip(&width) {
            let _ = write!(l, "{c:<w$}  ");
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&line(header.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        out.push_str(&line(r.clone()));
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

/// The readable form of `i`.
pub fn render(i: &Inspection) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "NICs ({})", i.nics.len());
    let rows: Vec<Vec<String>> = i
        .nics
        .iter()
        .map(|n| {
            vec![
                n.mac.clone(),
                dash(&n.vxnet),
                n.address.clone(),
                n.state.clone(),
                dash(&n.pod),
                dash(&n.ifname),
                format!("{}s", n.since_s),
            ]
        })
        .collect();
    table(
        &mut out,
        &["MAC", "VXNET", "ADDRESS", "STATE", "POD", "IF", "SINCE"],
        &rows,
    );

    if !i.vxnets.is_empty() {
        let _ = writeln!(out, "\nVxnets");
        let rows: Vec<Vec<String>> = i
            .vxnets
            .iter()
            .map(|v| {
                let codes: Vec<String> =
                    v.recent_failure_codes.iter().map(u32::to_string).collect();
                vec![
                    v.id.clone(),
                    v.cidr.clone(),
                    match (&v.shared_range, v.free_ips_age_s) {
                        (Some(range), _) => format!("{} in {range} (shared)", v.free_ips),
                        (None, Some(age)) => format!("{} ({age}s ago)", v.free_ips),
                        (None, None) => "-".into(),
                    },
                    v.warm_nics.to_string(),
                    v.used_nics.to_string(),
                    dash(&codes.join(",")),
                    v.attach_latency_ms
                        .map_or("-".into(), |ms| format!("{ms} ms")),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "VXNET", "CIDR", "FREE IPS", "WARM", "USED", "FAILED", "ATTACH",
            ],
            &rows,
        );
    }

    if !i.shared.is_empty() {
        let _ = writeln!(out, "\nShared-NIC pods ({})", i.shared.len());
        let rows: Vec<Vec<String>> = i
            .shared
            .iter()
            .map(|r| {
                vec![
                    r.vxnet.clone(),
                    r.address.clone(),
                    r.state.clone(),
                    dash(&r.pod),
                    r.ifname.clone(),
                    r.veth.clone(),
                    dash(&r.sticky),
                ]
            })
            .collect();
        table(
            &mut out,
            &["VXNET", "ADDRESS", "STATE", "POD", "IF", "VETH", "STICKY"],
            &rows,
        );
    }

    if !i.network_policy.is_empty() {
        let isolated = i
            .network_policy
            .iter()
            .filter(|p| !p.policies.is_empty())
            .count();
        let _ = writeln!(
            out,
            "\nNetworkPolicy ({isolated} of {} pods isolated)",
            i.network_policy.len()
        );
        let rows: Vec<Vec<String>> = i
            .network_policy
            .iter()
            .map(|p| {
                let counted = |c: Option<u64>| c.map_or_else(|| "-".to_string(), |n| n.to_string());
                let c = p.counters.as_ref();
                vec![
                    format!("{}/{}", p.namespace, p.name),
                    dash(&p.policies.join(", ")),
                    counted(c.map(|c| c.allowed().packets)),
                    counted(c.map(|c| c.denied.packets)),
                ]
            })
            .collect();
        table(&mut out, &["POD", "POLICIES", "ALLOWED", "DENIED"], &rows);
    }

    let _ = writeln!(out, "\nGuests");
    if i.guests.is_empty() {
        out.push_str("(hooks disabled: native decisions)\n");
    } else {
        let rows: Vec<Vec<String>> = i
            .guests
            .iter()
            .map(|g| {
                vec![
                    g.hook.clone(),
                    g.module.clone() + if g.builtin { " (built-in)" } else { "" },
                    g.sha256.chars().take(12).collect(),
                    g.calls.to_string(),
                    g.errors.to_string(),
                    g.fallbacks.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &["HOOK", "MODULE", "SHA256", "CALLS", "ERRORS", "FALLBACKS"],
            &rows,
        );
    }

    let _ = writeln!(out, "\nLatest decisions ({})", i.decisions.len());
    let rows: Vec<Vec<String>> = i
        .decisions
        .iter()
        .map(|d| {
            vec![
                format!("{}/{}", dash(&d.namespace), dash(&d.pod)),
                d.ifname.clone(),
                d.reason(),
            ]
        })
        .collect();
    table(&mut out, &["POD", "IF", "DECISION"], &rows);

    let _ = writeln!(out, "\nCloud");
    match &i.cloud {
        None => out.push_str("(static inventory: no cloud calls)\n"),
        Some(c) => {
            let total: u64 = c.calls.values().sum();
            let _ = writeln!(out, "budget: {}", c.budget);
            let _ = writeln!(out, "requests sent: {total}");
            let rows: Vec<Vec<String>> = c
                .calls
                .iter()
                .map(|(a, n)| vec![a.clone(), n.to_string()])
                .collect();
            table(&mut out, &["ACTION", "REQUESTS"], &rows);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_name_every_section() {
        let i = Inspection {
            nics: vec![NicRow {
                mac: "52:54:00:00:00:01".into(),
                vxnet: "vxnet-a".into(),
                address: "10.0.1.5/24".into(),
                state: "held".into(),
                pod: "default/web-0".into(),
                ifname: "eth0".into(),
                since_s: 12,
                ..NicRow::default()
            }],
            ..Inspection::default()
        };
        let text = render(&i);
        assert!(text.contains("MAC                VXNET    ADDRESS      STATE  POD            IF    SINCE\n52:54:00:00:00:01  vxnet-a  10.0.1.5/24  held   default/web-0  eth0  12s\n"), "{text}");
        assert!(text.contains("(hooks disabled"), "{text}");
        assert!(text.contains("(static inventory"), "{text}");
    }

    #[test]
    fn network_policy_rows_show_what_each_table_counted() {
        use crate::netpol::counters::{Count, Counters};
        let counted = Counters {
            rules: [
                (
                    "default/a ingress 0".to_string(),
                    Count {
                        packets: 5,
                        bytes: 300,
                    },
                ),
                (
                    "default/b egress 1".to_string(),
                    Count {
                        packets: 7,
                        bytes: 420,
                    },
                ),
            ]
            .into(),
            denied: Count {
                packets: 143,
                bytes: 8580,
            },
        };
        let pod = |name: &str, policies: Vec<String>, counters| crate::netpol::Enforced {
            namespace: "default".into(),
            name: name.into(),
            policies,
            counters,
        };
        let i = Inspection {
            network_policy: vec![
                pod(
                    "web",
                    vec!["default/a".into(), "default/b".into()],
                    Some(counted),
                ),
                pod("gone", vec![], None),
            ],
            ..Inspection::default()
        };
        let text = render(&i);
        assert!(
            text.contains("NetworkPolicy (1 of 2 pods isolated)\n"),
            "{text}"
        );
        assert!(text.contains("POD           POLICIES              ALLOWED  DENIED\ndefault/web   default/a, default/b  12       143\ndefault/gone  -                     -        -\n"), "{text}");
    }
}
