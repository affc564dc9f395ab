//! The simulated cloud's load balancers, with no I/O: load balancers,
//! listeners and backends, their states and jobs, and the rules the
//! QingCloud API documents (`../shared/reference/qingcloud-lb.md`). What a
//! load balancer forwards is its [`Plan`]: listener and backend changes
//! wait in the model until an UpdateLoadBalancers job hands the plan to the
//! data path ([`super::lb_proxy`]).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::Serialize;

use super::cloud::{ApiError, Cloud, err};

/// The most backends one load balancer takes (the cloud's documented cap).
pub const MAX_BACKENDS: usize = 200;
/// The most EIPs one public load balancer takes.
pub const MAX_EIPS: usize = 4;
/// The simulated internet: the vxnet EIP addresses are on. A public load
/// balancer's port is there, with its first EIP's address; clients on the
/// internet are VMs there. It is not part of the VPC.
pub const INTERNET: &str = "vxnet-internet";

/// A public address of the account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Eip {
    pub id: String,
    pub addr: Ipv4Addr,
    /// The load balancer it is associated with.
    pub lb: Option<String>,
}

/// Where CreateLoadBalancer puts a load balancer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LbNetwork {
    /// An address on this vxnet (this one, or one the cloud picks).
    Vxnet {
        vxnet: String,
        private_ip: Option<Ipv4Addr>,
    },
    /// These EIPs, on the internet.
    Eips(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LbStatus {
    Pending,
    Active,
    Deleted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Balancer {
    pub id: String,
    pub name: String,
    pub vxnet: String,
    pub ip: Ipv4Addr,
    /// The MAC of its port on the vxnet.
    pub mac: String,
    /// A public load balancer's EIPs (its `ip` is the first one's).
    pub eips: Vec<String>,
    pub lb_type: u8,
    pub status: LbStatus,
    /// `creating`, `updating`, `deleting` or empty.
    pub transition: &'static str,
    /// What the data path forwards (set by the last UpdateLoadBalancers).
    pub applied: Plan,
    pub tags: BTreeSet<String>,
    pub created: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub id: String,
    pub lb: String,
    pub name: String,
    pub port: u16,
    pub protocol: String,
    pub balance_mode: String,
    pub check_method: String,
    pub check: Check,
}

/// `healthy_check_option`: `interval|timeout|fall|rise`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub interval_s: u32,
    pub timeout_s: u32,
    pub fall: u32,
    pub rise: u32,
}

impl Default for Check {
    fn default() -> Self {
        Check {
            interval_s: 10,
            timeout_s: 5,
            fall: 2,
            rise: 5,
        }
    }
}

impl Check {
    pub fn parse(option: &str) -> Result<Check, ApiError> {
        let bad = || ApiError {
            code: 1100,
            message: format!(
                "InvalidParameter, healthy_check_option [{option}] is not interval|timeout|fall|rise with each 1..=60"
            ),
        };
        let parts: Vec<u32> = option
            .split('|')
            .map(|p| p.trim().parse::<u32>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let [interval_s, timeout_s, fall, rise] = parts[..] else {
            return Err(bad());
        };
        if parts.iter().any(|v| !(1..=60).contains(v)) {
            return Err(bad());
        }
        Ok(Check {
            interval_s,
            timeout_s,
            fall,
            rise,
        })
    }

    pub fn option(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.interval_s, self.timeout_s, self.fall, self.rise
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub id: String,
    pub listener: String,
    pub lb: String,
    pub name: String,
    /// As given: an instance id or an address.
    pub resource_id: String,
    /// Where the load balancer sends: the instance's primary address, or
    /// the address itself.
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u8,
    pub disabled: bool,
}

/// What a load balancer forwards: each listener with its backends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub listeners: Vec<(Listener, Vec<Backend>)>,
}

/// One listener of an AddLoadBalancerListeners call, parsed.
#[derive(Clone, Debug)]
pub struct NewListener {
    pub name: String,
    pub port: u16,
    pub protocol: String,
    pub backend_protocol: String,
    pub balance_mode: String,
    pub check_method: String,
    pub check: Check,
}

/// One backend of an AddLoadBalancerBackends call, parsed.
#[derive(Clone, Debug)]
pub struct NewBackend {
    pub name: String,
    pub resource_id: String,
    pub port: u16,
    pub weight: u8,
}

impl Cloud {
    fn balancer(&self, id: &str) -> Result<&Balancer, ApiError> {
        self.lbs
            .get(id)
            .filter(|b| b.status != LbStatus::Deleted)
            .ok_or_else(|| ApiError {
                code: 2100,
                message: format!("ResourceNotFound, loadbalancer [{id}] not found"),
            })
    }

    /// A load balancer whose listeners and backends may change now.
    fn changeable(&self, id: &str) -> Result<&Balancer, ApiError> {
        let lb = self.balancer(id)?;
        if lb.status != LbStatus::Active || !lb.transition.is_empty() {
            return err(
                1400,
                format!(
                    "PermissionDenied, loadbalancer [{id}] is {:?}{}; wait until it is active",
                    lb.status,
                    if lb.transition.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", lb.transition)
                    }
                ),
            );
        }
        Ok(lb)
    }

    /// The account's EIPs, `count` of them, on the internet vxnet.
    pub fn add_eips(&mut self, count: usize) -> Result<(), ApiError> {
        for addr in self.vxnet_mut(INTERNET)?.allocate(count, &[])? {
            let id = format!("eip-{:08x}", self.next());
            self.eips.insert(id.clone(), Eip { id, addr, lb: None });
        }
        Ok(())
    }

    /// CreateLoadBalancer: on a vxnet, its address taken now; or on EIPs,
    /// which must be free and become its. The data path comes up with the
    /// job.
    pub fn create_lb(
        &mut self,
        name: &str,
        network: &LbNetwork,
        lb_type: u8,
        now: u64,
    ) -> Result<(String, String), ApiError> {
        if lb_type > 5 {
            return err(
                1100,
                format!("InvalidParameter, loadbalancer_type {lb_type} must be 0..5"),
            );
        }
        let (vxnet, ip, eips) = match network {
            LbNetwork::Vxnet { vxnet, private_ip } => {
                if vxnet == INTERNET {
                    return err(
                        1100,
                        format!("InvalidParameter, [{vxnet}] is not a vxnet of the VPC"),
                    );
                }
                let ip = self
                    .vxnet_mut(vxnet)?
                    .allocate(1, private_ip.as_slice())?
                    .remove(0);
                (vxnet.clone(), ip, Vec::new())
            }
            LbNetwork::Eips(ids) => {
                if ids.is_empty() || ids.len() > MAX_EIPS {
                    return err(
                        1100,
                        format!(
                            "InvalidParameter, a load balancer takes 1..{MAX_EIPS} eips, got {}",
                            ids.len()
                        ),
                    );
                }
                for id in ids {
                    let eip = self.eips.get(id).ok_or_else(|| ApiError {
                        code: 2100,
                        message: format!("ResourceNotFound, eip [{id}] not found"),
                    })?;
                    if let Some(lb) = &eip.lb {
                        return err(
                            1400,
                            format!(
                                "PermissionDenied, eip [{id}] is associated with loadbalancer [{lb}]"
                            ),
                        );
                    }
                }
                (INTERNET.to_string(), self.eips[&ids[0]].addr, ids.clone())
            }
        };
        let n = self.next();
        let id = format!("lb-{n:08x}");
        let mac = format!(
            "52:55:{:02x}:{:02x}:{:02x}:{:02x}",
            (n >> 24) as u8,
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8
        );
        self.lbs.insert(
            id.clone(),
            Balancer {
                id: id.clone(),
                name: name.to_string(),
                vxnet,
                ip,
                mac,
                eips: eips.clone(),
                lb_type,
                status: LbStatus::Pending,
                transition: "creating",
                applied: Plan::default(),
                tags: BTreeSet::new(),
                created: now,
            },
        );
        for e in &eips {
            self.eips.get_mut(e).expect("checked").lb = Some(id.clone());
        }
        let job = self.job("CreateLoadBalancer", vec![id.clone()], None);
        Ok((id, job))
    }

    /// UpdateLoadBalancers: one job applying each one's current plan.
    pub fn update_lbs(&mut self, ids: &[String]) -> Result<String, ApiError> {
        if ids.is_empty() {
            return err(1100, "InvalidParameter, missing parameter [loadbalancers]");
        }
        for id in ids {
            self.changeable(id)?;
        }
        for id in ids {
            self.lbs.get_mut(id).expect("checked").transition = "updating";
        }
        Ok(self.job("UpdateLoadBalancers", ids.to_vec(), None))
    }

    pub fn delete_lbs(&mut self, ids: &[String]) -> Result<String, ApiError> {
        if ids.is_empty() {
            return err(1100, "InvalidParameter, missing parameter [loadbalancers]");
        }
        for id in ids {
            let lb = self.balancer(id)?;
            if lb.status == LbStatus::Pending || !lb.transition.is_empty() {
                return err(
                    1400,
                    format!(
                        "PermissionDenied, loadbalancer [{id}] is {:?} ({}); it cannot be deleted now",
                        lb.status, lb.transition
                    ),
                );
            }
        }
        for id in ids {
            self.lbs.get_mut(id).expect("checked").transition = "deleting";
        }
        Ok(self.job("DeleteLoadBalancers", ids.to_vec(), None))
    }

    /// The plan the load balancer would forward after an update now.
    pub fn plan(&self, lb: &str) -> Plan {
        Plan {
            listeners: self
                .listeners
                .values()
                .filter(|l| l.lb == lb)
                .map(|l| {
                    let backends = self
                        .backends
                        .values()
                        .filter(|b| b.listener == l.id)
                        .cloned()
                        .collect();
                    (l.clone(), backends)
                })
                .collect(),
        }
    }

    /// `is_applied`: nothing changed since the last update took effect.
    pub fn is_applied(&self, lb: &Balancer) -> bool {
        lb.applied == self.plan(&lb.id)
    }

    pub fn add_listeners(
        &mut self,
        lb: &str,
        new: &[NewListener],
    ) -> Result<Vec<String>, ApiError> {
        self.changeable(lb)?;
        if new.is_empty() {
            return err(1100, "InvalidParameter, missing parameter [listeners]");
        }
        let mut ports: BTreeSet<u16> = self
            .listeners
            .values()
            .filter(|l| l.lb == lb)
            .map(|l| l.port)
            .collect();
        for l in new {
            check_listener(l)?;
            if !ports.insert(l.port) {
                return err(
                    1400,
                    format!(
                        "PermissionDenied, loadbalancer [{lb}] already listens on port {}",
                        l.port
                    ),
                );
            }
        }
        let mut ids = Vec::new();
        for l in new {
            let id = format!("lbl-{:08x}", self.next());
            self.listeners.insert(
                id.clone(),
                Listener {
                    id: id.clone(),
                    lb: lb.to_string(),
                    name: l.name.clone(),
                    port: l.port,
                    protocol: l.protocol.clone(),
                    balance_mode: l.balance_mode.clone(),
                    check_method: l.check_method.clone(),
                    check: l.check,
                },
            );
            ids.push(id);
        }
        Ok(ids)
    }

    fn listener(&self, id: &str) -> Result<&Listener, ApiError> {
        self.listeners.get(id).ok_or_else(|| ApiError {
            code: 2100,
            message: format!("ResourceNotFound, loadbalancer_listener [{id}] not found"),
        })
    }

    pub fn delete_listeners(&mut self, ids: &[String]) -> Result<(), ApiError> {
        if ids.is_empty() {
            return err(
                1100,
                "InvalidParameter, missing parameter [loadbalancer_listeners]",
            );
        }
        for id in ids {
            let lb = self.listener(id)?.lb.clone();
            self.changeable(&lb)?;
        }
        for id in ids {
            self.listeners.remove(id);
            self.backends.retain(|_, b| &b.listener != id);
        }
        Ok(())
    }

    /// Where a backend's `resource_id` sends: an instance's primary
    /// address, or an address in one of the VPC's vxnets.
    fn resolve(&self, resource_id: &str) -> Result<Ipv4Addr, ApiError> {
        if let Ok(ip) = resource_id.parse::<Ipv4Addr>() {
            if self
                .vxnets
                .values()
                .any(|v| v.id != INTERNET && v.cidr.contains(&ip))
            {
                return Ok(ip);
            }
            return err(
                1400,
                format!("PermissionDenied, backend address {ip} is not in the load balancer's VPC"),
            );
        }
        let instance = self.instances.get(resource_id).ok_or_else(|| ApiError {
            code: 2100,
            message: format!("ResourceNotFound, resource [{resource_id}] not found"),
        })?;
        Ok(self.nics[&instance.primary].ip)
    }

    pub fn add_backends(
        &mut self,
        listener: &str,
        new: &[NewBackend],
    ) -> Result<Vec<String>, ApiError> {
        let lb = self.listener(listener)?.lb.clone();
        self.changeable(&lb)?;
        if new.is_empty() {
            return err(1100, "InvalidParameter, missing parameter [backends]");
        }
        let have = self.backends.values().filter(|b| b.lb == lb).count();
        if have + new.len() > MAX_BACKENDS {
            return err(
                2500,
                format!(
                    "QuotaExceeded, loadbalancer [{lb}] would have {} backends, the limit is {MAX_BACKENDS}",
                    have + new.len()
                ),
            );
        }
        let mut resolved = Vec::new();
        for b in new {
            if b.port == 0 {
                return err(1100, "InvalidParameter, backend port must be 1..65535");
            }
            if b.weight > 100 {
                return err(
                    1100,
                    format!("InvalidParameter, weight {} must be 0..100", b.weight),
                );
            }
            resolved.push(self.resolve(&b.resource_id)?);
        }
        let mut ids = Vec::new();
        for (b, address) in new.iter().zip(resolved) {
            let id = format!("lbb-{:08x}", self.next());
            self.backends.insert(
                id.clone(),
                Backend {
                    id: id.clone(),
                    listener: listener.to_string(),
                    lb: lb.clone(),
                    name: b.name.clone(),
                    resource_id: b.resource_id.clone(),
                    address,
                    port: b.port,
                    weight: b.weight,
                    disabled: false,
                },
            );
            ids.push(id);
        }
        Ok(ids)
    }

    fn backend(&self, id: &str) -> Result<&Backend, ApiError> {
        self.backends.get(id).ok_or_else(|| ApiError {
            code: 2100,
            message: format!("ResourceNotFound, loadbalancer_backend [{id}] not found"),
        })
    }

    pub fn delete_backends(&mut self, ids: &[String]) -> Result<(), ApiError> {
        if ids.is_empty() {
            return err(
                1100,
                "InvalidParameter, missing parameter [loadbalancer_backends]",
            );
        }
        for id in ids {
            let lb = self.backend(id)?.lb.clone();
            self.changeable(&lb)?;
        }
        for id in ids {
            self.backends.remove(id);
        }
        Ok(())
    }

    pub fn modify_backend(
        &mut self,
        id: &str,
        port: Option<u16>,
        weight: Option<u8>,
        disabled: Option<bool>,
    ) -> Result<(), ApiError> {
        let lb = self.backend(id)?.lb.clone();
        self.changeable(&lb)?;
        if port == Some(0) || weight.is_some_and(|w| w > 100) {
            return err(
                1100,
                "InvalidParameter, port must be 1..65535 and weight 0..100",
            );
        }
        let b = self.backends.get_mut(id).expect("checked");
        b.port = port.unwrap_or(b.port);
        b.weight = weight.unwrap_or(b.weight);
        b.disabled = disabled.unwrap_or(b.disabled);
        Ok(())
    }

    /// A load-balancer job's end: created, applied, or deleted (listeners,
    /// backends and address gone). A failed job leaves things as they were
    /// (a failed create leaves the load balancer deleted, its address free).
    pub(super) fn finish_lb_job(&mut self, action: &str, ids: &[String], plans: &[Plan], ok: bool) {
        for (i, id) in ids.iter().enumerate() {
            let Some(lb) = self.lbs.get_mut(id) else {
                continue;
            };
            lb.transition = "";
            match (action, ok) {
                ("CreateLoadBalancer", true) => lb.status = LbStatus::Active,
                ("UpdateLoadBalancers", true) => {
                    lb.applied = plans.get(i).cloned().unwrap_or_default();
                }
                ("DeleteLoadBalancers", true) | ("CreateLoadBalancer", false) => {
                    lb.status = LbStatus::Deleted;
                    lb.applied = Plan::default();
                    let (vxnet, ip, eips) = (lb.vxnet.clone(), lb.ip, lb.eips.clone());
                    if eips.is_empty()
                        && let Ok(v) = self.vxnet_mut(&vxnet)
                    {
                        v.release(ip);
                    }
                    // Deleting a load balancer frees its EIPs.
                    for e in eips {
                        if let Some(eip) = self.eips.get_mut(&e) {
                            eip.lb = None;
                        }
                    }
                    self.listeners.retain(|_, l| &l.lb != id);
                    self.backends.retain(|_, b| &b.lb != id);
                    for t in self.tags.values_mut() {
                        t.resources
                            .remove(&("loadbalancer".to_string(), id.clone()));
                    }
                }
                _ => {}
            }
        }
    }
}

fn check_listener(l: &NewListener) -> Result<(), ApiError> {
    if l.port == 0 {
        return err(1100, "InvalidParameter, listener_port must be 1..65535");
    }
    match l.protocol.as_str() {
        "tcp" | "http" => {}
        "https" => {
            return err(
                1100,
                "InvalidParameter, an https listener needs a server certificate, which the simulator does not model",
            );
        }
        "udp" => {
            return err(
                1100,
                "InvalidParameter, the simulator's load balancers forward tcp and http only",
            );
        }
        other => {
            return err(
                1100,
                format!("InvalidParameter, listener_protocol [{other}] is not tcp, http or https"),
            );
        }
    }
    if l.backend_protocol != l.protocol {
        return err(
            1100,
            format!(
                "InvalidParameter, backend_protocol [{}] must match listener_protocol [{}]",
                l.backend_protocol, l.protocol
            ),
        );
    }
    if !["roundrobin", "leastconn", "source"].contains(&l.balance_mode.as_str()) {
        return err(
            1100,
            format!(
                "InvalidParameter, balance_mode [{}] is not roundrobin, leastconn or source",
                l.balance_mode
            ),
        );
    }
    if l.check_method != "tcp" && !l.check_method.starts_with("http|/") {
        return err(
            1100,
            format!(
                "InvalidParameter, healthy_check_method [{}] is not tcp or http|/path[|host]",
                l.check_method
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::cloud::JobStatus;

    fn cloud() -> Cloud {
        let mut c = Cloud::default();
        c.add_vxnet(INTERNET, "198.51.100.0/24".parse().unwrap());
        c.add_eips(2).unwrap();
        c.add_vxnet("vxnet-a", "10.1.0.0/28".parse().unwrap());
        c.add_vxnet("vxnet-m", "192.168.0.0/24".parse().unwrap());
        c.add_instance("i-1", "/x".into(), "vxnet-m", 0).unwrap();
        c
    }

    fn on_a(private_ip: Option<Ipv4Addr>) -> LbNetwork {
        LbNetwork::Vxnet {
            vxnet: "vxnet-a".into(),
            private_ip,
        }
    }

    fn listener(port: u16) -> NewListener {
        NewListener {
            name: format!("l{port}"),
            port,
            protocol: "tcp".into(),
            backend_protocol: "tcp".into(),
            balance_mode: "roundrobin".into(),
            check_method: "tcp".into(),
            check: Check::default(),
        }
    }

    fn backend(resource_id: &str) -> NewBackend {
        NewBackend {
            name: resource_id.into(),
            resource_id: resource_id.into(),
            port: 8080,
            weight: 1,
        }
    }

    /// Runs a job to its end the way the HTTP layer does.
    fn finish(c: &mut Cloud, job: &str, ok: bool) {
        assert!(c.start_job(job).is_some());
        c.finish_job(job, ok, 0);
    }

    fn active(c: &mut Cloud) -> String {
        let (lb, job) = c.create_lb("web", &on_a(None), 0, 0).unwrap();
        finish(c, &job, true);
        lb
    }

    #[test]
    fn a_pending_load_balancer_takes_no_changes_and_cannot_be_deleted() {
        let mut c = cloud();
        let (lb, job) = c.create_lb("web", &on_a(None), 0, 0).unwrap();
        assert_eq!(c.lbs[&lb].status, LbStatus::Pending);
        assert_eq!(
            c.add_listeners(&lb, &[listener(80)]).unwrap_err().code,
            1400
        );
        assert_eq!(
            c.delete_lbs(std::slice::from_ref(&lb)).unwrap_err().code,
            1400
        );
        finish(&mut c, &job, true);
        assert_eq!(c.jobs[&job].status, JobStatus::Successful);
        assert_eq!(c.lbs[&lb].status, LbStatus::Active);
        assert_eq!(c.create_lb("x", &on_a(None), 6, 0).unwrap_err().code, 1100);
        assert_eq!(
            c.create_lb(
                "x",
                &LbNetwork::Vxnet {
                    vxnet: "vxnet-zz".into(),
                    private_ip: None
                },
                0,
                0
            )
            .unwrap_err()
            .code,
            2100
        );
    }

    #[test]
    fn changes_wait_for_an_update_to_be_applied() {
        let mut c = cloud();
        let lb = active(&mut c);
        assert!(c.is_applied(&c.lbs[&lb]));
        let l = c.add_listeners(&lb, &[listener(80)]).unwrap().remove(0);
        assert_eq!(
            c.add_listeners(&lb, &[listener(80)]).unwrap_err().code,
            1400
        );
        let b = c
            .add_backends(&l, &[backend("10.1.0.9"), backend("i-1")])
            .unwrap();
        assert_eq!(
            c.backends[&b[1]].address,
            "192.168.0.2".parse::<Ipv4Addr>().unwrap()
        );
        assert!(!c.is_applied(&c.lbs[&lb]));
        let job = c.update_lbs(std::slice::from_ref(&lb)).unwrap();
        assert_eq!(
            c.add_backends(&l, &[backend("10.1.0.10")])
                .unwrap_err()
                .code,
            1400,
            "no changes while updating"
        );
        finish(&mut c, &job, true);
        assert!(c.is_applied(&c.lbs[&lb]));
        assert_eq!(c.lbs[&lb].applied.listeners[0].1.len(), 2);
        c.modify_backend(&b[0], None, None, Some(true)).unwrap();
        assert!(!c.is_applied(&c.lbs[&lb]));
        c.delete_listeners(&[l]).unwrap();
        assert!(c.backends.is_empty(), "a listener's backends go with it");
    }

    #[test]
    fn backends_must_be_reachable_addresses_and_within_the_cap() {
        let mut c = cloud();
        let lb = active(&mut c);
        let l = c.add_listeners(&lb, &[listener(80)]).unwrap().remove(0);
        assert_eq!(
            c.add_backends(&l, &[backend("8.8.8.8")]).unwrap_err().code,
            1400
        );
        assert_eq!(
            c.add_backends(&l, &[backend("i-nope")]).unwrap_err().code,
            2100
        );
        assert!(c.backends.is_empty(), "a refused call adds nothing");
        let many: Vec<NewBackend> = (0..MAX_BACKENDS + 1)
            .map(|i| NewBackend {
                port: 1000 + i as u16,
                ..backend("10.1.0.9")
            })
            .collect();
        assert_eq!(c.add_backends(&l, &many).unwrap_err().code, 2500);
        assert!(c.add_backends(&l, &many[..MAX_BACKENDS]).is_ok());
        let mut udp = listener(53);
        udp.protocol = "udp".into();
        udp.backend_protocol = "udp".into();
        assert_eq!(c.add_listeners(&lb, &[udp]).unwrap_err().code, 1100);
        assert_eq!(Check::parse("10|5|2").unwrap_err().code, 1100);
        assert_eq!(Check::parse("2|1|1|1").unwrap().option(), "2|1|1|1");
    }

    #[test]
    fn deleting_frees_the_address_and_everything_under_it() {
        let mut c = cloud();
        let lb = active(&mut c);
        let ip = c.lbs[&lb].ip;
        let l = c.add_listeners(&lb, &[listener(80)]).unwrap().remove(0);
        c.add_backends(&l, &[backend("10.1.0.9")]).unwrap();
        let job = c.delete_lbs(std::slice::from_ref(&lb)).unwrap();
        finish(&mut c, &job, true);
        assert_eq!(c.lbs[&lb].status, LbStatus::Deleted);
        assert!(c.listeners.is_empty() && c.backends.is_empty());
        assert_eq!(
            c.delete_lbs(std::slice::from_ref(&lb)).unwrap_err().code,
            2100
        );
        let (_, again) = c.create_lb("web2", &on_a(Some(ip)), 0, 0).unwrap();
        finish(&mut c, &again, false);
        let (_, third) = c.create_lb("web3", &on_a(Some(ip)), 0, 0).unwrap();
        assert!(!third.is_empty(), "a failed create frees its address too");
    }

    #[test]
    fn an_eip_belongs_to_one_load_balancer_at_a_time() {
        let mut c = cloud();
        let eip = c.eips.keys().next().unwrap().clone();
        let (first, job) = c
            .create_lb("one", &LbNetwork::Eips(vec![eip.clone()]), 0, 0)
            .unwrap();
        assert_eq!(c.lbs[&first].ip, c.eips[&eip].addr);
        assert_eq!(c.lbs[&first].vxnet, INTERNET);
        let taken = c
            .create_lb("two", &LbNetwork::Eips(vec![eip.clone()]), 0, 0)
            .unwrap_err();
        assert_eq!(taken.code, 1400);
        assert!(taken.message.contains(&first), "{}", taken.message);
        assert_eq!(
            c.create_lb("x", &LbNetwork::Eips(vec!["eip-nope".into()]), 0, 0)
                .unwrap_err()
                .code,
            2100
        );
        assert_eq!(
            c.create_lb("x", &LbNetwork::Eips(vec![]), 0, 0)
                .unwrap_err()
                .code,
            1100
        );
        finish(&mut c, &job, true);
        let l = c.add_listeners(&first, &[listener(80)]).unwrap().remove(0);
        let far = c.eips.values().nth(1).unwrap().addr.to_string();
        assert_eq!(
            c.add_backends(&l, &[backend(&far)]).unwrap_err().code,
            1400,
            "an internet address is no backend"
        );
        let del = c.delete_lbs(std::slice::from_ref(&first)).unwrap();
        finish(&mut c, &del, true);
        assert!(
            c.create_lb("two", &LbNetwork::Eips(vec![eip]), 0, 0)
                .is_ok()
        );
    }
}
