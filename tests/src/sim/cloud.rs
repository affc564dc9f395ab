//! The simulated cloud's state and rules, with no I/O: vxnets, instances,
//! NICs, async jobs and tags, and the limits and error codes the real
//! QingCloud API applies. The HTTP layer ([`super::api`]) parses requests
//! into calls here; the kernel side ([`super::sdn`]) acts on what these
//! calls decide.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Serialize;

/// An API error: the ret_code and the message, which starts with a name as
/// the cloud's do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: u32,
    pub message: String,
}

pub fn err<T>(code: u32, message: impl Into<String>) -> Result<T, ApiError> {
    Err(ApiError {
        code,
        message: message.into(),
    })
}

/// The cloud's limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// NICs per VM, the primary included.
    pub nics_per_instance: usize,
    /// NICs per AttachNics call (historic limit).
    pub nics_per_attach: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            nics_per_instance: 64,
            nics_per_attach: 5,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Vxnet {
    pub id: String,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    #[serde(skip)]
    used: BTreeSet<Ipv4Addr>,
}

impl Vxnet {
    /// Takes `count` free addresses, or exactly `ips` (then `count` is
    /// their number): the gateway, network and broadcast are never free.
    pub(super) fn allocate(
        &mut self,
        count: usize,
        ips: &[Ipv4Addr],
    ) -> Result<Vec<Ipv4Addr>, ApiError> {
        let vxnet = &self.id;
        let mut chosen = Vec::new();
        if ips.is_empty() {
            let broadcast = self.cidr.broadcast();
            chosen.extend(
                self.cidr
                    .hosts()
                    .filter(|ip| !self.used.contains(ip) && *ip != broadcast)
                    .take(count),
            );
            if chosen.len() < count {
                return err(
                    1400,
                    format!(
                        "ResourceInsufficient, vxnet [{vxnet}] has {} free addresses, {count} asked",
                        chosen.len()
                    ),
                );
            }
        } else {
            for ip in ips {
                if !self.cidr.contains(ip)
                    || *ip == self.cidr.network()
                    || *ip == self.cidr.broadcast()
                {
                    return err(
                        1100,
                        format!("InvalidParameter, {ip} is not an address of vxnet [{vxnet}]"),
                    );
                }
                if self.used.contains(ip) {
                    return err(
                        2110,
                        format!("ResourceAlreadyExists, {ip} is in use in vxnet [{vxnet}]"),
                    );
                }
            }
            chosen.extend_from_slice(ips);
        }
        self.used.extend(chosen.iter().copied());
        Ok(chosen)
    }

    pub(super) fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Instance {
    pub id: String,
    /// The node's network namespace, where attached NICs appear.
    pub netns: PathBuf,
    pub primary: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicState {
    Available,
    Attaching,
    InUse,
    Detaching,
}

#[derive(Clone, Debug, Serialize)]
pub struct Nic {
    pub id: String,
    pub name: String,
    pub vxnet: String,
    pub ip: Ipv4Addr,
    pub instance: Option<String>,
    pub state: NicState,
    pub role: u8,
    pub tags: BTreeSet<String>,
    /// Seconds since the simulator started.
    pub created: u64,
    /// When it last became attached or available (its `status_time`).
    pub status_changed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Working,
    Successful,
    Failed,
}

#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: String,
    pub action: String,
    pub status: JobStatus,
    pub resources: Vec<String>,
    /// The instance an attach goes to.
    pub instance: Option<String>,
    /// What an UpdateLoadBalancers job applies, fixed when it starts.
    #[serde(skip)]
    pub plans: Vec<super::balancer::Plan>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Tag {
    pub id: String,
    pub name: String,
    pub resources: BTreeSet<(String, String)>,
}

/// What a job asks the kernel side to do once it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plumbing {
    Attach {
        nics: Vec<(String, String)>,
        instance: String,
    },
    Detach {
        nics: Vec<String>,
    },
    /// Bring up these load balancers' data paths.
    CreateBalancers(Vec<super::balancer::Balancer>),
    /// Make these load balancers forward these plans.
    ApplyBalancers(Vec<(String, super::balancer::Plan)>),
    DeleteBalancers(Vec<String>),
}

#[derive(Debug, Default)]
pub struct Cloud {
    pub limits: Limits,
    pub vxnets: BTreeMap<String, Vxnet>,
    pub instances: BTreeMap<String, Instance>,
    pub nics: BTreeMap<String, Nic>,
    pub jobs: BTreeMap<String, Job>,
    pub tags: BTreeMap<String, Tag>,
    pub lbs: BTreeMap<String, super::balancer::Balancer>,
    pub listeners: BTreeMap<String, super::balancer::Listener>,
    pub backends: BTreeMap<String, super::balancer::Backend>,
    pub eips: BTreeMap<String, super::balancer::Eip>,
    serial: u32,
}

impl Cloud {
    /// The next serial number, for ids.
    pub(super) fn next(&mut self) -> u32 {
        self.serial += 1;
        self.serial
    }

