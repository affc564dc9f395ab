//! Domain values to WIT values (the arguments of a call). The way back,
//! for answers, is `validate.rs`: an answer is parsed and checked in one
//! step, so that nothing unchecked ever becomes a domain value.

use crate::bindings::vxnet::hostnic::policy::pod_facts;
use crate::bindings::vxnet::hostnic::policy::types as wit;
use crate::types::{Nic, Node, Owner, Pod, RouteTemplate, Vxnet};

fn pairs(map: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(crate) fn pod(p: &Pod) -> wit::Pod {
    wit::Pod {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
        labels: pairs(&p.labels),
        annotations: pairs(&p.annotations),
    }
}

pub(crate) fn owner(o: &Owner) -> pod_facts::Owner {
    pod_facts::Owner {
        kind: o.kind.clone(),
        name: o.name.clone(),
        ordinal: o.ordinal,
    }
}

pub(crate) fn node(n: &Node) -> wit::Node {
    wit::Node {
        instance: n.instance.clone(),
        zone: n.zone.clone(),
        nics_in_use: n.nics_in_use,
        nic_limit: n.nic_limit,
    }
}

pub(crate) fn vxnet(v: &Vxnet) -> wit::Vxnet {
    wit::Vxnet {
        id: v.id.clone(),
        cidr: v.cidr.to_string(),
        gateway: v.gateway.to_string(),
        free_ips: v.free_ips,
        warm_nics: v.warm_nics,
        used_nics: v.used_nics,
        recent_failures: v.recent_failures,
    }
}

pub(crate) fn nic(n: &Nic) -> wit::Nic {
    wit::Nic {
        mac: n.mac.clone(),
        ip: n.ip.to_string(),
        prefix_len: n.prefix_len,
    }
}

pub(crate) fn route_template(t: &RouteTemplate) -> wit::RouteTemplate {
    wit::RouteTemplate {
        dst: t.dst.to_string(),
        gw: t.gw.map(|g| g.to_string()),
    }
}
