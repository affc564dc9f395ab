//! The simulator's HTTP face: the QingCloud API subset, checked the way the
//! cloud checks it (signature, time stamp, zone, parameters), answered in
//! the cloud's JSON shapes.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use hostnic_iaas::{SecretKey, params, sign};

use serde_json::{Value, json};

use super::cloud::{ApiError, Cloud, JobStatus, Nic, NicState, err};

/// A request's parameters, decoded, in the order received.
pub type Params = Vec<(String, String)>;

/// The signed-request checks, in the cloud's order; the signature and time
/// stamp rules are the client crate's own, so the two cannot drift apart.
pub fn authenticate(
    params: &Params,
    method: &str,
    path: &str,
    access_key: &str,
    secret: &SecretKey,
    zone: &str,
) -> Result<String, ApiError> {
    let get = |k: &str| params::get(params, k);
    for required in [
        "action",
        "access_key_id",
        "signature",
        "time_stamp",
        "signature_method",
        "signature_version",
        "zone",
    ] {
        if get(required).is_none() {
            return err(
                1100,
                format!("InvalidParameter, missing parameter [{required}]"),
            );
        }
    }
    if get("signature_method") != Some(sign::SIGNATURE_METHOD)
        || get("signature_version") != Some(sign::SIGNATURE_VERSION)
    {
        return err(
            1100,
            "InvalidParameter, signature_method must be HmacSHA256 and signature_version 1",
        );
    }
    if let Some(v) = get("version")
        && v != "1"
    {
        return err(
            1100,
            format!("InvalidParameter, version [{v}] is not supported"),
        );
    }
    if get("access_key_id") != Some(access_key) {
        return err(1200, "AuthFailure, unknown access key");
    }
    if sign::verify(method, path, params, secret).is_err() {
        return err(1200, "AuthFailure, signature does not match");
    }
    let ts = get("time_stamp").unwrap_or_default();
    if sign::parse_time_stamp(ts).is_none() {
        return err(
            1100,
            format!("InvalidParameter, time_stamp [{ts}] is not YYYY-MM-DDThh:mm:ssZ"),
        );
    }
    if !sign::time_stamp_fresh(ts, SystemTime::now()) {
        return err(
            1300,
            format!("MessageExpired, time_stamp [{ts}] is more than 60 s from the server clock"),
        );
    }
    if get("zone") != Some(zone) {
        return err(
            1100,
            format!(
                "InvalidParameter, zone [{}] is not this zone",
                get("zone").unwrap_or_default()
            ),
        );
    }
    Ok(get("action").unwrap_or_default().to_string())
}

/// `name.1`, `name.2`, … decoded the way the client encodes them.
pub(super) fn list(p: &Params, name: &str) -> Vec<String> {
    params::list(p, name)
        .into_iter()
        .map(str::to_string)
        .collect()
}

pub(super) fn one(p: &Params, name: &str) -> Option<String> {
    params::get(p, name).map(str::to_string)
}

pub(super) fn required(params: &Params, name: &str) -> Result<String, ApiError> {
    one(params, name).ok_or_else(|| ApiError {
        code: 1100,
        message: format!("InvalidParameter, missing parameter [{name}]"),
    })
}

pub(super) fn number(params: &Params, name: &str, default: usize) -> Result<usize, ApiError> {
    match one(params, name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ApiError {
            code: 1100,
            message: format!("InvalidParameter, [{name}] must be a number, got [{v}]"),
        }),
    }
}

pub(super) fn time(secs_since_start: u64, start: SystemTime) -> String {
    sign::format_time_stamp(start + Duration::from_secs(secs_since_start))
}

fn nic_json(n: &Nic, cloud: &Cloud, start: SystemTime) -> Value {
    let status = match n.state {
        NicState::InUse | NicState::Detaching => "in-use",
        NicState::Available | NicState::Attaching => "available",
    };
    let transition = match n.state {
        NicState::Attaching => "attaching",
        NicState::Detaching => "detaching",
        _ => "",
    };
    json!({
        "nic_id": n.id, "nic_name": n.name, "vxnet_id": n.vxnet,
        "instance_id": n.instance.clone().unwrap_or_default(),
        "private_ip": n.ip.to_string(), "role": n.role, "sequence": 0,
        "status": status, "transition_status": transition,
        "tags": n.tags.iter().map(|t| json!({"tag_id": t, "tag_name": cloud.tags.get(t).map(|t| t.name.clone())})).collect::<Vec<_>>(),
        "create_time": time(n.created, start), "status_time": time(n.status_changed, start),
    })
}

