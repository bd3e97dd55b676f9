//! A minimal initramfs writer for the VM lab: the kernel's `newc` cpio format, uncompressed,
//! with parent directories created as needed and the shared libraries a binary links against
//! (read from `ldd`) copied in at the paths the dynamic loader looks for them.

use std::{collections::BTreeMap, fs, path::Path, process::Command};

use anyhow::Context as _;

use crate::cmd;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// Files of the archive, by path without a leading slash.
#[derive(Default)]
pub struct Initramfs {
    entries: BTreeMap<String, (u32, Vec<u8>)>,
}

impl Initramfs {
    /// Number of entries, directories included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn add_parents(&mut self, path: &str) {
        let mut dir = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !dir.is_empty() {
                dir.push('/');
            }
            dir.push_str(part);
            self.entries
                .entry(dir.clone())
                .or_insert((S_IFDIR | 0o755, Vec::new()));
        }
    }

    /// Adds an empty directory (a mount point, say).
    pub fn add_dir(&mut self, path: &str) {
        let path = path.trim_start_matches('/');
        self.add_parents(path);
        self.entries
            .insert(path.to_owned(), (S_IFDIR | 0o755, Vec::new()));
    }

    /// Adds a file with the given contents and permission bits.
    pub fn add_bytes(&mut self, path: &str, data: &[u8], perm: u32) {
        let path = path.trim_start_matches('/');
        self.add_parents(path);
        self.entries
            .insert(path.to_owned(), (S_IFREG | perm, data.to_vec()));
    }

    /// Adds a host file (symlinks followed) at `path`.
    pub fn add_file(&mut self, path: &str, source: &Path, perm: u32) -> anyhow::Result<()> {
        let data = fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        self.add_bytes(path, &data, perm);
        Ok(())
    }

    /// Adds every shared library `binary` needs, at the paths `ldd` reports.
    pub fn add_libraries_of(&mut self, binary: &Path) -> anyhow::Result<()> {
        let text = cmd::output(Command::new("ldd").arg(binary))?;
        for line in text.lines() {
            let path = match line.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            let Some(path) = path.filter(|p| p.starts_with('/')) else {
                continue;
            };
            self.add_file(path, Path::new(path), 0o755)?;
        }
        Ok(())
    }

    /// Writes the archive in `newc` format.
    pub fn write(&self, dest: &Path) -> anyhow::Result<()> {
        let mut out = Vec::new();
        for (ino, (path, (mode, data))) in self.entries.iter().enumerate() {
            let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
            entry(&mut out, ino as u32 + 1, path, *mode, nlink, data);
        }
        entry(&mut out, 0, "TRAILER!!!", 0, 1, &[]);
        fs::write(dest, out).with_context(|| format!("writing {}", dest.display()))
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, nlink: u32, data: &[u8]) {
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}
