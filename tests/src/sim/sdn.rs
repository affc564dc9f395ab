//! The simulated cloud's real networking: an "SDN" namespace holding one
//! Linux bridge per vxnet with the vxnet's gateway address on it, and node
//! VMs as namespaces. Attaching a NIC creates a veth pair whose node end
//! appears in the VM's namespace carrying the NIC's MAC and whose other end
//! joins the vxnet's bridge; detaching deletes it. The SDN namespace routes
//! between vxnets, as a VPC router does.
//!
//! The SDN is strict, as a cloud's is: a NIC's port delivers unicast only
//! to the MAC of the NIC attached there (no learning, no flooding of
//! unknown unicast; broadcast still reaches every port, for ARP), and
//! takes only frames sent from that MAC (a locked port). Something that
//! works here only because a bridge floods or learns fails its test.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;
use ipnet::Ipv4Net;

use crate::netns::Ns;

#[derive(Debug)]
pub struct Sdn {
    pub ns: Ns,
    bridges: BTreeMap<String, String>,
    /// Names hot-plugged NICs get on a node (`ethN`, like the kernel gives).
    plug_serial: AtomicU32,
}

/// The SDN-side name of a NIC's veth end: stable, derived from the MAC.
fn sdn_end(mac: &str) -> String {
    format!("s{}", mac.replace(':', ""))
}

impl Sdn {
    pub fn new() -> anyhow::Result<Sdn> {
        let ns = Ns::new("sdn")?;
        ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        Ok(Sdn {
            ns,
            bridges: BTreeMap::new(),
            plug_serial: AtomicU32::new(1),
        })
    }

    pub fn add_vxnet(
        &mut self,
        id: &str,
        cidr: Ipv4Net,
        gateway: std::net::Ipv4Addr,
    ) -> anyhow::Result<()> {
        let n = self.bridges.len();
        let br = format!("br{n}");
        // A fixed MAC: a bridge without one takes the lowest MAC among its
        // ports and changes it as NICs come and go, leaving every pod's ARP
        // entry for its gateway pointing nowhere. A cloud gateway's MAC
        // never moves.
        self.ns.ip_batch(&[
            format!(
                "link add {br} address 02:00:00:00:00:{:02x} type bridge",
                n + 1
            ),
            format!("addr add {gateway}/{} dev {br}", cidr.prefix_len()),
            format!("link set {br} up"),
        ])?;
        self.bridges.insert(id.to_string(), br);
        Ok(())
    }

    fn bridge(&self, vxnet: &str) -> anyhow::Result<&str> {
        self.bridges
            .get(vxnet)
            .map(String::as_str)
            .with_context(|| format!("vxnet {vxnet} has no bridge"))
    }

    /// Hot-plugs a NIC into a node: its link appears there, down, named
    /// `ethN`, with the NIC's MAC. Returns the name it got.
    pub fn plug(&self, mac: &str, vxnet: &str, node: &Path) -> anyhow::Result<String> {
        let mut names = self.plug_all(&[(mac.to_string(), vxnet.to_string())], node)?;
        Ok(names.remove(0))
    }

    /// Hot-plugs NICs `(mac, vxnet)` into a node, as [`Self::plug`] does
    /// each, with two processes for them all (one `ip -batch`, one
    /// `bridge -batch`): an attach of many NICs costs the machine little.
    pub fn plug_all(&self, nics: &[(String, String)], node: &Path) -> anyhow::Result<Vec<String>> {
        let (mut ip, mut fdb, mut names) = (Vec::new(), Vec::new(), Vec::new());
        for (mac, vxnet) in nics {
            let name = format!("eth{}", self.plug_serial.fetch_add(1, Ordering::Relaxed));
            let end = sdn_end(mac);
            let br = self.bridge(vxnet)?;
            ip.push(format!(
                "link add {end} type veth peer name {name} address {mac} netns {}",
                node.display()
            ));
            ip.push(format!("link set {end} master {br} up"));
            ip.push(format!(
                "link set {end} type bridge_slave learning off flood off locked on"
            ));
            fdb.push(format!("fdb replace {mac} dev {end} master static"));
            names.push(name);
        }
        self.ns.ip_batch(&ip)?;
        self.ns.batch("bridge", &fdb)?;
        Ok(names)
    }

    /// Detaches a NIC: both veth ends go, wherever the node end is (a pod's
    /// namespace included). Already gone is fine.
    pub fn unplug(&self, mac: &str) -> anyhow::Result<()> {
        match self.ns.ip(&["link", "del", &sdn_end(mac)]) {
            Err(e) if e.to_string().contains("Cannot find device") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Whether the NIC is plugged in (its SDN end exists).
    pub fn plugged(&self, mac: &str) -> bool {
        self.ns.ip(&["link", "show", &sdn_end(mac)]).is_ok()
    }
}
