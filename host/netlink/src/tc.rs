//! The tc requests behind `shaping.rs`: a root tbf, the ingress qdisc and
//! the filter that redirects what a link receives, each built as the
//! message `tc` would send and sent through one request core, and the
//! qdisc and filter dumps read back.

use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};

use crate::{Error, Link, Netlink, Result, Tbf};

/// The root tbf's handle, `1:`, as the reference plugin and `tc` use.
const TBF_HANDLE: TcHandle = TcHandle { major: 1, minor: 0 };
/// The ingress qdisc's handle, `ffff:`: its filters' parent.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// Our filter's handle, `800::800` (u32's default table, node 0x800).
/// Fixed, so adding it again replaces it instead of adding a second one.
const FILTER_HANDLE: TcHandle = TcHandle {
    major: 0x8000,
    minor: 0x0800,
};
const FILTER_PRIORITY: u16 = 1;
/// `ETH_P_ALL`, which tc wants in network byte order in `tcm_info`.
const ETH_P_ALL: u16 = 0x0003;

/// The qdiscs of a namespace, from one dump.
#[derive(Debug)]
pub(crate) struct Qdiscs(Vec<TcMessage>);

impl Qdiscs {
    /// The tbf at the root of link `index`, if its root qdisc is one.
    pub(crate) fn root_tbf(&self, index: u32) -> Option<Tbf> {
        self.0
            .iter()
            .find(|q| q.header.index == index as i32 && q.header.parent == TcHandle::ROOT)
            .filter(|q| kind(q) == Some("tbf"))
            .and_then(|q| {
                q.attributes.iter().find_map(|a| match a {
                    TcAttribute::Options(o) => Tbf::from_options(o),
                    _ => None,
                })
            })
    }

    /// Whether link `index` has an `ingress` qdisc.
    pub(crate) fn has_ingress(&self, index: u32) -> bool {
        self.0.iter().any(|q| {
            q.header.index == index as i32
                && q.header.parent == TcHandle::INGRESS
                && kind(q) == Some("ingress")
        })
    }
}

impl Netlink {
    /// `tc qdisc replace dev INDEX root handle 1: tbf …`.
    pub(crate) async fn replace_root_tbf(&self, index: u32, name: &str, tbf: Tbf) -> Result<()> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = TcHandle::ROOT;
        msg.header.handle = TBF_HANDLE;
        msg.attributes.push(TcAttribute::Kind("tbf".into()));
        msg.attributes.push(TcAttribute::Options(tbf.options()));
        self.tc(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map_err(Error::netlink(format!(
            "setting tbf rate {} B/s buffer {} limit {} on link {name} in netns {}",
            tbf.rate, tbf.buffer, tbf.limit, self.ns
        )))
    }

    /// Every qdisc in the namespace, as one dump (the kernel lists them
    /// all whatever index is asked for).
    pub(crate) async fn qdiscs(&self) -> Result<Qdiscs> {
        let _dump = self.dump_lock.lock().await;
        self.handle
            .qdisc()
            .get()
            .execute()
            .try_collect()
            .await
            .map(Qdiscs)
            .map_err(Error::netlink(format!(
                "listing qdiscs in netns {}",
                self.ns
            )))
    }

