//! ADD of one attachment: validate → plan → acquire → wire → record.
//!
//! The attempt is a value ([`Attempt`]): it owns the claim on the
//! attachment's key, the reservation the driver made and the record it
//! wrote. Dropped before it commits, it takes itself back — the record
//! goes (unless what was wired could not be undone), then the resource is
//! given back, then the key is free — so no error path undoes by hand.

use std::sync::Arc;
use std::time::Instant;

use hostnic_netlink::{Netns, NsId};
use hostnic_policy::Attachment;
use hostnic_proto::cni::{self, AddResult};
use hostnic_proto::rpc::{AddRequest, Reply};
use tracing::{info, warn};

use super::{Service, key_of, validate_target};
use crate::attachments::{Claim, Taken};
use crate::audit::Audited;
use crate::error::{Error, Kind, Result};
use crate::plan::Asked;
use crate::publish;
use crate::record::{Phase, Record};
use crate::store::Records;
use crate::wiring::{Adding, Reservation};

/// One ADD under way (see the module's comment).
struct Attempt {
    store: Arc<dyn Records>,
    /// The attachment's key, claimed; committed or dropped with the
    /// attempt.
    claim: Option<Claim>,
    /// What the driver reserved, and the record written for it.
    reserved: Option<(Reservation, Option<Record>)>,
}

impl Attempt {
    /// Holds `res` for the attempt, letting go of any earlier one (its
    /// record first).
    fn hold(&mut self, res: Reservation) -> &mut Reservation {
        self.give_back();
        &mut self.reserved.insert((res, None)).0
    }

    fn reservation(&mut self) -> &mut Reservation {
        &mut self.reserved.as_mut().expect("a reservation is held").0
    }

    /// Records `record` (the reservation's) on disk: from here on the
    /// record goes when the attempt does.
    fn record(&mut self, record: &Record) -> Result<()> {
        self.store.put(record).map_err(|e| {
            Error::internal(format!(
                "recording the reservation of {}: {e}",
                record.resource()
            ))
        })?;
        if let Some((_, r)) = self.reserved.as_mut() {
            *r = Some(record.clone());
        }
        if let Some(c) = &self.claim {
            c.set(record);
        }
        Ok(())
    }

    /// Lets go of the reservation as [`Drop`] would: its record first.
    fn give_back(&mut self) {
        let Some((res, record)) = self.reserved.take() else {
            return;
        };
        if let Some(r) = record.filter(|_| !res.is_lost())
            && let Err(e) = self.store.remove(r.resource())
        {
            // The stale reservation is rolled back at the next start.
            warn!(resource = %r.resource(), error = %e, "removing a record");
        }
        drop(res);
    }

    /// The reservation and its record, taken out of the attempt's care.
    fn take(&mut self) -> Option<(Reservation, Option<Record>)> {
        self.reserved.take()
    }

