//! ADD of one attachment: validate → plan → acquire → wire → record.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use hostnic_netlink::{Mac, Netns, NsId};
use hostnic_policy::Attachment;
use hostnic_proto::cni::{self, AddResult, CniError, Interface, IpConfig, Route, code};
use hostnic_proto::rpc::{AddRequest, Reply};
use ipnet::IpNet;
use tracing::{info, warn};

use super::plan::{Asked, Plan};
use super::{Service, internal, key_of, validate_target};
use crate::audit::Audited;
use crate::plumb::{PlumbError, Whereabouts, Wiring};
use crate::pool::{Lease, State};
use crate::publish;
use crate::source::{Acquired, STILL_ATTACHING};
use crate::store::{Allocation, Key, Phase};

/// Why an ADD with one NIC did not work out.
enum AddFailure {
    /// The NIC was not in the node namespace: try another.
    Missing(Mac),
    Failed(CniError),
}

impl Service {
    /// ADD of one attachment (`service/networks.rs` runs one per network of
    /// the pod).
    pub(super) async fn add_one(
        self: &Arc<Self>,
        req: AddRequest,
        netns: &Netns,
    ) -> Result<Reply, CniError> {
        let received = Instant::now();
        // Validate: nothing is recorded or moved before these pass.
        // Never wire a NIC into the node's own namespace
        // (CNI_NETNS=/proc/1/ns/net on a real node).
        let netns_id = self.nics.plumber.pod_ns_id(netns).map_err(|e| {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS: {e}; refusing to wire a NIC into it"),
            )
        })?;
        validate_target(&req.target)?;
        self.wait_for_releases_in(netns_id).await;
        let mtu = req.mtu.unwrap_or(self.default_mtu);
        if !cni::MTU_RANGE.contains(&mtu) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("mtu {mtu} is out of range"),
            ));
        }
        let key = key_of(&req.target);

        // A retried ADD for an attachment we already made answers as before.
        if let Some(r) = self.shared.peek(&key) {
            return match (r.phase, r.result) {
                (Phase::Committed, Some(result)) => Ok(Reply::Added(result)),
                _ => Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "an ADD for container {} {} is still in progress",
                        key.container_id, key.ifname
                    ),
                )),
            };
        }
        let existing = self.nics.pool().lookup(&key);
        if let Some((lease, state)) = existing {
            return match state {
                State::Held(_) => {
                    let _g = lease.lock.lock().await;
                    self.recorded_result(lease.spec.mac)
                }
                _ => Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "an ADD for container {} {} is still in progress",
                        key.container_id, key.ifname
                    ),
                )),
            };
        }

        let asked = Asked::of(&req)?;
        // Exactly one of a pod's attachments carries its default route: the
        // one its network config says, else the first (the pod has none).
        let default_route = match req.default_route {
            Some(d) => d,
            None => !self
                .nics
                .plumber
                .has_default_route(netns)
                .await
                .map_err(|e| internal(format!("reading the pod's routes: {e}")))?,
        };

        // The pod as the guests see it: the runtime's view, with labels
        // (and annotations the runtime did not send) from the API server,
        // and the attachment this ADD makes.
        let mut pod = crate::apiserver::pod_for_guests(self.kube.as_ref(), &req.pod).await;
        pod.attachment = Attachment {
            network: key.network.clone(),
            interface: key.ifname.clone(),
            default_route,
        };
        let mut audit = Audited {
            at_ms: Audited::now_ms(),
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            network: key.network.clone(),
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
            prepare_us: received.elapsed().as_micros() as u64,
            ..Audited::default()
        };
        let added = self
            .plan_acquire_wire(
                &key,
                (&req, &pod, &asked),
                mtu,
                (netns, netns_id),
                &mut audit,
            )
            .await;
        audit.total_us = received.elapsed().as_micros() as u64;
        if let Err(e) = &added {
            audit.error = Some(e.to_string());
        }
        let reason = audit.reason();
        match &added {
            Ok(result) => {
                let seen = self.kube.as_ref().and_then(|k| {
                    k.pods
                        .peek(&audit.namespace, &audit.pod, publish::NETWORK_STATUS)
                });
                publish::added(&audit, &reason, result, seen)
            }
            // A cold ADD told to come back while its NIC is still being
            // attached has not failed.
            Err(e) if e.msg == STILL_ATTACHING => {}
            Err(e) => publish::add_failed(&audit, e),
        }
        self.audit.record(audit, &reason);
        added.map(Reply::Added)
    }

    /// The pipeline. A NIC found missing when we reach for it is marked so
    /// and the next free one is tried; each turn retires one NIC, so this
    /// ends.
    async fn plan_acquire_wire(
        &self,
        key: &Key,
        (req, pod, asked): (&AddRequest, &hostnic_policy::Pod, &Asked<'_>),
        mtu: u32,
        netns: (&Netns, NsId),
        audit: &mut Audited,
    ) -> Result<AddResult, CniError> {
        loop {
            let started = Instant::now();
            let plan = self.plan(key, pod, asked)?;
            audit.order = plan.order.clone().unwrap_or_default();
            audit.ip_request.clone_from(&plan.ip_request);
            audit.guests = self.guest_digests();
            let planned = Instant::now();
            if let Some(net) = self.shared.net_for(plan.first_vxnet()).cloned() {
                audit.plan_us = (planned - started).as_micros() as u64;
                let result = self
                    .add_shared(key, (&plan, &net), (req, pod), mtu, netns, audit)
                    .await?;
                audit.wire_us =
                    (planned.elapsed().as_micros() as u64).saturating_sub(audit.acquire_us);
                describe_result(audit, &result);
                return Ok(result);
            }
            let acquired = self.acquire(key, &plan).await?;
            let lease = &acquired.lease;
            audit.how = acquired.how.describe().to_string();
            audit.vxnet.clone_from(&lease.spec.vxnet);
            audit.passed_over = passed_over(&audit.order, audit.vxnet.as_deref());
            audit.mac = lease.spec.mac.to_string();
            let acquired_at = Instant::now();
            let wired = self
                .wire_and_record(lease, key, (req, pod), mtu, netns, &mut audit.attach_us)
                .await;
            audit.plan_us = (planned - started).as_micros() as u64;
            audit.acquire_us = (acquired_at - planned).as_micros() as u64;
            audit.wire_us = acquired_at.elapsed().as_micros() as u64;
            match wired {
                Err(AddFailure::Missing(mac)) => {
                    warn!(nic = %mac, "reserved NIC is not in the node namespace; marked missing, trying another");
                }
                Err(AddFailure::Failed(e)) => return Err(e),
                Ok(result) => {
                    self.remember_sticky(&plan, &lease.spec);
                    describe_result(audit, &result);
                    return Ok(result);
                }
            }
        }
    }

    /// The guests deciding now, by hook (12 hex digits of each sha256).
    fn guest_digests(&self) -> std::collections::BTreeMap<String, String> {
        self.policies
            .guests()
            .into_iter()
            .map(|(hook, g)| (hook.to_string(), g.short().to_string()))
            .collect()
    }

    /// The NIC the plan asks for, reserved for `key`. A sticky identity
    /// gets the NIC that follows it, or, the first time, any NIC the plan
    /// allows, marked to follow it from now on.
    async fn acquire(&self, key: &Key, plan: &Plan) -> Result<Acquired, CniError> {
        if let Some(mac) = plan.mac {
            return self.acquire_mac(key, plan, mac).await;
        }
        let Some(identity) = &plan.sticky else {
            return self.acquire_any(key, plan).await;
        };
        if let Some(followed) = self
            .source
            .acquire_sticky(key, identity, plan.order.as_deref())
            .await?
        {
            return Ok(followed);
        }
        let acquired = self.acquire_any(key, plan).await?;
        if let Err(e) = self
            .source
            .tag_sticky(acquired.lease.spec.mac, identity)
            .await
        {
            self.forget(acquired.lease.spec.mac, true);
            return Err(e);
        }
        Ok(acquired)
    }

    /// A NIC of the plan's vxnets, with one of its addresses if it has any.
    async fn acquire_any(&self, key: &Key, plan: &Plan) -> Result<Acquired, CniError> {
        match &plan.addresses {
            Some(addrs) => {
                self.source
                    .acquire_address(key, addrs, plan.first_vxnet())
                    .await
            }
            None => self.source.acquire(key, plan.order.as_deref()).await,
        }
    }

    /// The NIC the runtime named (the `mac` capability): free on this node,
    /// in the network's vxnets, with one of the plan's addresses if it has
    /// any.
    async fn acquire_mac(&self, key: &Key, plan: &Plan, mac: Mac) -> Result<Acquired, CniError> {
        let fits = |s: &crate::config::NicSpec| {
            s.mac == mac
                && plan
                    .order
                    .as_ref()
                    .is_none_or(|o| s.vxnet.as_ref().is_some_and(|v| o.contains(v)))
                && plan
                    .addresses
                    .as_ref()
                    .is_none_or(|a| a.contains(&s.address.addr()))
        };
        self.nics
            .wait_for_release(|p| p.reserve_where(key, fits))
            .await
            .map(Acquired::warm)
            .ok_or_else(|| {
                CniError::new(
                    code::NO_FREE_NIC,
                    format!(
                        "runtimeConfig.mac: NIC {mac} is not free on this node{}",
                        match &plan.order {
                            Some(o) =>
                                format!(" in network {}'s vxnets ({})", key.network, o.join(", ")),
                            None => String::new(),
                        }
                    ),
                )
            })
    }

    /// ADD with one reserved NIC: decide its routes, record the
    /// reservation, wire the NIC, commit. Any failure leaves the NIC parked
    /// (or marked missing) and no record behind.
    async fn wire_and_record(
        &self,
        lease: &Lease,
        key: &Key,
        (req, pod): (&AddRequest, &hostnic_policy::Pod),
        mtu: u32,
        (netns, netns_id): (&Netns, NsId),
        attach_us: &mut u64,
    ) -> Result<AddResult, AddFailure> {
        let _guard = lease.lock.lock().await;
        let nic = &lease.spec;
        let routes = match self.routes(key, pod, nic, &req.routes, &req.hooks).await {
            Ok(r) => r,
            Err(e) => {
                self.forget(nic.mac, true);
                return Err(AddFailure::Failed(e));
            }
        };
        let wiring = Wiring {
            mac: nic.mac,
            ifname: req.target.ifname.clone(),
            address: nic.address,
            mtu,
            routes,
        };
        let mut record = Allocation {
            mac: nic.mac,
            phase: Phase::Reserved,
            key: key.clone(),
            netns: req.target.netns.clone(),
            netns_id: Some(netns_id),
            pod: req.pod.clone(),
            result: None,
            sticky: self.nics.pool().sticky_of(nic.mac),
        };
        if let Err(e) = self.store.put(&record) {
            self.forget(nic.mac, true);
            return Err(AddFailure::Failed(internal(format!(
                "recording the reservation of NIC {}: {e}",
                nic.mac
            ))));
        }

        let attaching = Instant::now();
        let attached = self.nics.plumber.attach(&wiring, netns).await;
        *attach_us = attaching.elapsed().as_micros() as u64;
        if let Err(e) = attached {
            // Ask the kernel where the NIC is rather than infer it from the
            // error: free only if it is back in the node namespace.
            let present = matches!(
                self.nics
                    .plumber
                    .node()
                    .link_by_mac(nic.mac, Some(&nic.mac.parked_name()))
                    .await,
                Ok(Some(_))
            );
            self.forget(nic.mac, present);
            if let PlumbError::NicMissing(mac) = e {
                return Err(AddFailure::Missing(mac));
            }
            warn!(nic = %nic.mac, container = %key.container_id, error = %e, "ADD failed; NIC released");
            let code = match e {
                PlumbError::NameTaken(_) => code::INVALID_ENV,
                _ => code::INTERNAL,
            };
            return Err(AddFailure::Failed(CniError::new(
                code,
                format!("attaching NIC {} as {}: {e}", nic.mac, key.ifname),
            )));
        }

        let result = add_result(
            &wiring,
            req.target.netns.as_deref().unwrap_or_default(),
            nic.gateway,
        );
        record.phase = Phase::Committed;
        record.result = Some(result.clone());
        if let Err(e) = self.store.put(&record) {
            // Not recorded, so not given: take the NIC back.
            let undo = self.nics.plumber.detach(nic.mac, Some(netns)).await;
            self.forget(nic.mac, matches!(undo, Ok(Whereabouts::Parked)));
            return Err(AddFailure::Failed(internal(format!(
                "recording the allocation of NIC {}: {e}",
                nic.mac
            ))));
        }
        self.nics.pool().commit(nic.mac);
        info!(nic = %nic.mac, ip = %nic.address, container = %key.container_id, ifname = %key.ifname,
              pod = ?req.pod.name, namespace = ?req.pod.namespace, "ADD");
        Ok(result)
    }
}

