//! A per-pass cache of a service's stacks by whole hour. One pass reads the stacks around
//! every group of change points, windows of up to a day that overlap heavily; reading each
//! whole hour from the store once and summing cached hours in memory replaces most of those
//! reads. Part-hour edges are read straight from the source, and per-build reads pass through.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::{DetectError, StackSource};

const HOUR: i64 = 3600;

/// The hour `t` is in.
pub(super) fn floor(t: i64) -> i64 {
    t.div_euclid(HOUR) * HOUR
}

/// The first hour at or after `t`.
pub(super) fn ceil(t: i64) -> i64 {
    floor(t + HOUR - 1)
}

/// One hour's stacks: (stack id, samples, µJ).
type Hour = Vec<(u32, u64, f64)>;

/// [`StackSource`] that reads each whole hour of a service once.
pub struct HourCache<'a> {
    src: &'a dyn StackSource,
    /// Folded stack → id, and back.
    ids: RefCell<(HashMap<String, u32>, Vec<String>)>,
    hours: RefCell<HashMap<(String, i64), Hour>>,
    reads: Cell<u64>,
}

impl<'a> HourCache<'a> {
    pub fn new(src: &'a dyn StackSource) -> HourCache<'a> {
        HourCache {
            src,
            ids: RefCell::new((HashMap::new(), Vec::new())),
            hours: RefCell::new(HashMap::new()),
            reads: Cell::new(0),
        }
    }

    /// Reads made of the underlying source so far.
    pub fn reads(&self) -> u64 {
        self.reads.get()
    }

    fn read(
        &self,
        service: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, u64, f64)>, DetectError> {
        self.reads.set(self.reads.get() + 1);
        self.src.stacks(service, from, to)
    }

    fn id(&self, folded: &str) -> u32 {
        let mut ids = self.ids.borrow_mut();
        if let Some(id) = ids.0.get(folded) {
            return *id;
        }
        let id = ids.1.len() as u32;
        ids.1.push(folded.to_string());
        ids.0.insert(folded.to_string(), id);
        id
    }

    /// Adds the hour starting at `h` to `sums`, reading it first when it is not cached.
    fn add_hour(&self, service: &str, h: i64, sums: &mut Sums) -> Result<(), DetectError> {
        let key = (service.to_string(), h);
        if !self.hours.borrow().contains_key(&key) {
            let rows = self.read(service, h, h + HOUR)?;
            let hour: Hour = rows.iter().map(|(f, s, e)| (self.id(f), *s, *e)).collect();
            self.hours.borrow_mut().insert(key.clone(), hour);
        }
        for &(id, s, e) in &self.hours.borrow()[&key] {
            sums.add(id, s, e);
        }
        Ok(())
    }
}

/// Sums per stack id, remembering which ids were touched (in first-touch order).
#[derive(Default)]
struct Sums {
    by_id: Vec<Option<(u64, f64)>>,
    touched: Vec<u32>,
}

impl Sums {
    fn add(&mut self, id: u32, samples: u64, uj: f64) {
        let i = id as usize;
        if i >= self.by_id.len() {
            self.by_id.resize(i + 1, None);
        }
        match &mut self.by_id[i] {
            Some((s, e)) => {
                *s += samples;
                *e += uj;
            }
            slot => {
                *slot = Some((samples, uj));
                self.touched.push(id);
            }
        }
    }
}

impl StackSource for HourCache<'_> {
    fn stacks(
        &self,
        service: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, u64, f64)>, DetectError> {
        let (h0, h1) = (ceil(from), floor(to));
        if h0 >= h1 {
            return self.read(service, from, to);
        }
        let mut sums = Sums::default();
        for (a, b) in [(from, h0), (h1, to)] {
            if a < b {
                for (f, s, e) in self.read(service, a, b)? {
                    let id = self.id(&f);
                    sums.add(id, s, e);
                }
            }
        }
        let mut h = h0;
        while h < h1 {
            self.add_hour(service, h, &mut sums)?;
            h += HOUR;
        }
        let ids = self.ids.borrow();
        Ok(sums
            .touched
            .iter()
            .map(|&id| {
                let (s, e) = sums.by_id[id as usize].unwrap_or_default();
                (ids.1[id as usize].clone(), s, e)
            })
            .collect())
    }

    fn build_stacks(
        &self,
        service: &str,
        build: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, u64, f64)>, DetectError> {
        self.src.build_stacks(service, build, from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testdata::Synth;

    fn sorted(mut v: Vec<(String, u64, f64)>) -> Vec<(String, u64, f64)> {
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn cached_windows_sum_like_a_direct_read_and_read_each_hour_once() {
        let synth = Synth::new(4)
            .stack("main;a", 0.6)
            .stack_fn("main;b", |i| if i < 500 { 0.2 } else { 0.4 })
            .stack("main;c;d", 0.1);
        let (_, src) = synth.build(7);
        let cache = HourCache::new(&src);
        let start = synth.start;
        // Part-hour edges, several whole hours, a window inside one hour, and overlaps.
        let windows = [
            (start + 1_500, start + 7 * HOUR + 900),
            (start + 2 * HOUR, start + 30 * HOUR),
            (start + 40 * HOUR + 300, start + 40 * HOUR + 1_200),
            (start + 3 * HOUR + 600, start + 20 * HOUR),
        ];
        for (from, to) in windows {
            let direct = sorted(src.stacks("svc", from, to).unwrap());
            let cached = sorted(cache.stacks("svc", from, to).unwrap());
            assert!(!direct.is_empty());
            assert_eq!(direct.len(), cached.len(), "{from}..{to}");
            for (d, c) in direct.iter().zip(&cached) {
                assert_eq!((&d.0, d.1), (&c.0, c.1), "{from}..{to}");
                assert!(
                    (d.2 - c.2).abs() <= 1e-6 * d.2.abs().max(1.0),
                    "{from}..{to}"
                );
            }
        }
        // Hours 1..30 once each (29), the first window's two part-hour edges, the last one's
        // head, and the window inside hour 40 read whole.
        assert_eq!(cache.reads(), 29 + 2 + 1 + 1);
    }
}
