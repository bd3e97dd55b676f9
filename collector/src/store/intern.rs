//! The roll-up's interned frame names and stacks: each held once, back to back in one buffer,
//! and found through a table of 4-byte ids hashed by their content.
//!
//! Why not a map of owned keys: the accumulator looks up a few hundred names and stacks per
//! batch, and a `HashMap<String, u32>` held each name twice in scattered allocations of its
//! own; its lookups showed in profiles as cache misses in `memcmp`. Here a probe touches the
//! compact table and one contiguous buffer. [`Names::clear`] and [`Stacks::clear`] keep the
//! memory, so the next roll-up window does not fault in fresh pages.

use std::hash::BuildHasher as _;

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// Items of a flat buffer: item `i` spans `ends[i - 1]..ends[i]`.
fn span(ends: &[usize], id: u32) -> std::ops::Range<usize> {
    let i = id as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] };
    start..ends[i]
}

/// Interned strings, ids dense from 0 in order of first appearance.
#[derive(Debug, Default)]
pub struct Names {
    text: String,
    ends: Vec<usize>,
    table: HashTable<u32>,
    hasher: RandomState,
}

impl Names {
    /// The id of `s`, interning it if new.
    pub fn id(&mut self, s: &str) -> u32 {
        let (text, ends, hasher) = (&self.text, &self.ends, &self.hasher);
        let name = |id: u32| &text[span(ends, id)];
        let entry = self.table.entry(
            hasher.hash_one(s),
            |&id| name(id) == s,
            |&id| hasher.hash_one(name(id)),
        );
        match entry {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(v) => {
                let id = self.ends.len() as u32;
                self.text.push_str(s);
                self.ends.push(self.text.len());
                v.insert(id);
                id
            }
        }
    }

    /// The id of `s` if interned.
    pub fn find(&self, s: &str) -> Option<u32> {
        self.table
            .find(self.hasher.hash_one(s), |&id| self.get(id) == s)
            .copied()
    }

    /// The string of `id` (an id this interner gave out).
    pub fn get(&self, id: u32) -> &str {
        &self.text[span(&self.ends, id)]
    }

    /// Forgets every string, keeping the memory.
    pub fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
        self.table.clear();
    }
}

/// Interned stacks (name ids, leaf first), each with its distinct name ids (a recursive
/// function counts once inclusive).
#[derive(Debug, Default)]
pub struct Stacks {
    frames: Vec<u32>,
    ends: Vec<usize>,
    distinct: Vec<u32>,
    distinct_ends: Vec<usize>,
    table: HashTable<u32>,
    hasher: RandomState,
}

impl Stacks {
    /// The id of `frames`, interning it if new.
    pub fn id(&mut self, frames: &[u32]) -> u32 {
        let (all, ends, hasher) = (&self.frames, &self.ends, &self.hasher);
        let stack = |id: u32| &all[span(ends, id)];
        let entry = self.table.entry(
            hasher.hash_one(frames),
            |&id| stack(id) == frames,
            |&id| hasher.hash_one(stack(id)),
        );
        match entry {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(v) => {
                let id = self.ends.len() as u32;
                self.frames.extend_from_slice(frames);
                self.ends.push(self.frames.len());
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
                v.insert(id);
                id
            }
        }
    }

    /// Number of stacks interned.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The frames of stack `id`, leaf first.
    pub fn frames(&self, id: u32) -> &[u32] {
        &self.frames[span(&self.ends, id)]
    }

    /// The distinct name ids of stack `id`, ascending.
    pub fn distinct(&self, id: u32) -> &[u32] {
        &self.distinct[span(&self.distinct_ends, id)]
    }

    /// Forgets every stack, keeping the memory.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.ends.clear();
        self.distinct.clear();
        self.distinct_ends.clear();
        self.table.clear();
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
