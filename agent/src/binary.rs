//! What an ELF binary offers the profiler: a symbol table, debug info (inline or in a separate
//! debug file found by build id), and frame pointers (which stack walking in BPF relies on).
//!
//! Frame pointers are judged from function prologues: a function built with them starts with
//! `push %rbp; mov %rsp,%rbp` (optionally after `endbr64`). Only x86-64 is examined.

use std::{fs, path::Path};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

/// Findings about one binary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinaryInfo {
    /// Has a `.symtab` (full symbols; stripped binaries keep only `.dynsym`).
    pub symtab: bool,
    /// Has `.debug_info` in the file itself.
    pub debug_info: bool,
    /// A separate debug file exists under `/usr/lib/debug/.build-id/`.
    pub debug_file: bool,
    /// GNU build id, lowercase hex.
    pub build_id: Option<String>,
    /// Functions examined for a frame-pointer prologue.
    pub functions_examined: usize,
    /// Of those, functions that set up a frame pointer.
    pub functions_with_fp: usize,
}

impl BinaryInfo {
    /// Symbols beyond the dynamic ones are available (symtab, DWARF, or a debug file).
    pub fn has_symbols(&self) -> bool {
        self.symtab || self.debug_info || self.debug_file
    }

    /// `Some(true)` when most functions keep frame pointers, `None` when no function could be
    /// examined (no function symbols).
    pub fn frame_pointers(&self) -> Option<bool> {
        (self.functions_examined > 0).then(|| self.functions_with_fp * 2 >= self.functions_examined)
    }
}

/// Examines the ELF file at `path`.
pub fn inspect(path: &Path) -> Result<BinaryInfo, String> {
    let data = fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let file =
        object::File::parse(&*data).map_err(|e| format!("parsing {}: {e}", path.display()))?;
    let mut info = BinaryInfo {
        symtab: file.section_by_name(".symtab").is_some(),
        debug_info: file.section_by_name(".debug_info").is_some(),
        build_id: file.build_id().ok().flatten().map(crate::process::hex),
        ..BinaryInfo::default()
    };
    if let Some(id) = &info.build_id
        && id.len() > 2
    {
        let debug = format!("/usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..]);
        info.debug_file = Path::new(&debug).exists();
    }
    if file.architecture() != object::Architecture::X86_64 {
        return Ok(info);
    }
    let symbols: Vec<_> = if info.symtab {
        file.symbols().collect()
    } else {
        file.dynamic_symbols().collect()
    };
    for sym in symbols
        .iter()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.size() >= 16)
        .take(2000)
    {
        let Some(section) = sym
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
        else {
            continue;
        };
        let Ok(Some(bytes)) = section.data_range(sym.address(), 16) else {
            continue;
        };
        info.functions_examined += 1;
        if has_fp_prologue(bytes) {
            info.functions_with_fp += 1;
        }
    }
    Ok(info)
}

/// `push %rbp` followed by `mov %rsp,%rbp` near the start of a function.
fn has_fp_prologue(code: &[u8]) -> bool {
    let code = code.strip_prefix(&[0xf3, 0x0f, 0x1e, 0xfa]).unwrap_or(code);
    let Some(push) = code.iter().position(|&b| b == 0x55) else {
        return false;
    };
    push <= 4 && code[push + 1..].windows(3).any(|w| w == [0x48, 0x89, 0xe5])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prologues_with_and_without_frame_pointers() {
        assert!(has_fp_prologue(&[0x55, 0x48, 0x89, 0xe5, 0x90]));
        assert!(has_fp_prologue(&[
            0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5
        ]));
        assert!(!has_fp_prologue(&[
            0x41, 0x57, 0x41, 0x56, 0x48, 0x83, 0xec, 0x08
        ]));
    }

    #[test]
    fn this_test_binary_has_symbols() {
        let exe = std::env::current_exe().unwrap();
        let info = inspect(&exe).unwrap();
        assert!(info.has_symbols(), "{info:?}");
        assert!(info.functions_examined > 0);
        assert!(info.build_id.is_some());
    }
}
