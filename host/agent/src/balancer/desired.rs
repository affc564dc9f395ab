//! What a Service of type LoadBalancer asks of the cloud, as a pure
//! function of the Service, its EndpointSlices and the nodes: the load
//! balancer's name and network, one listener per port, and each
//! listener's backends. No I/O: [`super::converge`] makes the cloud match.
//!
//! The annotations are QingCloud's own controller's where they apply
//! (`service.beta.kubernetes.io/qingcloud-…`, per-port values written
//! `port:value,…`), so a Service written for it keeps its meaning here.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use hostnic_iaas::lb::{
    BackendTarget, BalanceMode, HealthCheck, ListenerProtocol, LoadBalancerNetwork,
    MAX_BACKENDS_PER_LOAD_BALANCER, NewListener,
};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::config::{Backends, LoadBalancer as Config};

const PREFIX: &str = "service.beta.kubernetes.io/qingcloud-";
/// hostnic's own: `pods` or `nodeport`.
pub const BACKENDS: &str = "hostnic.io/load-balancer-backends";

/// A Service's load balancer as it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub name: String,
    pub network: LoadBalancerNetwork,
    pub lb_type: u8,
    /// What every listener of this Service is named with: listeners on
    /// the load balancer without it are not this Service's.
    pub listener_prefix: String,
    pub listeners: Vec<DesiredListener>,
    /// Backends left out to stay within the cloud's cap
    /// ([`MAX_BACKENDS_PER_LOAD_BALANCER`] per load balancer, every
    /// listener's together).
    pub left_out: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredListener {
    pub listener: NewListener,
    /// (target, port) pairs.
    pub backends: BTreeSet<(BackendTarget, u16)>,
}

/// Why a Service's load balancer cannot be described: the Service's
/// fault, said in an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The cloud-side names of a Service's load balancer and listeners. The
/// load balancer's is QingCloud's controller's form,
/// `k8s_lb_<cluster>_<namespace>_<name>_<first part of the uid>`; the
/// sweep reads a Service back from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub cluster: String,
}

impl Names {
    pub fn prefix(&self) -> String {
        format!("k8s_lb_{}_", self.cluster)
    }

    pub fn load_balancer(&self, namespace: &str, name: &str, uid: &str) -> String {
        let short = uid.split('-').next().unwrap_or(uid);
        format!("{}{namespace}_{name}_{short}", self.prefix())
    }

    /// (namespace, name, short uid) of a name this cluster gave; names
    /// and namespaces have no `_` (they are DNS labels), so the split is
    /// exact.
    pub fn parse<'a>(&self, lb_name: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        let rest = lb_name.strip_prefix(&self.prefix())?;
        let mut parts = rest.split('_');
        let (ns, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
        parts.next().is_none().then_some((ns, name, uid))
    }

    pub fn listener_prefix(namespace: &str, name: &str) -> String {
        format!("listener_{namespace}_{name}_")
    }

    pub fn listener(namespace: &str, name: &str, port: &ServicePort) -> String {
        format!(
            "{}{}_{}",
            Names::listener_prefix(namespace, name),
            port.port,
            port.protocol.as_deref().unwrap_or("TCP").to_lowercase()
        )
    }
}

/// Whether this controller serves `svc`: type LoadBalancer, and no
/// `loadBalancerClass` or ours.
pub fn served(svc: &Service, class: &str) -> bool {
    let Some(spec) = &svc.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec
            .load_balancer_class
            .as_deref()
            .is_none_or(|c| c == class)
}

fn annotation<'a>(svc: &'a Service, key: &str) -> Option<&'a str> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

/// `port:value,port:value` → the value for `port`.
fn per_port<'a>(svc: &'a Service, key: &str, port: i32) -> Result<Option<&'a str>, Refused> {
    let Some(all) = annotation(svc, &format!("{PREFIX}{key}")) else {
        return Ok(None);
    };
    for pair in all.split(',') {
        let (p, v) = pair.split_once(':').ok_or_else(|| {
            Refused(format!(
                "annotation {PREFIX}{key}: {pair:?} is not port:value"
            ))
        })?;
        if p.trim() == port.to_string() {
            return Ok(Some(v.trim()));
        }
    }
    Ok(None)
}