    pub fn add_vxnet(&mut self, id: &str, cidr: Ipv4Net) -> Vxnet {
        let gateway = cidr.hosts().next().expect("a vxnet has hosts");
        let v = Vxnet {
            id: id.to_string(),
            cidr,
            gateway,
            used: BTreeSet::from([gateway]),
        };
        self.vxnets.insert(id.to_string(), v.clone());
        v
    }

    /// A VM with its primary NIC (attached, role 1) in `vxnet`.
    pub fn add_instance(
        &mut self,
        id: &str,
        netns: PathBuf,
        vxnet: &str,
        now: u64,
    ) -> Result<Nic, ApiError> {
        let mut nic = self
            .create_nics(vxnet, &format!("{id}-primary"), 1, &[], now)?
            .remove(0);
        nic.instance = Some(id.to_string());
        nic.state = NicState::InUse;
        nic.role = 1;
        self.nics.insert(nic.id.clone(), nic.clone());
        self.instances.insert(
            id.to_string(),
            Instance {
                id: id.to_string(),
                netns,
                primary: nic.id.clone(),
            },
        );
        Ok(nic)
    }

    pub fn create_nics(
        &mut self,
        vxnet: &str,
        name: &str,
        count: usize,
        ips: &[Ipv4Addr],
        now: u64,
    ) -> Result<Vec<Nic>, ApiError> {
        if !(1..=252).contains(&count) {
            return err(
                1100,
                format!("InvalidParameter, count {count} must be 1..252"),
            );
        }
        if !ips.is_empty() && ips.len() != count {
            return err(
                1100,
                "InvalidParameter, count must equal the number of private_ips",
            );
        }
        let chosen = self.vxnet_mut(vxnet)?.allocate(count, ips)?;
        let mut out = Vec::new();
        for ip in chosen {
            let n = self.next();
            let id = format!(
                "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
                (n >> 24) as u8,
                (n >> 16) as u8,
                (n >> 8) as u8,
                n as u8
            );
            let nic = Nic {
                id: id.clone(),
                name: name.to_string(),
                vxnet: vxnet.to_string(),
                ip,
                instance: None,
                state: NicState::Available,
                role: 0,
                tags: BTreeSet::new(),
                created: now,
                status_changed: now,
            };
            self.nics.insert(id, nic.clone());
            out.push(nic);
        }
        Ok(out)
    }

    pub(super) fn vxnet_mut(&mut self, vxnet: &str) -> Result<&mut Vxnet, ApiError> {
        self.vxnets.get_mut(vxnet).ok_or_else(|| ApiError {
            code: 2100,
            message: format!("ResourceNotFound, vxnet [{vxnet}] not found"),
        })
    }

    fn nic(&self, id: &str) -> Result<&Nic, ApiError> {
        self.nics.get(id).ok_or_else(|| ApiError {
            code: 2100,
            message: format!("ResourceNotFound, nic [{id}] not found"),
        })
    }

    pub(super) fn job(
        &mut self,
        action: &str,
        resources: Vec<String>,
        instance: Option<String>,
    ) -> String {
        let id = format!("j-{:08x}", self.next());
        self.jobs.insert(
            id.clone(),
            Job {
                id: id.clone(),
                action: action.to_string(),
                status: JobStatus::Pending,
                resources,
                instance,
                plans: Vec::new(),
            },
        );
        id
    }

    pub fn attach_nics(&mut self, nics: &[String], instance: &str) -> Result<String, ApiError> {
        if nics.is_empty() || nics.len() > self.limits.nics_per_attach {
            return err(
                1100,
                format!(
                    "InvalidParameter, attach 1..{} nics per call, got {}",
                    self.limits.nics_per_attach,
                    nics.len()
                ),
            );
        }
        if !self.instances.contains_key(instance) {
            return err(
                2100,
                format!("ResourceNotFound, instance [{instance}] not found"),
            );
        }
        for id in nics {
            let nic = self.nic(id)?;
            if nic.state != NicState::Available {
                return err(
                    1400,
                    format!(
                        "PermissionDenied, nic [{id}] is not available (it is {:?})",
                        nic.state
                    ),
                );
            }
        }
        let attached = self
            .nics
            .values()
            .filter(|n| n.instance.as_deref() == Some(instance))
            .count();
        if attached + nics.len() > self.limits.nics_per_instance {
            return err(
                1400,
                format!(
                    "PermissionDenied, instance [{instance}] would have {} nics, the limit is {}",
                    attached + nics.len(),
                    self.limits.nics_per_instance
                ),
            );
        }
        for id in nics {
            let nic = self.nics.get_mut(id).expect("checked above");
            nic.state = NicState::Attaching;
            nic.instance = Some(instance.to_string());
        }
        Ok(self.job("AttachNics", nics.to_vec(), Some(instance.to_string())))
    }

