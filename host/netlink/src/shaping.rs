//! Bandwidth limits on a pod's own interface, inside the pod's namespace:
//! the `bandwidth` capability for every wiring (a NIC moved into the pod,
//! or the pod's end of a veth), with no host-side peer needed.
//!
//! - Egress (what the pod sends): a `tbf` root qdisc on the interface.
//! - Ingress (what the pod receives): the `ingress` qdisc on the interface,
//!   with a match-all `u32` filter whose `mirred` action redirects every
//!   packet to an `ifb` device in the same namespace, and a `tbf` root
//!   qdisc on the ifb. Received traffic cannot be queued where it arrives;
//!   on the ifb's egress it can.
//!
//! This is what the reference `bandwidth` plugin builds on the host side
//! of a veth, turned around: inside the pod the interface's egress is the
//! pod's egress.
//!
//! What takes the pieces away: the qdiscs and the filter belong to the
//! interface, and the kernel destroys them when the interface leaves the
//! namespace (`dev_shutdown()` in the namespace move) or is deleted. The
//! ifb does not: it stays in the pod's namespace until it is deleted or
//! the namespace dies. [`Netlink::unshape`] removes it with the rest, and
//! [`Netlink::del_ifb`] removes it by the interface's name alone, for a
//! DEL that finds the interface already gone.

use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::LinkIfb;

use crate::{Error, Limit, Link, Netlink, Result, Tbf};

/// The limits of one pod interface; `None`: unlimited that way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Shaping {
    /// Traffic to the pod.
    pub ingress: Option<Limit>,
    /// Traffic the pod sends.
    pub egress: Option<Limit>,
}

/// The shaping the kernel has on an interface, as tbf parameters: what
/// [`Netlink::shaping`] reads and [`Shaping::plan`] computes, so CHECK
/// compares the two with `==`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Shaped {
    /// Present only when the whole path is: the ingress qdisc, the
    /// redirecting filter and a tbf on the device it redirects to.
    pub ingress: Option<Tbf>,
    pub egress: Option<Tbf>,
}

impl Shaping {
    /// The tbfs that shape `link` so, refusing limits the kernel cannot
    /// honour (see [`Tbf::for_limit`]); the error names the direction.
    pub fn plan(&self, link: &Link) -> Result<Shaped> {
        let tbf = |dir: &str, limit: Option<Limit>| {
            limit
                .map(|l| Tbf::for_limit(l, link.mtu))
                .transpose()
                .map_err(|why| Error::Refused {
                    op: format!("shaping {} of link {}", dir, link.name),
                    why,
                })
        };
        Ok(Shaped {
            ingress: tbf("ingress", self.ingress)?,
            egress: tbf("egress", self.egress)?,
        })
    }
}

/// The ifb that carries `ifname`'s received traffic: `ifb-<ifname>` when
/// that fits the kernel's 15 characters, else `ifb.` and 11 hex digits of
/// a hash of the whole name (no 11-character name gives that form, and
/// two long names sharing a prefix still get two ifbs). Derived from the
/// name alone, so a DEL that no longer finds the interface finds its ifb.
pub fn ifb_name(ifname: &str) -> String {
    let short = format!("ifb-{ifname}");
    if short.len() <= 15 {
        return short;
    }
    // FNV-1a, 64 bits: stable across releases, unlike std's hasher.
    let hash = ifname.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("ifb.{:011x}", hash & 0xfff_ffff_ffff)
}

impl Netlink {
    /// Makes `link`'s shaping what `shaping` says: each direction with a
    /// limit gets it (replacing any tbf of ours), each without loses ours.
    /// Idempotent: applying the same shaping again changes nothing, and a
    /// new one takes the old one's place. Checked first ([`Shaping::plan`]);
    /// if the kernel refuses a step, everything is taken off again
    /// ([`Netlink::unshape`]) so no half of it stays.
    pub async fn shape(&self, link: &Link, shaping: &Shaping) -> Result<()> {
        let plan = shaping.plan(link)?;
        let Err(e) = self.apply(link, &plan).await else {
            return Ok(());
        };
        match self.unshape(link).await {
            Ok(()) => Err(e),
            Err(undo) => Err(Error::Refused {
                op: format!("shaping link {} in netns {}", link.name, self.ns),
                why: format!("{e}; and undoing it: {undo}"),
            }),
        }
    }

    async fn apply(&self, link: &Link, plan: &Shaped) -> Result<()> {
        match plan.egress {
            Some(tbf) => self.replace_root_tbf(link.index, &link.name, tbf).await?,
            None => self.del_root_tbf(link.index, &link.name).await?,
        }
        let Some(tbf) = plan.ingress else {
            return self.del_ingress_shaping(link).await;
        };
        // The ifb is up and shaped before anything is redirected to it:
        // mirred drops what it sends to a device that is down, and until
        // the tbf is there the traffic would pass unshaped.
        let ifb = self.ensure_ifb(link).await?;
        self.replace_root_tbf(ifb, &ifb_name(&link.name), tbf)
            .await?;
        self.add_ingress_qdisc(link).await?;
        self.redirect_ingress(link, ifb).await
    }

