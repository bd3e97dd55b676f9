//! Host-side symbolization of sampled addresses into [`Frame`]s, with blazesym.
//!
//! User addresses are first placed in the process's captured maps ([`ProcessTable`]), which
//! gives the module path and file offset (kept on every frame, with the module's build id, so a
//! collector could symbolize remotely). The ELF is then asked for the symbol at that file
//! offset: ELF symtab/dynsym, DWARF file:line and inlined functions when debug info exists
//! (including separate debug files found by build id or debuglink), demangled (Rust, C++).
//! Addresses in a PLT stub, which no symbol table covers, are named `NAME@plt` after the
//! function the stub jumps to, as perf, objdump and gdb name them.
//! Anonymous executable memory is looked up in the JIT's perf map (`/tmp/perf-PID.map`), which
//! the profiled process writes and the agent reads as root: it is opened without following
//! symlinks, only if it is a regular file owned by root or by the process's user, and read up
//! to [`MAX_PERF_MAP_BYTES`] (cuts are counted). The vDSO is copied into a private (0700)
//! directory with a random name, created with O_EXCL|O_NOFOLLOW.
//! Kernel addresses go through kallsyms. Results are cached per (build id or path, offset), in
//! caches bounded by bytes; blazesym's parsed state for a file is released once the file has
//! not been symbolized for [`IDLE_GENERATIONS`] drains, or is beyond the [`MAX_MODULES`] most
//! recently used (see [`crate::symbol_cache`]). The pages of the files blazesym maps are given
//! back to the page cache after each drain and during long lookups (see [`crate::file_pages`]).

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use blazesym::symbolize::{
    Symbolized, Symbolizer as Blaze,
    source::{Elf, Kernel, Source},
};

use crate::{
    file_pages,
    process::{ProcessTable, hex},
    profile::{Frame, FrameKind},
    symbol_cache::{ByteLru, Modules},
};

/// Bytes of resolved user addresses cached.
pub const USER_CACHE_BYTES: usize = 12 << 20;
/// Bytes of resolved kernel addresses cached.
pub const KERNEL_CACHE_BYTES: usize = 4 << 20;
/// Drains (about a second each) after which a file no longer symbolized is released.
pub const IDLE_GENERATIONS: u64 = 30;
/// Files whose parsed symbols are kept at most (the most recently symbolized).
pub const MAX_MODULES: usize = 64;

/// Largest part of a JIT perf map read, bytes (complete lines only beyond it are dropped).
pub const MAX_PERF_MAP_BYTES: u64 = 64 << 20;

/// Module name of kernel text, as `perf` spells it.
pub const KERNEL_MODULE: &str = "[kernel.kallsyms]";

/// One function at an address: inlined callees come first (leafward).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Resolved {
    function: String,
    file: Option<String>,
    line: u32,
    inlined: bool,
}

/// A JIT's perf map: sorted (start, end, name).
type PerfMap = Vec<(u64, u64, String)>;

/// PLT stubs of one ELF file: sorted (start, end, `NAME@plt`), by file offset.
type PltStubs = Vec<(u64, u64, String)>;

/// Symbolizes user and kernel addresses, caching per module build id and offset.
pub struct Symbolizer {
    blaze: Blaze,
    perf_map_dir: PathBuf,
    /// (build id or path, lookup offset) -> functions, leaf first (empty = unknown).
    user: ByteLru<(Arc<str>, u64), Arc<[Resolved]>>,
    kernel: ByteLru<u64, (Arc<[Resolved]>, Option<String>)>,
    /// ELF files blazesym holds parsed, by when they were last symbolized.
    modules: Modules,
    /// The drain generation being symbolized.
    generation: u64,
    build_ids: HashMap<String, Option<Arc<str>>>,
    perf_maps: HashMap<u32, PerfMap>,
    /// (build id or path) -> its PLT stubs, read on the first address no symbol covers.
    plt: HashMap<Arc<str>, Arc<PltStubs>>,
    kernel_build_id: Option<String>,
    /// A copy of this process's vDSO on disk (every process maps the same kernel image), in a
    /// private directory removed on drop.
    vdso: std::sync::OnceLock<Option<(tempfile::TempDir, String)>>,
    /// Bytes of a perf map read at most.
    perf_map_max_bytes: u64,
    /// Perf maps cut at `perf_map_max_bytes`, since the last [`Self::take_perf_maps_cut`].
    perf_maps_cut: u64,
    /// Releases the pages of the files blazesym maps during a long read (see
    /// [`file_pages`]); started on the first read, None when it could not start.
    pager: std::cell::OnceCell<Option<file_pages::Pager>>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new("/tmp")
    }
}

