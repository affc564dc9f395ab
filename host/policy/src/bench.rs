//! A hook's call latency, measured the way the agent calls it: a fresh
//! store per call, the host's validation included. For `hostnic-agent
//! policy bench` and the `hook-latency` example.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::error::PolicyError;
use crate::hook::{Hook, IpKind, Kind, RoutesKind, VxnetKind};
use crate::types::{Nic, Node, Pod, RouteTemplate, Vxnet};

/// What [`bench_hook`] measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchResult {
    pub calls: usize,
    /// Calls that returned an error (a refusal included); their time is
    /// counted too.
    pub errors: usize,
    /// The first error, for the report.
    pub first_error: Option<String>,
    pub p50: Duration,
    pub p99: Duration,
    pub mean: Duration,
    pub min: Duration,
    pub max: Duration,
}

/// Calls `hook` `n` times (after a few warm-up calls) with fixed sample
/// facts: a pod without annotations, a node with three vxnets, two route
/// templates. Note that calls count in the hook's metrics and may change
/// its guest's kv state, as real calls do.
pub fn bench_hook<K: Sample>(hook: &Hook<K>, n: usize) -> BenchResult {
    bench_calls(n, || K::sample_call(hook))
}

/// A decision the benchmark can call on its sample facts: each of the
/// three [`Kind`]s. The benchmark's own trait, so that the production one
/// carries nothing of it (and `hook` needs nothing from here). Implemented
/// only for the crate's kinds: `Kind` is sealed.
pub trait Sample: Kind {
    /// One call with the sample facts.
    fn sample_call(hook: &Hook<Self>) -> Result<(), PolicyError>;
}

impl Sample for VxnetKind {
    fn sample_call(hook: &Hook<Self>) -> Result<(), PolicyError> {
        sample_vxnet(hook)
    }
}

impl Sample for IpKind {
    fn sample_call(hook: &Hook<Self>) -> Result<(), PolicyError> {
        sample_ip(hook)
    }
}

impl Sample for RoutesKind {
    fn sample_call(hook: &Hook<Self>) -> Result<(), PolicyError> {
        sample_routes(hook)
    }
}

/// Times `n` calls of `call` (after a few warm-up calls): for a hook called
/// on facts of the caller's choosing.
pub fn bench_calls<T>(n: usize, mut call: impl FnMut() -> Result<T, PolicyError>) -> BenchResult {
    for _ in 0..n.min(10) {
        // Warm-up: fault in the pooling allocator's slot and the caches.
        // Errors are counted below, in the measured calls.
        let _ = call();
    }
    let mut times = Vec::with_capacity(n);
    let mut errors = 0;
    let mut first_error = None;
    for _ in 0..n {
        let start = Instant::now();
        let r = call();
        times.push(start.elapsed());
        if let Err(e) = r {
            errors += 1;
            first_error.get_or_insert_with(|| crate::error_chain(&e));
        }
    }
    summarize(times, errors, first_error)
}

fn summarize(mut times: Vec<Duration>, errors: usize, first_error: Option<String>) -> BenchResult {
    times.sort_unstable();
    let calls = times.len();
    let at = |q: f64| -> Duration {
        if calls == 0 {
            return Duration::ZERO;
        }
        // Nearest rank: the smallest sample with at least q of them at or
        // below it.
        let rank = ((q * calls as f64).ceil() as usize).clamp(1, calls);
        times[rank - 1]
    };
    let sum: Duration = times.iter().sum();
    BenchResult {
        calls,
        errors,
        first_error,
        p50: at(0.50),
        p99: at(0.99),
        mean: if calls == 0 {
            Duration::ZERO
        } else {
            sum / u32::try_from(calls).unwrap_or(u32::MAX)
        },
        min: times.first().copied().unwrap_or_default(),
        max: times.last().copied().unwrap_or_default(),
    }
}

/// The sample facts.
fn sample_pod() -> Pod {
    Pod {
        namespace: "default".into(),
        name: "bench-0".into(),
        uid: "00000000-0000-0000-0000-000000000000".into(),
        labels: [("app".to_owned(), "bench".to_owned())].into(),
        annotations: Default::default(),
        owner: None,
        attachment: Default::default(),
    }
}

fn sample_vxnets() -> Vec<Vxnet> {
    (1..=3)
        .map(|i| Vxnet {
            id: format!("vxnet-bench{i}"),
            cidr: format!("10.0.{i}.0/24").parse().expect("a valid prefix"),
            gateway: Ipv4Addr::new(10, 0, i, 1),
            free_ips: 200,
            warm_nics: 1,
            used_nics: 2,
            recent_failures: 0,
            live: Default::default(),
        })
        .collect()
}

fn sample_vxnet(hook: &Hook<VxnetKind>) -> Result<(), PolicyError> {
    let node = Node {
        instance: "i-bench".into(),
        zone: "bench1".into(),
        nics_in_use: 3,
        nic_limit: 64,
    };
    hook.select_vxnet(&sample_pod(), &node, &sample_vxnets(), 7)
        .map(drop)
}

fn sample_ip(hook: &Hook<IpKind>) -> Result<(), PolicyError> {
    hook.assign_ip(&sample_pod(), &sample_vxnets()[0]).map(drop)
}

fn sample_routes(hook: &Hook<RoutesKind>) -> Result<(), PolicyError> {
    let nic = Nic {
        mac: "52:54:00:12:34:56".into(),
        ip: Ipv4Addr::new(10, 0, 1, 5),
        prefix_len: 24,
    };
    let templates = [
        RouteTemplate {
            dst: "10.96.0.0/12".parse().expect("a valid prefix"),
            gw: Some(Ipv4Addr::UNSPECIFIED),
        },
        RouteTemplate {
            dst: "169.254.169.254/32".parse().expect("a valid prefix"),
            gw: None,
        },
    ];
    hook.routes(
        &sample_pod(),
        &nic,
        &sample_vxnets()[0],
        Some(Ipv4Addr::new(10, 0, 1, 2)),
        &templates,
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let times: Vec<_> = (1..=100).map(Duration::from_micros).collect();
        let r = summarize(times, 0, None);
        assert_eq!(r.p50, Duration::from_micros(50));
        assert_eq!(r.p99, Duration::from_micros(99));
        assert_eq!(r.min, Duration::from_micros(1));
        assert_eq!(r.max, Duration::from_micros(100));
        assert_eq!(r.mean, Duration::from_nanos(50_500));
        assert_eq!(summarize(vec![], 0, None).p99, Duration::ZERO);
    }
}
