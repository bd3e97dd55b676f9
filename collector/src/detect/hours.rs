//! A per-pass cache of a service's stacks by whole hour. One pass reads the stacks around
//! every group of change points, windows of up to a day that overlap heavily; reading each
//! whole hour from the store once and summing cached hours in memory replaces most of those
//! reads. Part-hour edges are read straight from the source. Root cause reads one build's
//! stacks over each regression's spans, for every change naming a build: from a source that
//! keeps builds apart ([`StackSource::stacks_by_build`]) one read of an hour serves every
//! build and all of them together; from another, hours are cached per build.

use foldhash::HashMap;
use std::cell::{Cell, RefCell};

use super::{BuildStack, DetectError, StackSource};

const HOUR: i64 = 3600;

/// The hour `t` is in.
pub(super) fn floor(t: i64) -> i64 {
    t.div_euclid(HOUR) * HOUR
}

/// The first hour at or after `t`.
pub(super) fn ceil(t: i64) -> i64 {
    floor(t + HOUR - 1)
}

/// One hour's stacks: (build id, stack id, samples, µJ). The build id is [`ANY`] in an hour
/// read without builds apart (for all builds, or for the one build of its key).
type Hour = Vec<(u32, u32, u64, f64)>;
const ANY: u32 = u32::MAX;

/// (service, one build or all builds, hour).
type HourKey = (String, Option<String>, i64);

/// [`StackSource`] that reads each whole hour of a service once.
pub struct HourCache<'a> {
    src: &'a dyn StackSource,
    /// Folded stack or build id → id, and back.
    ids: RefCell<(HashMap<String, u32>, Vec<String>)>,
    /// Per (service, build or all builds, hour); hours with builds apart are all-builds keys.
    hours: RefCell<HashMap<HourKey, Hour>>,
    /// Whether the source keeps builds apart (known after its first whole-hour read).
    split: Cell<Option<bool>>,
    reads: Cell<u64>,
}