impl Symbolizer {
    /// A symbolizer that looks for JIT perf maps in `perf_map_dir` (normally `/tmp`).
    pub fn new(perf_map_dir: impl Into<PathBuf>) -> Self {
        Self {
            blaze: new_blaze(),
            perf_map_dir: perf_map_dir.into(),
            user: ByteLru::new(USER_CACHE_BYTES),
            kernel: ByteLru::new(KERNEL_CACHE_BYTES),
            modules: Modules::default(),
            generation: 0,
            build_ids: HashMap::new(),
            perf_maps: HashMap::new(),
            plt: HashMap::new(),
            kernel_build_id: kernel_build_id(Path::new("/sys/kernel/notes")),
            vdso: std::sync::OnceLock::new(),
            perf_map_max_bytes: MAX_PERF_MAP_BYTES,
            perf_maps_cut: 0,
            pager: std::cell::OnceCell::new(),
        }
    }

    /// Perf maps read only up to [`MAX_PERF_MAP_BYTES`] since the last call.
    pub fn take_perf_maps_cut(&mut self) -> u64 {
        std::mem::take(&mut self.perf_maps_cut)
    }

    /// Frames for a user stack of `tgid` (instruction pointers, leaf first). Every address but
    /// the leaf is a return address, looked up one byte earlier so the call site is named.
    pub fn user_frames(
        &mut self,
        table: &mut ProcessTable,
        tgid: u32,
        stack: &[u64],
        generation: u64,
    ) -> Vec<Frame> {
        self.generation = self.generation.max(generation);
        let mut out = Vec::with_capacity(stack.len());
        for (i, &addr) in stack.iter().enumerate() {
            let lookup_adj = u64::from(i > 0);
            let mapping = table.mapping(tgid, addr, generation).cloned();
            // (file to read symbols from, module name to report)
            let elf = match mapping.as_ref().and_then(|m| m.path.as_deref()) {
                Some(p) if p.starts_with('/') => {
                    let p = p.strip_suffix(" (deleted)").unwrap_or(p).to_owned();
                    Some((p.clone(), p))
                }
                Some("[vdso]") => self
                    .vdso
                    .get_or_init(dump_own_vdso)
                    .as_ref()
                    .map(|(_, p)| (p.clone(), "[vdso]".to_owned())),
                _ => None,
            };
            match (mapping, elf) {
                (Some(m), Some((path, module))) => {
                    let offset = m.file_offset(addr);
                    let build_id = self.build_id(&path);
                    let key: Arc<str> =
                        build_id.clone().unwrap_or_else(|| Arc::from(path.as_str()));
                    let resolved = self.elf_lookup(key, &path, offset.saturating_sub(lookup_adj));
                    push_resolved(
                        &mut out,
                        &resolved,
                        FrameKind::User,
                        &module,
                        build_id.as_deref(),
                        Some(offset),
                        addr,
                    );
                }
                (m, _) => {
                    let pseudo = m.and_then(|m| m.path).filter(|p| !p.starts_with("[anon"));
                    let (module, function) = match pseudo {
                        Some(p) => (p, None),
                        None => match self.perf_map_lookup(tgid, addr, generation) {
                            Some(name) => ("[perf-map]".to_owned(), Some(name)),
                            None => ("[unknown]".to_owned(), None),
                        },
                    };
                    out.push(Frame {
                        kind: FrameKind::User,
                        function,
                        file: None,
                        line: 0,
                        inlined: false,
                        module,
                        build_id: None,
                        file_offset: None,
                        address: addr,
                    });
                }
            }
        }
        out
    }

