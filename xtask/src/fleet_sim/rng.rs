//! The simulator's random numbers: a seeded SplitMix64 stream and the draws the fleet needs
//! (uniform, normal, Poisson counts). Deterministic for a seed on every machine, so a seed's
//! ground truth and its batches can be regenerated exactly.

/// A SplitMix64 stream.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5eed_f1ee_75a1_0000)
    }

    /// An independent stream for `label` (a service index, a step...), so adding draws in one
    /// place does not shift every other part of the fleet.
    pub fn fork(&self, label: u64) -> Rng {
        let mut r = Rng(self.0 ^ label.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.next();
        r
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.unit().max(f64::MIN_POSITIVE);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// A Poisson count of mean `lambda`: exact (Knuth) for small means, the normal
    /// approximation with continuity correction above 30, where the two differ by less than
    /// the sampling noise itself.
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda < 30.0 {
            let limit = (-lambda).exp();
            let mut k = 0u64;
            let mut p = self.unit();
            while p > limit {
                k += 1;
                p *= self.unit();
            }
            return k;
        }
        (lambda + lambda.sqrt() * self.normal() + 0.5).max(0.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn poisson_has_the_mean_and_variance_asked_for() {
        for lambda in [3.0, 400.0] {
            let mut r = Rng::new(7);
            let n = 20_000;
            let xs: Vec<f64> = (0..n).map(|_| r.poisson(lambda) as f64).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            assert!(
                (mean - lambda).abs() < 0.05 * lambda,
                "mean {mean} for {lambda}"
            );
            assert!(
                (var - lambda).abs() < 0.1 * lambda,
                "variance {var} for {lambda}"
            );
        }
    }

    #[test]
    fn same_seed_same_stream_and_forks_differ() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(1);
                move |_| r.next()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(1);
                move |_| r.next()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(Rng::new(1).fork(1).next(), Rng::new(1).fork(2).next());
    }
}
