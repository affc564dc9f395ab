//! CHECK: the pod still has what ADD gave it.

use hostnic_netlink::Netns;
use hostnic_proto::cni::AddResult;
use hostnic_proto::rpc::{CheckRequest, Reply};

use super::{Service, key_of};
use crate::error::{Error, Kind, Result};
use crate::record::{Key, Phase};

impl Service {
    /// CHECK of the attachment asked for and, natively, of the pod's extra
    /// networks: a pod is only whole if every attachment it got is still
    /// wired.
    pub async fn check(&self, req: CheckRequest, netns: Option<Netns>) -> Result<Reply> {
        let netns =
            netns.ok_or_else(|| Error::invalid_env("CHECK needs the pod's netns descriptor"))?;
        let key = key_of(&req.target);
        self.check_one(&key, req.prev_result.as_ref(), &netns)
            .await?;
        if self.native_networks() {
            let extras = self
                .attachments
                .of_container(&key.container_id)
                .into_iter()
                .filter(|k| k.network != key.network);
            for extra in extras {
                // The runtime's prevResult is the cluster network's only.
                self.check_one(&extra, None, &netns).await.map_err(|e| {
                    e.context(format!("network {} ({})", extra.network, extra.ifname))
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
    ) -> Result<()> {
        let unknown = || {
            Error::new(
                Kind::Unknown,
                format!(
                    "hostnic has no attachment for container {} {}",
                    key.container_id, key.ifname
                ),
            )
        };
        let in_progress = || Error::try_again("the attachment's ADD is still in progress");
        let Some(record) = self.attachments.get(key) else {
            return Err(match self.attachments.contains(key) {
                true => in_progress(),
                false => unknown(),
            });
        };
        if record.phase != Phase::Committed {
            return Err(in_progress());
        }
        let locked = self.attachments.lock(key).await.ok_or_else(unknown)?;
        let record = locked.record;
        let result = record
            .result
            .as_ref()
            .ok_or_else(|| Error::internal("the attachment's record has no result"))?;
        check_prev_result(result, prev_result)?;
        self.drivers
            .for_record(&record)
            .verify(&record, netns)
            .await?;
        crate::shaping::verify(netns, &key.ifname, record.bandwidth.as_ref()).await
    }
}

/// The runtime's cached result must still show our address.
fn check_prev_result(ours: &AddResult, prev: Option<&serde_json::Value>) -> Result<()> {
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
        Err(Error::new(
            Kind::CheckFailed,
            format!(
                "prevResult does not list the address {want} that hostnic gave this attachment"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plumb::Wiring;
    use hostnic_netlink::Mac;
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
        let r = w.result("/var/run/netns/p", gateway);
        assert_eq!(Wiring::from_result(&r, mac).unwrap(), w);
        assert!(check_prev_result(&r, None).is_ok());
        let prev = r.encode(cni::Version::V1_0_0, None);
        assert!(check_prev_result(&r, Some(&prev)).is_ok());
        let other = serde_json::json!({"ips": [{"address": "10.9.9.9/24"}]});
        assert_eq!(
            check_prev_result(&r, Some(&other)).unwrap_err().kind,
            Kind::CheckFailed
        );
    }
}
