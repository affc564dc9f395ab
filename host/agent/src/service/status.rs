//! STATUS (kubelet polls it every few seconds) and the decisions the
//! policy hooks recorded.

use hostnic_proto::cni::{CniError, code};
use hostnic_proto::rpc::Reply;

use super::Service;
use crate::audit;
use crate::inspect::{CloudRow, GuestRow, Inspection, NicRow, SharedRow, VxnetRow};
use crate::metrics::metrics;
use crate::pool::State;

impl Service {
    /// Cheap by design (kubelet polls it every few seconds): a look at the
    /// pool, no syscalls.
    pub fn status(&self) -> Result<Reply, CniError> {
        // Ready means "an ADD could succeed now": it must be able to record
        // its reservation and to open its descriptors.
        let not_available = |msg: String| Err(CniError::new(code::NOT_AVAILABLE, msg));
        if let Err(e) = self.store.writable() {
            return not_available(format!("{e}: ADD would fail"));
        }
        match crate::fds::usage() {
            Ok((open, limit)) if open + crate::fds::ADD_HEADROOM > limit => {
                return not_available(format!(
                    "the agent has {open} of its {limit} descriptors open: ADD would fail"
                ));
            }
            Ok(_) => {}
            Err(e) => return not_available(format!("counting the agent's descriptors: {e}")),
        }
        // A NIC on its way back from a DEL serves the next ADD in ms; with
        // the cloud an ADD can still create a NIC while the VM has room.
        let (free, can_create) = {
            let pool = self.nics.pool();
            let free = pool.count_all(&[State::Free, State::Releasing]);
            (free, self.source.can_create(pool.len()))
        };
        // A shared vxnet's ADD needs no NIC of its own.
        if free == 0 && !can_create && self.shared.nets().is_empty() {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                "no free NIC on this node: ADD would fail",
            ));
        }
        Ok(Reply::Status {
            free_nics: free as u32,
        })
    }

    /// The latest policy decisions, as many as fit in a reply frame.
    pub fn decisions(&self, limit: Option<u32>) -> Result<Reply, CniError> {
        let limit = limit.map_or(usize::MAX, |n| n as usize);
        // Leave room in the frame for the envelope.
        let budget = hostnic_proto::rpc::MAX_FRAME - 4096;
        Ok(Reply::Decisions {
            calls: self.policies.log.export(limit, budget),
        })
    }

    /// What `hostnic-agent status` shows: a look at the pool (the pods'
    /// names from their records), the guests and their counts, the latest
    /// decisions, the cloud's calls. Not on any CNI path.
    pub fn inspect(&self) -> Result<Reply, CniError> {
        let rows = self.nics.pool().rows();
        let nics = rows
            .into_iter()
            .map(|(spec, state, since)| {
                let key = match &state {
                    State::Held(k) | State::Reserved(k) => Some(k.clone()),
                    _ => None,
                };
                let pod = key
                    .as_ref()
                    .and_then(|_| self.store.get(spec.mac).ok().flatten())
                    .map(|a| {
                        format!(
                            "{}/{}",
                            a.pod.namespace.unwrap_or_default(),
                            a.pod.name.unwrap_or_default()
                        )
                    })
                    .unwrap_or_default();
                NicRow {
                    mac: spec.mac.to_string(),
                    vxnet: spec.vxnet.clone().unwrap_or_default(),
                    address: spec.address.to_string(),
                    state: state.name().to_string(),
                    pod: if pod == "/" { String::new() } else { pod },
                    container: key
                        .as_ref()
                        .map(|k| k.container_id.clone())
                        .unwrap_or_default(),
                    ifname: key.map(|k| k.ifname).unwrap_or_default(),
                    since_s: since.as_secs(),
                }
            })
            .collect();
        let guests = self
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
        let cloud = self
            .source
            .cloud_calls()
            .map(|(calls, budget)| CloudRow { calls, budget });
        let vxnets = self
            .source
            .facts(&self.nics.pool())
            .0
            .into_iter()
            // What the guests see: a shared vxnet's range and the node's
            // share of it.
            .map(|v| self.for_guests(v))
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
        let shared = self
            .shared
            .all()
            .into_iter()
            .map(|r| SharedRow {
                vxnet: r.vxnet,
                address: r.address.to_string(),
                state: match r.phase {
                    crate::store::Phase::Committed => "committed",
                    crate::store::Phase::Releasing => "releasing",
                    _ => "reserved",
                }
                .to_string(),
                pod: match (r.pod.namespace, r.pod.name) {
                    (Some(ns), Some(name)) => format!("{ns}/{name}"),
                    _ => String::new(),
                },
                container: r.key.container_id,
                ifname: r.key.ifname,
                veth: r.veth,
                sticky: r.identity.unwrap_or_default(),
            })
            .collect();
        let inspection = Inspection {
            nics,
            vxnets,
            guests,
            decisions: self.audit.latest(20.min(audit::CAPACITY)),
            cloud,
            shared,
        };
        let state = serde_json::to_value(&inspection)
            .map_err(|e| CniError::new(code::INTERNAL, format!("encoding the status: {e}")))?;
        Ok(Reply::Inspection { state })
    }
}
