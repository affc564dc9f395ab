//! The `bandwidth` capability (Kubernetes' `kubernetes.io/ingress-bandwidth`
//! and `egress-bandwidth`): limits on the pod's own interface, inside its
//! namespace, whatever wired it — so one step of the pipeline serves every
//! driver. The kernel side is `hostnic_netlink::shaping`.

use hostnic_netlink::{Limit, Netns, Shaping};
use hostnic_proto::cni::{Bandwidth, BandwidthLimit};

use crate::error::{Error, Kind, Result};

fn shaping(bw: &Bandwidth) -> Shaping {
    let lim = |l: BandwidthLimit| Limit {
        rate: l.rate,
        burst: l.burst,
    };
    Shaping {
        ingress: bw.ingress.map(lim),
        egress: bw.egress.map(lim),
    }
}

fn kernel(what: &str, ifname: &str) -> impl Fn(hostnic_netlink::Error) -> Error {
    move |e| match e {
        // A limit the interface cannot honour: the pod's config.
        hostnic_netlink::Error::Refused { .. } => {
            Error::invalid_config(format!("runtimeConfig.bandwidth on {ifname}: {e}"))
        }
        e => Error::internal(format!("{what} {ifname}: {e}")),
    }
}

/// Puts `bw` on the pod's interface `ifname`.
pub async fn apply(netns: &Netns, ifname: &str, bw: &Bandwidth) -> Result<()> {
    let pod = netns.connect().await.map_err(kernel("shaping", ifname))?;
    let link = pod
        .link_by_name(ifname)
        .await
        .map_err(kernel("shaping", ifname))?
        .ok_or_else(|| Error::internal(format!("shaping {ifname}: it is not in the pod")))?;
    pod.shape(&link, &shaping(bw))
        .await
        .map_err(kernel("shaping", ifname))
}

/// Whether the pod's interface `ifname` is shaped as `bw`: CHECK. An
/// attachment without limits has nothing of hostnic's to check here.
pub async fn verify(netns: &Netns, ifname: &str, bw: Option<&Bandwidth>) -> Result<()> {
    let Some(bw) = bw else {
        return Ok(());
    };
    let pod = netns
        .connect()
        .await
        .map_err(kernel("checking the shaping of", ifname))?;
    let Some(link) = pod
        .link_by_name(ifname)
        .await
        .map_err(kernel("checking the shaping of", ifname))?
    else {
        return Err(Error::new(
            Kind::CheckFailed,
            format!("the pod has no interface {ifname}"),
        ));
    };
    let want = shaping(bw)
        .plan(&link)
        .map_err(kernel("checking the shaping of", ifname))?;
    let have = pod
        .shaping(&link)
        .await
        .map_err(kernel("checking the shaping of", ifname))?;
    if have == want {
        Ok(())
    } else {
        Err(Error::new(
            Kind::CheckFailed,
            format!("{ifname} is shaped {have:?}, expected {want:?}"),
        ))
    }
}

/// Takes the ifb of `ifname`'s ingress shaping out of the pod (the
/// interface's own qdiscs go with it when it leaves or is deleted; the
/// ifb would stay). Best effort: what is gone already is fine.
pub async fn clear(netns: &Netns, ifname: &str) -> Result<()> {
    let pod = netns.connect().await.map_err(kernel("unshaping", ifname))?;
    pod.del_ifb(ifname)
        .await
        .map_err(kernel("unshaping", ifname))
}
