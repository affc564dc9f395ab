//! CHECK: the pod's NIC is still wired as the ADD recorded.

use std::net::IpAddr;

use hostnic_netlink::{Mac, Netns};
use hostnic_proto::cni::{AddResult, CniError, code};
use hostnic_proto::rpc::{CheckRequest, Reply};
use ipnet::IpNet;

use super::{Service, internal, key_of};
use crate::plumb::Wiring;
use crate::pool::State;
use crate::store::Key;

impl Service {
    /// CHECK of the attachment asked for and, natively, of the pod's extra
    /// networks: a pod is only whole if every NIC it got is still wired.
    pub async fn check(&self, req: CheckRequest, netns: Option<Netns>) -> Result<Reply, CniError> {
        let netns = netns.ok_or_else(|| {
            CniError::new(code::INVALID_ENV, "CHECK needs the pod's netns descriptor")
        })?;
        let key = key_of(&req.target);
        self.check_one(&key, req.prev_result.as_ref(), &netns)
            .await?;
        if self.native_networks() {
            let extras = self
                .nics
                .pool()
                .held_by_container(&key.container_id)
                .into_iter()
                .chain(self.shared.held_by_container(&key.container_id))
                .filter(|k| k.network != key.network);
            for extra in extras {
                // The runtime's prevResult is the cluster network's only.
                self.check_one(&extra, None, &netns).await.map_err(|e| {
                    CniError::new(
                        e.code,
                        format!("network {} ({}): {}", extra.network, extra.ifname, e.msg),
                    )
                })?;
            }
        }
        Ok(Reply::Checked)
    }

    /// CHECK of one attachment against its record.
    async fn check_one(
        &self,
        key: &Key,
        prev_result: Option<&serde_json::Value>,
        netns: &Netns,
    ) -> Result<(), CniError> {
        if self.shared.peek(key).is_some() {
            let result = self.check_shared(key, netns).await?;
            return check_prev_result(&result, prev_result);
        }
        let (lease, state) = self.nics.pool().lookup(key).ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "hostnic has no attachment for container {} {}",
                    key.container_id, key.ifname
                ),
            )
        })?;
        if !matches!(state, State::Held(_)) {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                "the attachment's ADD is still in progress",
            ));
        }
        let _guard = lease.lock.lock().await;
        let Reply::Added(result) = self.recorded_result(lease.spec.mac)? else {
            unreachable!("recorded_result only returns Added")
        };
        check_prev_result(&result, prev_result)?;
        let w = wiring_from_result(&result, lease.spec.mac)?;
        match self.nics.plumber.verify(&w, netns).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(diff)) => Err(CniError::new(code::CHECK_FAILED, diff)),
            Err(e) => Err(internal(format!(
                "checking container {}: {e}",
                key.container_id
            ))),
        }
    }
}

fn wiring_from_result(r: &AddResult, mac: Mac) -> Result<Wiring, CniError> {
    let address = match r.ips.first().map(|i| i.address) {
        Some(IpNet::V4(a)) => a,
        _ => return Err(internal("the recorded result has no IPv4 address")),
    };
    let v4 = |gw: Option<IpAddr>| match gw {
        Some(IpAddr::V4(g)) => Some(g),
        _ => None,
    };
    Ok(Wiring {
        mac,
        ifname: r.interface.name.clone(),
        address,
        mtu: r.interface.mtu,
        routes: r
            .routes
            .iter()
            .filter_map(|rt| match rt.dst {
                IpNet::V4(d) => Some((d, v4(rt.gw))),
                IpNet::V6(_) => None,
            })
            .collect(),
    })
}

/// The runtime's cached result must still show our address.
fn check_prev_result(ours: &AddResult, prev: Option<&serde_json::Value>) -> Result<(), CniError> {
    let Some(prev) = prev else { return Ok(()) };
    let want = ours
        .ips
        .first()
        .map(|i| i.address.to_string())
        .unwrap_or_default();
    let listed = prev["ips"]
        .as_array()
        .is_some_and(|ips| ips.iter().any(|ip| ip["address"].as_str() == Some(&want)));
    if listed {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_FAILED,
            format!(
                "prevResult does not list the address {want} that hostnic gave this attachment"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::add::add_result;
    use super::*;
    use hostnic_proto::cni;

    #[test]
    fn result_and_wiring_round_trip() {
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let gateway = "10.0.1.1".parse().unwrap();
        let w = Wiring {
            mac,
            ifname: "eth1".into(),
            address: "10.0.1.10/24".parse().unwrap(),
            mtu: 9000,
            routes: vec![
                ("0.0.0.0/0".parse().unwrap(), Some(gateway)),
                (
                    "10.96.0.0/12".parse().unwrap(),
                    Some("10.0.1.9".parse().unwrap()),
                ),
                ("172.16.0.0/16".parse().unwrap(), None),
            ],
        };
        let r = add_result(&w, "/var/run/netns/p", gateway);
        assert_eq!(wiring_from_result(&r, mac).unwrap(), w);
        assert!(check_prev_result(&r, None).is_ok());
        let prev = r.encode(cni::Version::V1_0_0, None);
        assert!(check_prev_result(&r, Some(&prev)).is_ok());
        let other = serde_json::json!({"ips": [{"address": "10.9.9.9/24"}]});
        assert_eq!(
            check_prev_result(&r, Some(&other)).unwrap_err().code,
            code::CHECK_FAILED
        );
    }
}
