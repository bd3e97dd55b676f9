//! Leaf-frame fix-up of frame-pointer user stacks, with the sampled module's `.eh_frame`.
//!
//! The kernel walks user stacks by frame pointers, starting at the sampled `bp`. When the
//! sampled (leaf) function has not set up a frame at that instruction (glibc's syscall
//! wrappers and string functions, built without frame pointers, or any function in its
//! prologue or epilogue), `bp` still holds its caller's frame, so the walk's next frame is
//! the caller's caller: the caller itself is lost. Its return address is still on the stack,
//! at CFA - 8, where the leaf's CFA (canonical frame address) is `sp + offset` by the rule in
//! `.eh_frame` for that instruction. The BPF program keeps the words above the user stack
//! pointer that a call instruction precedes, with their word index ([`RawSample`]'s
//! `leaf_candidates`); [`LeafUnwinder::fix`] looks the leaf's rule up and inserts the word
//! found at the rule's index as the caller frame.
//!
//! Modules are mapped, not copied (a large program's `.eh_frame` is tens of MiB; a lookup
//! through `.eh_frame_hdr`'s sorted table touches a few pages), and the mappings and
//! per-address rules are cached in byte-bounded LRUs ([`crate::symbol_cache::ByteLru`]);
//! [`LeafFixups`] counts what was recovered and what could not be.
//!
//! [`RawSample`]: crate::sampler::RawSample

use std::{fs::File, sync::Arc};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};
use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSegment};
use wattson_agent_ebpf::LEAF_SCAN_WORDS;

use crate::{process::ProcessTable, symbol_cache::ByteLru};

/// Budget of the mapped modules kept, each charged [`MODULE_CHARGE_BYTES`] (the pages a
/// lookup touches; the mapping itself is file-backed and shared with blazesym's).
pub const CFI_CACHE_BYTES: usize = 4 << 20;
/// Charged per mapped module.
const MODULE_CHARGE_BYTES: usize = 64 << 10;
/// Bytes of per-address rules kept.
pub const RULE_CACHE_BYTES: usize = 1 << 20;
/// Charged per cached rule (key, value and the map's overhead).
const RULE_ENTRY_BYTES: usize = 64;

/// What the leaf's unwind rule says about its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafRule {
    /// The CFA is `bp`-based: the function set up its frame, the frame-pointer walk is right.
    FramePointer,
    /// The CFA is `sp`-based: the return address is word `slot` above the stack pointer.
    ReturnAt {
        /// Word index above `sp`.
        slot: u32,
    },
    /// No rule covers the address, or one this fix-up does not follow.
    Unknown,
}

/// Counts of leaf fix-ups since the last [`LeafUnwinder::take_counts`], in samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeafFixups {
    /// Samples whose leaf's caller was recovered and inserted.
    pub made: u64,
    /// Samples whose leaf had no frame at that instruction but whose caller could not be
    /// recovered (no word at the rule's slot was captured, or the slot was beyond the scan).
    pub failed: u64,
}

/// File range and link-time address of a section.
type Section = (std::ops::Range<usize>, u64);

/// One module's call-frame information: the mapped file, where its sections lie in it, and
/// what places them in memory.
struct ModuleCfi {
    map: Mmap,
    eh_frame: Section,
    hdr: Option<Section>,
    text_addr: Option<u64>,
    /// Loadable segments: (file offset, file size, virtual address).
    segments: Vec<(u64, u64, u64)>,
}

impl ModuleCfi {
    fn read(path: &str) -> Option<Self> {
        let file = File::open(path).ok()?;
        // SAFETY: a read-only private mapping; a file truncated while mapped would fault, the
        // same exposure blazesym's mappings of these files have.
        let map = unsafe { Mmap::map(&file) }.ok()?;
        let obj = object::File::parse(&*map).ok()?;
        let section = |name: &str| -> Option<Section> {
            let s = obj.section_by_name(name)?;
            let (off, size) = s.file_range()?;
            let range = usize::try_from(off).ok()?..usize::try_from(off + size).ok()?;
            (range.end <= map.len()).then_some((range, s.address()))
        };
        let eh_frame = section(".eh_frame")?;
        let hdr = section(".eh_frame_hdr");
        Some(Self {
            eh_frame,
            hdr,
            text_addr: obj.section_by_name(".text").map(|s| s.address()),
            segments: obj
                .segments()
                .map(|s| {
                    let (off, size) = s.file_range();
                    (off, size, s.address())
                })
                .collect(),
            map,
        })
    }