    /// Deletes the root qdisc of `index`; the kernel puts the link's
    /// default back. None of ours there (ENOENT) is fine.
    pub(crate) async fn del_root_qdisc(&self, index: u32, name: &str) -> Result<()> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = TcHandle::ROOT;
        gone_is_ok(
            self.tc(RouteNetlinkMessage::DelQueueDiscipline(msg), 0)
                .await
                .map_err(Error::netlink(format!(
                    "deleting the root qdisc of link {name} in netns {}",
                    self.ns
                ))),
        )
    }

    /// Deletes the ingress qdisc of `link`, and with it its filters. None
    /// there is fine.
    pub(crate) async fn del_ingress_qdisc(&self, link: &Link) -> Result<()> {
        // No handle: the kernel then answers ENOENT when the slot holds no
        // qdisc, never had one or had one deleted (with a handle, the
        // latter is EINVAL, "invalid handle").
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header.parent = TcHandle::INGRESS;
        gone_is_ok(
            self.tc(RouteNetlinkMessage::DelQueueDiscipline(msg), 0)
                .await
                .map_err(Error::netlink(format!(
                    "deleting the ingress qdisc of link {} in netns {}",
                    link.name, self.ns
                ))),
        )
    }

    /// `tc qdisc add dev LINK handle ffff: ingress`; there already is fine.
    pub(crate) async fn add_ingress_qdisc(&self, link: &Link) -> Result<()> {
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header.parent = TcHandle::INGRESS;
        msg.header.handle = INGRESS_HANDLE;
        msg.attributes.push(TcAttribute::Kind("ingress".into()));
        match self
            .tc(
                RouteNetlinkMessage::NewQueueDiscipline(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
            .map_err(Error::netlink(format!(
                "adding the ingress qdisc to link {} in netns {}",
                link.name, self.ns
            ))) {
            Err(e) if e.is_exists() => Ok(()),
            other => other,
        }
    }

    /// `tc filter replace dev LINK parent ffff: prio 1 handle 800::800
    /// protocol all u32 match u32 0 0 action mirred egress redirect dev
    /// IFB`: every packet the link receives leaves through the ifb.
    pub(crate) async fn redirect_ingress(&self, link: &Link, ifb: u32) -> Result<()> {
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header.parent = INGRESS_HANDLE;
        msg.header.handle = FILTER_HANDLE;
        msg.header.info = u32::from(TcHandle {
            major: FILTER_PRIORITY,
            minor: ETH_P_ALL.to_be(),
        });
        // One key with mask 0 matches everything; terminal: stop here.
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![TcU32Key::default()];
        let mut mirred = TcMirror::default();
        mirred.generic.action = TcActionType::Stolen;
        mirred.eaction = TcMirrorActionType::EgressRedir;
        mirred.ifindex = ifb;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind("mirred".into()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirred,
            ))]),
        ];
        msg.attributes.push(TcAttribute::Kind("u32".into()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]));
        // NLM_F_CREATE without NLM_F_EXCL: the filter with this handle is
        // replaced if it is there, so the ifb index is always current.
        self.tc(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_CREATE)
            .await
            .map_err(Error::netlink(format!(
                "redirecting what link {} receives to ifb {ifb} in netns {}",
                link.name, self.ns
            )))
    }

    /// The device `link`'s ingress filters redirect to, if one does.
    pub(crate) async fn redirect_target(&self, link: &Link) -> Result<Option<u32>> {
        let _dump = self.dump_lock.lock().await;
        let filters: Vec<TcMessage> = self
            .handle
            .traffic_filter(link.index as i32)
            .get()
            .ingress()
            .execute()
            .try_collect()
            .await
            .map_err(Error::netlink(format!(
                "listing the ingress filters of link {} in netns {}",
                link.name, self.ns
            )))?;
        Ok(filters.iter().find_map(|f| {
            f.attributes.iter().find_map(|a| match a {
                TcAttribute::Options(o) => o.iter().find_map(|o| match o {
                    TcOption::U32(TcFilterU32Option::Action(actions)) => {
                        actions.iter().find_map(redirect_of)
                    }
                    _ => None,
                }),
                _ => None,
            })
        }))
    }

    /// One tc request (a qdisc or filter to add, replace or delete),
    /// answered by an acknowledgement: the request core the operations
    /// above build their messages for. rtnetlink's own builders cannot set
    /// a filter's handle or a qdisc's options.
    async fn tc(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<(), rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut answers = self.handle.clone().request(req)?;
        while let Some(answer) = answers.next().await {
            if let NetlinkPayload::Error(e) = answer.payload
                && e.code.is_some()
            {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
        Ok(())
    }
}

fn kind(q: &TcMessage) -> Option<&str> {
    q.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

fn redirect_of(action: &TcAction) -> Option<u32> {
    action.attributes.iter().find_map(|a| match a {
        TcActionAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcActionOption::Mirror(TcActionMirrorOption::Parms(m))
                if m.eaction == TcMirrorActionType::EgressRedir =>
            {
                Some(m.ifindex)
            }
            _ => None,
        }),
        _ => None,
    })
}

/// A delete that finds nothing to delete has done its job.
fn gone_is_ok(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if e.is_gone() => Ok(()),
        other => other,
    }
}
