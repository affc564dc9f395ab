//! The load-balancer actions: load balancers, their listeners and their
//! backends. Listener and backend changes take effect only after
//! [`Client::update_load_balancers`] (until then the load balancer says
//! `is_applied=0`); creating, updating and deleting load balancers are jobs.

mod types;

use std::net::Ipv4Addr;

pub use types::{
    Backend, BackendId, BackendStatus, BackendTarget, Eip, Listener, ListenerId, LoadBalancer,
    LoadBalancerId, LoadBalancerStatus,
};

use crate::Client;
use crate::error::Error;
use crate::params::Params;
use crate::types::{Empty, JobId, JobResponse};
use types::{
    AddBackendsResponse, AddListenersResponse, CreateLoadBalancerResponse,
    DescribeBackendsResponse, DescribeListenersResponse, DescribeLoadBalancersResponse,
};

/// The most backends one load balancer takes.
pub const MAX_BACKENDS_PER_LOAD_BALANCER: usize = 200;

/// CreateLoadBalancer's parameters for an internal load balancer (its
/// address on `vxnet`) or a public one (its EIPs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLoadBalancer {
    pub name: String,
    pub network: LoadBalancerNetwork,
    /// 0..=5: 5k to 500k concurrent connections.
    pub loadbalancer_type: u8,
    pub security_group: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadBalancerNetwork {
    /// An address on this vxnet: the given one, or one the cloud picks.
    Internal {
        vxnet: String,
        private_ip: Option<Ipv4Addr>,
    },
    /// These EIPs (at most 4).
    Public { eips: Vec<String> },
}

/// DescribeLoadBalancers filters; empty fields do not filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadBalancerFilter {
    pub loadbalancers: Vec<LoadBalancerId>,
    pub status: Vec<LoadBalancerStatus>,
    /// An id or a part of a name.
    pub search_word: Option<String>,
    pub tags: Vec<crate::TagId>,
    /// Include each load balancer's listeners.
    pub verbose: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerProtocol {
    Tcp,
    Udp,
    Http,
}

impl ListenerProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::Udp => "udp",
            ListenerProtocol::Http => "http",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BalanceMode {
    #[default]
    RoundRobin,
    LeastConn,
    /// By the client's address.
    Source,
}

impl BalanceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BalanceMode::RoundRobin => "roundrobin",
            BalanceMode::LeastConn => "leastconn",
            BalanceMode::Source => "source",
        }
    }
}

/// How the load balancer checks a backend: `healthy_check_method` and
/// `healthy_check_option` (`interval|timeout|fall|rise`, seconds and
/// counts; the cloud's default is `10|5|2|5`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// `None`: a TCP connect; `Some(path)`: an HTTP GET of it.
    pub http_path: Option<String>,
    pub interval_s: u32,
    pub timeout_s: u32,
    /// Failures in a row that take a backend out.
    pub fall: u32,
    /// Successes in a row that put it back.
    pub rise: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            http_path: None,
            interval_s: 10,
            timeout_s: 5,
            fall: 2,
            rise: 5,
        }
    }
}

impl HealthCheck {
    pub fn method(&self) -> String {
        match &self.http_path {
            None => "tcp".into(),
            Some(path) => format!("http|{path}"),
        }
    }

    pub fn option(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.interval_s, self.timeout_s, self.fall, self.rise
        )
    }
}

/// One listener for AddLoadBalancerListeners.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NewListener {
    pub name: String,
    pub port: u16,
    pub protocol: ListenerProtocol,
    pub balance_mode: BalanceMode,
    pub health_check: HealthCheck,
}

/// One backend for AddLoadBalancerBackends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NewBackend {
    pub name: String,
    pub target: BackendTarget,
    pub port: u16,
    /// 1..=100; the cloud's console defaults to 1.
    pub weight: u8,
}

/// ModifyLoadBalancerBackendAttributes: the fields to change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendChange {
    pub port: Option<u16>,
    pub weight: Option<u8>,
    /// Disabled backends stay configured and get no new connections.
    pub disabled: Option<bool>,
}

