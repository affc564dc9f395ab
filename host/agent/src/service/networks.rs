//! A pod's networks, the Genie way (`[kubernetes] networks = true`): one
//! runtime ADD attaches the pod's cluster network and every network its
//! `k8s.v1.cni.cncf.io/networks` annotation names, each an attachment of
//! its own (`add_one`); one DEL releases them all; a failure on any
//! attachment releases every one made, so a pod never starts with a
//! partial set. Without the setting, or for a pod without the annotation,
//! ADD and DEL are those of the one attachment asked for.

use std::sync::Arc;

use hostnic_netlink::Netns;
use hostnic_proto::rpc::{AddRequest, DelRequest, Reply, Target};
use tracing::{info, warn};

use super::{Service, key_of};
use crate::error::{Error, Result};
use crate::networks::{self, ANNOTATION};
use crate::record::Key;

impl Service {
    /// ADD: the attachment asked for and, natively, the pod's extra
    /// networks after it, in the annotation's order.
    pub async fn add(self: &Arc<Self>, mut req: AddRequest, netns: Option<Netns>) -> Result<Reply> {
        let netns =
            netns.ok_or_else(|| Error::invalid_env("ADD needs the pod's netns descriptor"))?;
        let extras = self.extra_networks(&req).await?;
        if extras.is_empty() {
            return self.add_one(req, &netns).await;
        }
        // The cluster network keeps the default route unless an extra
        // network's `default-route` takes it.
        if req.default_route.is_none() && extras.iter().any(|x| x.default_route == Some(true)) {
            req.default_route = Some(false);
        }
        let mut made = vec![key_of(&req.target)];
        let primary = self.add_one(req, &netns).await?;
        for extra in extras {
            let key = key_of(&extra.target);
            if let Err(e) = self.add_one(extra, &netns).await {
                let what = format!("network {} ({})", key.network, key.ifname);
                // Also when told to come back (a NIC still on its way): the
                // retry finds the released NICs warm.
                for k in made.iter().rev() {
                    self.release_attachment(k, &netns).await;
                }
                return Err(Error {
                    msg: format!("{what}: {}; the pod's other NICs were released", e.msg),
                    ..e
                });
            }
            made.push(key);
        }
        info!(container = %made[0].container_id, attachments = made.len(), "ADD of every network of the pod");
        Ok(primary)
    }

    /// DEL: the attachment asked for and, natively, every other attachment
    /// of the container (its extra networks), those first.
    pub async fn del(self: &Arc<Self>, req: DelRequest, netns: Option<Netns>) -> Result<Reply> {
        let mut failed = None;
        if self.native_networks() {
            let extras = self
                .attachments
                .of_container(&req.target.container_id)
                .into_iter()
                .filter(|k| k.network != req.target.network);
            for key in extras {
                let ns = netns.as_ref().and_then(|n| n.try_clone().ok());
                let one = DelRequest {
                    target: target(&key, &req.target),
                };
                // One that fails keeps neither the others nor the cluster
                // network's attachment from being released.
                if let Err(e) = self.del_one(one, ns).await {
                    failed.get_or_insert(e);
                }
            }
        }
        let primary = self.del_one(req, netns).await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(primary),
        }
    }

    pub(super) fn native_networks(&self) -> bool {
        self.kube.as_ref().is_some_and(|k| k.nads.is_some())
    }

    /// The ADDs of the pod's extra networks: its annotation (the runtime's,
    /// else the API server's), each network's definition from the API
    /// server. Any problem refuses the whole ADD before anything is made.
    async fn extra_networks(&self, req: &AddRequest) -> Result<Vec<AddRequest>> {
        let Some(kube) = &self.kube else {
            return Ok(Vec::new());
        };
        let Some(nads) = &kube.nads else {
            return Ok(Vec::new());
        };
        let (Some(namespace), Some(name)) = (&req.pod.namespace, &req.pod.name) else {
            return Ok(Vec::new());
        };
        let text = match req.pod.annotations.get(ANNOTATION) {
            Some(t) => Some(t.clone()),
            None => kube
                .pods
                .get(namespace, name, req.pod.uid.as_deref())
                .await
                .and_then(|p| p.annotations.get(ANNOTATION).cloned()),
        };
        let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
            return Ok(Vec::new());
        };
        let invalid = Error::invalid_config;
        let selections = networks::parse(&text, namespace).map_err(invalid)?;
        let mut out = Vec::with_capacity(selections.len());
        for sel in &selections {
            let config = nads
                .config(&sel.namespace, &sel.name)
                .await
                .map_err(Error::try_again)?
                .ok_or_else(|| {
                    invalid(format!(
                        "annotation {ANNOTATION}: NetworkAttachmentDefinition {} does not exist",
                        sel.network()
                    ))
                })?;
            let conf = networks::netconf(&sel.network(), &config).map_err(invalid)?;
            out.push(networks::request(req, sel, &conf));
        }
        Ok(out)
    }

    /// Undoes one attachment of a failed multi-network ADD.
    async fn release_attachment(self: &Arc<Self>, key: &Key, netns: &Netns) {
        let target = Target {
            network: key.network.clone(),
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
            netns: None,
        };
        if let Err(e) = self
            .del_one(DelRequest { target }, netns.try_clone().ok())
            .await
        {
            // The NIC stays recorded for the pod; the runtime's DEL or GC
            // releases it.
            warn!(container = %key.container_id, ifname = %key.ifname, error = %e, "rolling back an attachment");
        }
    }
}

/// The DEL target of attachment `key`, in the namespace of `like`.
fn target(key: &Key, like: &Target) -> Target {
    Target {
        network: key.network.clone(),
        container_id: key.container_id.clone(),
        ifname: key.ifname.clone(),
        netns: like.netns.clone(),
    }
}