    /// Frames for a kernel stack (leaf first).
    pub fn kernel_frames(&mut self, stack: &[u64]) -> Vec<Frame> {
        let mut out = Vec::with_capacity(stack.len());
        for (i, &addr) in stack.iter().enumerate() {
            let lookup = addr.saturating_sub(u64::from(i > 0));
            let (resolved, module) = match self.kernel.get(&lookup) {
                Some(hit) => hit,
                None => {
                    let src = Source::Kernel(Kernel::default());
                    let found = match self
                        .blaze
                        .symbolize_single(&src, blazesym::symbolize::Input::AbsAddr(lookup))
                    {
                        Ok(Symbolized::Sym(sym)) => {
                            let module = sym
                                .module
                                .as_ref()
                                .map(|m| m.to_string_lossy().into_owned())
                                .filter(|m| !m.is_empty() && !m.starts_with('/'))
                                .map(|m| {
                                    if m.starts_with('[') {
                                        m
                                    } else {
                                        format!("[{m}]")
                                    }
                                });
                            (resolved_from(&sym), module)
                        }
                        _ => (Arc::from(Vec::new()), None),
                    };
                    let bytes = resolved_bytes(&found.0) + found.1.as_ref().map_or(0, String::len);
                    self.kernel.insert(lookup, found.clone(), bytes);
                    found
                }
            };
            let module = module.unwrap_or_else(|| KERNEL_MODULE.to_owned());
            let build_id = (module == KERNEL_MODULE)
                .then(|| self.kernel_build_id.clone())
                .flatten();
            push_resolved(
                &mut out,
                &resolved,
                FrameKind::Kernel,
                &module,
                build_id.as_deref(),
                Some(addr),
                addr,
            );
        }
        out
    }

    /// Bounds memory in long-running use, at each window's end: JIT perf maps are re-read on
    /// demand, and files no longer sampled are released (see [`Self::release_idle`]).
    pub fn trim(&mut self) {
        self.perf_maps.clear();
        self.release_idle();
        self.release_file_pages();
    }

    /// Drops the pages of the files blazesym has mapped from this process's RSS (they stay in
    /// the page cache); see [`crate::file_pages`].
    pub fn release_file_pages(&self) {
        file_pages::release();
    }

    /// Releases blazesym's parsed state (mapped file, symbol tables, DWARF) of files not
    /// symbolized for [`IDLE_GENERATIONS`] drains or beyond the [`MAX_MODULES`] most recent;
    /// they are parsed again if sampled again. Returns how many were released.
    pub fn release_idle(&mut self) -> usize {
        let idle = self
            .modules
            .take_idle(self.generation, IDLE_GENERATIONS, MAX_MODULES);
        for path in &idle {
            let evict = blazesym::symbolize::evict::Evict::Elf(
                blazesym::symbolize::evict::Elf::new(path.as_str()),
            );
            if let Err(e) = self.blaze.evict(&evict) {
                tracing::debug!(path, error = %e, "could not release a file's symbols");
            }
            if let Some(key) = self.build_ids.remove(path.as_str()) {
                let key = key.unwrap_or_else(|| Arc::from(path.as_str()));
                self.plt.remove(&key);
            }
        }
        if !idle.is_empty() {
            tracing::debug!(
                released = idle.len(),
                kept = self.modules.len(),
                user_cache_bytes = self.user.bytes(),
                kernel_cache_bytes = self.kernel.bytes(),
                "released symbols of files no longer sampled"
            );
        }
        idle.len()
    }

    /// Files whose symbols are held parsed.
    pub fn modules_held(&self) -> usize {
        self.modules.len()
    }

    /// Bytes held by the address caches (user, kernel).
    pub fn cache_bytes(&self) -> (usize, usize) {
        (self.user.bytes(), self.kernel.bytes())
    }

    fn build_id(&mut self, path: &str) -> Option<Arc<str>> {
        self.build_ids
            .entry(path.to_owned())
            .or_insert_with(|| crate::process::build_id(Path::new(path)).map(Arc::from))
            .clone()
    }

