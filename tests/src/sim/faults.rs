//! Fault injection, switchable at run time through the control endpoint.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// An error answered instead of doing the action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorRule {
    /// The action it applies to; every action when absent.
    #[serde(default)]
    pub action: Option<String>,
    pub code: u32,
    /// Probability per matching call, 0..=1.
    #[serde(default = "one")]
    pub rate: f64,
    /// Stop after this many injections.
    #[serde(default)]
    pub count: Option<u32>,
}

fn one() -> f64 {
    1.0
}

/// Everything the control endpoint can switch. Absent fields keep their
/// defaults: no errors, no throttling, the configured job latencies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    #[serde(default)]
    pub errors: Vec<ErrorRule>,
    /// Requests per second above which the API answers 5100 (server busy).
    #[serde(default)]
    pub throttle_per_second: Option<u32>,
    /// How long an AttachNics job takes until the NIC's link appears.
    #[serde(default = "default_attach_ms")]
    pub attach_latency_ms: u64,
    /// The same for NICs of these vxnets (a congested part of the SDN);
    /// a job attaching several NICs takes the longest of theirs.
    #[serde(default)]
    pub attach_latency_ms_by_vxnet: std::collections::BTreeMap<String, u64>,
    #[serde(default = "default_detach_ms")]
    pub detach_latency_ms: u64,
    /// Probability that an attach job fails (the NIC stays available).
    #[serde(default)]
    pub job_fail_rate: f64,
    /// The next this many attach jobs fail, whatever the rate says.
    #[serde(default)]
    pub fail_next_jobs: u32,
    /// How long a load balancer's create, update or delete job takes.
    #[serde(default = "default_lb_job_ms")]
    pub lb_job_latency_ms: u64,
    /// The next this many load-balancer jobs fail (nothing changes).
    #[serde(default)]
    pub fail_next_lb_jobs: u32,
    /// How long the answer to these actions takes once the cloud has done
    /// them: a caller killed meanwhile never hears what was done.
    #[serde(default)]
    pub answer_latency_ms_by_action: std::collections::BTreeMap<String, u64>,
}

fn default_attach_ms() -> u64 {
    200
}
fn default_detach_ms() -> u64 {
    100
}
fn default_lb_job_ms() -> u64 {
    300
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            errors: Vec::new(),
            throttle_per_second: None,
            attach_latency_ms: default_attach_ms(),
            attach_latency_ms_by_vxnet: Default::default(),
            detach_latency_ms: default_detach_ms(),
            job_fail_rate: 0.0,
            fail_next_jobs: 0,
            lb_job_latency_ms: default_lb_job_ms(),
            fail_next_lb_jobs: 0,
            answer_latency_ms_by_action: Default::default(),
        }
    }
}

/// The injector's mutable state: the faults, their remaining counts, the
/// throttle window and a seeded random source (so runs are reproducible).
#[derive(Debug)]
pub struct Injector {
    pub faults: Faults,
    rng: fastrand::Rng,
    window: (Instant, u32),
    /// What was injected so far, by ret_code (0 for failed jobs), so a test
    /// can show its faults really happened.
    pub injected: std::collections::BTreeMap<u32, u64>,
    /// Calls refused by the account's rate limit (5100), by action.
    pub throttled: std::collections::BTreeMap<String, u64>,
}

impl Injector {
    pub fn new(seed: u64) -> Injector {
        Injector {
            faults: Faults::default(),
            rng: fastrand::Rng::with_seed(seed),
            window: (Instant::now(), 0),
            injected: std::collections::BTreeMap::new(),
            throttled: std::collections::BTreeMap::new(),
        }
    }

    /// The error to answer for this call of `action`, if any.
    pub fn error_for(&mut self, action: &str) -> Option<(u32, String)> {
        if let Some(limit) = self.faults.throttle_per_second {
            let (start, n) = &mut self.window;
            if start.elapsed() >= Duration::from_secs(1) {
                *start = Instant::now();
                *n = 0;
            }
            *n += 1;
            if *n > limit {
                *self.injected.entry(5100).or_default() += 1;
                *self.throttled.entry(action.to_string()).or_default() += 1;
                return Some((
                    5100,
                    format!("ServerBusy, more than {limit} requests per second"),
                ));
            }
        }
        for rule in &mut self.faults.errors {
            if rule.action.as_deref().is_some_and(|a| a != action) || rule.count == Some(0) {
                continue;
            }
            if self.rng.f64() < rule.rate {
                if let Some(c) = &mut rule.count {
                    *c -= 1;
                }
                *self.injected.entry(rule.code).or_default() += 1;
                return Some((
                    rule.code,
                    format!("{}, injected by the simulator", name_of(rule.code)),
                ));
            }
        }
        None
    }

    pub fn lb_job_fails(&mut self) -> bool {
        if self.faults.fail_next_lb_jobs > 0 {
            self.faults.fail_next_lb_jobs -= 1;
            *self.injected.entry(0).or_default() += 1;
            return true;
        }
        false
    }

    pub fn job_fails(&mut self) -> bool {
        let fails = if self.faults.fail_next_jobs > 0 {
            self.faults.fail_next_jobs -= 1;
            true
        } else {
            self.rng.f64() < self.faults.job_fail_rate
        };
        if fails {
            *self.injected.entry(0).or_default() += 1;
        }
        fails
    }
}

/// The name an error message starts with, as the cloud's do.
pub fn name_of(code: u32) -> &'static str {
    match code {
        1100 => "InvalidParameter",
        1101 => "InvalidMethod",
        1200 => "AuthFailure",
        1300 => "MessageExpired",
        1400 => "PermissionDenied",
        2100 => "ResourceNotFound",
        2110 => "ResourceAlreadyExists",
        2400 => "InsufficientBalance",
        2500 => "QuotaExceeded",
        5000 => "InternalError",
        5100 => "ServerBusy",
        5200 => "ResourceInsufficient",
        5300 => "ServiceUpdating",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_by_action_and_run_out() {
        let mut inj = Injector::new(1);
        inj.faults.errors.push(ErrorRule {
            action: Some("CreateNics".into()),
            code: 5000,
            rate: 1.0,
            count: Some(2),
        });
        assert_eq!(inj.error_for("DescribeNics"), None);
        assert_eq!(inj.error_for("CreateNics").map(|e| e.0), Some(5000));
        assert_eq!(inj.error_for("CreateNics").map(|e| e.0), Some(5000));
        assert_eq!(inj.error_for("CreateNics"), None);
    }

    #[test]
    fn throttling_answers_busy_past_the_budget() {
        let mut inj = Injector::new(1);
        inj.faults.throttle_per_second = Some(3);
        let codes: Vec<_> = (0..5)
            .map(|_| inj.error_for("DescribeNics").map(|e| e.0))
            .collect();
        assert_eq!(codes, vec![None, None, None, Some(5100), Some(5100)]);
    }
}
