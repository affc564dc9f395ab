//! The load-balancer actions' HTTP face: parameters parsed and checked the
//! way the cloud checks them, answers in the cloud's JSON shapes
//! (`../shared/reference/qingcloud-lb.md`). The rules live in
//! [`super::balancer`].

use std::net::Ipv4Addr;
use std::time::SystemTime;

use hostnic_iaas::params;
use serde_json::{Value, json};

use super::api::{Params, list, number, one, required, time};
use super::balancer::{
    Backend, Balancer, Check, LbNetwork, LbStatus, Listener, NewBackend, NewListener,
};
use super::cloud::{ApiError, Cloud, err};

/// What the data path's health checks say of a backend id: `up`,
/// `abnormal` (its checks fail) or `down` (not forwarded to: disabled, or
/// not applied yet).
pub type HealthOf<'a> = &'a dyn Fn(&str) -> &'static str;

/// Whether `action` is one of the load balancer's (this module's).
pub fn handles(action: &str) -> bool {
    action.contains("LoadBalancer")
}

/// Runs one authenticated load-balancer action against the cloud model.
pub fn dispatch(
    cloud: &mut Cloud,
    action: &str,
    p: &Params,
    now: u64,
    start: SystemTime,
    health: HealthOf<'_>,
) -> Result<Value, ApiError> {
    Ok(match action {
        "CreateLoadBalancer" => {
            let eips = list(p, "eips");
            let network = match (one(p, "vxnet"), eips.is_empty()) {
                (Some(_), false) => {
                    return err(1100, "InvalidParameter, give [eips] or [vxnet], not both");
                }
                (None, true) => {
                    return err(
                        1100,
                        "InvalidParameter, one of [eips] or [vxnet] is required",
                    );
                }
                (None, false) => LbNetwork::Eips(eips),
                (Some(vxnet), true) => LbNetwork::Vxnet {
                    vxnet,
                    private_ip: one(p, "private_ip")
                        .map(|s| {
                            s.parse::<Ipv4Addr>().map_err(|_| ApiError {
                                code: 1100,
                                message: format!(
                                    "InvalidParameter, private_ip [{s}] is not an IPv4 address"
                                ),
                            })
                        })
                        .transpose()?,
                },
            };
            let lb_type = number(p, "loadbalancer_type", 0)?;
            let name = one(p, "loadbalancer_name").unwrap_or_default();
            let (id, job) = cloud.create_lb(
                &name,
                &network,
                u8::try_from(lb_type).unwrap_or(u8::MAX),
                now,
            )?;
            json!({"loadbalancer_id": id, "job_id": job})
        }
        "DescribeLoadBalancers" => {
            let ids = list(p, "loadbalancers");
            let status = list(p, "status");
            let tags = list(p, "tags");
            let word = one(p, "search_word");
            let verbose = number(p, "verbose", 0)? > 0;
            let all: Vec<&Balancer> = cloud
                .lbs
                .values()
                .filter(|b| ids.is_empty() || ids.contains(&b.id))
                .filter(|b| status.is_empty() || status.contains(&status_of(b).to_string()))
                .filter(|b| tags.is_empty() || tags.iter().any(|t| b.tags.contains(t)))
                .filter(|b| {
                    word.as_ref()
                        .is_none_or(|w| b.id == *w || b.name.contains(w.as_str()))
                })
                .collect();
            let page = paged(p, &all)?
                .iter()
                .map(|b| balancer_json(b, cloud, verbose, start, health))
                .collect::<Vec<_>>();
            json!({"total_count": all.len(), "loadbalancer_set": page})
        }
        "UpdateLoadBalancers" => json!({"job_id": cloud.update_lbs(&list(p, "loadbalancers"))?}),
        "DeleteLoadBalancers" => json!({"job_id": cloud.delete_lbs(&list(p, "loadbalancers"))?}),
        "AddLoadBalancerListeners" => {
            let lb = required(p, "loadbalancer")?;
            let new = params::records(p, "listeners")
                .into_iter()
                .map(|r| new_listener(&r))
                .collect::<Result<Vec<_>, _>>()?;
            json!({"loadbalancer_listeners": cloud.add_listeners(&lb, &new)?})
        }
        "DescribeLoadBalancerListeners" => {
            let ids = list(p, "loadbalancer_listeners");
            let lb = one(p, "loadbalancer");
            let verbose = number(p, "verbose", 0)? > 0;
            let all: Vec<&Listener> = cloud
                .listeners
                .values()
                .filter(|l| ids.is_empty() || ids.contains(&l.id))
                .filter(|l| lb.as_ref().is_none_or(|lb| &l.lb == lb))
                .collect();
            let page = paged(p, &all)?
                .iter()
                .map(|l| listener_json(l, cloud, verbose, health))
                .collect::<Vec<_>>();
            json!({"total_count": all.len(), "loadbalancer_listener_set": page})
        }
        "DeleteLoadBalancerListeners" => {
            let ids = list(p, "loadbalancer_listeners");
            cloud.delete_listeners(&ids)?;
            json!({"loadbalancer_listeners": ids})
        }
        "AddLoadBalancerBackends" => {
            let listener = required(p, "loadbalancer_listener")?;
            let new = params::records(p, "backends")
                .into_iter()
                .map(|r| new_backend(&r))
                .collect::<Result<Vec<_>, _>>()?;
            json!({"loadbalancer_backends": cloud.add_backends(&listener, &new)?})
        }
        "DescribeLoadBalancerBackends" => {
            let ids = list(p, "loadbalancer_backends");
            let listener = one(p, "loadbalancer_listener");
            let lb = one(p, "loadbalancer");
            let all: Vec<&Backend> = cloud
                .backends
                .values()
                .filter(|b| ids.is_empty() || ids.contains(&b.id))
                .filter(|b| listener.as_ref().is_none_or(|l| &b.listener == l))
                .filter(|b| lb.as_ref().is_none_or(|lb| &b.lb == lb))
                .collect();
            let page = paged(p, &all)?
                .iter()
                .map(|b| backend_json(b, health))
                .collect::<Vec<_>>();
            json!({"total_count": all.len(), "loadbalancer_backend_set": page})
        }
        "DeleteLoadBalancerBackends" => {
            let ids = list(p, "loadbalancer_backends");
            cloud.delete_backends(&ids)?;
            json!({"loadbalancer_backends": ids})
        }
        "ModifyLoadBalancerBackendAttributes" => {
            let id = required(p, "loadbalancer_backend")?;
            let port = small::<u16>(p, "port")?;
            let weight = small::<u8>(p, "weight")?;
            let disabled = small::<u8>(p, "disabled")?;
            if disabled.is_some_and(|d| d > 1) {
                return err(1100, "InvalidParameter, disabled must be 0 or 1");
            }
            cloud.modify_backend(&id, port, weight, disabled.map(|d| d == 1))?;
            json!({})
        }
        other => {
            return err(
                1100,
                format!("InvalidParameter, action [{other}] is not supported by the simulator"),
            );
        }
    })
}