    fn elf_lookup(&mut self, key: Arc<str>, path: &str, offset: u64) -> Arc<[Resolved]> {
        if let Some(hit) = self.user.get(&(key.clone(), offset)) {
            return hit;
        }
        self.modules.used(path, self.generation);
        let src = Source::Elf(Elf::new(path));
        let pager = self.pager.get_or_init(file_pages::Pager::start);
        let busy = pager.as_ref().map(file_pages::Pager::busy);
        let found = self
            .blaze
            .symbolize_single(&src, blazesym::symbolize::Input::FileOffset(offset));
        drop(busy);
        let resolved = match found {
            Ok(Symbolized::Sym(sym)) => resolved_from(&sym),
            Ok(Symbolized::Unknown(_)) => self.plt_lookup(&key, path, offset),
            Err(e) => {
                tracing::debug!(path, offset, error = %e, "symbolization failed");
                Arc::from(Vec::new())
            }
        };
        let bytes = resolved_bytes(&resolved) + key.len();
        self.user.insert((key, offset), resolved.clone(), bytes);
        resolved
    }

    /// `NAME@plt` when `offset` lies in one of the file's PLT stubs, else nothing (unknown).
    fn plt_lookup(&mut self, key: &Arc<str>, path: &str, offset: u64) -> Arc<[Resolved]> {
        let stubs = self
            .plt
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(
                    map_file(path)
                        .and_then(|m| plt_stubs(&m))
                        .unwrap_or_default(),
                )
            })
            .clone();
        let hit = stubs
            .partition_point(|e| e.0 <= offset)
            .checked_sub(1)
            .map(|i| &stubs[i])
            .filter(|(start, end, _)| *start <= offset && offset < *end);
        match hit {
            Some((_, _, name)) => Arc::from(vec![Resolved {
                function: name.clone(),
                file: None,
                line: 0,
                inlined: false,
            }]),
            None => Arc::from(Vec::new()),
        }
    }

    fn perf_map_lookup(&mut self, tgid: u32, addr: u64, _generation: u64) -> Option<String> {
        let find = |map: &PerfMap| {
            let i = map.partition_point(|e| e.0 <= addr).checked_sub(1)?;
            let (start, end, name) = &map[i];
            (*start <= addr && addr < *end).then(|| name.clone())
        };
        if let Some(hit) = self.perf_maps.get(&tgid).and_then(find) {
            return Some(hit);
        }
        // JITs append to the file as they compile, so re-read it on a miss.
        let path = self.perf_map_dir.join(format!("perf-{tgid}.map"));
        let (text, cut) = read_perf_map(&path, tgid, self.perf_map_max_bytes)?;
        if cut {
            if self.perf_maps_cut == 0 {
                tracing::warn!(path = %path.display(), max = self.perf_map_max_bytes, "perf map larger than the bound: only its start is read");
            }
            self.perf_maps_cut += 1;
        }
        let map = parse_perf_map(&text);
        let hit = find(&map);
        self.perf_maps.insert(tgid, map);
        hit
    }
}

/// blazesym with DWARF file:line, inlined functions and demangling on.
fn new_blaze() -> Blaze {
    Blaze::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_demangling(true)
        .build()
}

/// The perf map at `path` of process `tgid`, at most `max` bytes of it (whole lines), and
/// whether it was cut. `None` unless it is a regular file, not a symlink, owned by root or by
/// the process's user: the agent reads it as root, and what it reads is shipped.
fn read_perf_map(path: &Path, tgid: u32, max: u64) -> Option<(String, bool)> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let file = fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO planted there must not hang the agent (it is refused below).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    let owner = fs::metadata(format!("/proc/{tgid}")).ok().map(|m| m.uid());
    if !meta.is_file() || (meta.uid() != 0 && Some(meta.uid()) != owner) {
        tracing::debug!(path = %path.display(), "perf map not a regular file of the process's user: ignored");
        return None;
    }
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes).ok()?;
    let cut = meta.len() > max;
    if cut {
        // Drop the line the bound cut through.
        let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(end);
    }
    Some((String::from_utf8_lossy(&bytes).into_owned(), cut))
}

/// Writes this process's vDSO image to a new file in a new private directory, so it can be
/// symbolized like any ELF (the kernel maps the same image into every process, at file
/// offset 0). The directory's random name and O_EXCL|O_NOFOLLOW leave nothing to plant.
fn dump_own_vdso() -> Option<(tempfile::TempDir, String)> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let maps = fs::read_to_string("/proc/self/maps").ok()?;
    let m = crate::process::parse_maps(&maps)
        .into_iter()
        .find(|m| m.path.as_deref() == Some("[vdso]"))?;
    // SAFETY: the vDSO mapping is readable for its whole length for the life of the process.
    let image =
        unsafe { std::slice::from_raw_parts(m.start as *const u8, (m.end - m.start) as usize) };
    let dir = tempfile::Builder::new()
        .prefix("wattson-vdso-")
        .tempdir()
        .ok()?;
    // Private before anything is written in it (its name is random already).
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .ok()?;
    let path = dir.path().join("vdso.so");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&path)
        .ok()?;
    file.write_all(image).ok()?;
    Some((dir, path.to_string_lossy().into_owned()))
}

