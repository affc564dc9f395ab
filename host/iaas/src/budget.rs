//! Per-action call budgets: a token bucket each, and the quota cool-down.
//!
//! QingCloud documents no rate limit but does have a daily API quota (ret
//! 2500), shared by everything using the account. A bug that loops on an
//! action must not burn it for the whole account, so every action has a
//! bucket. A 2500 answer then shuts the action off for a cool-down: hammering
//! an exhausted quota only makes the daily one worse.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `burst` calls at once, then `per_second` on average.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    pub per_second: f64,
    pub burst: u32,
}

impl Budget {
    pub const UNLIMITED: Budget = Budget {
        per_second: f64::INFINITY,
        burst: u32::MAX,
    };
}

impl Default for Budget {
    /// A cold pod costs a handful of calls (CreateNics, AttachNics, a
    /// DescribeJobs or two, AttachTags); a node starting with an empty pool
    /// needs a burst of them. 10 at once, then 2 per second per action,
    /// serves that while capping a runaway loop at ~170k calls a day.
    fn default() -> Budget {
        Budget {
            per_second: 2.0,
            burst: 10,
        }
    }
}

struct Bucket {
    /// May go negative: each waiter reserves its token on arrival, so
    /// waiters are served in order and a burst spreads out evenly.
    tokens: f64,
    refilled: Instant,
}

/// The quota refusal in force for an action.
struct Cooldown {
    until: Instant,
    message: String,
}

pub(crate) struct Limiter {
    default: Budget,
    per_action: BTreeMap<String, Budget>,
    cooldown: Duration,
    buckets: Mutex<HashMap<String, Bucket>>,
    cooldowns: Mutex<HashMap<String, Cooldown>>,
}

impl Limiter {
    pub(crate) fn new(
        default: Budget,
        per_action: BTreeMap<String, Budget>,
        cooldown: Duration,
    ) -> Limiter {
        Limiter {
            default,
            per_action,
            cooldown,
            buckets: Mutex::default(),
            cooldowns: Mutex::default(),
        }
    }

    /// Waits until `action` may send one more request; returns the wait.
    pub(crate) async fn acquire(&self, action: &str) -> Duration {
        let budget = self.per_action.get(action).copied().unwrap_or(self.default);
        if budget.per_second.is_infinite() {
            return Duration::ZERO;
        }
        let wait = {
            let now = Instant::now();
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            let burst = f64::from(budget.burst.max(1));
            let b = buckets.entry(action.to_string()).or_insert(Bucket {
                tokens: burst,
                refilled: now,
            });
            let elapsed = now.duration_since(b.refilled).as_secs_f64();
            b.tokens = (b.tokens + elapsed * budget.per_second).min(burst);
            b.refilled = now;
            b.tokens -= 1.0;
            if b.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-b.tokens / budget.per_second)
            }
        };
        if !wait.is_zero() {
            tracing::debug!(
                action,
                wait_ms = wait.as_millis() as u64,
                "call budget exhausted, waiting"
            );
            tokio::time::sleep(wait).await;
        }
        wait
    }

    /// The cloud's quota message and the time left, while `action` is
    /// cooling down after a 2500.
    pub(crate) fn cooling(&self, action: &str) -> Option<(String, Duration)> {
        let mut cooldowns = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        let c = cooldowns.get(action)?;
        let left = c.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            cooldowns.remove(action);
            return None;
        }
        Some((c.message.clone(), left))
    }

    /// Starts the cool-down for `action`; returns its length.
    pub(crate) fn start_cooldown(&self, action: &str, message: &str) -> Duration {
        let mut cooldowns = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        cooldowns.insert(
            action.to_string(),
            Cooldown {
                until: Instant::now() + self.cooldown,
                message: message.to_string(),
            },
        );
        self.cooldown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32) -> Limiter {
        Limiter::new(
            Budget { per_second, burst },
            BTreeMap::from([("Free".to_string(), Budget::UNLIMITED)]),
            Duration::from_secs(60),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let l = limiter(10.0, 3);
        let start = Instant::now();
        for _ in 0..3 {
            l.acquire("A").await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        for _ in 0..5 {
            l.acquire("A").await;
        }
        // Five more at 10/s: the fifth waits 500 ms from the start.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(499) && waited <= Duration::from_millis(510),
            "{waited:?}"
        );
        // Buckets are per action; unlimited actions never wait.
        let t = Instant::now();
        l.acquire("B").await;
        for _ in 0..100 {
            l.acquire("Free").await;
        }
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_up_to_burst_only() {
        let l = limiter(1.0, 2);
        l.acquire("A").await;
        l.acquire("A").await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let t = Instant::now();
        l.acquire("A").await;
        l.acquire("A").await;
        assert_eq!(t.elapsed(), Duration::ZERO);
        l.acquire("A").await;
        assert!(t.elapsed() >= Duration::from_millis(999));
    }

    #[tokio::test(start_paused = true)]
    async fn cooldown_expires() {
        let l = limiter(1.0, 1);
        assert!(l.cooling("CreateNics").is_none());
        assert_eq!(
            l.start_cooldown("CreateNics", "QuotaExceeded"),
            Duration::from_secs(60)
        );
        let (message, left) = l.cooling("CreateNics").unwrap();
        assert_eq!(message, "QuotaExceeded");
        assert_eq!(left, Duration::from_secs(60));
        assert!(l.cooling("DescribeNics").is_none());
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(l.cooling("CreateNics").is_none());
    }
}