fn status_of(b: &Balancer) -> &'static str {
    match b.status {
        LbStatus::Pending => "pending",
        LbStatus::Active => "active",
        LbStatus::Deleted => "deleted",
    }
}

fn paged<'a, T>(p: &Params, all: &'a [&'a T]) -> Result<&'a [&'a T], ApiError> {
    let offset = number(p, "offset", 0)?.min(all.len());
    let limit = number(p, "limit", 20)?.min(100);
    Ok(&all[offset..(offset + limit).min(all.len())])
}

/// An optional number that must fit `T`.
fn small<T: TryFrom<usize>>(p: &Params, name: &str) -> Result<Option<T>, ApiError> {
    if one(p, name).is_none() {
        return Ok(None);
    }
    let n = number(p, name, 0)?;
    T::try_from(n).map(Some).map_err(|_| ApiError {
        code: 1100,
        message: format!("InvalidParameter, [{name}] {n} is out of range"),
    })
}

fn field<'a>(
    r: &std::collections::BTreeMap<&str, &'a str>,
    list: &str,
    f: &str,
) -> Result<&'a str, ApiError> {
    r.get(f).copied().ok_or_else(|| ApiError {
        code: 1100,
        message: format!("InvalidParameter, a [{list}] entry lacks [{f}]"),
    })
}

