//! Per-guest call metrics: counters and a fixed-bucket latency histogram,
//! lock-free to record, read as a plain struct ([`GuestMetrics`]) for the
//! agent's introspection endpoint and Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds. Dense around the
/// expected 20-200 us of a call with a fresh store; coarse up to the
/// largest deadline. A last, unbounded bucket catches the rest.
pub const LATENCY_BUCKETS_US: [u64; 18] = [
    10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000,
    100_000, 2_000_000,
];

const N: usize = LATENCY_BUCKETS_US.len() + 1;

/// The live counters (shared by the calls of one guest generation).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    calls: AtomicU64,
    errors: AtomicU64,
    refusals: AtomicU64,
    fallbacks: AtomicU64,
    buckets: [AtomicU64; N],
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

/// How a call ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Refused,
    /// Failed, and the hook's failure mode answered with the error.
    Failed,
    /// Failed, and the built-in default answered instead (or tried to).
    FellBack,
}

impl Metrics {
    pub fn record(&self, outcome: Outcome, elapsed: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Ok => {}
            Outcome::Refused => {
                self.refusals.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::FellBack => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
            }
        }
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(N - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> GuestMetrics {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        GuestMetrics {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            latency: Latency {
                counts,
                sum: Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed)),
                max: Duration::from_nanos(self.max_ns.load(Ordering::Relaxed)),
            },
        }
    }
}

/// A guest's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMetrics {
    /// Every call, whatever its outcome.
    pub calls: u64,
    /// Calls that failed (trap, deadline, memory, oversized or invalid
    /// answer), fallbacks included.
    pub errors: u64,
    /// Calls the guest declined with a reason.
    pub refusals: u64,
    /// Failed calls answered by the built-in default instead.
    pub fallbacks: u64,
    pub latency: Latency,
}

/// The latency histogram of a guest's calls (store creation, instantiation,
/// the call and the host's validation; the fallback's call too, when there
/// was one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latency {
    /// Calls per bucket: `counts[i]` took at most `LATENCY_BUCKETS_US[i]`
    /// (and more than the bucket before); the last entry counts the rest.
    pub counts: Vec<u64>,
    pub sum: Duration,
    pub max: Duration,
}

impl Latency {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (0.0..=1.0), as the upper bound of the bucket it
    /// falls in (the maximum, for the last bucket); `None` with no calls.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the quantile, 1-based: ceil(q * total), at least 1.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(match LATENCY_BUCKETS_US.get(i) {
                    Some(&us) => Duration::from_micros(us).min(self.max),
                    None => self.max,
                });
            }
        }
        Some(self.max)
    }

    pub fn p50(&self) -> Option<Duration> {
        self.quantile(0.5)
    }

    pub fn p99(&self) -> Option<Duration> {
        self.quantile(0.99)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_quantiles() {
        let m = Metrics::default();
        assert_eq!(m.snapshot().latency.p50(), None);
        for _ in 0..98 {
            m.record(Outcome::Ok, Duration::from_micros(25));
        }
        m.record(Outcome::Refused, Duration::from_micros(140));
        m.record(Outcome::FellBack, Duration::from_millis(60));
        let s = m.snapshot();
        assert_eq!((s.calls, s.errors, s.refusals, s.fallbacks), (100, 1, 1, 1));
        assert_eq!(s.latency.count(), 100);
        assert_eq!(s.latency.p50(), Some(Duration::from_micros(30)));
        assert_eq!(s.latency.p99(), Some(Duration::from_micros(150)));
        assert_eq!(s.latency.quantile(1.0), Some(Duration::from_millis(60)));
        assert_eq!(s.latency.max, Duration::from_millis(60));
    }
}