impl Client {
    /// Starts creating a load balancer; it is `pending` until the job ends.
    pub async fn create_load_balancer(
        &self,
        lb: &NewLoadBalancer,
    ) -> Result<(LoadBalancerId, JobId), Error> {
        const ACTION: &str = "CreateLoadBalancer";
        if lb.loadbalancer_type > 5 {
            return Err(Error::Invalid {
                action: ACTION,
                problem: format!(
                    "loadbalancer_type {} is outside 0..=5",
                    lb.loadbalancer_type
                ),
            });
        }
        let mut p = Params::new();
        p.set("loadbalancer_name", &lb.name)
            .set("loadbalancer_type", lb.loadbalancer_type);
        match &lb.network {
            LoadBalancerNetwork::Internal { vxnet, private_ip } => {
                p.set("vxnet", vxnet);
                if let Some(ip) = private_ip {
                    p.set("private_ip", ip);
                }
            }
            LoadBalancerNetwork::Public { eips } => {
                if eips.is_empty() || eips.len() > 4 {
                    return Err(Error::Invalid {
                        action: ACTION,
                        problem: format!(
                            "a public load balancer takes 1..=4 EIPs, not {}",
                            eips.len()
                        ),
                    });
                }
                p.list("eips", eips);
            }
        }
        if let Some(sg) = &lb.security_group {
            p.set("security_group", sg);
        }
        let r: CreateLoadBalancerResponse = self.call(ACTION, &p).await?;
        Ok((r.loadbalancer_id, r.job_id))
    }

    /// Every load balancer matching `filter`, all pages.
    pub async fn describe_load_balancers(
        &self,
        filter: &LoadBalancerFilter,
    ) -> Result<Vec<LoadBalancer>, Error> {
        let mut p = Params::new();
        p.list("loadbalancers", &filter.loadbalancers)
            .list("status", filter.status.iter().map(|s| s.as_str()))
            .list("tags", &filter.tags)
            .set("verbose", u8::from(filter.verbose));
        if let Some(w) = &filter.search_word {
            p.set("search_word", w);
        }
        self.paged::<DescribeLoadBalancersResponse>("DescribeLoadBalancers", p)
            .await
    }

    /// Applies the listener and backend changes made since the last update.
    pub async fn update_load_balancers(&self, lbs: &[LoadBalancerId]) -> Result<JobId, Error> {
        let mut p = Params::new();
        p.list("loadbalancers", lbs);
        let r: JobResponse = self.call("UpdateLoadBalancers", &p).await?;
        Ok(r.job_id)
    }

    /// Starts deleting `lbs` (their listeners and backends go with them).
    /// Load balancers already gone (2100) count as deleted; the jobs of the
    /// rest are returned.
    pub async fn delete_load_balancers(&self, lbs: &[LoadBalancerId]) -> Result<Vec<JobId>, Error> {
        let answers: Vec<JobResponse> = self
            .gone_tolerant("DeleteLoadBalancers", "loadbalancers", lbs)
            .await?;
        Ok(answers.into_iter().map(|r| r.job_id).collect())
    }

    /// Adds `listeners` to `lb`, returning their ids in the same order.
    pub async fn add_listeners(
        &self,
        lb: &LoadBalancerId,
        listeners: &[NewListener],
    ) -> Result<Vec<ListenerId>, Error> {
        const ACTION: &str = "AddLoadBalancerListeners";
        if listeners.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = Params::new();
        p.set("loadbalancer", lb).records(
            "listeners",
            listeners.iter().map(|l| {
                [
                    ("listener_port", l.port.to_string()),
                    ("listener_protocol", l.protocol.as_str().to_string()),
                    ("backend_protocol", l.protocol.as_str().to_string()),
                    ("balance_mode", l.balance_mode.as_str().to_string()),
                    ("healthy_check_method", l.health_check.method()),
                    ("healthy_check_option", l.health_check.option()),
                    ("loadbalancer_listener_name", l.name.clone()),
                ]
            }),
        );
        let r: AddListenersResponse = self.call(ACTION, &p).await?;
        expect_ids(ACTION, listeners.len(), r.loadbalancer_listeners)
    }