    pub fn detach_nics(&mut self, nics: &[String]) -> Result<String, ApiError> {
        if nics.is_empty() {
            return err(1100, "InvalidParameter, nics is empty");
        }
        for id in nics {
            let nic = self.nic(id)?;
            if nic.role == 1 {
                return err(
                    1400,
                    format!("PermissionDenied, nic [{id}] is a primary nic"),
                );
            }
            if nic.state != NicState::InUse {
                return err(
                    1400,
                    format!(
                        "PermissionDenied, nic [{id}] is not attached (it is {:?})",
                        nic.state
                    ),
                );
            }
        }
        for id in nics {
            self.nics.get_mut(id).expect("checked above").state = NicState::Detaching;
        }
        Ok(self.job("DetachNics", nics.to_vec(), None))
    }

    pub fn delete_nics(&mut self, nics: &[String]) -> Result<(), ApiError> {
        for id in nics {
            let nic = self.nic(id)?;
            if nic.state != NicState::Available {
                return err(
                    1400,
                    format!(
                        "PermissionDenied, nic [{id}] is {:?}; detach it first",
                        nic.state
                    ),
                );
            }
        }
        for id in nics {
            let nic = self.nics.remove(id).expect("checked above");
            if let Some(v) = self.vxnets.get_mut(&nic.vxnet) {
                v.release(nic.ip);
            }
            for t in self.tags.values_mut() {
                t.resources.remove(&("nic".to_string(), id.clone()));
            }
        }
        Ok(())
    }

    /// Starts a pending job; returns what the kernel side must do.
    pub fn start_job(&mut self, id: &str) -> Option<Plumbing> {
        let job = self.jobs.get_mut(id)?;
        if job.status != JobStatus::Pending {
            return None;
        }
        job.status = JobStatus::Working;
        let job = job.clone();
        Some(match job.action.as_str() {
            "CreateLoadBalancer" => Plumbing::CreateBalancers(
                job.resources
                    .iter()
                    .filter_map(|id| self.lbs.get(id).cloned())
                    .collect(),
            ),
            "UpdateLoadBalancers" => {
                let plans: Vec<_> = job.resources.iter().map(|id| self.plan(id)).collect();
                self.jobs.get_mut(id)?.plans = plans.clone();
                Plumbing::ApplyBalancers(job.resources.iter().cloned().zip(plans).collect())
            }
            "DeleteLoadBalancers" => Plumbing::DeleteBalancers(job.resources.clone()),
            "AttachNics" => Plumbing::Attach {
                nics: job
                    .resources
                    .iter()
                    .map(|m| (m.clone(), self.nics[m].vxnet.clone()))
                    .collect(),
                instance: job.instance.clone().unwrap_or_default(),
            },
            _ => Plumbing::Detach {
                nics: job.resources.clone(),
            },
        })
    }

    /// Ends a job: NICs land in their final state, or roll back on failure.
    pub fn finish_job(&mut self, id: &str, ok: bool, now: u64) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        job.status = if ok {
            JobStatus::Successful
        } else {
            JobStatus::Failed
        };
        let (action, resources) = (job.action.clone(), job.resources.clone());
        if action.contains("LoadBalancer") {
            let plans = job.plans.clone();
            self.finish_lb_job(&action, &resources, &plans, ok);
            return;
        }
        for m in resources {
            let Some(nic) = self.nics.get_mut(&m) else {
                continue;
            };
            nic.status_changed = now;
            match (action.as_str(), ok) {
                ("AttachNics", true) => nic.state = NicState::InUse,
                ("AttachNics", false) | ("DetachNics", true) => {
                    nic.state = NicState::Available;
                    nic.instance = None;
                }
                _ => nic.state = NicState::InUse,
            }
        }
    }

    pub fn create_tag(&mut self, name: &str) -> String {
        let id = format!("tag-{:08x}", self.next());
        self.tags.insert(
            id.clone(),
            Tag {
                id: id.clone(),
                name: name.to_string(),
                resources: BTreeSet::new(),
            },
        );
        id
    }