/// The health check a listener gets: the Service's per-port method and
/// option, else the configured option over TCP.
fn health_check(svc: &Service, port: i32, cfg: &Config) -> Result<HealthCheck, Refused> {
    let option =
        per_port(svc, "lb-listener-healthycheckoption", port)?.unwrap_or(cfg.health_check.as_str());
    let n: Vec<u32> = option
        .split('|')
        .map(|v| v.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            Refused(format!(
                "health check option {option:?} is not interval|timeout|fall|rise"
            ))
        })?;
    let [interval_s, timeout_s, fall, rise] = n[..] else {
        return Err(Refused(format!(
            "health check option {option:?} is not interval|timeout|fall|rise"
        )));
    };
    let http_path = match per_port(svc, "lb-listener-healthycheckmethod", port)? {
        None | Some("tcp") => None,
        Some(m) => Some(
            m.strip_prefix("http|")
                .filter(|p| p.starts_with('/'))
                .ok_or_else(|| {
                    Refused(format!(
                        "health check method {m:?} is not tcp or http|/path"
                    ))
                })?
                .to_string(),
        ),
    };
    Ok(HealthCheck {
        http_path,
        interval_s,
        timeout_s,
        fall,
        rise,
    })
}

/// What `svc` asks for. `slices` are its EndpointSlices; `nodes` are the
/// cluster's ready nodes' VMs (for NodePort backends).
pub fn desired(
    svc: &Service,
    slices: &[EndpointSlice],
    nodes: &[String],
    names: &Names,
    cfg: &Config,
) -> Result<Desired, Refused> {
    let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let uid = svc.metadata.uid.as_deref().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let network = match annotation(svc, &format!("{PREFIX}load-balancer-network-type")) {
        None | Some("internal") => LoadBalancerNetwork::Internal {
            vxnet: annotation(svc, &format!("{PREFIX}load-balancer-vxnet-id"))
                .unwrap_or(&cfg.vxnet)
                .to_string(),
            private_ip: annotation(svc, &format!("{PREFIX}load-balancer-internal-ip"))
                .map(|ip| {
                    ip.parse::<Ipv4Addr>()
                        .map_err(|_| Refused(format!("internal IP {ip:?} is not an IPv4 address")))
                })
                .transpose()?,
        },
        Some("public") => {
            let eips: Vec<String> = annotation(svc, &format!("{PREFIX}load-balancer-eip-ids"))
                .unwrap_or_default()
                .split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect();
            if eips.is_empty() {
                return Err(Refused(format!(
                    "a public load balancer needs {PREFIX}load-balancer-eip-ids"
                )));
            }
            LoadBalancerNetwork::Public { eips }
        }
        Some(other) => {
            return Err(Refused(format!(
                "load balancer network type {other:?} is not internal or public"
            )));
        }
    };
    let lb_type = match annotation(svc, &format!("{PREFIX}load-balancer-type")) {
        None => 0,
        Some(t) => t
            .parse::<u8>()
            .ok()
            .filter(|t| *t <= 5)
            .ok_or_else(|| Refused(format!("load balancer type {t:?} is not 0..5")))?,
    };
    let backends = match annotation(svc, BACKENDS) {
        None => cfg.backends,
        Some("pods") => Backends::Pods,
        Some("nodeport") => Backends::Nodeport,
        Some(other) => {
            return Err(Refused(format!(
                "{BACKENDS} {other:?} is not pods or nodeport"
            )));
        }
    };
    let mut listeners = Vec::new();
    for port in spec.ports.unwrap_or_default() {
        let protocol = match per_port(svc, "lb-listener-protocol", port.port)? {
            Some("http") => ListenerProtocol::Http,
            Some("tcp") | None if port.protocol.as_deref().unwrap_or("TCP") == "TCP" => {
                ListenerProtocol::Tcp
            }
            None if port.protocol.as_deref() == Some("UDP") => ListenerProtocol::Udp,
            other => {
                return Err(Refused(format!(
                    "port {} ({}): listener protocol {} is not supported",
                    port.port,
                    port.protocol.as_deref().unwrap_or("TCP"),
                    other.unwrap_or("of this port protocol")
                )));
            }
        };
        let balance_mode = match per_port(svc, "lb-listener-balancemode", port.port)? {
            None | Some("roundrobin") => BalanceMode::RoundRobin,
            Some("leastconn") => BalanceMode::LeastConn,
            Some("source") => BalanceMode::Source,
            Some(other) => {
                return Err(Refused(format!(
                    "balance mode {other:?} is not roundrobin, leastconn or source"
                )));
            }
        };
        let port_number = u16::try_from(port.port)
            .map_err(|_| Refused(format!("port {} is not a port", port.port)))?;
        let targets = match backends {
            Backends::Pods => ready_endpoints(slices, &port),
            Backends::Nodeport => {
                let Some(node_port) = port.node_port.and_then(|p| u16::try_from(p).ok()) else {
                    return Err(Refused(format!(
                        "port {} has no nodePort (allocateLoadBalancerNodePorts is false?) for NodePort backends",
                        port.port
                    )));
                };
                nodes
                    .iter()
                    .map(|i| (BackendTarget::Instance(i.clone()), node_port))
                    .collect()
            }
        };
        listeners.push(DesiredListener {
            listener: NewListener {
                name: Names::listener(namespace, name, &port),
                port: port_number,
                protocol,
                balance_mode,
                health_check: health_check(svc, port.port, cfg)?,
            },
            backends: targets,
        });
    }
    let left_out = cap_backends(&mut listeners);
    Ok(Desired {
        name: names.load_balancer(namespace, name, uid),
        network,
        lb_type,
        listener_prefix: Names::listener_prefix(namespace, name),
        listeners,
        left_out,
    })
}

