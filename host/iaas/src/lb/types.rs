//! The JSON shapes of the load-balancer actions, read as leniently as the
//! NIC ones (unknown fields ignored, `null` as the default), and the one
//! place that says how a backend's target is written on the wire.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::types::{Page, Tag, maybe, nullable};

/// `lb-…`
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LoadBalancerId(pub String);

/// `lbl-…`
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ListenerId(pub String);

/// `lbb-…`
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackendId(pub String);

macro_rules! display {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    )*};
}
display!(LoadBalancerId, ListenerId, BackendId);

/// A load balancer's `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalancerStatus {
    /// Being created.
    Pending,
    Active,
    Stopped,
    /// Unpaid.
    Suspended,
    /// Deleted, recoverable for a while.
    Deleted,
    Ceased,
    #[default]
    #[serde(other)]
    Unknown,
}

impl LoadBalancerStatus {
    /// The value of DescribeLoadBalancers' `status.N` filter.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancerStatus::Pending => "pending",
            LoadBalancerStatus::Active => "active",
            LoadBalancerStatus::Stopped => "stopped",
            LoadBalancerStatus::Suspended => "suspended",
            LoadBalancerStatus::Deleted => "deleted",
            LoadBalancerStatus::Ceased => "ceased",
            LoadBalancerStatus::Unknown => "unknown",
        }
    }

    /// Pending, active or stopped: a load balancer that still exists.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            LoadBalancerStatus::Pending | LoadBalancerStatus::Active | LoadBalancerStatus::Stopped
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eip {
    pub eip_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub eip_name: String,
    #[serde(default, deserialize_with = "maybe")]
    pub eip_addr: Option<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancer {
    pub loadbalancer_id: LoadBalancerId,
    #[serde(default, deserialize_with = "nullable")]
    pub loadbalancer_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub status: LoadBalancerStatus,
    /// `creating`, `updating`, `deleting`…, or empty when at rest.
    #[serde(default, deserialize_with = "nullable")]
    pub transition_status: String,
    /// 0 while listener or backend changes wait for UpdateLoadBalancers.
    #[serde(default, deserialize_with = "nullable")]
    pub is_applied: u8,
    #[serde(default, deserialize_with = "nullable")]
    pub loadbalancer_type: u8,
    /// The vxnet of an internal load balancer.
    #[serde(default, deserialize_with = "nullable")]
    pub vxnet_id: String,
    /// An internal load balancer's addresses (the real API also lists
    /// management addresses in 198.19.0.0/16 here; see
    /// [`LoadBalancer::addresses`]).
    #[serde(default, deserialize_with = "nullable")]
    pub private_ips: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub eips: Vec<Eip>,
    /// With `verbose=1`.
    #[serde(default, deserialize_with = "nullable")]
    pub listeners: Vec<Listener>,
    #[serde(default, deserialize_with = "nullable")]
    pub tags: Vec<Tag>,
    #[serde(default, deserialize_with = "nullable")]
    pub create_time: String,
}

impl LoadBalancer {
    /// The addresses clients reach it on: its EIPs, else its private
    /// addresses without the cloud's own management range (198.19/16),
    /// as QingCloud's controller reads them.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        let eips: Vec<Ipv4Addr> = self.eips.iter().filter_map(|e| e.eip_addr).collect();
        if !eips.is_empty() {
            return eips;
        }
        self.private_ips
            .iter()
            .filter_map(|s| s.trim().parse::<Ipv4Addr>().ok())
            .filter(|ip| ip.octets()[..2] != [198, 19])
            .collect()
    }

    pub fn is_applied(&self) -> bool {
        self.is_applied == 1
    }

    /// Active, applied and not in a transition: safe to read as settled.
    pub fn is_settled(&self) -> bool {
        self.status == LoadBalancerStatus::Active
            && self.transition_status.is_empty()
            && self.is_applied()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub loadbalancer_listener_id: ListenerId,
    #[serde(default, deserialize_with = "nullable")]
    pub loadbalancer_listener_name: String,
    pub loadbalancer_id: LoadBalancerId,
    pub listener_port: u16,
    #[serde(default, deserialize_with = "nullable")]
    pub listener_protocol: String,
    #[serde(default, deserialize_with = "nullable")]
    pub backend_protocol: String,
    #[serde(default, deserialize_with = "nullable")]
    pub balance_mode: String,
    #[serde(default, deserialize_with = "nullable")]
    pub healthy_check_method: String,
    #[serde(default, deserialize_with = "nullable")]
    pub healthy_check_option: String,
    /// With `verbose=1`.
    #[serde(default, deserialize_with = "nullable")]
    pub backends: Vec<Backend>,
}

/// A backend's health as the load balancer's checks see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendStatus {
    Up,
    Down,
    Abnormal,
    #[default]
    #[serde(other)]
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub loadbalancer_backend_id: BackendId,
    #[serde(default, deserialize_with = "nullable")]
    pub loadbalancer_backend_name: String,
    pub loadbalancer_listener_id: ListenerId,
    #[serde(default, deserialize_with = "nullable")]
    pub loadbalancer_id: String,
    pub resource_id: String,
    pub port: u16,
    #[serde(default, deserialize_with = "nullable")]
    pub weight: u8,
    #[serde(default, deserialize_with = "nullable")]
    pub disabled: u8,
    #[serde(default, deserialize_with = "nullable")]
    pub status: BackendStatus,
}