    pub fn attach_tags(&mut self, pairs: &[(String, String, String)]) -> Result<(), ApiError> {
        for (tag, kind, res) in pairs {
            if !self.tags.contains_key(tag) {
                return err(2100, format!("ResourceNotFound, tag [{tag}] not found"));
            }
            let known = match kind.as_str() {
                "nic" => self.nics.contains_key(res),
                "loadbalancer" => self
                    .lbs
                    .get(res)
                    .is_some_and(|lb| lb.status != super::balancer::LbStatus::Deleted),
                _ => false,
            };
            if !known {
                return err(2100, format!("ResourceNotFound, {kind} [{res}] not found"));
            }
        }
        for (tag, kind, res) in pairs {
            self.tags
                .get_mut(tag)
                .expect("checked")
                .resources
                .insert((kind.clone(), res.clone()));
            let tags = match kind.as_str() {
                "nic" => &mut self.nics.get_mut(res).expect("checked").tags,
                _ => &mut self.lbs.get_mut(res).expect("checked").tags,
            };
            tags.insert(tag.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud() -> Cloud {
        let mut c = Cloud::default();
        c.add_vxnet("vxnet-a", "10.1.0.0/29".parse().unwrap());
        c.add_vxnet("vxnet-m", "192.168.0.0/24".parse().unwrap());
        c.add_instance("i-1", "/x".into(), "vxnet-m", 0).unwrap();
        c
    }

    #[test]
    fn addresses_are_handed_out_once_and_returned_on_delete() {
        let mut c = cloud();
        // /29: .1 gateway, .2-.6 usable, .7 broadcast.
        let nics = c.create_nics("vxnet-a", "n", 5, &[], 0).unwrap();
        let ips: BTreeSet<_> = nics.iter().map(|n| n.ip).collect();
        assert_eq!(ips.len(), 5);
        assert!(!ips.contains(&"10.1.0.1".parse().unwrap()));
        assert_eq!(
            c.create_nics("vxnet-a", "n", 1, &[], 0).unwrap_err().code,
            1400
        );
        c.delete_nics(&[nics[0].id.clone()]).unwrap();
        let again = c.create_nics("vxnet-a", "n", 1, &[nics[0].ip], 0).unwrap();
        assert_eq!(again[0].ip, nics[0].ip);
        assert_eq!(
            c.create_nics("vxnet-a", "n", 1, &[nics[1].ip], 0)
                .unwrap_err()
                .code,
            2110
        );
        assert_eq!(
            c.create_nics("vxnet-zz", "n", 1, &[], 0).unwrap_err().code,
            2100
        );
    }

    #[test]
    fn attach_and_detach_follow_the_job() {
        let mut c = cloud();
        let nic = c
            .create_nics("vxnet-a", "n", 1, &[], 0)
            .unwrap()
            .remove(0)
            .id;
        let job = c.attach_nics(std::slice::from_ref(&nic), "i-1").unwrap();
        assert_eq!(c.nics[&nic].state, NicState::Attaching);
        assert_eq!(
            c.attach_nics(std::slice::from_ref(&nic), "i-1")
                .unwrap_err()
                .code,
            1400
        );
        assert_eq!(
            c.delete_nics(std::slice::from_ref(&nic)).unwrap_err().code,
            1400
        );
        assert!(matches!(c.start_job(&job), Some(Plumbing::Attach { .. })));
        c.finish_job(&job, true, 0);
        assert_eq!(c.nics[&nic].state, NicState::InUse);
        let d = c.detach_nics(std::slice::from_ref(&nic)).unwrap();
        c.start_job(&d);
        c.finish_job(&d, true, 0);
        assert_eq!(c.nics[&nic].instance, None);
        c.delete_nics(std::slice::from_ref(&nic)).unwrap();
        assert_eq!(c.delete_nics(&[nic]).unwrap_err().code, 2100);
    }

    #[test]
    fn limits_hold() {
        let mut c = cloud();
        c.add_vxnet("vxnet-b", "10.2.0.0/24".parse().unwrap());
        let six: Vec<String> = c
            .create_nics("vxnet-b", "n", 6, &[], 0)
            .unwrap()
            .into_iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(
            c.attach_nics(&six, "i-1").unwrap_err().code,
            1100,
            "at most 5 per call"
        );
        assert!(c.attach_nics(&six[..5], "i-1").is_ok());
        let mut c = cloud();
        c.limits.nics_per_instance = 3;
        let ids: Vec<String> = c
            .create_nics("vxnet-a", "n", 3, &[], 0)
            .unwrap()
            .into_iter()
            .map(|n| n.id)
            .collect();
        // primary + 3 > 3
        assert_eq!(c.attach_nics(&ids, "i-1").unwrap_err().code, 1400);
        let primary = c.instances["i-1"].primary.clone();
        assert_eq!(c.detach_nics(&[primary]).unwrap_err().code, 1400);
        let failed = c.attach_nics(&ids[..1], "i-1").unwrap();
        c.start_job(&failed);
        c.finish_job(&failed, false, 0);
        assert_eq!(
            c.nics[&ids[0]].state,
            NicState::Available,
            "a failed attach rolls back"
        );
    }
}