impl<'a> HourCache<'a> {
    pub fn new(src: &'a dyn StackSource) -> HourCache<'a> {
        HourCache {
            src,
            ids: RefCell::new((HashMap::default(), Vec::new())),
            hours: RefCell::new(HashMap::default()),
            split: Cell::new(None),
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
        build: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, u64, f64)>, DetectError> {
        self.reads.set(self.reads.get() + 1);
        match build {
            None => self.src.stacks(service, from, to),
            Some(b) => self.src.build_stacks(service, b, from, to),
        }
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

    /// Adds the hour starting at `h` to `sums` (only `build`'s stacks when given), reading it
    /// first when it is not cached.
    fn add_hour(
        &self,
        service: &str,
        build: Option<&str>,
        h: i64,
        sums: &mut Sums,
    ) -> Result<(), DetectError> {
        if self.split.get().is_none() {
            let rows = self.src.stacks_by_build(service, h, h + HOUR)?;
            self.split.set(Some(rows.is_some()));
            if let Some(rows) = rows {
                self.reads.set(self.reads.get() + 1);
                let hour = self.intern(&rows);
                self.hours
                    .borrow_mut()
                    .insert((service.into(), None, h), hour);
            }
        }
        let split = self.split.get() == Some(true);
        let key = (
            service.to_string(),
            build.filter(|_| !split).map(str::to_string),
            h,
        );
        if !self.hours.borrow().contains_key(&key) {
            let hour = if split {
                self.reads.set(self.reads.get() + 1);
                let rows = self.src.stacks_by_build(service, h, h + HOUR)?;
                self.intern(&rows.unwrap_or_default())
            } else {
                let rows = self.read(service, build, h, h + HOUR)?;
                rows.iter()
                    .map(|(f, s, e)| (ANY, self.id(f), *s, *e))
                    .collect()
            };
            self.hours.borrow_mut().insert(key.clone(), hour);
        }
        let want = build.map(|b| self.id(b));
        for &(b, id, s, e) in &self.hours.borrow()[&key] {
            if b == ANY || want.is_none_or(|w| w == b) {
                sums.add(id, s, e);
            }
        }
        Ok(())
    }

    fn intern(&self, rows: &[BuildStack]) -> Hour {
        (rows.iter())
            .map(|(b, f, s, e)| (self.id(b), self.id(f), *s, *e))
            .collect()
    }

    /// The stacks of `service` (of `build` only when given) over [from, to): whole hours
    /// from the cache, part-hour edges read directly.
    fn sum(
        &self,
        service: &str,
        build: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, u64, f64)>, DetectError> {
        let (h0, h1) = (ceil(from), floor(to));
        if h0 >= h1 {
            return self.read(service, build, from, to);
        }
        let mut sums = Sums::default();
        for (a, b) in [(from, h0), (h1, to)] {
            if a < b {
                for (f, s, e) in self.read(service, build, a, b)? {
                    let id = self.id(&f);
                    sums.add(id, s, e);
                }
            }
        }
        let mut h = h0;
        while h < h1 {
            self.add_hour(service, build, h, &mut sums)?;
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
        self.sum(service, None, from, to)
    }

    fn build_stacks(
        &self,
        service: &str,
        build: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, u64, f64)>, DetectError> {
        self.sum(service, Some(build), from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testdata::Synth;

    /// `all`'s stacks, as build "new" from `at` on and build "old" before; with `split`, it
    /// also gives both builds apart in one read.
    struct TwoBuilds<'a> {
        all: &'a dyn StackSource,
        at: i64,
        split: bool,
    }

    impl StackSource for TwoBuilds<'_> {
        fn stacks(
            &self,
            s: &str,
            from: i64,
            to: i64,
        ) -> Result<Vec<(String, u64, f64)>, DetectError> {
            self.all.stacks(s, from, to)
        }

        fn build_stacks(
            &self,
            s: &str,
            build: &str,
            from: i64,
            to: i64,
        ) -> Result<Vec<(String, u64, f64)>, DetectError> {
            match build {
                "new" => self.all.stacks(s, from.max(self.at), to.max(self.at)),
                _ => self.all.stacks(s, from.min(self.at), to.min(self.at)),
            }
        }

        fn stacks_by_build(
            &self,
            s: &str,
            from: i64,
            to: i64,
        ) -> Result<Option<Vec<BuildStack>>, DetectError> {
            if !self.split {
                return Ok(None);
            }
            let mut out = Vec::new();
            for b in ["old", "new"] {
                for (f, n, e) in self.build_stacks(s, b, from, to)? {
                    out.push((b.to_string(), f, n, e));
                }
            }
            Ok(Some(out))
        }
    }

    #[test]
    fn cached_windows_sum_like_a_direct_read_and_read_each_hour_once() {
        let synth = Synth::new(4)
            .stack("main;a", 0.6)
            .stack_fn("main;b", |i| if i < 500 { 0.2 } else { 0.4 })
            .stack("main;c;d", 0.1);
        let (_, mem) = synth.build(7);
        let start = synth.start;
        for split in [false, true] {
            let src = TwoBuilds {
                all: &mem,
                at: start + 10 * HOUR + 600,
                split,
            };
            let reads = check_cache(&src, start);
            // Hours 1..30 once each (29) and per build without builds apart; the first
            // window's two part-hour edges, the last one's head, and the window inside hour
            // 40 read whole, per build asked (three: all, new, old).
            let hours = if split { 29 } else { 3 * 29 };
            assert_eq!(reads, hours + 3 * (2 + 1 + 1), "split {split}");
        }
    }

    /// Reads of a cache over `src` whose windows sum like direct reads.
    fn check_cache(src: &dyn StackSource, start: i64) -> u64 {
        let cache = HourCache::new(src);
        // Part-hour edges, several whole hours, a window inside one hour, and overlaps.
        let windows = [
            (start + 1_500, start + 7 * HOUR + 900),
            (start + 2 * HOUR, start + 30 * HOUR),
            (start + 40 * HOUR + 300, start + 40 * HOUR + 1_200),
            (start + 3 * HOUR + 600, start + 20 * HOUR),
        ];
        let read = |s: &dyn StackSource, build: Option<&str>, (from, to): (i64, i64)| {
            let mut v = match build {
                None => s.stacks("svc", from, to),
                Some(b) => s.build_stacks("svc", b, from, to),
            }
            .unwrap();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        for build in [None, Some("new"), Some("old")] {
            for w in windows {
                let direct = read(src, build, w);
                let cached = read(&cache, build, w);
                assert_eq!(direct.len(), cached.len(), "{build:?} {w:?}");
                for (d, c) in direct.iter().zip(&cached) {
                    assert_eq!((&d.0, d.1), (&c.0, c.1), "{build:?} {w:?}");
                    assert!((d.2 - c.2).abs() <= 1e-6 * d.2.abs().max(1.0));
                }
            }
        }
        assert!(!read(src, Some("new"), windows[1]).is_empty());
        cache.reads()
    }
}