fn port(list: &str, s: &str) -> Result<u16, ApiError> {
    s.parse::<u16>().map_err(|_| ApiError {
        code: 1100,
        message: format!("InvalidParameter, a [{list}] port [{s}] is not 1..65535"),
    })
}

fn new_listener(r: &std::collections::BTreeMap<&str, &str>) -> Result<NewListener, ApiError> {
    let l = "listeners";
    Ok(NewListener {
        name: r
            .get("loadbalancer_listener_name")
            .unwrap_or(&"")
            .to_string(),
        port: port(l, field(r, l, "listener_port")?)?,
        protocol: field(r, l, "listener_protocol")?.to_string(),
        backend_protocol: field(r, l, "backend_protocol")?.to_string(),
        balance_mode: r.get("balance_mode").unwrap_or(&"roundrobin").to_string(),
        check_method: r.get("healthy_check_method").unwrap_or(&"tcp").to_string(),
        check: match r.get("healthy_check_option") {
            Some(o) => Check::parse(o)?,
            None => Check::default(),
        },
    })
}

fn new_backend(r: &std::collections::BTreeMap<&str, &str>) -> Result<NewBackend, ApiError> {
    let l = "backends";
    let weight = field(r, l, "weight")?;
    Ok(NewBackend {
        name: r
            .get("loadbalancer_backend_name")
            .unwrap_or(&"")
            .to_string(),
        resource_id: field(r, l, "resource_id")?.to_string(),
        port: port(l, field(r, l, "port")?)?,
        weight: weight.parse().map_err(|_| ApiError {
            code: 1100,
            message: format!("InvalidParameter, backend weight [{weight}] is not 0..100"),
        })?,
    })
}

fn balancer_json(
    b: &Balancer,
    cloud: &Cloud,
    verbose: bool,
    start: SystemTime,
    health: HealthOf<'_>,
) -> Value {
    let eips: Vec<Value> = b
        .eips
        .iter()
        .filter_map(|e| cloud.eips.get(e))
        .map(|e| json!({"eip_id": e.id, "eip_name": e.id, "eip_addr": e.addr.to_string()}))
        .collect();
    let mut v = json!({
        "loadbalancer_id": b.id, "loadbalancer_name": b.name,
        "status": status_of(b), "transition_status": b.transition,
        "is_applied": u8::from(cloud.is_applied(b)),
        "loadbalancer_type": b.lb_type,
        "vxnet_id": if b.eips.is_empty() { b.vxnet.as_str() } else { "" },
        "private_ips": if b.eips.is_empty() { vec![b.ip.to_string()] } else { Vec::new() },
        "eips": eips.clone(), "cluster": eips,
        "tags": b.tags.iter().map(|t| json!({"tag_id": t, "tag_name": cloud.tags.get(t).map(|t| t.name.clone())})).collect::<Vec<_>>(),
        "create_time": time(b.created, start),
    });
    if verbose {
        v["listeners"] = cloud
            .listeners
            .values()
            .filter(|l| l.lb == b.id)
            .map(|l| listener_json(l, cloud, true, health))
            .collect();
    }
    v
}

fn listener_json(l: &Listener, cloud: &Cloud, verbose: bool, health: HealthOf<'_>) -> Value {
    let mut v = json!({
        "loadbalancer_listener_id": l.id, "loadbalancer_listener_name": l.name,
        "loadbalancer_id": l.lb, "listener_port": l.port,
        "listener_protocol": l.protocol, "backend_protocol": l.protocol,
        "balance_mode": l.balance_mode, "healthy_check_method": l.check_method,
        "healthy_check_option": l.check.option(),
    });
    if verbose {
        v["backends"] = cloud
            .backends
            .values()
            .filter(|b| b.listener == l.id)
            .map(|b| backend_json(b, health))
            .collect();
    }
    v
}

fn backend_json(b: &Backend, health: HealthOf<'_>) -> Value {
    json!({
        "loadbalancer_backend_id": b.id, "loadbalancer_backend_name": b.name,
        "loadbalancer_listener_id": b.listener, "loadbalancer_id": b.lb,
        "resource_id": b.resource_id, "port": b.port, "weight": b.weight,
        "disabled": u8::from(b.disabled),
        "status": if b.disabled { "down" } else { health(&b.id) },
    })
}