/// The vxnets of `order` ahead of the one used.
fn passed_over(order: &[String], used: Option<&str>) -> Vec<String> {
    match used.and_then(|u| order.iter().position(|v| v == u)) {
        Some(i) => order[..i].to_vec(),
        None => Vec::new(),
    }
}

/// The result's address, gateway and routes, into the audit.
fn describe_result(audit: &mut Audited, r: &AddResult) {
    if let Some(ip) = r.ips.first() {
        audit.address = ip.address.to_string();
        audit.gateway = ip.gateway.map(|g| g.to_string()).unwrap_or_default();
    }
    audit.routes = r
        .routes
        .iter()
        .map(|rt| match rt.gw {
            Some(gw) => format!("{} via {gw}", rt.dst),
            None => format!("{} dev {}", rt.dst, r.interface.name),
        })
        .collect();
    audit.default_route = r.routes.iter().any(|rt| rt.dst.prefix_len() == 0);
}

/// The CNI result of a wired NIC.
pub(super) fn add_result(w: &Wiring, sandbox: &str, gateway: Ipv4Addr) -> AddResult {
    AddResult {
        interface: Interface {
            name: w.ifname.clone(),
            mac: w.mac.to_string(),
            sandbox: sandbox.to_string(),
            mtu: w.mtu,
        },
        ips: vec![IpConfig {
            address: IpNet::V4(w.address),
            gateway: Some(IpAddr::V4(gateway)),
        }],
        routes: w
            .routes
            .iter()
            .map(|(dst, gw)| Route {
                dst: IpNet::V4(*dst),
                gw: gw.map(IpAddr::V4),
            })
            .collect(),
    }
}
