//! What this node has seen of each vxnet lately, for the vxnet guest's
//! candidates: NIC creations that failed since the last success (the
//! FailRotate signal) and the cloud's ret_codes for them, how long its
//! recent attaches took, and the vxnet's free addresses as the cloud last
//! counted them (its usable range minus its NICs). All of it is kept in
//! memory and filled off the ADD path — by the creates and attaches
//! themselves and by a slow count (`[cloud] vxnet_count_seconds`); an ADD
//! only reads it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hostnic_policy::VxnetLive;
use ipnet::Ipv4Net;

/// Attach times kept per vxnet (the median of these is reported).
const ATTACHES: usize = 16;
/// Failure codes kept per vxnet, newest first.
const CODES: usize = 8;

#[derive(Debug, Default)]
pub struct Kpis {
    by_vxnet: Mutex<BTreeMap<String, Seen>>,
}

#[derive(Debug, Default)]
struct Seen {
    /// Failed creates since the last success, and when the last failed.
    failures: u32,
    codes: VecDeque<u32>,
    attaches: VecDeque<Duration>,
    /// Free addresses as counted, and when.
    free: Option<(u32, Instant)>,
}

impl Kpis {
    fn with<T>(&self, vxnet: &str, f: impl FnOnce(&mut Seen) -> T) -> T {
        let mut map = self.by_vxnet.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(vxnet.to_string()).or_default())
    }

    /// A NIC creation in `vxnet` succeeded, or failed with `ret_code`
    /// (`None`: no answer from the cloud).
    pub fn created(&self, vxnet: &str, outcome: Result<(), Option<i64>>) {
        self.with(vxnet, |s| match outcome {
            Ok(()) => s.failures = 0,
            Err(code) => {
                s.failures += 1;
                s.codes
                    .push_front(code.and_then(|c| u32::try_from(c).ok()).unwrap_or(0));
                s.codes.truncate(CODES);
            }
        });
    }

    /// An attach in `vxnet` took `took`, from the call until the link
    /// appeared.
    pub fn attached(&self, vxnet: &str, took: Duration) {
        self.with(vxnet, |s| {
            s.attaches.push_front(took);
            s.attaches.truncate(ATTACHES);
        });
    }

    /// The cloud counted `nics` NICs in `vxnet`, whose range is `cidr`.
    pub fn counted(&self, vxnet: &str, cidr: Ipv4Net, nics: u64) {
        self.counted_ago(vxnet, cidr, nics, Duration::ZERO);
    }

    /// The cloud counted `nics` NICs in `vxnet` `ago` (the Lease holder,
    /// for the cluster), unless this node has a newer count.
    pub fn counted_ago(&self, vxnet: &str, cidr: Ipv4Net, nics: u64, ago: Duration) {
        let free = free_addresses(cidr, nics);
        let Some(at) = Instant::now().checked_sub(ago) else {
            return;
        };
        self.with(vxnet, |s| {
            if s.free.is_none_or(|(_, before)| before < at) {
                s.free = Some((free, at));
            }
        });
    }

    /// How long ago `vxnet` was last counted, if ever.
    pub fn count_age(&self, vxnet: &str) -> Option<Duration> {
        self.with(vxnet, |s| s.free.map(|(_, at)| at.elapsed()))
    }

    /// Failed creates in `vxnet` since its last success.
    pub fn recent_failures(&self, vxnet: &str) -> u32 {
        self.with(vxnet, |s| s.failures)
    }

    /// The free addresses last counted in `vxnet`, if counted.
    pub fn free_ips(&self, vxnet: &str) -> Option<u32> {
        self.with(vxnet, |s| s.free.map(|(n, _)| n))
    }

    /// What a guest may ask about `vxnet` (`vxnet-facts.vxnet-measured`).
    pub fn live(&self, vxnet: &str) -> VxnetLive {
        self.with(vxnet, |s| VxnetLive {
            attach_latency_ms: median(&s.attaches).map(|d| d.as_millis() as u32),
            recent_failure_codes: s.codes.iter().copied().collect(),
            free_ips_counted_s_ago: s.free.map(|(_, at)| at.elapsed().as_secs() as u32),
            shared_range: None,
        })
    }
}

/// A vxnet's usable addresses — its range without the network, broadcast
/// and gateway addresses — minus `nics`, each of which holds one.
pub fn free_addresses(cidr: Ipv4Net, nics: u64) -> u32 {
    let hosts = cidr.hosts().count() as u64;
    (hosts.saturating_sub(1).saturating_sub(nics)).min(u64::from(u32::MAX)) as u32
}

fn median(samples: &VecDeque<Duration>) -> Option<Duration> {
    let mut v: Vec<Duration> = samples.iter().copied().collect();
    v.sort();
    v.get(v.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_node_has_seen_of_a_vxnet() {
        let k = Kpis::default();
        assert_eq!(k.live("v"), VxnetLive::default());
        assert_eq!(k.free_ips("v"), None);
        k.created("v", Err(Some(1400)));
        k.created("v", Err(None));
        assert_eq!(k.recent_failures("v"), 2);
        assert_eq!(k.live("v").recent_failure_codes, [0, 1400]);
        k.created("v", Ok(()));
        assert_eq!(k.recent_failures("v"), 0);
        // The codes stay: they say what went wrong lately.
        assert_eq!(k.live("v").recent_failure_codes.len(), 2);
        for ms in [900, 100, 300] {
            k.attached("v", Duration::from_millis(ms));
        }
        assert_eq!(k.live("v").attach_latency_ms, Some(300));
        k.counted("v", "10.0.1.0/24".parse().unwrap(), 10);
        assert_eq!(k.free_ips("v"), Some(243));
        assert_eq!(k.live("v").free_ips_counted_s_ago, Some(0));
        // An older count (the Lease holder's) does not replace a newer one;
        // a newer one does, with its age.
        k.counted_ago(
            "v",
            "10.0.1.0/24".parse().unwrap(),
            50,
            Duration::from_secs(60),
        );
        assert_eq!(k.free_ips("v"), Some(243));
        assert!(k.count_age("v").unwrap() < Duration::from_secs(60));
        k.counted_ago(
            "x",
            "10.0.1.0/24".parse().unwrap(),
            50,
            Duration::from_secs(60),
        );
        assert_eq!(k.free_ips("x"), Some(203));
        assert_eq!(k.live("x").free_ips_counted_s_ago, Some(60));
        k.counted("x", "10.0.1.0/24".parse().unwrap(), 3);
        assert_eq!(k.free_ips("x"), Some(250));
        // Another vxnet is untouched.
        assert_eq!(k.live("w"), VxnetLive::default());
    }

    #[test]
    fn free_addresses_leave_out_network_broadcast_and_gateway() {
        assert_eq!(free_addresses("10.0.1.0/24".parse().unwrap(), 0), 253);
        assert_eq!(free_addresses("10.0.1.0/30".parse().unwrap(), 1), 0);
        assert_eq!(free_addresses("10.0.1.0/29".parse().unwrap(), 9), 0);
    }
}
