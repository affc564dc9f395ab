//! STATUS (kubelet polls it every few seconds) and the decisions the
//! policy hooks recorded. (What `hostnic-agent status` shows is
//! `inspect.rs`'s.)

use hostnic_proto::cni::{CniError, code};
use hostnic_proto::rpc::Reply;

use super::Service;
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
        // Some wiring must be able to serve an ADD now: a free NIC (or one
        // on its way back, or one the cloud can make), or a shared vxnet.
        if !self.drivers.all().iter().any(|d| d.ready()) {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                "no free NIC on this node: ADD would fail",
            ));
        }
        let free = self.nics.pool().count_all(&[State::Free, State::Releasing]);
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
}
