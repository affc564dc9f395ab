//! Which vxnet a new NIC comes from: the original agent's three policies,
//! with the rotation wrapping around (the original's index never wrapped,
//! an operator-precedence bug). The policy-guests work moves this decision
//! into a WebAssembly guest; until then it is this built-in.

use crate::config::Policy;

#[derive(Debug)]
pub struct Rotation {
    policy: Policy,
    vxnets: Vec<String>,
    index: usize,
    rng: fastrand::Rng,
}

impl Rotation {
    pub fn new(policy: Policy, vxnets: Vec<String>) -> Rotation {
        Rotation {
            policy,
            vxnets,
            index: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// The vxnets to try, best first: all of them, starting at the current
    /// one. RoundRotate advances on every call; Random starts anywhere.
    pub fn order(&mut self) -> Vec<String> {
        let n = self.vxnets.len();
        if n == 0 {
            return Vec::new();
        }
        let start = match self.policy {
            Policy::FailRotate => self.index,
            Policy::RoundRotate => {
                let s = self.index;
                self.index = (self.index + 1) % n;
                s
            }
            Policy::Random => self.rng.usize(..n),
        };
        (0..n)
            .map(|i| self.vxnets[(start + i) % n].clone())
            .collect()
    }

    /// A create on `vxnet` failed: FailRotate moves past it.
    pub fn failed(&mut self, vxnet: &str) {
        if self.policy != Policy::FailRotate {
            return;
        }
        if let Some(i) = self.vxnets.iter().position(|v| v == vxnet) {
            self.index = (i + 1) % self.vxnets.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vx() -> Vec<String> {
        ["a", "b", "c"].map(String::from).to_vec()
    }

    #[test]
    fn fail_rotate_stays_until_a_failure_then_wraps() {
        let mut r = Rotation::new(Policy::FailRotate, vx());
        assert_eq!(r.order(), ["a", "b", "c"]);
        assert_eq!(r.order(), ["a", "b", "c"]);
        r.failed("a");
        assert_eq!(r.order(), ["b", "c", "a"]);
        r.failed("c");
        assert_eq!(r.order(), ["a", "b", "c"], "wraps around past the end");
    }

    #[test]
    fn round_rotate_advances_every_call_and_wraps() {
        let mut r = Rotation::new(Policy::RoundRotate, vx());
        let firsts: Vec<String> = (0..4).map(|_| r.order()[0].clone()).collect();
        assert_eq!(firsts, ["a", "b", "c", "a"]);
    }

    #[test]
    fn random_is_a_permutation_that_covers_every_vxnet() {
        let mut r = Rotation::new(Policy::Random, vx());
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let o = r.order();
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, vx());
            seen.insert(o[0].clone());
        }
        assert_eq!(seen.len(), 3);
    }
}
