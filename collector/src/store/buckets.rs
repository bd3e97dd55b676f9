//! The bulk shapes detection reads: every function of a service (or the service's total) on a
//! fixed step, as dense per-bucket vectors, in one read per service; and the first minute
//! each (service, build id) was seen, from which automatic deploy changes are drawn.
//!
//! Both backends stream their rows into [`Buckets::add`], so they lay out buckets the same way.

use std::collections::HashMap;

use super::{StoreError, Window};

/// What a bucket read sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Of {
    /// Every function of the service, inclusive sums, one series per function.
    Functions,
    /// The service's rows (one per host), all its samples, summed into one series "".
    Totals,
}

/// One key's sums per bucket (all vectors [`Buckets::len`] long; a bucket without rows is 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSeries {
    /// Function name ("" for a service-total series).
    pub key: String,
    /// Samples per bucket (inclusive for functions; all of the service's for totals).
    pub samples: Vec<u64>,
    /// Measured microjoules per bucket (inclusive for functions).
    pub uj: Vec<u64>,
    /// Model-estimated microjoules per bucket (inclusive for functions).
    pub est_uj: Vec<u64>,
}

impl BucketSeries {
    /// True when any bucket holds estimated energy.
    pub fn estimated(&self) -> bool {
        self.est_uj.iter().any(|&e| e > 0)
    }
}

/// Series on a fixed step: bucket `i` is `[start + i * step, start + (i + 1) * step)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buckets {
    /// First bucket's start, Unix seconds (the window's start, aligned to minutes).
    pub start: i64,
    /// Bucket length, seconds (a multiple of 60).
    pub step: i64,
    /// Number of buckets.
    pub len: usize,
    /// One series per key, sorted by key.
    pub series: Vec<BucketSeries>,
    index: HashMap<String, usize>,
}

impl Buckets {
    /// Empty buckets covering `window` (aligned to minutes; the last bucket may stick out).
    pub fn new(window: Window, step: i64) -> Result<Buckets, StoreError> {
        let w = window.aligned()?;
        let step = super::query_plan::check_step(step)?;
        let len = (w.seconds() + step - 1) / step;
        Ok(Buckets {
            start: w.from,
            step,
            len: len as usize,
            series: Vec::new(),
            index: HashMap::new(),
        })
    }

    /// The aligned window the buckets cover.
    pub fn window(&self) -> Window {
        Window {
            from: self.start,
            to: self.start + self.step * self.len as i64,
        }
    }

    /// Whether these buckets can be read from detection's five-minute rows
    /// ([`super::rollup::RES_DETECT`]): a step of whole five minutes under an hour (hour steps
    /// read hour rows, as cheap and kept longer) on buckets aligned to five minutes.
    pub fn five_minute(&self) -> bool {
        let five = super::rollup::DETECT_STEP;
        self.step % five == 0 && self.step % 3600 != 0 && self.start % five == 0
    }

    /// Adds a row of `key` at `minute` (Unix seconds): (samples, measured µJ, estimated µJ).
    /// A row outside the buckets is ignored.
    pub fn add(&mut self, key: &str, minute: i64, sums: (u64, u64, u64)) {
        let Some(i) = self.slot(minute) else { return };
        // Backends stream rows grouped by key: the last series is the likely one.
        let last = self.series.len().checked_sub(1);
        let at = match last.filter(|&l| self.series[l].key == key) {
            Some(l) => l,
            None => match self.index.get(key) {
                Some(&s) => s,
                None => {
                    let n = self.len;
                    self.series.push(BucketSeries {
                        key: key.to_string(),
                        samples: vec![0; n],
                        uj: vec![0; n],
                        est_uj: vec![0; n],
                    });
                    self.index.insert(key.to_string(), self.series.len() - 1);
                    self.series.len() - 1
                }
            },
        };
        let s = &mut self.series[at];
        s.samples[i] += sums.0;
        s.uj[i] += sums.1;
        s.est_uj[i] += sums.2;
    }

    fn slot(&self, minute: i64) -> Option<usize> {
        if minute < self.start {
            return None;
        }
        let i = ((minute - self.start) / self.step) as usize;
        (i < self.len).then_some(i)
    }

    /// Sorts the series by key (what the backends return).
    pub fn finish(mut self) -> Buckets {
        self.series.sort_by(|a, b| a.key.cmp(&b.key));
        self.index.clear();
        self
    }
}

/// The first minute a build id was seen for a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstSeen {
    /// Service label.
    pub service: String,
    /// Build id (never "": rows of unknown builds are not reported).
    pub build_id: String,
    /// First minute with samples of that build, Unix seconds (the hour's start when only hour
    /// rows are left).
    pub at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_land_in_their_bucket_and_outside_rows_are_ignored() {
        let w = Window {
            from: 600,
            to: 1500,
        };
        let mut b = Buckets::new(w, 300).unwrap();
        assert_eq!(b.len, 3);
        b.add("f", 600, (1, 10, 0));
        b.add("f", 840, (2, 20, 0));
        b.add("g", 900, (5, 0, 50));
        b.add("f", 1440, (4, 40, 0));
        b.add("f", 1500, (9, 9, 9));
        b.add("f", 540, (9, 9, 9));
        let b = b.finish();
        assert_eq!(b.series[0].key, "f");
        assert_eq!(b.series[0].samples, [3, 0, 4]);
        assert_eq!(b.series[0].uj, [30, 0, 40]);
        assert!(!b.series[0].estimated());
        assert_eq!(b.series[1].est_uj, [0, 50, 0]);
        assert!(b.series[1].estimated());
        assert!(Buckets::new(w, 90).is_err());
    }
}
