//! `move`: the NIC itself goes into the pod, under its interface name, in
//! one request (a device move: the kernel waits for RCU under RTNL,
//! ~20 ms, serialised node-wide), and is configured there; DEL brings it
//! back to the node, parked. The kernel side is `plumb.rs`.

use std::sync::Arc;

use hostnic_netlink::{Mac, Netns};

use super::NicWiring;
use crate::nics::Nics;
use crate::plumb::{PlumbError, Whereabouts, Wiring};

#[derive(Debug)]
pub struct Move {
    nics: Arc<Nics>,
}

impl Move {
    pub fn new(nics: Arc<Nics>) -> Move {
        Move { nics }
    }
}

#[async_trait::async_trait]
impl NicWiring for Move {
    fn name(&self) -> &'static str {
        "move"
    }

    async fn attach(&self, w: &Wiring, pod: &Netns) -> Result<(), PlumbError> {
        self.nics.plumber.attach(w, pod).await
    }

    async fn detach(
        &self,
        mac: Mac,
        pod: Option<&Netns>,
    ) -> Result<Whereabouts, hostnic_netlink::Error> {
        self.nics.plumber.detach(mac, pod).await
    }

    async fn verify(
        &self,
        w: &Wiring,
        pod: &Netns,
    ) -> Result<Result<(), String>, hostnic_netlink::Error> {
        self.nics.plumber.verify(w, pod).await
    }
}