impl Backend {
    pub fn target(&self) -> BackendTarget {
        BackendTarget::from_resource_id(&self.resource_id)
    }
}

/// What a backend points at. The documented API names instances and
/// routers only; an address backend exists in the console but its API form
/// is not documented (QingCloud's own controller once sent the address as
/// `resource_id`, then reverted it). This is the one place that encodes it:
/// if a real account wants another form, only these two functions change.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendTarget {
    /// A VM, `i-…`: the load balancer sends to its primary address.
    Instance(String),
    /// An address on the load balancer's VPC: a hostnic pod.
    Address(Ipv4Addr),
}

impl BackendTarget {
    /// The value of `backends.N.resource_id`.
    pub fn resource_id(&self) -> String {
        match self {
            BackendTarget::Instance(id) => id.clone(),
            BackendTarget::Address(ip) => ip.to_string(),
        }
    }

    /// Read back from a described backend.
    pub fn from_resource_id(id: &str) -> BackendTarget {
        match id.trim().parse::<Ipv4Addr>() {
            Ok(ip) => BackendTarget::Address(ip),
            Err(_) => BackendTarget::Instance(id.trim().to_string()),
        }
    }
}

impl fmt::Display for BackendTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.resource_id())
    }
}

// ---- response envelopes ----

crate::types::page!(
    DescribeLoadBalancersResponse,
    loadbalancer_set,
    LoadBalancer
);
crate::types::page!(
    DescribeListenersResponse,
    loadbalancer_listener_set,
    Listener
);
crate::types::page!(DescribeBackendsResponse, loadbalancer_backend_set, Backend);

#[derive(Debug, Deserialize)]
pub(crate) struct CreateLoadBalancerResponse {
    pub loadbalancer_id: LoadBalancerId,
    pub job_id: crate::types::JobId,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AddListenersResponse {
    #[serde(default, deserialize_with = "nullable")]
    pub loadbalancer_listeners: Vec<ListenerId>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AddBackendsResponse {
    #[serde(default, deserialize_with = "nullable")]
    pub loadbalancer_backends: Vec<BackendId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_described_load_balancer_with_listeners_and_backends() {
        let body = r#"{"action":"DescribeLoadBalancersResponse","ret_code":0,"total_count":1,
          "loadbalancer_set":[{"loadbalancer_id":"lb-1","loadbalancer_name":"k8s_lb_x","status":"active",
            "transition_status":"","is_applied":1,"loadbalancer_type":0,"vxnet_id":"vxnet-a",
            "private_ips":["198.19.0.3","10.0.0.9"],"eips":[],"node_count":2,"tags":null,
            "listeners":[{"loadbalancer_listener_id":"lbl-1","loadbalancer_id":"lb-1","listener_port":80,
              "listener_protocol":"tcp","backend_protocol":"tcp","balance_mode":"roundrobin",
              "healthy_check_method":"tcp","healthy_check_option":"10|5|2|5","forwardfor":0,
              "backends":[{"loadbalancer_backend_id":"lbb-1","loadbalancer_listener_id":"lbl-1",
                "resource_id":"10.0.0.20","port":8080,"weight":1,"status":"up","disabled":0},
                {"loadbalancer_backend_id":"lbb-2","loadbalancer_listener_id":"lbl-1",
                "resource_id":"i-abc","port":30080,"weight":null,"status":"abnormal"}]}]}]}"#;
        let (set, total) = serde_json::from_str::<DescribeLoadBalancersResponse>(body)
            .unwrap()
            .into_parts();
        assert_eq!(total, 1);
        let lb = &set[0];
        assert!(lb.is_settled());
        assert_eq!(lb.addresses(), vec![Ipv4Addr::new(10, 0, 0, 9)]);
        let backends = &lb.listeners[0].backends;
        assert_eq!(
            backends[0].target(),
            BackendTarget::Address(Ipv4Addr::new(10, 0, 0, 20))
        );
        assert_eq!(backends[0].status, BackendStatus::Up);
        assert_eq!(
            backends[1].target(),
            BackendTarget::Instance("i-abc".into())
        );
        assert_eq!(backends[1].weight, 0);
        assert_eq!(backends[1].status, BackendStatus::Abnormal);
    }

    #[test]
    fn eips_come_before_private_addresses_and_unknown_states_are_unknown() {
        let lb: LoadBalancer = serde_json::from_str(
            r#"{"loadbalancer_id":"lb-2","status":"resuming","transition_status":"updating","is_applied":0,
               "private_ips":["10.0.0.9"],"eips":[{"eip_id":"eip-1","eip_addr":"139.198.0.7"}]}"#,
        )
        .unwrap();
        assert_eq!(lb.status, LoadBalancerStatus::Unknown);
        assert!(!lb.status.is_live());
        assert!(!lb.is_settled());
        assert_eq!(lb.addresses(), vec![Ipv4Addr::new(139, 198, 0, 7)]);
    }

    #[test]
    fn a_backend_target_survives_the_wire() {
        for t in [
            BackendTarget::Address(Ipv4Addr::new(10, 1, 2, 3)),
            BackendTarget::Instance("i-x1".into()),
        ] {
            assert_eq!(BackendTarget::from_resource_id(&t.resource_id()), t);
        }
    }
}