    /// The ADD is committed: the attachment is the pod's.
    fn commit(mut self, record: &Record) {
        if let Some((res, _)) = self.reserved.take() {
            res.commit();
        }
        if let Some(c) = self.claim.take() {
            c.commit(record);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        // The record, then the resource; the claim goes last (a field).
        self.give_back();
    }
}

impl Service {
    /// ADD of one attachment (`service/networks.rs` runs one per network of
    /// the pod).
    pub(super) async fn add_one(self: &Arc<Self>, req: AddRequest, netns: &Netns) -> Result<Reply> {
        let received = Instant::now();
        // Validate: nothing is recorded or wired before these pass.
        // Never wire anything into the node's own namespace
        // (CNI_NETNS=/proc/1/ns/net on a real node).
        let netns_id = self.namespaces.pod_ns_id(netns).map_err(|e| {
            Error::invalid_env(format!("CNI_NETNS: {e}; refusing to wire a NIC into it"))
        })?;
        validate_target(&req.target)?;
        self.wait_for_releases_in(netns_id).await;
        let mtu = req.mtu.unwrap_or(self.default_mtu);
        if !cni::MTU_RANGE.contains(&mtu) {
            return Err(Error::invalid_config(format!("mtu {mtu} is out of range")));
        }
        let key = key_of(&req.target);
        // A retried ADD for an attachment we already made answers as before;
        // one whose earlier attachment of the same key is still being
        // released (in another namespace: a runtime reusing its ids) waits
        // for the release, as an ADD into a namespace does.
        let mut waited = false;
        let claim = loop {
            match self.attachments.claim(&key) {
                Ok(claim) => break claim,
                Err(Taken::Committed(r)) => {
                    let held = r.resource();
                    return r.result.map(Reply::Added).ok_or_else(|| {
                        Error::internal(format!("{held} is held but its record has no result"))
                    });
                }
                Err(Taken::Busy(Some(Phase::Releasing))) if !waited => {
                    waited = true;
                    self.wait_for_release_of(&key).await;
                }
                Err(Taken::Busy(phase)) => {
                    let what = match phase {
                        Some(Phase::Releasing) => "a DEL's release",
                        _ => "an ADD",
                    };
                    return Err(Error::try_again(format!(
                        "{what} for container {} {} is still in progress",
                        key.container_id, key.ifname
                    )));
                }
            }
        };
        let asked = Asked::of(&req)?;
        // Exactly one of a pod's attachments carries its default route: the
        // one its network config says, else the first (the pod has none).
        let default_route = match req.default_route {
            Some(d) => d,
            None => !self
                .namespaces
                .has_default_route(netns)
                .await
                .map_err(|e| Error::internal(format!("reading the pod's routes: {e}")))?,
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
        let attempt = Attempt {
            store: self.store.clone(),
            claim: Some(claim),
            reserved: None,
        };
        // The pod's NetworkPolicy rules are in its namespace before its
        // interface is (`netpol/`).
        let added = match self.enforce_policies(&key, &req.pod, netns).await {
            Ok(()) => {
                self.attempt(
                    attempt,
                    (&req, &pod, &asked),
                    mtu,
                    (netns, netns_id),
                    &mut audit,
                )
                .await
            }
            Err(e) => Err(e),
        };
        if added.is_err()
            && let Some(netpol) = &self.netpol
        {
            netpol.forget(&key);
        }
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
            Err(e) if e.is_failure() => publish::add_failed(&audit, e),
            // A cold ADD told to come back while its NIC is still being
            // attached has not failed.
            Err(_) => {}
        }
        self.audit.record(audit, &reason);
        added.map(Reply::Added)
    }

    /// Writes the pod's NetworkPolicy rules into its namespace, when they
    /// are enforced and the pod is a Kubernetes pod.
    async fn enforce_policies(
        &self,
        key: &crate::record::Key,
        pod: &hostnic_proto::rpc::Pod,
        netns: &Netns,
    ) -> Result<()> {
        match (&self.netpol, &pod.namespace, &pod.name) {
            (Some(netpol), Some(namespace), Some(name)) => {
                netpol.enforce(key, namespace, name, netns).await
            }
            _ => Ok(()),
        }
    }

