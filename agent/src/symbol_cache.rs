//! The symbolizer's memory bounds: [`ByteLru`], a cache of resolved addresses bounded by the
//! bytes its entries hold (least recently used go first), and [`Modules`], which remembers
//! when each ELF file was last symbolized so the parsed state blazesym keeps for it (mapped
//! file, symbol tables, DWARF) can be released once the file is no longer sampled.
//!
//! A long-running agent sees every binary the host runs: without these bounds its caches grow
//! with each new program (a fork storm of distinct binaries, a deploy) and never shrink.

use std::{collections::HashMap, hash::Hash};

/// A map bounded by the bytes its entries are charged, evicting least recently used first.
#[derive(Debug)]
pub struct ByteLru<K, V> {
    entries: HashMap<K, (V, usize, u64)>,
    bytes: usize,
    budget: usize,
    tick: u64,
    evicted: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> ByteLru<K, V> {
    /// An empty cache holding at most `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            budget,
            tick: 0,
            evicted: 0,
        }
    }

    /// The value under `key`, marked as used now.
    pub fn get(&mut self, key: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(v, _, used)| {
            *used = tick;
            v.clone()
        })
    }

    /// Stores `value`, charged `bytes`. Past the budget, the least recently used entries go
    /// until a quarter of it is free, so eviction (a sort) runs once per many inserts.
    pub fn insert(&mut self, key: K, value: V, bytes: usize) {
        self.tick += 1;
        if let Some((_, old, _)) = self.entries.insert(key, (value, bytes, self.tick)) {
            self.bytes -= old;
        }
        self.bytes += bytes;
        if self.bytes > self.budget {
            let mut by_age: Vec<(u64, K)> = self
                .entries
                .iter()
                .map(|(k, (_, _, used))| (*used, k.clone()))
                .collect();
            by_age.sort_unstable_by_key(|e| e.0);
            let target = self.budget / 4 * 3;
            for (_, k) in by_age {
                if self.bytes <= target {
                    break;
                }
                if let Some((_, b, _)) = self.entries.remove(&k) {
                    self.bytes -= b;
                    self.evicted += 1;
                }
            }
        }
    }

    /// Bytes charged to the entries held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries evicted since creation.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// When each module (ELF path) was last symbolized, in drain generations.
#[derive(Debug, Default)]
pub struct Modules {
    last_used: HashMap<String, u64>,
}

impl Modules {
    /// Notes that `path` was symbolized in `generation`.
    pub fn used(&mut self, path: &str, generation: u64) {
        match self.last_used.get_mut(path) {
            Some(g) => *g = (*g).max(generation),
            None => {
                self.last_used.insert(path.to_owned(), generation);
            }
        }
    }

    /// Forgets and returns the modules idle for more than `idle` generations as of
    /// `generation`, and beyond the `max` most recently used.
    pub fn take_idle(&mut self, generation: u64, idle: u64, max: usize) -> Vec<String> {
        let mut by_age: Vec<(u64, String)> = self
            .last_used
            .iter()
            .map(|(p, g)| (*g, p.clone()))
            .collect();
        by_age.sort_unstable_by_key(|e| std::cmp::Reverse(e.0)); // newest first
        let mut out = Vec::new();
        for (i, (g, path)) in by_age.into_iter().enumerate() {
            if i >= max || g.saturating_add(idle) < generation {
                self.last_used.remove(&path);
                out.push(path);
            }
        }
        out
    }

    /// Modules tracked.
    pub fn len(&self) -> usize {
        self.last_used.len()
    }

    /// True when none is tracked.
    pub fn is_empty(&self) -> bool {
        self.last_used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_budget_holds_and_recent_entries_stay() {
        let mut c: ByteLru<u64, u64> = ByteLru::new(1000);
        for k in 0..100 {
            c.insert(k, k, 100);
            // The first key is used all along: it must survive every eviction.
            assert_eq!(c.get(&0), Some(0));
            assert!(c.bytes() <= 1000, "{} bytes after {k}", c.bytes());
        }
        assert!(c.len() <= 10);
        assert_eq!(c.get(&99), Some(99), "the newest stays");
        assert_eq!(c.get(&50), None, "an old one went");
        assert!(c.evicted() >= 90);
        c.insert(99, 1, 10);
        assert_eq!(c.get(&99), Some(1), "replaced, charged anew");
    }

    #[test]
    fn idle_and_surplus_modules_are_released() {
        let mut m = Modules::default();
        m.used("/a", 1);
        m.used("/b", 5);
        m.used("/c", 9);
        m.used("/d", 10);
        assert_eq!(m.take_idle(10, 6, 10), ["/a"]);
        let mut surplus = m.take_idle(10, 6, 2);
        surplus.sort();
        assert_eq!(surplus, ["/b"]);
        assert_eq!(m.len(), 2);
    }
}