/// `path` mapped read-only. Reading it instead cost a copy of the whole file (a 150 MB
/// `librustc_driver.so` was half the agent's CPU and most of its peak RSS) where only its
/// section headers, dynamic symbols, relocations and PLT are looked at: mapped, only those
/// pages are read in, and they are page cache the kernel can drop, not the agent's heap.
fn map_file(path: &str) -> Option<memmap2::Mmap> {
    let file = fs::File::open(path).ok()?;
    // SAFETY: the mapping is private and read-only; a file truncated under it could fault
    // the agent, the same risk blazesym takes with every file it maps.
    unsafe { memmap2::Mmap::map(&file) }.ok()
}

/// Bytes a cached resolution holds, roughly: its strings plus the entries' own size.
fn resolved_bytes(r: &[Resolved]) -> usize {
    let entry = std::mem::size_of::<Resolved>() + 64; // map slot and Arc header
    r.iter()
        .map(|f| f.function.len() + f.file.as_ref().map_or(0, String::len))
        .sum::<usize>()
        + entry * r.len().max(1)
}

/// Functions at one address, leaf (innermost inlined) first.
fn resolved_from(sym: &blazesym::symbolize::Sym<'_>) -> Arc<[Resolved]> {
    let location = |ci: Option<&blazesym::symbolize::CodeInfo<'_>>| match ci {
        Some(ci) => (
            Some(ci.to_path().to_string_lossy().into_owned()),
            ci.line.unwrap_or(0),
        ),
        None => (None, 0),
    };
    let mut out = Vec::with_capacity(sym.inlined.len() + 1);
    for f in sym.inlined.iter().rev() {
        let (file, line) = location(f.code_info.as_ref());
        out.push(Resolved {
            function: f.name.to_string(),
            file,
            line,
            inlined: true,
        });
    }
    let (file, line) = location(sym.code_info.as_deref());
    out.push(Resolved {
        function: sym.name.to_string(),
        file,
        line,
        inlined: false,
    });
    Arc::from(out)
}

fn push_resolved(
    out: &mut Vec<Frame>,
    resolved: &[Resolved],
    kind: FrameKind,
    module: &str,
    build_id: Option<&str>,
    file_offset: Option<u64>,
    address: u64,
) {
    let frame = |function: Option<String>, file, line, inlined| Frame {
        kind,
        function,
        file,
        line,
        inlined,
        module: module.to_owned(),
        build_id: build_id.map(str::to_owned),
        file_offset,
        address,
    };
    if resolved.is_empty() {
        out.push(frame(None, None, 0, false));
    }
    for r in resolved {
        out.push(frame(
            Some(r.function.clone()),
            r.file.clone(),
            r.line,
            r.inlined,
        ));
    }
}

