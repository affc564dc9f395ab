//! Percentiles and formatting for the benchmark binaries.

use std::time::Duration;

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