/// Runs one authenticated action against the cloud model.
pub fn dispatch(
    cloud: &mut Cloud,
    action: &str,
    p: &Params,
    now: u64,
    start: SystemTime,
) -> Result<Value, ApiError> {
    Ok(match action {
        "DescribeNics" => {
            let ids = list(p, "nics");
            let instances = list(p, "instances");
            let vxnets = list(p, "vxnets");
            let status = one(p, "status");
            let name = one(p, "nic_name");
            let offset = number(p, "offset", 0)?;
            let limit = number(p, "limit", 20)?.min(100);
            let all: Vec<&Nic> = cloud
                .nics
                .values()
                .filter(|n| ids.is_empty() || ids.contains(&n.id))
                .filter(|n| {
                    instances.is_empty()
                        || n.instance.as_ref().is_some_and(|i| instances.contains(i))
                })
                .filter(|n| vxnets.is_empty() || vxnets.contains(&n.vxnet))
                .filter(|n| name.as_ref().is_none_or(|w| n.name.contains(w.as_str())))
                .filter(|n| {
                    status
                        .as_ref()
                        .is_none_or(|s| nic_json(n, cloud, start)["status"] == s.as_str())
                })
                .collect();
            let page: Vec<Value> = all
                .iter()
                .skip(offset)
                .take(limit)
                .map(|n| nic_json(n, cloud, start))
                .collect();
            json!({"total_count": all.len(), "nic_set": page})
        }
        "CreateNics" => {
            let vxnet = required(p, "vxnet")?;
            let ips = list(p, "private_ips")
                .iter()
                .map(|s| {
                    s.parse::<Ipv4Addr>().map_err(|_| ApiError {
                        code: 1100,
                        message: format!(
                            "InvalidParameter, private_ips [{s}] is not an IPv4 address"
                        ),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let count = number(p, "count", ips.len().max(1))?;
            let name = one(p, "nic_name").unwrap_or_default();
            let nics = cloud.create_nics(&vxnet, &name, count, &ips, now)?;
            json!({"nics": nics.iter().map(|n| json!({"nic_id": n.id, "private_ip": n.ip.to_string()})).collect::<Vec<_>>()})
        }
        "AttachNics" => {
            json!({"job_id": cloud.attach_nics(&list(p, "nics"), &required(p, "instance")?)?})
        }
        "DetachNics" => json!({"job_id": cloud.detach_nics(&list(p, "nics"))?}),
        "DeleteNics" => {
            cloud.delete_nics(&list(p, "nics"))?;
            json!({})
        }
        "DescribeVxNets" => {
            let ids = list(p, "vxnets");
            let set: Vec<Value> = cloud
                .vxnets
                .values()
                .filter(|v| ids.is_empty() || ids.contains(&v.id))
                .map(|v| {
                    let hosts: Vec<Ipv4Addr> = v.cidr.hosts().collect();
                    json!({"vxnet_id": v.id, "vxnet_name": v.id, "vxnet_type": 1, "vpc_router_id": "rtr-sim",
                           "router": {"ip_network": v.cidr.to_string(), "manager_ip": v.gateway.to_string(),
                                      "dyn_ip_start": hosts.get(1).map(|h| h.to_string()),
                                      "dyn_ip_end": hosts.last().map(|h| h.to_string())}})
                })
                .collect();
            json!({"total_count": set.len(), "vxnet_set": set})
        }
        "DescribeInstances" => {
            let ids = list(p, "instances");
            let set: Vec<Value> = cloud
                .instances
                .values()
                .filter(|i| ids.is_empty() || ids.contains(&i.id))
                .map(|i| {
                    let vxnets: Vec<Value> = cloud
                        .nics
                        .values()
                        .filter(|n| n.instance.as_ref() == Some(&i.id) && n.state == NicState::InUse)
                        .map(|n| json!({"vxnet_id": n.vxnet, "nic_id": n.id, "private_ip": n.ip.to_string(), "role": n.role}))
                        .collect();
                    json!({"instance_id": i.id, "status": "running", "vxnets": vxnets})
                })
                .collect();
            json!({"total_count": set.len(), "instance_set": set})
        }
        "DescribeJobs" => {
            let ids = list(p, "jobs");
            let set: Vec<Value> = cloud
                .jobs
                .values()
                .filter(|j| ids.is_empty() || ids.contains(&j.id))
                .map(|j| {
                    let status = match j.status {
                        JobStatus::Pending => "pending",
                        JobStatus::Working => "working",
                        JobStatus::Successful => "successful",
                        JobStatus::Failed => "failed",
                    };
                    json!({"job_id": j.id, "job_action": j.action, "status": status, "resource_ids": j.resources.join(" "),
                           "create_time": time(now, start), "status_time": time(now, start)})
                })
                .collect();
            json!({"total_count": set.len(), "job_set": set})
        }
        "CreateTag" => json!({"tag_id": cloud.create_tag(&required(p, "tag_name")?)}),
        "AttachTags" => {
            let mut pairs = Vec::new();
            for rec in params::records(p, "resource_tag_pairs") {
                let field = |f: &str| {
                    rec.get(f).map(|v| v.to_string()).ok_or_else(|| ApiError {
                        code: 1100,
                        message: format!("InvalidParameter, resource_tag_pairs entry lacks [{f}]"),
                    })
                };
                pairs.push((
                    field("tag_id")?,
                    field("resource_type")?,
                    field("resource_id")?,
                ));
            }
            cloud.attach_tags(&pairs)?;
            json!({})
        }
        "DescribeTags" => {
            let ids = list(p, "tags");
            let word = one(p, "search_word");
            let set: Vec<Value> = cloud
                .tags
                .values()
                .filter(|t| ids.is_empty() || ids.contains(&t.id))
                .filter(|t| word.as_ref().is_none_or(|w| t.name.contains(w.as_str())))
                .map(|t| {
                    let pairs: Vec<Value> = t
                        .resources
                        .iter()
                        .map(|(k, r)| json!({"tag_id": t.id, "resource_type": k, "resource_id": r}))
                        .collect();
                    json!({"tag_id": t.id, "tag_name": t.name, "resource_tag_pairs": pairs})
                })
                .collect();
            json!({"total_count": set.len(), "tag_set": set})
        }
        other => {
            return err(
                1100,
                format!("InvalidParameter, action [{other}] is not supported by the simulator"),
            );
        }
    })
}