/// The PLT stubs of an x86-64 ELF file (`.plt`, `.plt.sec`, `.plt.got`), by file offset, each
/// named after the dynamic symbol whose GOT slot its indirect `jmp *disp(%rip)` goes through,
/// as perf names them (`memcpy@plt`). Decoding the jump instead of counting relocations works
/// for lazy, `-z now` and IBT layouts alike; the `.plt` header stub (no slot of a symbol) stays
/// unnamed. `None` for other architectures or unreadable files.
fn plt_stubs(data: &[u8]) -> Option<PltStubs> {
    use object::{
        Architecture, Object as _, ObjectSection as _, ObjectSymbol as _, ObjectSymbolTable as _,
        RelocationTarget, read::elf::ElfFile64, read::elf::SectionHeader as _,
    };
    let file = ElfFile64::<object::Endianness>::parse(data).ok()?;
    if file.architecture() != Architecture::X86_64 {
        return None;
    }
    let dynsym = file.dynamic_symbol_table()?;
    // GOT slot address -> the symbol it holds (JUMP_SLOT and GLOB_DAT relocations).
    let slots: HashMap<u64, String> = file
        .dynamic_relocations()?
        .filter_map(|(slot, reloc)| match reloc.target() {
            RelocationTarget::Symbol(i) => {
                let name = dynsym.symbol_by_index(i).ok()?.name().ok()?;
                (!name.is_empty()).then(|| (slot, name.to_owned()))
            }
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for section in [".plt", ".plt.sec", ".plt.got"] {
        let Some(section) = file.section_by_name(section) else {
            continue;
        };
        let entry = match section.elf_section_header().sh_entsize(file.endian()) {
            0 => 16,
            n => n,
        };
        let (Ok(bytes), Some((file_start, _))) = (section.data(), section.file_range()) else {
            continue;
        };
        for (i, stub) in bytes.chunks_exact(entry as usize).enumerate() {
            let at = i as u64 * entry;
            // `jmp *disp32(%rip)`: ff 25 disp32, maybe after endbr64 and a bnd prefix.
            let Some(jmp) = stub.windows(6).position(|w| w[..2] == [0xff, 0x25]) else {
                continue;
            };
            let disp = i32::from_le_bytes(stub[jmp + 2..jmp + 6].try_into().ok()?);
            let slot = (section.address() + at + jmp as u64 + 6).wrapping_add(disp as i64 as u64);
            if let Some(name) = slots.get(&slot) {
                out.push((
                    file_start + at,
                    file_start + at + entry,
                    format!("{name}@plt"),
                ));
            }
        }
    }
    out.sort_by_key(|e| e.0);
    Some(out)
}

/// Parses a perf map (`START SIZE NAME` per line, hex, optional `0x`), sorted by start.
pub fn parse_perf_map(text: &str) -> Vec<(u64, u64, String)> {
    let hex_u64 = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let mut out: Vec<(u64, u64, String)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let start = hex_u64(parts.next()?)?;
            let size = hex_u64(parts.next()?)?;
            let name = parts.next()?.trim();
            Some((start, start.checked_add(size)?, name.to_owned()))
        })
        .collect();
    out.sort_by_key(|e| e.0);
    out
}