    /// The pipeline. A resource found gone when the driver reaches for it
    /// is marked so and the plan made again; each turn retires one, so
    /// this ends.
    async fn attempt(
        &self,
        mut attempt: Attempt,
        (req, pod, asked): (&AddRequest, &hostnic_policy::Pod, &Asked<'_>),
        mtu: u32,
        (netns, netns_id): (&Netns, NsId),
        audit: &mut Audited,
    ) -> Result<AddResult> {
        let key = key_of(&req.target);
        loop {
            let started = Instant::now();
            // Plan: the guests decide the vxnet order and the address.
            let plan = self.plan(&key, pod, asked)?;
            audit.order = plan.order.clone().unwrap_or_default();
            audit.ip_request.clone_from(&plan.ip_request);
            audit.guests = self.guest_digests();
            let planned = Instant::now();
            audit.plan_us = (planned - started).as_micros() as u64;

            // Acquire: the driver of the plan's vxnet reserves a NIC or an
            // address.
            let driver = self.drivers.for_vxnet(plan.first_vxnet());
            let adding = Adding {
                key: &key,
                plan: &plan,
                pod: &req.pod,
                mtu,
                netns,
                netns_id,
            };
            let res = attempt.hold(driver.reserve(&adding).await?);
            let acquired = Instant::now();
            audit.acquire_us = (acquired - planned).as_micros() as u64;
            audit.how = res.how.to_string();
            audit.vxnet.clone_from(&res.interface.vxnet);
            audit.passed_over = passed_over(&audit.order, audit.vxnet.as_deref());
            audit.mac = res.interface.mac.to_string();

            // Wire: the routes guest decides for this interface, the
            // reservation is recorded, the driver makes the interface.
            let routes = self
                .routes(&key, pod, &res.interface, &req.routes, &req.hooks)
                .await?;
            let mut record = Record {
                key: key.clone(),
                phase: Phase::Reserved,
                netns: req.target.netns.clone(),
                netns_id: Some(netns_id),
                pod: req.pod.clone(),
                result: None,
                sticky: res.sticky.clone(),
                bandwidth: req.bandwidth,
                wiring: Some(driver.name().to_string()),
                holds: res.holds.clone(),
            };
            attempt.record(&record)?;
            let wired = driver.wire(&adding, attempt.reservation(), routes).await;
            audit.wire_us = acquired.elapsed().as_micros() as u64;
            let wired = match wired {
                Ok(w) => w,
                Err(e) if e.kind == Kind::Gone => {
                    warn!(container = %key.container_id, error = %e, "the reserved resource is gone: marked missing, trying another");
                    attempt.give_back();
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut kernel = wired.kernel;
            // The pod's limits, on its interface whatever wired it.
            if let Some(bw) = &req.bandwidth {
                let shaping = Instant::now();
                if let Err(e) = crate::shaping::apply(netns, &key.ifname, bw).await {
                    self.take_apart(&mut attempt, &record, netns).await;
                    return Err(e);
                }
                kernel += shaping.elapsed();
            }
            audit.attach_us = kernel.as_micros() as u64;

            // Record: committed, fsynced, before the pod is told.
            let result = wired.interface.result(
                req.target.netns.as_deref().unwrap_or_default(),
                wired.gateway,
            );
            record.phase = Phase::Committed;
            record.result = Some(result.clone());
            record.holds = attempt.reservation().holds.clone();
            if let Err(e) = self.store.put(&record) {
                // Not recorded, so not given.
                self.take_apart(&mut attempt, &record, netns).await;
                return Err(Error::internal(format!(
                    "recording the allocation of {}: {e}",
                    record.resource()
                )));
            }
            // The wire ends with its record (as `Audited` says).
            audit.wire_us = acquired.elapsed().as_micros() as u64;
            self.remember_sticky(&plan, &record);
            attempt.commit(&record);
            self.route_answers(
                &record,
                audit.vxnet.as_deref(),
                driver.as_ref(),
                Some(netns),
            );
            describe_result(audit, &result);
            info!(resource = %record.resource(), ip = ?result.ips.first().map(|i| i.address),
                  container = %key.container_id, ifname = %key.ifname, wiring = driver.name(),
                  pod = ?req.pod.name, namespace = ?req.pod.namespace, "ADD");
            return Ok(result);
        }
    }

    /// Takes apart what an attempt wired, as a DEL would: its driver's
    /// release takes over the reservation.
    async fn take_apart(&self, attempt: &mut Attempt, record: &Record, netns: &Netns) {
        if let Some((res, _)) = attempt.take() {
            res.hand_over();
        }
        if let Err(e) = self.release_now(record, Some(netns)).await {
            // Left for the next start, which finds the record.
            warn!(resource = %record.resource(), error = %e, "taking apart a failed ADD");
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

    /// Remembers the address a sticky pod got, for its next ADD on this
    /// node; a resource that follows the identity itself (a sticky NIC, a
    /// pinned address) needs no memory.
    fn remember_sticky(&self, plan: &crate::plan::Plan, record: &Record) {
        let address = record
            .result
            .as_ref()
            .and_then(|r| r.ips.first())
            .map(|i| i.address.addr());
        if let (Some(k), None, Some(std::net::IpAddr::V4(ip))) =
            (&plan.sticky, &record.sticky, address)
            && let Err(e) = self.sticky.set(k, ip)
        {
            warn!(key = %k, error = %e, "remembering a sticky address");
        }
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
