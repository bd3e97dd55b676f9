//! The roll-up's interned frame names and stacks: each held once, back to back in one buffer,
//! and found through a table of 4-byte ids hashed by their content.
//!
//! Why not a map of owned keys: the accumulator looks up a few hundred names and stacks per
//! batch, and a `HashMap<String, u32>` held each name twice in scattered allocations of its
//! own; its lookups showed in profiles as cache misses in `memcmp`. Here a probe touches the
//! compact table and one contiguous buffer. [`Names::clear`] and [`Stacks::clear`] keep the
//! memory, so the next roll-up window does not fault in fresh pages.

use std::hash::{BuildHasher as _, Hash};

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// Items of a flat buffer: item `i` spans `ends[i - 1]..ends[i]`.
fn span(ends: &[usize], id: u32) -> std::ops::Range<usize> {
    let i = id as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] };
    start..ends[i]
}

/// Distinct slices of `T` back to back in one buffer, ids dense from 0 in order of first
/// appearance, found through a table of ids hashed by content. Both interners below are one.
#[derive(Debug)]
struct Slices<T> {
    items: Vec<T>,
    ends: Vec<usize>,
    table: HashTable<u32>,
    hasher: RandomState,
}

impl<T> Default for Slices<T> {
    fn default() -> Self {
        Slices {
            items: Vec::new(),
            ends: Vec::new(),
            table: HashTable::new(),
            hasher: RandomState::default(),
        }
    }
}

impl<T: Copy + Eq + Hash> Slices<T> {
    /// The id of `s`, interning it if new; and whether it was new.
    fn id(&mut self, s: &[T]) -> (u32, bool) {
        let (items, ends, hasher) = (&self.items, &self.ends, &self.hasher);
        let slice = |id: u32| &items[span(ends, id)];
        let entry = self.table.entry(
            hasher.hash_one(s),
            |&id| slice(id) == s,
            |&id| hasher.hash_one(slice(id)),
        );
        match entry {
            Entry::Occupied(e) => (*e.get(), false),
            Entry::Vacant(v) => {
                let id = self.ends.len() as u32;
                self.items.extend_from_slice(s);
                self.ends.push(self.items.len());
                v.insert(id);
                (id, true)
            }
        }
    }

    fn find(&self, s: &[T]) -> Option<u32> {
        self.table
            .find(self.hasher.hash_one(s), |&id| self.get(id) == s)
            .copied()
    }

    fn get(&self, id: u32) -> &[T] {
        &self.items[span(&self.ends, id)]
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn clear(&mut self) {
        self.items.clear();
        self.ends.clear();
        self.table.clear();
    }
}

/// Interned strings, ids dense from 0 in order of first appearance.
#[derive(Debug, Default)]
pub struct Names(Slices<u8>);

impl Names {
    /// The id of `s`, interning it if new.
    pub fn id(&mut self, s: &str) -> u32 {
        self.0.id(s.as_bytes()).0
    }

    /// The id of `s` if interned.
    pub fn find(&self, s: &str) -> Option<u32> {
        self.0.find(s.as_bytes())
    }

    /// The string of `id` (an id this interner gave out).
    pub fn get(&self, id: u32) -> &str {
        // Every slice was a whole `&str`, so this cannot fail.
        std::str::from_utf8(self.0.get(id)).expect("interned from a str")
    }

    /// Forgets every string, keeping the memory.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Interned stacks (name ids, leaf first), each with its distinct name ids (a recursive
/// function counts once inclusive).
#[derive(Debug, Default)]
pub struct Stacks {
    frames: Slices<u32>,
    distinct: Vec<u32>,
    distinct_ends: Vec<usize>,
}

impl Stacks {
    /// The id of `frames`, interning it if new.
    pub fn id(&mut self, frames: &[u32]) -> u32 {
        let (id, new) = self.frames.id(frames);
        if new {
            let start = self.distinct.len();
            self.distinct.extend_from_slice(frames);
            self.distinct[start..].sort_unstable();
            let mut kept = start;
            for i in start..self.distinct.len() {
                if kept == start || self.distinct[kept - 1] != self.distinct[i] {
                    self.distinct[kept] = self.distinct[i];
                    kept += 1;
                }
            }
            self.distinct.truncate(kept);
            self.distinct_ends.push(kept);
        }
        id
    }

    /// Number of stacks interned.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// The frames of stack `id`, leaf first.
    pub fn frames(&self, id: u32) -> &[u32] {
        self.frames.get(id)
    }

    /// The distinct name ids of stack `id`, ascending.
    pub fn distinct(&self, id: u32) -> &[u32] {
        &self.distinct[span(&self.distinct_ends, id)]
    }

    /// Forgets every stack, keeping the memory.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.distinct.clear();
        self.distinct_ends.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_interned_once_and_read_back() {
        let mut n = Names::default();
        let words = ["main", "", "f", "main", "ü;x", "f", ""];
        let ids: Vec<u32> = words.iter().map(|w| n.id(w)).collect();
        assert_eq!(ids, [0, 1, 2, 0, 3, 2, 1]);
        for (w, id) in words.iter().zip(&ids) {
            assert_eq!(n.get(*id), *w);
            assert_eq!(n.find(w), Some(*id));
        }
        assert_eq!(n.find("g"), None);
        // Enough names to make the table grow several times.
        let many: Vec<u32> = (0..5000).map(|i| n.id(&format!("fn{i}"))).collect();
        assert!((0..5000).all(|i| n.get(many[i]) == format!("fn{i}")));
        assert_eq!(n.id("fn4321"), many[4321]);
        n.clear();
        assert_eq!(n.find("main"), None);
        assert_eq!(n.id("g"), 0);
    }

    #[test]
    fn stacks_keep_their_frames_and_distinct_names() {
        let mut s = Stacks::default();
        assert_eq!(s.id(&[3, 1, 3, 2]), 0);
        assert_eq!(s.id(&[]), 1);
        assert_eq!(s.id(&[3, 1]), 2);
        assert_eq!(s.id(&[3, 1, 3, 2]), 0);
        assert_eq!(s.frames(0), [3, 1, 3, 2]);
        assert_eq!(s.distinct(0), [1, 2, 3]);
        assert_eq!(s.frames(1), [] as [u32; 0]);
        assert_eq!(s.distinct(1), [] as [u32; 0]);
        assert_eq!(s.distinct(2), [1, 3]);
        assert_eq!(s.len(), 3);
        s.clear();
        assert_eq!(s.len(), 0);
        assert_eq!(s.id(&[7]), 0);
        assert_eq!(s.distinct(0), [7]);
    }
}
