//! Client tuning that is not in the credentials file: call budgets,
//! retry backoff, the quota cool-down, job polling, and the clock.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::budget::Budget;
use crate::pace::Share;

/// Tuning that is not in the credentials file. Tests shrink every duration.
#[derive(Clone, Debug)]
pub struct Options {
    /// The budget of every action without its own entry in `budgets`.
    pub budget: Budget,
    /// Per-action budgets, by action name (`"DescribeNics"`).
    pub budgets: BTreeMap<String, Budget>,
    /// The account's rate and this node's place among the nodes sharing
    /// it: every request, whatever its action, waits for one of the node's
    /// slots (`crate::pace`). `None`: unpaced. Changed while running with
    /// [`crate::Client::set_share`].
    pub share: Option<Share>,
    pub backoff: Backoff,
    /// How long an action is refused after the cloud answered 2500.
    pub quota_cooldown: Duration,
    /// DescribeJobs interval while waiting for a job. The early signal (the
    /// NIC's link appearing) normally wins, so this is the fallback pace.
    pub job_poll_interval: Duration,
    /// Historic clients gave up after 180–300 s; a too-short wait leaks
    /// NICs whose attach later succeeds, so take the long end.
    pub job_timeout: Duration,
    /// The source of `time_stamp`s.
    pub clock: Clock,
    /// Sees every request sent and every wait on a budget (metrics).
    pub observer: Option<Arc<dyn Observer>>,
}

/// Sees what the client does, for metrics. Called on the calling task, so
/// it must be cheap and must not block.
pub trait Observer: Send + Sync + fmt::Debug {
    /// One HTTP request and how it ended: the API's `ret_code` (0 for
    /// success; a proxy's 5xx without an API answer counts as 5000), or
    /// `None` when no answer arrived (a transport failure, or a body that
    /// was not the API's).
    fn request(&self, action: &str, ret_code: Option<i64>, elapsed: Duration);
    /// Time a request of `action` waited for its budget before it was sent.
    fn budget_wait(&self, action: &str, waited: Duration);
}

impl Default for Options {
    fn default() -> Options {
        Options {
            budget: Budget::default(),
            budgets: BTreeMap::new(),
            share: None,
            backoff: Backoff::default(),
            quota_cooldown: Duration::from_secs(300),
            job_poll_interval: Duration::from_secs(5),
            job_timeout: Duration::from_secs(300),
            clock: Clock::default(),
            observer: None,
        }
    }
}

/// Exponential backoff between retries, with "equal jitter": the n-th wait
/// is uniformly in [d/2, d] for d = min(max, base·2ⁿ), so nodes that failed
/// together do not retry together, yet each still waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(20),
        }
    }
}

impl Backoff {
    pub fn delay(&self, retry: u32) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << retry.min(20))
            .min(self.max);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Where `time_stamp` comes from: the system clock, or a test's skewed one
/// (to exercise 1300 against a server that checks against its real clock).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    pub fn from_fn(f: impl Fn() -> SystemTime + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }

    pub fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::from_fn(SystemTime::now)
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let d0 = b.delay(0);
            assert!(
                d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100),
                "{d0:?}"
            );
            let d3 = b.delay(3);
            assert!(
                d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800),
                "{d3:?}"
            );
            let d40 = b.delay(40);
            assert!(
                d40 >= Duration::from_millis(500) && d40 <= Duration::from_secs(1),
                "{d40:?}"
            );
        }
    }
}
