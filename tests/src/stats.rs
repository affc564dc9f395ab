//! Percentiles and formatting for the benchmark binaries, and the
//! agent's own account of where an ADD's time went.

use std::time::Duration;

use anyhow::bail;
use serde_json::Value;

/// Nearest-rank percentile (`p` in 1..=100) of unsorted samples.
pub fn pct(samples: &[Duration], p: usize) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    let rank = (p * s.len()).div_ceil(100).max(1);
    s[rank - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The agent phases shown, each an audit field or `a-b` for their
/// difference; the last is the whole attachment.
pub const PHASES: [(&str, &str); 6] = [
    (
        "before the plan (checks, the pod's routes, API facts)",
        "prepare_us",
    ),
    ("plan (vxnet and ip guests)", "plan_us"),
    ("acquire (an address / a warm NIC)", "acquire_us"),
    (
        "wire: the kernel's part (veth, passthru child or NIC move; configuration)",
        "attach_us",
    ),
    ("wire: routes guest and record writes", "wire_us-attach_us"),
    ("the whole attachment in the agent", "total_us"),
];

/// Each of [`PHASES`]' times in the agent's latest ADD decisions.
pub fn phases(status: &Value) -> anyhow::Result<Vec<Vec<Duration>>> {
    let decisions: Vec<&Value> = status["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["error"].is_null())
        .collect();
    if decisions.is_empty() {
        bail!("the agent reported no decisions");
    }
    Ok(PHASES
        .iter()
        .map(|(_, key)| {
            decisions
                .iter()
                .filter_map(|d| match key.split_once('-') {
                    Some((a, b)) => Some(d[a].as_u64()?.saturating_sub(d[b].as_u64()?)),
                    None => d[*key].as_u64(),
                })
                .map(Duration::from_micros)
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(pct(&s, 50), Duration::from_millis(50));
        assert_eq!(pct(&s, 99), Duration::from_millis(99));
        assert_eq!(pct(&s[..1], 99), Duration::from_millis(100));
    }
}