/// Keeps the backends within the cloud's cap per load balancer, listener
/// by listener in address order (the same ones every pass, so the cloud is
/// not churned); how many were left out.
fn cap_backends(listeners: &mut [DesiredListener]) -> usize {
    let mut room = MAX_BACKENDS_PER_LOAD_BALANCER;
    let mut left_out = 0;
    for l in listeners {
        let keep = l.backends.len().min(room);
        left_out += l.backends.len() - keep;
        l.backends = std::mem::take(&mut l.backends)
            .into_iter()
            .take(keep)
            .collect();
        room -= keep;
    }
    left_out
}

/// The ready endpoints' (address, port) for a Service port: the port of
/// the slice whose name matches, of every endpoint that is ready (absent
/// means ready, as the API says). A terminating endpoint is not ready, so
/// it leaves the backends while it still serves its open connections.
fn ready_endpoints(slices: &[EndpointSlice], port: &ServicePort) -> BTreeSet<(BackendTarget, u16)> {
    let mut out = BTreeSet::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        let Some(number) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or(""))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for addr in &ep.addresses {
                if let Ok(ip) = addr.parse::<Ipv4Addr>() {
                    out.insert((BackendTarget::Address(ip), number));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> Config {
        toml::from_str("enabled = true\nvxnet = \"vxnet-lb\"").unwrap()
    }

    fn names() -> Names {
        Names {
            cluster: "c1".into(),
        }
    }

    fn service(annotations: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "1a2b3c4d-0000-1111-2222-333344445555",
                         "annotations": annotations},
            "spec": {"type": "LoadBalancer", "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080},
                {"name": "admin", "port": 9000, "protocol": "TCP", "nodePort": 30900}]},
        }))
        .unwrap()
    }

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "admin", "port": 9900}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn addresses(l: &DesiredListener) -> Vec<String> {
        l.backends.iter().map(|(t, p)| format!("{t}:{p}")).collect()
    }

    #[test]
    fn ready_pods_are_the_backends_and_terminating_ones_are_not() {
        let s = slice(json!([
            {"addresses": ["10.0.0.5"], "conditions": {"ready": true}},
            {"addresses": ["10.0.0.6"]},
            {"addresses": ["10.0.0.7"], "conditions": {"ready": false, "serving": true, "terminating": true}},
        ]));
        let d = desired(&service(json!({})), &[s], &[], &names(), &cfg()).unwrap();
        assert_eq!(d.name, "k8s_lb_c1_shop_web_1a2b3c4d");
        assert_eq!(names().parse(&d.name), Some(("shop", "web", "1a2b3c4d")));
        assert_eq!(names().parse("k8s_lb_c2_shop_web_1a2b3c4d"), None);
        assert_eq!(
            d.network,
            LoadBalancerNetwork::Internal {
                vxnet: "vxnet-lb".into(),
                private_ip: None
            }
        );
        assert_eq!(d.listeners.len(), 2);
        assert_eq!(d.listeners[0].listener.port, 80);
        assert_eq!(d.listeners[0].listener.name, "listener_shop_web_80_tcp");
        assert_eq!(
            addresses(&d.listeners[0]),
            ["10.0.0.5:8080", "10.0.0.6:8080"]
        );
        assert_eq!(
            addresses(&d.listeners[1]),
            ["10.0.0.5:9900", "10.0.0.6:9900"]
        );
        assert_eq!(d.listeners[0].listener.health_check.option(), "5|3|2|2");
    }

    #[test]
    fn annotations_choose_the_network_the_listeners_and_the_backends() {
        let svc = service(json!({
            "service.beta.kubernetes.io/qingcloud-load-balancer-vxnet-id": "vxnet-other",
            "service.beta.kubernetes.io/qingcloud-load-balancer-internal-ip": "10.9.0.9",
            "service.beta.kubernetes.io/qingcloud-load-balancer-type": "2",
            "service.beta.kubernetes.io/qingcloud-lb-listener-balancemode": "80:leastconn",
            "service.beta.kubernetes.io/qingcloud-lb-listener-healthycheckmethod": "80:http|/healthz",
            "service.beta.kubernetes.io/qingcloud-lb-listener-healthycheckoption": "80:10|5|2|5",
            "hostnic.io/load-balancer-backends": "nodeport",
        }));
        let d = desired(&svc, &[], &["i-1".into(), "i-2".into()], &names(), &cfg()).unwrap();
        assert_eq!(
            d.network,
            LoadBalancerNetwork::Internal {
                vxnet: "vxnet-other".into(),
                private_ip: Some(Ipv4Addr::new(10, 9, 0, 9))
            }
        );
        assert_eq!(d.lb_type, 2);
        let l = &d.listeners[0].listener;
        assert_eq!(l.balance_mode, BalanceMode::LeastConn);
        assert_eq!(l.health_check.method(), "http|/healthz");
        assert_eq!(l.health_check.option(), "10|5|2|5");
        assert_eq!(addresses(&d.listeners[0]), ["i-1:30080", "i-2:30080"]);
        assert_eq!(
            d.listeners[1].listener.balance_mode,
            BalanceMode::RoundRobin
        );
    }

    #[test]
    fn a_broken_annotation_is_refused_by_name() {
        for (key, value, says) in [
            (
                "service.beta.kubernetes.io/qingcloud-load-balancer-type",
                "9",
                "type",
            ),
            (
                "service.beta.kubernetes.io/qingcloud-lb-listener-balancemode",
                "80",
                "port:value",
            ),
            (
                "service.beta.kubernetes.io/qingcloud-load-balancer-network-type",
                "public",
                "eip-ids",
            ),
            (
                "service.beta.kubernetes.io/qingcloud-lb-listener-healthycheckoption",
                "80:1|2",
                "interval",
            ),
            (
                "hostnic.io/load-balancer-backends",
                "both",
                "pods or nodeport",
            ),
        ] {
            let e = desired(&service(json!({key: value})), &[], &[], &names(), &cfg()).unwrap_err();
            assert!(e.0.contains(says), "{key}={value}: {e}");
        }
    }

    #[test]
    fn only_load_balancer_services_of_no_class_or_ours_are_served() {
        let mut svc = service(json!({}));
        assert!(served(&svc, "hostnic.io/qingcloud"));
        svc.spec.as_mut().unwrap().load_balancer_class = Some("other.io/lb".into());
        assert!(!served(&svc, "hostnic.io/qingcloud"));
        svc.spec.as_mut().unwrap().load_balancer_class = None;
        svc.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert!(!served(&svc, "hostnic.io/qingcloud"));
    }

    #[test]
    fn backends_beyond_the_cloud_cap_are_left_out_the_same_way_every_time() {
        let endpoints: Vec<serde_json::Value> = (0..150)
            .map(|i| json!({"addresses": [format!("10.0.{}.{}", i / 200, i % 200 + 1)]}))
            .collect();
        let s = slice(json!(endpoints));
        let d = desired(&service(json!({})), &[s], &[], &names(), &cfg()).unwrap();
        // Two ports of 150 backends each: 200 in all, the first port full.
        assert_eq!(d.listeners[0].backends.len(), 150);
        assert_eq!(d.listeners[1].backends.len(), 50);
        assert_eq!(d.left_out, 100);
        let again = desired(
            &service(json!({})),
            &[slice(json!(endpoints))],
            &[],
            &names(),
            &cfg(),
        )
        .unwrap();
        assert_eq!(again, d);
    }
}