    /// The link-time address of file offset `offset`, through the segment that loads it.
    fn address_of(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(off, size, _)| offset >= *off && offset < off + size)
            .map(|(off, _, addr)| addr + (offset - off))
    }

    /// The rule at link-time address `addr`.
    fn rule_at(&self, addr: u64) -> LeafRule {
        let eh = EhFrame::new(&self.map[self.eh_frame.0.clone()], LittleEndian);
        let mut bases = BaseAddresses::default().set_eh_frame(self.eh_frame.1);
        if let Some(text) = self.text_addr {
            bases = bases.set_text(text);
        }
        let mut ctx = UnwindContext::new();
        let table = self.hdr.as_ref().and_then(|(range, at)| {
            bases = bases.clone().set_eh_frame_hdr(*at);
            EhFrameHdr::new(&self.map[range.clone()], LittleEndian)
                .parse(&bases, 8)
                .ok()
        });
        let row = match table.as_ref().and_then(|t| t.table()) {
            Some(t) => {
                t.unwind_info_for_address(&eh, &bases, &mut ctx, addr, EhFrame::cie_from_offset)
            }
            None => eh.unwind_info_for_address(&bases, &mut ctx, addr, EhFrame::cie_from_offset),
        };
        let Ok(row) = row else {
            return LeafRule::Unknown;
        };
        match *row.cfa() {
            CfaRule::RegisterAndOffset { register, .. } if register == X86_64::RBP => {
                LeafRule::FramePointer
            }
            CfaRule::RegisterAndOffset { register, offset }
                if register == X86_64::RSP
                    && matches!(row.register(X86_64::RA), Some(RegisterRule::Offset(-8)))
                    && offset >= 8
                    && offset % 8 == 0 =>
            {
                LeafRule::ReturnAt {
                    slot: ((offset - 8) / 8) as u32,
                }
            }
            _ => LeafRule::Unknown,
        }
    }
}

/// Recovers the caller of a leaf without a frame, caching what it reads.
pub struct LeafUnwinder {
    /// Path -> the module's call-frame information (`None`: none readable).
    modules: ByteLru<Arc<str>, Option<Arc<ModuleCfi>>>,
    /// (path, file offset) -> rule.
    rules: ByteLru<(Arc<str>, u64), LeafRule>,
    counts: LeafFixups,
}

impl Default for LeafUnwinder {
    fn default() -> Self {
        Self {
            modules: ByteLru::new(CFI_CACHE_BYTES),
            rules: ByteLru::new(RULE_CACHE_BYTES),
            counts: LeafFixups::default(),
        }
    }
}

impl LeafUnwinder {
    /// The rule for the instruction at file offset `offset` of the ELF file at `path`.
    pub fn rule(&mut self, path: &str, offset: u64) -> LeafRule {
        let path: Arc<str> = Arc::from(path);
        let key = (path.clone(), offset);
        if let Some(rule) = self.rules.get(&key) {
            return rule;
        }
        let module = match self.modules.get(&path) {
            Some(m) => m,
            None => {
                let m = ModuleCfi::read(&path).map(Arc::new);
                let bytes = MODULE_CHARGE_BYTES + path.len();
                self.modules.insert(path, m.clone(), bytes);
                m
            }
        };
        let rule = module
            .and_then(|m| Some(m.rule_at(m.address_of(offset)?)))
            .unwrap_or(LeafRule::Unknown);
        self.rules.insert(key, rule, RULE_ENTRY_BYTES);
        rule
    }

    /// Inserts the caller of `stack`'s leaf (a user stack of `tgid`, leaf first) when the
    /// leaf has no frame at the sampled instruction, from `candidates` ((word index above the
    /// stack pointer, word), as the BPF program kept them). `count` samples are counted.
    pub fn fix(
        &mut self,
        table: &mut ProcessTable,
        tgid: u32,
        generation: u64,
        stack: &mut Vec<u64>,
        candidates: &[(u32, u64)],
        count: u64,
    ) {
        let Some(&leaf) = stack.first() else {
            return;
        };
        let Some(mapping) = table.mapping(tgid, leaf, generation) else {
            return;
        };
        let offset = mapping.file_offset(leaf);
        let Some(path) = mapping.path.as_deref().filter(|p| p.starts_with('/')) else {
            return;
        };
        let path = path.strip_suffix(" (deleted)").unwrap_or(path).to_owned();
        let LeafRule::ReturnAt { slot } = self.rule(&path, offset) else {
            return;
        };
        match caller(slot, candidates) {
            Some(ret) if stack.get(1) == Some(&ret) => {}
            Some(ret) => {
                stack.insert(1, ret);
                self.counts.made += count;
            }
            None => self.counts.failed += count,
        }
    }

    /// The counts since the last call.
    pub fn take_counts(&mut self) -> LeafFixups {
        std::mem::take(&mut self.counts)
    }

    /// Bytes charged to the caches (mapped modules, rules).
    pub fn cache_bytes(&self) -> (usize, usize) {
        (self.modules.bytes(), self.rules.bytes())
    }
}

/// The captured word at `slot`, if it was kept and the slot is within the scanned words.
pub fn caller(slot: u32, candidates: &[(u32, u64)]) -> Option<u64> {
    if slot as usize >= LEAF_SCAN_WORDS {
        return None;
    }
    candidates.iter().find(|(s, _)| *s == slot).map(|(_, w)| *w)
}

#[cfg(test)]
#[path = "unwind_tests.rs"]
mod tests;