    /// The shaping on `link`: the tbf at its root (egress), and the tbf at
    /// the root of the device its ingress filter redirects to (ingress).
    /// Anything else there (another qdisc, no redirect) reads as no
    /// shaping that way.
    pub async fn shaping(&self, link: &Link) -> Result<Shaped> {
        let qdiscs = self.qdiscs().await?;
        let ingress = match qdiscs.has_ingress(link.index) {
            true => self
                .redirect_target(link)
                .await?
                .and_then(|ifb| qdiscs.root_tbf(ifb)),
            false => None,
        };
        Ok(Shaped {
            ingress,
            egress: qdiscs.root_tbf(link.index),
        })
    }

    /// Takes all of hostnic's shaping off `link`: its root tbf, its ingress
    /// qdisc (and with it the filter) and its ifb. Best-effort: every step
    /// is tried, what is already gone is fine, and the errors are reported
    /// together.
    pub async fn unshape(&self, link: &Link) -> Result<()> {
        let egress = self.del_root_tbf(link.index, &link.name).await;
        let ingress = self.del_ingress_shaping(link).await;
        together(
            || format!("unshaping link {} in netns {}", link.name, self.ns),
            [egress, ingress],
        )
    }

    /// Deletes the ifb of an interface named `ifname`, for a DEL whose
    /// interface has already left the namespace (taking its qdiscs and
    /// filter with it). Already gone, or never made, is fine.
    pub async fn del_ifb(&self, ifname: &str) -> Result<()> {
        let name = ifb_name(ifname);
        match self.link_message(&name).await? {
            Some(m) if is_ifb(&m) => self.del_link(m.header.index).await,
            // A device of that name that is not an ifb is not ours.
            _ => Ok(()),
        }
    }

    async fn del_ingress_shaping(&self, link: &Link) -> Result<()> {
        let qdisc = self.del_ingress_qdisc(link).await;
        let ifb = self.del_ifb(&link.name).await;
        together(
            || format!("removing the ingress shaping of link {}", link.name),
            [qdisc, ifb],
        )
    }

    /// Deletes the root qdisc of `index` if it is a tbf (taken to be ours:
    /// nothing else shapes a pod's interface). Any other is left alone.
    async fn del_root_tbf(&self, index: u32, name: &str) -> Result<()> {
        if self.qdiscs().await?.root_tbf(index).is_none() {
            return Ok(());
        }
        self.del_root_qdisc(index, name).await
    }

    /// The ifb for `link`, made if missing, with the link's MTU and up.
    async fn ensure_ifb(&self, link: &Link) -> Result<u32> {
        let name = ifb_name(&link.name);
        let op = || {
            format!(
                "creating ifb {name} for link {} in netns {}",
                link.name, self.ns
            )
        };
        let add = LinkIfb::new(&name).mtu(link.mtu).up().build();
        if let Err(e) = self.handle.link().add(add).execute().await {
            let e = Error::netlink(op())(e);
            if !e.is_exists() {
                return Err(e);
            }
        }
        // New or left from an earlier ADD of the same attachment: either
        // way it must be an ifb, up and with the link's MTU now.
        match self.link_message(&name).await? {
            Some(m) if is_ifb(&m) => {
                self.set_mtu_up(m.header.index, link.mtu).await?;
                Ok(m.header.index)
            }
            Some(_) => Err(Error::Refused {
                op: op(),
                why: format!("a link named {name} exists and is not an ifb"),
            }),
            None => Err(Error::Refused {
                op: op(),
                why: "it was gone right after being made".into(),
            }),
        }
    }
}

fn is_ifb(m: &LinkMessage) -> bool {
    m.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Ifb))),
        _ => false,
    })
}

/// A teardown's answer: Ok when every step was, the one error when one
/// step failed, all of them together when more did.
fn together(op: impl FnOnce() -> String, results: [Result<()>; 2]) -> Result<()> {
    let mut errors: Vec<Error> = results.into_iter().filter_map(Result::err).collect();
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Refused {
            op: op(),
            why: errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifb_names_fit_and_stay_apart() {
        assert_eq!(ifb_name("eth0"), "ifb-eth0");
        assert_eq!(ifb_name("net1"), "ifb-net1");
        assert_eq!(ifb_name("abcdefghijk"), "ifb-abcdefghijk");
        let a = ifb_name("abcdefghijkl");
        let b = ifb_name("abcdefghijkm");
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert_eq!(n.len(), 15, "{n}");
            assert!(n.starts_with("ifb."), "{n}");
        }
        // Stable: the same name always gives the same ifb.
        assert_eq!(ifb_name("abcdefghijkl"), a);
    }

    #[test]
    fn a_plan_names_the_direction_it_refuses() {
        let link = Link {
            index: 2,
            name: "eth0".into(),
            mac: None,
            mtu: 1500,
            up: true,
        };
        let good = Limit {
            rate: 10_000_000,
            burst: 1_000_000,
        };
        let shaping = Shaping {
            ingress: Some(good),
            egress: Some(Limit { rate: 0, ..good }),
        };
        let e = shaping.plan(&link).unwrap_err().to_string();
        assert!(e.contains("egress of link eth0"), "{e}");
        let ok = Shaping {
            egress: None,
            ..shaping
        };
        let plan = ok.plan(&link).unwrap();
        assert_eq!(plan.ingress.unwrap().rate, 1_250_000);
        assert_eq!(plan.egress, None);
        assert_eq!(Shaping::default().plan(&link).unwrap(), Shaped::default());
    }
}