    /// The listeners of `lb` (or with these ids), with their backends.
    pub async fn describe_listeners(
        &self,
        lb: Option<&LoadBalancerId>,
        ids: &[ListenerId],
    ) -> Result<Vec<Listener>, Error> {
        let mut p = Params::new();
        p.list("loadbalancer_listeners", ids).set("verbose", 1);
        if let Some(lb) = lb {
            p.set("loadbalancer", lb);
        }
        self.paged::<DescribeListenersResponse>("DescribeLoadBalancerListeners", p)
            .await
    }

    /// Deletes listeners and their backends; ones already gone count as
    /// deleted.
    pub async fn delete_listeners(&self, ids: &[ListenerId]) -> Result<(), Error> {
        let _: Vec<Empty> = self
            .gone_tolerant("DeleteLoadBalancerListeners", "loadbalancer_listeners", ids)
            .await?;
        Ok(())
    }

    /// Adds `backends` to `listener`, returning their ids in the same order.
    pub async fn add_backends(
        &self,
        listener: &ListenerId,
        backends: &[NewBackend],
    ) -> Result<Vec<BackendId>, Error> {
        const ACTION: &str = "AddLoadBalancerBackends";
        if backends.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = Params::new();
        p.set("loadbalancer_listener", listener).records(
            "backends",
            backends.iter().map(|b| {
                [
                    ("resource_id", b.target.resource_id()),
                    ("port", b.port.to_string()),
                    ("weight", b.weight.to_string()),
                    ("loadbalancer_backend_name", b.name.clone()),
                ]
            }),
        );
        let r: AddBackendsResponse = self.call(ACTION, &p).await?;
        expect_ids(ACTION, backends.len(), r.loadbalancer_backends)
    }

    /// The backends of a listener or of a whole load balancer.
    pub async fn describe_backends(
        &self,
        lb: Option<&LoadBalancerId>,
        listener: Option<&ListenerId>,
    ) -> Result<Vec<Backend>, Error> {
        let mut p = Params::new();
        if let Some(lb) = lb {
            p.set("loadbalancer", lb);
        }
        if let Some(l) = listener {
            p.set("loadbalancer_listener", l);
        }
        self.paged::<DescribeBackendsResponse>("DescribeLoadBalancerBackends", p)
            .await
    }

    /// Deletes backends; ones already gone count as deleted.
    pub async fn delete_backends(&self, ids: &[BackendId]) -> Result<(), Error> {
        let _: Vec<Empty> = self
            .gone_tolerant("DeleteLoadBalancerBackends", "loadbalancer_backends", ids)
            .await?;
        Ok(())
    }

    pub async fn modify_backend(
        &self,
        id: &BackendId,
        change: &BackendChange,
    ) -> Result<(), Error> {
        let mut p = Params::new();
        p.set("loadbalancer_backend", id);
        if let Some(port) = change.port {
            p.set("port", port);
        }
        if let Some(w) = change.weight {
            p.set("weight", w);
        }
        if let Some(d) = change.disabled {
            p.set("disabled", u8::from(d));
        }
        let _: Empty = self.call("ModifyLoadBalancerBackendAttributes", &p).await?;
        Ok(())
    }
}

/// An Add* answer must name one new id per item asked for, or the caller
/// could not tell which was made.
fn expect_ids<T>(action: &'static str, asked: usize, ids: Vec<T>) -> Result<Vec<T>, Error> {
    if ids.len() == asked {
        Ok(ids)
    } else {
        Err(Error::Unexpected {
            action: action.to_string(),
            problem: format!("it answered {} ids for {asked} items", ids.len()),
        })
    }
}