/// The running kernel's GNU build id from `/sys/kernel/notes` (a sequence of ELF notes).
pub fn kernel_build_id(notes: &Path) -> Option<String> {
    let data = fs::read(notes).ok()?;
    let word = |i: usize| -> Option<usize> {
        Some(u32::from_ne_bytes(data.get(i..i + 4)?.try_into().ok()?) as usize)
    };
    let mut i = 0;
    while i + 12 <= data.len() {
        let (namesz, descsz, kind) = (word(i)?, word(i + 4)?, word(i + 8)?);
        let name_at = i + 12;
        let desc_at = name_at + namesz.div_ceil(4) * 4;
        if kind == 3 && data.get(name_at..name_at + namesz)? == b"GNU\0" {
            return Some(hex(data.get(desc_at..desc_at + descsz)?));
        }
        i = desc_at + descsz.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function_for_symbolization() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn own_function_symbolizes_with_file_and_line() {
        let me = std::process::id();
        let mut table = ProcessTable::new("/proc", Vec::new());
        table.observe(me, "test");
        let addr = marker_function_for_symbolization as *const () as u64 + 1;
        let mut sym = Symbolizer::default();
        let frames = sym.user_frames(&mut table, me, &[addr], 1);
        let outer = frames.last().expect("a frame");
        let name = outer.function.as_deref().unwrap_or_default();
        assert!(
            name.ends_with("marker_function_for_symbolization"),
            "demangled name, got {frames:?}"
        );
        assert!(
            outer
                .file
                .as_deref()
                .unwrap_or_default()
                .ends_with("symbolize.rs")
        );
        assert!(outer.line > 0);
        assert!(outer.file_offset.is_some());
        assert!(outer.module.starts_with('/'));
    }

    /// Regression: blazesym kept every file it ever parsed (and the address caches every
    /// entry, until a count was passed), so an agent that saw many binaries only grew. A file
    /// no longer sampled is now released, and symbolized again if it comes back.
    #[test]
    fn files_no_longer_sampled_are_released_and_come_back() {
        let me = std::process::id();
        let mut table = ProcessTable::new("/proc", Vec::new());
        table.observe(me, "test");
        let addr = marker_function_for_symbolization as *const () as u64 + 1;
        let mut sym = Symbolizer::default();
        let name = |frames: Vec<Frame>| frames.last().and_then(|f| f.function.clone());
        let first = name(sym.user_frames(&mut table, me, &[addr], 1));
        assert_eq!(sym.modules_held(), 1);
        assert!(sym.cache_bytes().0 > 0);
        assert_eq!(sym.release_idle(), 0, "just used");
        // Sampled again 30 drains later (the cache answers): still held.
        sym.user_frames(&mut table, me, &[addr + 1], IDLE_GENERATIONS);
        assert_eq!(sym.release_idle(), 0);
        // Idle for longer than IDLE_GENERATIONS drains: released.
        sym.user_frames(&mut table, me, &[], 2 * IDLE_GENERATIONS + 2);
        assert_eq!(sym.release_idle(), 1);
        assert_eq!(sym.modules_held(), 0);
        let again = name(sym.user_frames(&mut table, me, &[addr + 2], 2 * IDLE_GENERATIONS + 3));
        assert!(
            first.is_some() && again == first,
            "{first:?} then {again:?}"
        );
    }

    #[test]
    fn kernel_addresses_name_kernel_functions() {
        let text = fs::read_to_string("/proc/kallsyms").unwrap();
        let addr = text
            .lines()
            .find(|l| l.ends_with(" vfs_read"))
            .and_then(|l| u64::from_str_radix(l.split(' ').next()?, 16).ok())
            .filter(|&a| a != 0);
        let Some(addr) = addr else {
            eprintln!("kallsyms addresses hidden (not root?): skipped");
            return;
        };
        let frames = Symbolizer::default().kernel_frames(&[addr + 4]);
        assert_eq!(frames[0].function.as_deref(), Some("vfs_read"));
        assert_eq!(frames[0].module, KERNEL_MODULE);
    }

    /// `objdump -d` (binutils) names every PLT stub `NAME@plt`: ours must agree stub for stub,
    /// on system binaries (lazy `.plt`, `.plt.got`) and, where a C compiler is installed, on an
    /// IBT build (`.plt.sec`).
    #[test]
    fn plt_stubs_match_objdump() {
        use object::{Object as _, ObjectSection as _};
        if !Path::new("/usr/bin/objdump").exists() {
            eprintln!("objdump missing: skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut binaries: Vec<PathBuf> = ["/usr/bin/perl", "/bin/bash", "/usr/bin/gzip"]
            .into_iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect();
        if Path::new("/usr/bin/cc").exists() {
            let src = dir.path().join("ibt.c");
            fs::write(
                &src,
                "#include <stdio.h>\nint main(void) { puts(\"x\"); return 0; }\n",
            )
            .unwrap();
            let exe = dir.path().join("ibt");
            let ok = std::process::Command::new("/usr/bin/cc")
                .args(["-O1", "-fcf-protection", "-Wl,-z,ibtplt", "-o"])
                .arg(&exe)
                .arg(&src)
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                binaries.push(exe);
            }
        }
        let mut checked = 0;
        for bin in &binaries {
            let data = map_file(bin.to_str().unwrap()).expect("readable");
            let ours = plt_stubs(&data).expect("an x86-64 ELF");
            let file = object::File::parse(&*data).unwrap();
            // objdump prints addresses; ours are file offsets.
            let to_offset = |addr: u64| {
                file.sections()
                    .filter_map(|s| Some((s.address(), s.size(), s.file_range()?.0)))
                    .find(|(a, size, _)| *a <= addr && addr < a + size)
                    .map(|(a, _, off)| addr - a + off)
            };
            let out = std::process::Command::new("/usr/bin/objdump")
                .args(["-d", "-j", ".plt", "-j", ".plt.sec", "-j", ".plt.got"])
                .arg(bin)
                .output()
                .unwrap();
            let theirs: Vec<(u64, String)> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| {
                    let (addr, rest) = l.split_once(" <")?;
                    let name = rest.strip_suffix(">:")?;
                    name.ends_with("@plt")
                        .then(|| Some((to_offset(u64::from_str_radix(addr, 16).ok()?)?, name)))
                        .flatten()
                        .map(|(o, n)| (o, n.to_owned()))
                })
                .collect();
            let ours: Vec<(u64, String)> = ours.into_iter().map(|(s, _, n)| (s, n)).collect();
            assert!(
                !theirs.is_empty(),
                "{}: objdump names no PLT stub",
                bin.display()
            );
            assert_eq!(ours, theirs, "{}", bin.display());
            checked += 1;
        }
        eprintln!("PLT stubs agree with objdump on {checked} binaries");
    }

    /// Regression: the vDSO copy went to `/tmp/wattson-vdso-PID.so`, a predictable path in a
    /// shared directory, written by root following symlinks and with the umask's mode.
    #[test]
    fn the_vdso_copy_is_in_a_private_directory() {
        use std::os::unix::fs::PermissionsExt as _;
        let sym = Symbolizer::default();
        let path = dump_own_vdso().map(|(dir, p)| (dir.path().to_owned(), p, dir));
        let (dir, path, _guard) = path.expect("this process has a vDSO");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        assert_eq!(mode(Path::new(&path)), 0o600, "{path}");
        assert_ne!(
            Path::new(&path),
            std::env::temp_dir().join(format!("wattson-vdso-{}.so", std::process::id()))
        );
        // The symbolizer's own copy goes when it does.
        let own = sym
            .vdso
            .get_or_init(dump_own_vdso)
            .as_ref()
            .unwrap()
            .1
            .clone();
        assert!(Path::new(&own).exists());
        drop(sym);
        assert!(!Path::new(&own).exists(), "removed with the symbolizer");
    }

    /// Regression: a process's `/tmp/perf-PID.map` was read whole, as root, following
    /// symlinks: a JIT (or anyone able to write /tmp) could make the agent read any file into
    /// its symbol names, or fill its memory.
    #[test]
    fn perf_maps_are_bounded_and_never_followed_through_symlinks() {
        let me = std::process::id();
        let dir = tempfile::tempdir().unwrap();
        let map = dir.path().join(format!("perf-{me}.map"));
        let secret = dir.path().join("secret");
        fs::write(&secret, "1000 100 root-only-secret\n").unwrap();
        std::os::unix::fs::symlink(&secret, &map).unwrap();
        let mut sym = Symbolizer::new(dir.path());
        assert_eq!(sym.perf_map_lookup(me, 0x1010, 1), None, "symlink followed");
        // A map over the bound: its complete lines under the bound are read, the cut counted.
        fs::remove_file(&map).unwrap();
        let lines: String = (0..1000u64)
            .map(|i| format!("{:x} 10 jit_fn_{i}\n", 0x10_0000 + i * 0x10))
            .collect();
        fs::write(&map, &lines).unwrap();
        sym.perf_map_max_bytes = 100 * 20; // about 100 of the 1000 lines
        assert_eq!(
            sym.perf_map_lookup(me, 0x10_0000, 1).as_deref(),
            Some("jit_fn_0")
        );
        assert_eq!(sym.perf_map_lookup(me, 0x10_0000 + 999 * 0x10, 1), None);
        assert!(sym.perf_maps.get(&me).unwrap().len() < 150);
        assert!(sym.take_perf_maps_cut() >= 1);
        // A FIFO would block a plain read forever: refused at once.
        fs::remove_file(&map).unwrap();
        let c = std::ffi::CString::new(map.to_str().unwrap()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        sym.trim(); // a window's end: perf maps are read again
        assert_eq!(sym.perf_map_lookup(me, 0x10_0000, 2), None);
    }

    #[test]
    fn perf_maps_parse_and_sort() {
        let map = parse_perf_map("0x2000 10 js:foo\n1000 20 bar baz\nbad line\n");
        assert_eq!(
            map,
            vec![
                (0x1000, 0x1020, "bar baz".to_owned()),
                (0x2000, 0x2010, "js:foo".to_owned())
            ]
        );
    }

    #[test]
    fn kernel_build_id_reads_when_present() {
        if Path::new("/sys/kernel/notes").exists() {
            let id = kernel_build_id(Path::new("/sys/kernel/notes"));
            assert!(id.is_some_and(|id| id.len() >= 40));
        }
    }
}
