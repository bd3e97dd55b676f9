//! Learning a package's idle power: the lowest power seen in intervals where the package was
//! nearly idle, over a sliding window, so a machine that never idles in the window keeps no
//! stale baseline and a power spike never lowers it.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

/// Utilization at or below which an interval counts as nearly idle.
pub const DEFAULT_MAX_BUSY: f64 = 0.10;

/// Per-package idle power learned from observations.
#[derive(Clone, Debug)]
pub struct IdleLearner {
    window: Duration,
    max_busy: f64,
    now: Duration,
    seen: BTreeMap<u32, VecDeque<(Duration, f64)>>,
}

impl IdleLearner {
    /// Keeps observations for `window`; counts intervals at most `max_busy` utilized.
    pub fn new(window: Duration, max_busy: f64) -> Self {
        Self {
            window,
            max_busy,
            now: Duration::ZERO,
            seen: BTreeMap::new(),
        }
    }

    /// Records one interval of a package: its length, mean power and utilization (0..=1).
    /// Call once per package per interval, then [`advance`](Self::advance).
    pub fn observe(&mut self, package: u32, watts: f64, busy: f64) {
        if !(watts.is_finite() && watts >= 0.0 && busy.is_finite()) || busy > self.max_busy {
            return;
        }
        self.seen
            .entry(package)
            .or_default()
            .push_back((self.now, watts));
    }

    /// Moves the clock on by one interval and forgets what fell out of the window.
    pub fn advance(&mut self, elapsed: Duration) {
        self.now += elapsed;
        let cutoff = self.now.saturating_sub(self.window);
        for entries in self.seen.values_mut() {
            while entries.front().is_some_and(|&(at, _)| at < cutoff) {
                entries.pop_front();
            }
        }
    }

    /// The learned idle watts of a package, if a nearly idle interval is in the window.
    pub fn idle_watts(&self, package: u32) -> Option<f64> {
        self.seen
            .get(&package)?
            .iter()
            .map(|&(_, w)| w)
            .min_by(f64::total_cmp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_power_at_low_utilization_wins_and_ages_out() {
        let mut l = IdleLearner::new(Duration::from_secs(30), 0.1);
        assert_eq!(l.idle_watts(0), None);
        l.observe(0, 40.0, 0.05);
        l.advance(Duration::from_secs(10));
        l.observe(0, 25.0, 0.08);
        l.observe(0, 5.0, 0.9); // busy: ignored even though lower
        l.observe(0, f64::NAN, 0.0);
        l.advance(Duration::from_secs(10));
        assert_eq!(l.idle_watts(0), Some(25.0));
        assert_eq!(l.idle_watts(1), None);
        for _ in 0..4 {
            l.observe(0, 60.0, 0.5);
            l.advance(Duration::from_secs(10));
        }
        assert_eq!(l.idle_watts(0), None, "old observations leave the window");
    }
}
